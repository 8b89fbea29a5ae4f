"""Area, mask, strength and timestep-range conditioning: the nodes' extras and the guidance's weighting,
against ComfyUI's calc_cond_batch formula worked by hand on a stub UNet (CPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from comfymesh.contracts.errors import NodeInputError
from comfymesh.diffusion.nodes import nodes
from comfymesh.diffusion.sampling.guidance import CondEntry, GuidedDenoiser
from comfymesh.diffusion.sampling.ksampler import match_areas
from comfymesh.diffusion.sampling.model_sampling import ModelSampling
from comfymesh.diffusion.sampling.regions import Region, region_of
from comfymesh.stage.node import NodeContext

MS = ModelSampling()
CPU = torch.device("cpu")


def stub_unet(x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """eps = the context's first value everywhere: each entry's x0 is x − value·σ."""
    return ctx[:, 0, 0].reshape(-1, 1, 1, 1) * torch.ones_like(x)


def entry(value: float, region: Region | None = None) -> CondEntry:
    return CondEntry(torch.full((1, 77, 4), value), region=region)


def denoiser(positive: list[CondEntry], negative: list[CondEntry] | None = None, cfg: float = 1.0) -> GuidedDenoiser:
    return GuidedDenoiser(stub_unet, MS, "eps", positive, negative or [], cfg, torch.float32)


@pytest.fixture
def ctx(tmp_path: Path) -> NodeContext:
    return NodeContext(job_id="job", node_id="3", class_type="test", home=tmp_path)


def run(ctx: NodeContext, name: str, **inputs: Any) -> Any:
    return nodes.impls[name](ctx, **inputs)[0]


def test_an_area_entry_blends_with_comfyui_feathered_weights() -> None:
    x, sigma = torch.randn(1, 4, 16, 16), torch.tensor(2.0)
    area = Region(area=(8, 8, 4, 4), strength=1.5)
    out = denoiser([entry(0.3), entry(-0.7, area)])(x, sigma)
    a, b = x - 0.3 * 2.0, x - (-0.7) * 2.0
    # feather over min(8, 8 // 4) = 2 rows/columns at each inner edge: 1/2 then 1
    ramp = torch.tensor([0.5, 1, 1, 1, 1, 1, 1, 0.5])
    m = torch.zeros(16, 16)
    m[4:12, 4:12] = 1.5 * ramp[:, None] * ramp[None, :]
    expected = (a + b * m) / (1e-37 + 1 + m)
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.equal(out[..., 0, 0], a[..., 0, 0])


def test_an_area_on_the_latent_edge_is_not_feathered_there() -> None:
    x, sigma = torch.randn(1, 4, 16, 16), torch.tensor(1.0)
    out = denoiser([entry(0.0), entry(1.0, Region(area=(8, 16, 0, 0)))])(x, sigma)
    a, b = x, x - 1.0
    # only the bottom edge (row 7) is inside the latent: rows 6, 7 weigh 1, 1/2; columns touch both edges
    assert torch.allclose(out[..., 0:6, :], (a + b)[..., 0:6, :] / 2, atol=1e-6)
    assert torch.allclose(out[..., 7, :], (a + 0.5 * b)[..., 7, :] / 1.5, atol=1e-6)
    assert torch.equal(out[..., 8:, :], a[..., 8:, :])


def test_a_mask_weighs_by_mask_times_mask_strength_times_strength() -> None:
    x, sigma = torch.randn(2, 4, 8, 8), torch.tensor(0.5)
    mask = torch.rand(1, 8, 8)
    out = denoiser([entry(0.2), entry(0.9, Region(strength=2.0, mask=mask, mask_strength=0.25))])(x, sigma)
    a, b = x - 0.2 * 0.5, x - 0.9 * 0.5
    m = (mask * 0.25 * 2.0).unsqueeze(1)
    assert torch.allclose(out, (a + b * m) / (1 + m), atol=1e-6)


def test_what_no_entry_covers_predicts_zero_and_cfg_uses_both_sides() -> None:
    x, sigma = torch.randn(1, 4, 16, 16), torch.tensor(1.0)
    pos = [entry(0.5, Region(area=(8, 8, 0, 0)))]
    neg = [entry(0.1)]
    out = denoiser(pos, neg, cfg=3.0)(x, sigma)
    n = x - 0.1
    assert torch.allclose(out[..., 8:, 8:], n[..., 8:, 8:] + (0 - n[..., 8:, 8:]) * 3.0, atol=1e-6)


def test_entries_outside_their_timestep_range_are_skipped() -> None:
    start, end = MS.percent_to_sigma(0.5), MS.percent_to_sigma(1.0)
    late = Region(sigma_start=start, sigma_end=end)
    d = denoiser([entry(0.0), entry(1.0, late)])
    x = torch.randn(1, 4, 8, 8)
    high, low = torch.tensor(start * 2), torch.tensor(start / 2)
    assert torch.equal(d(x, high), x)  # only the plain entry: its x0 is x
    assert torch.allclose(d(x, low), (x + (x - low)) / 2, atol=1e-6)
    # no entry left on a side: that side predicts 0
    assert torch.equal(denoiser([entry(1.0, late)])(x, high), torch.zeros_like(x))


def test_region_of_resolves_percentages_mask_bounds_and_the_latent_edge() -> None:
    pct = region_of({"area": ["percentage", 0.5, 0.25, 0.5, 0.9]}, MS, (10, 20), "positive", CPU)
    assert pct is not None and pct.area == (5, 2, 5, 18)  # width cut at the edge: min(20 − 18, 5)
    mask = torch.zeros(1, 64, 64)
    mask[0, 8:16, 16:40] = 1.0
    bounds = region_of({"mask": mask, "set_area_to_bounds": True}, MS, (32, 32), "positive", CPU)
    assert bounds is not None and bounds.mask is not None
    assert bounds.mask.shape == (1, 32, 32)  # resized bilinearly to the latent
    assert bounds.area == (8, 12, 4, 8)  # rows 4-7 and columns 8-19 of the halved mask; at least 8 high
    timed = region_of({"start_percent": 0.2, "end_percent": 0.6}, MS, (8, 8), "positive", CPU)
    assert timed is not None and timed.sigma_start == MS.percent_to_sigma(0.2)
    assert region_of({"pooled_output": None}, MS, (8, 8), "positive", CPU) is None
    with pytest.raises(NodeInputError, match="outside"):
        region_of({"area": [8, 8, 40, 0]}, MS, (32, 32), "negative", CPU)


def test_an_area_gets_an_opposite_entry_from_the_other_sides_smallest_cover() -> None:
    pos = [entry(1.0, Region(area=(4, 4, 2, 2), strength=0.5))]
    big, small = entry(2.0, Region(area=(8, 8, 0, 0))), entry(3.0, Region(area=(6, 6, 1, 1)))
    neg = [entry(4.0), big, small]
    match_areas(pos, neg)
    assert len(neg) == 4 and neg[3].region == pos[0].region
    assert torch.equal(neg[3].context, small.context)  # the smallest area covering it
    # an entry already of exactly this area: nothing added
    neg2 = [entry(4.0), entry(5.0, Region(area=(4, 4, 2, 2)))]
    match_areas(pos, neg2)
    assert len(neg2) == 2


def test_the_nodes_set_comfyuis_keys(ctx: NodeContext) -> None:
    cond = [[torch.zeros(1, 77, 4), {"pooled_output": None}]]
    area = run(ctx, "ConditioningSetArea", conditioning=cond, width=100, height=64, x=12, y=8, strength=0.5)
    assert area[0][1] == {"pooled_output": None, "area": [8, 12, 1, 1], "strength": 0.5, "set_area_to_bounds": False}
    assert cond[0][1] == {"pooled_output": None}  # the input is not changed
    pct = run(ctx, "ConditioningSetAreaPercentage", conditioning=cond, width=0.5, height=0.25, x=0.1, y=0.2,
              strength=1.0)
    assert pct[0][1]["area"] == ["percentage", 0.25, 0.5, 0.2, 0.1]
    assert run(ctx, "ConditioningSetAreaStrength", conditioning=cond, strength=3.0)[0][1]["strength"] == 3.0
    masked = run(ctx, "ConditioningSetMask", conditioning=cond, mask=torch.ones(8, 8), strength=0.7,
                 set_cond_area="mask bounds")[0][1]
    assert masked["mask"].shape == (1, 8, 8) and masked["set_area_to_bounds"] and masked["mask_strength"] == 0.7
    timed = run(ctx, "ConditioningSetTimestepRange", conditioning=cond, start=0.1, end=0.8)[0][1]
    assert (timed["start_percent"], timed["end_percent"]) == (0.1, 0.8)
