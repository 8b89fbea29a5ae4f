"""SaveLatent / LoadLatent against ComfyUI 0.8.0 (nodes.py) and LatentCut / LatentCutToBatch against
comfy_extras/nodes_latent.py: file names, keys and metadata, counters and receipts, the old-format
multiplier, the input folder's .latent list, and the cut formulas."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import safetensors
import safetensors.torch
import torch

from comfymesh.catalog import Catalog
from comfymesh.contracts.errors import NodeInputError
from comfymesh.diffusion.nodes import nodes
from comfymesh.stage.node import NodeContext

GOLDEN = Path(__file__).parents[2] / "golden" / "latent_files_object_info.json"


def run(ctx: NodeContext | None, name: str, **inputs: Any) -> Any:
    return nodes.impls[name](ctx, **inputs)


def ctx_for(home: Path, job: str = "job", node: str = "9", **extra: Any) -> NodeContext:
    return NodeContext(job_id=job, node_id=node, class_type="SaveLatent", home=home, **extra)


def latent(seed: int = 0, shape: tuple[int, ...] = (2, 4, 5, 7)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_object_info_equals_comfyui_080() -> None:
    golden = json.loads(GOLDEN.read_text())
    golden.pop("_about")
    assert {name: nodes.schemas[name].object_info() for name in golden} == golden


def test_save_latent_writes_comfyui_file_and_ui(tmp_path: Path) -> None:
    prompt = {"1": {"class_type": "SaveLatent", "inputs": {}}}
    ctx = ctx_for(tmp_path, prompt=prompt, extra_pnginfo={"workflow": {"nodes": [1]}})
    z = latent()
    assert run(ctx, "SaveLatent", samples={"samples": z}, filename_prefix="latents/ComfyUI") == ()
    assert ctx.ui == {"latents": [{"filename": "ComfyUI_00001_.latent", "subfolder": "latents", "type": "output"}]}
    path = tmp_path / "output" / "latents" / "ComfyUI_00001_.latent"
    tensors = safetensors.torch.load_file(str(path))
    assert set(tensors) == {"latent_tensor", "latent_format_version_0"}
    assert torch.equal(tensors["latent_tensor"], z)
    assert tensors["latent_format_version_0"].shape == (0,)
    with safetensors.safe_open(str(path), "pt") as handle:
        assert handle.metadata() == {"prompt": json.dumps(prompt), "workflow": json.dumps({"nodes": [1]})}


def test_save_latent_counts_up_and_a_retry_writes_nothing_new(tmp_path: Path) -> None:
    z = {"samples": latent()}
    first = ctx_for(tmp_path, job="a")
    run(first, "SaveLatent", samples=z, filename_prefix="latents/x")
    retry = ctx_for(tmp_path, job="a")
    run(retry, "SaveLatent", samples=z, filename_prefix="latents/x")
    assert retry.ui == first.ui  # the receipt of (job, node) gives the first file back
    # a PNG of the same prefix takes a number too: ComfyUI's counter ignores the extension
    (tmp_path / "output" / "latents" / "x_00002_.png").write_bytes(b"png")
    other = ctx_for(tmp_path, job="b")
    run(other, "SaveLatent", samples=z, filename_prefix="latents/x")
    assert other.ui == {"latents": [{"filename": "x_00003_.latent", "subfolder": "latents", "type": "output"}]}
    assert sorted(p.name for p in (tmp_path / "output" / "latents").iterdir()) == [
        "x_00001_.latent", "x_00002_.png", "x_00003_.latent"]
    # without a prompt ComfyUI still writes an empty `prompt`
    with safetensors.safe_open(str(tmp_path / "output" / "latents" / "x_00001_.latent"), "pt") as handle:
        assert handle.metadata() == {"prompt": ""}
    with pytest.raises(NodeInputError):
        run(ctx_for(tmp_path, job="c"), "SaveLatent", samples=z, filename_prefix="../escape")


def test_load_latent_reads_saved_and_old_format_files(tmp_path: Path) -> None:
    z = latent(1)
    run(ctx_for(tmp_path), "SaveLatent", samples={"samples": z}, filename_prefix="y")
    inputs = tmp_path / "input"
    inputs.mkdir()
    (tmp_path / "output" / "y_00001_.latent").rename(inputs / "new.latent")
    safetensors.torch.save_file({"latent_tensor": z.half()}, str(inputs / "old.latent"))
    (inputs / "note.txt").write_text("x")
    (inputs / "sub").mkdir()
    (inputs / "sub" / "deep.latent").write_bytes((inputs / "new.latent").read_bytes())
    ctx = NodeContext(job_id="j", node_id="2", class_type="LoadLatent", home=tmp_path)
    assert torch.equal(run(ctx, "LoadLatent", latent="new.latent")[0]["samples"], z)
    # no version marker: stored scaled by 0.18215, loaded as latent_tensor × (1 / 0.18215)
    old = run(ctx, "LoadLatent", latent="old.latent")[0]["samples"]
    assert old.dtype == torch.float32
    assert torch.equal(old, z.half().float() * (1.0 / 0.18215))
    assert torch.equal(run(ctx, "LoadLatent", latent="sub/deep.latent")[0]["samples"], z)
    with pytest.raises(NodeInputError, match="Invalid latent file"):
        run(ctx, "LoadLatent", latent="missing.latent")
    with pytest.raises(NodeInputError):
        run(ctx, "LoadLatent", latent="note.txt")
    # the COMBO lists the .latent files directly in input/, sorted (no subfolders, no other files)
    catalog = Catalog(tmp_path, nodes.object_info())
    assert catalog.choices("LoadLatent", "latent") == ["new.latent", "old.latent"]
    assert catalog.object_info("LoadLatent")["LoadLatent"]["input"]["required"]["latent"] == [
        ["new.latent", "old.latent"]]
    assert catalog.file_of("LoadLatent", "latent", "old.latent") == inputs / "old.latent"


@pytest.mark.parametrize(("dim", "index", "amount", "expect"), [
    ("x", 2, 3, (slice(None), slice(None), slice(None), slice(2, 5))),
    ("x", 5, 10, (slice(None), slice(None), slice(None), slice(5, 7))),
    ("x", 99, 2, (slice(None), slice(None), slice(None), slice(6, 7))),  # index pulled back to the last
    ("y", -2, 5, (slice(None), slice(None), slice(3, 5))),  # from the end, amount cut to what is left
    ("y", -99, 2, (slice(None), slice(None), slice(0, 2))),
    ("t", 1, 2, (slice(None), slice(1, 3))),  # "t" of a 4-D latent is its channels, as in ComfyUI
])
def test_latent_cut(dim: str, index: int, amount: int, expect: tuple[slice, ...]) -> None:
    z = latent()
    out = run(None, "LatentCut", samples={"samples": z, "batch_index": [0, 1]}, dim=dim, index=index,
              amount=amount)[0]
    assert torch.equal(out["samples"], z[expect])
    assert out["batch_index"] == [0, 1]


def test_latent_cut_to_batch() -> None:
    z = latent(2, (1, 4, 3, 4, 6))  # [B, C, T, H, W]
    cut = run(None, "LatentCutToBatch", samples={"samples": z}, dim="t", slice_size=1)[0]["samples"]
    assert cut.shape == (3, 4, 1, 4, 6) and torch.equal(cut[2, :, 0], z[0, :, 2])
    # a width of 6 in slices of 4: the last 2 columns are dropped
    cut = run(None, "LatentCutToBatch", samples={"samples": z}, dim="x", slice_size=4)[0]["samples"]
    assert cut.shape == (1, 4, 3, 4, 4) and torch.equal(cut, z[..., :4])
    cut = run(None, "LatentCutToBatch", samples={"samples": z[..., :4]}, dim="y", slice_size=2)[0]["samples"]
    assert cut.shape == (2, 4, 3, 2, 4) and torch.equal(cut[1], z[0, :, :, 2:4, :4])
    # a slice bigger than the side is the side
    cut = run(None, "LatentCutToBatch", samples={"samples": z}, dim="y", slice_size=9)[0]["samples"]
    assert torch.equal(cut, z)
    flat = {"samples": latent(3)}
    assert run(None, "LatentCutToBatch", samples=flat, dim="t", slice_size=2)[0] is flat  # channels: unchanged
    two = run(None, "LatentCutToBatch", samples=flat, dim="x", slice_size=3)[0]["samples"]
    assert two.shape == (4, 4, 5, 3) and torch.equal(two[1], flat["samples"][0, :, :, 3:6])
