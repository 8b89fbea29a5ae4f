"""Qwen-Image InstantX ControlNets: ControlNetInpaintingAliMamaApply declared as ComfyUI 0.8.0 declares it (golden
controlnet_inpainting_object_info.json), the nets recognised by keys and shapes, ComfyUI's residual schedule (each
block's residual repeated for a 60-block main model, times the strength), the residuals added to the image tokens
only, the inpainting hint (image blanked where repainted, the kept area as a channel) and the 5-D noise mask."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from comfymesh.contracts.errors import ModelError
from comfymesh.diffusion.models.qwen_controlnet import (
    MAIN_MODEL_BLOCKS,
    QwenControlChain,
    QwenControlLink,
    add_after_block,
    is_fun_controlnet,
    is_qwen_controlnet,
    load_qwen_controlnet,
    residuals,
)
from comfymesh.diffusion.models.tensor_source import TensorSource
from comfymesh.diffusion.models.tiny_qwen_controlnet import make_tiny_qwen_controlnets, qwen_controlnet_shapes
from comfymesh.diffusion.models.tiny_qwen_image import make_tiny_qwen_image, tensors
from comfymesh.diffusion.nodes import nodes
from comfymesh.diffusion.nodes.controlnet_inpainting import masked_hint
from comfymesh.diffusion.sampling.guidance import MaskedDenoiser
from comfymesh.stage.node import NodeContext

GOLDEN = Path(__file__).parents[2] / "golden" / "controlnet_inpainting_object_info.json"
CPU = torch.device("cpu")


def test_object_info_equals_comfyui_080() -> None:
    golden = json.loads(GOLDEN.read_text())
    golden.pop("_about")
    assert {name: nodes.schemas[name].object_info() for name in golden} == golden


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("qwen-controlnet")
    return make_tiny_qwen_controlnets(root, seed=2) | make_tiny_qwen_image(root, seed=2)


def test_recognised_by_keys_and_the_inpainting_net_by_its_hint_width(files: dict[str, Path]) -> None:
    assert is_qwen_controlnet(TensorSource(files["inpainting"])) and is_qwen_controlnet(TensorSource(files["union"]))
    assert not is_qwen_controlnet(TensorSource(files["diffusion_models"]))
    assert load_qwen_controlnet(files["inpainting"], CPU, torch.float32).concat_mask
    assert not load_qwen_controlnet(files["union"], CPU, torch.float32).concat_mask
    with pytest.raises(ModelError, match="not a Qwen-Image ControlNet"):
        load_qwen_controlnet(files["diffusion_models"], CPU, torch.float32)


def test_a_videox_fun_controlnet_is_named_as_the_format_comfyui_080_does_not_load(node_ctx: NodeContext,
                                                                                  tiny_home: Path) -> None:
    name = "Qwen-Image-2512-Fun-Controlnet-Union-test.safetensors"
    folder = tiny_home / "models" / "controlnet"
    folder.mkdir(parents=True, exist_ok=True)
    shapes: dict[str, tuple[int, ...]] = {"control_img_in.weight": (64, 132),
                                          "control_blocks.0.after_proj.weight": (64, 64)}
    save_file(tensors(shapes, 0, torch.float32), str(folder / name))
    assert is_fun_controlnet(TensorSource(folder / name)) and not is_qwen_controlnet(TensorSource(folder / name))
    with pytest.raises(ModelError, match=r"VideoX-Fun .* ComfyUI 0\.8\.0.s ControlNetLoader does not load"):
        nodes.impls["ControlNetLoader"](node_ctx, control_net_name=name)


def test_a_hint_embedder_of_another_width_is_refused(tmp_path: Path) -> None:
    shapes = qwen_controlnet_shapes() | {"controlnet_x_embedder.weight": (64, 72)}
    save_file(tensors(shapes, 0, torch.float32), str(tmp_path / "odd.safetensors"))
    with pytest.raises(ModelError, match="8 channels beyond"):
        load_qwen_controlnet(tmp_path / "odd.safetensors", CPU, torch.float32)


def test_residuals_repeat_for_a_60_block_model_and_scale_with_strength(files: dict[str, Path]) -> None:
    control = load_qwen_controlnet(files["inpainting"], CPU, torch.float32)
    gen = torch.Generator().manual_seed(0)
    x, hint = torch.randn(1, 16, 1, 8, 6, generator=gen), torch.randn(1, 17, 1, 8, 6, generator=gen)
    ctx, t = torch.randn(1, 5, 32, generator=gen), torch.tensor([0.7])
    outs = residuals(control, x, t, ctx, hint, 1.0)
    # 2 blocks: each residual serves ⌈60 / 2⌉ = 30 main blocks, in order
    assert len(outs) == MAIN_MODEL_BLOCKS and outs[0].shape == (1, 4 * 3, 64)
    assert all(torch.equal(o, outs[0]) for o in outs[:30]) and all(torch.equal(o, outs[30]) for o in outs[30:])
    assert not torch.equal(outs[0], outs[30])
    half = residuals(control, x, t, ctx, hint, 0.5)
    torch.testing.assert_close(half[0] * 2, outs[0])
    # the hint matters
    assert not torch.equal(residuals(control, x, t, ctx, hint * 0, 1.0)[0], outs[0])


def test_residuals_go_to_the_image_tokens_after_their_block() -> None:
    add = [torch.ones(1, 3, 4), torch.full((1, 3, 4), 2.0)]
    hidden = torch.zeros(1, 5, 4)  # 3 image tokens, then 2 reference tokens
    patch = add_after_block(add)
    assert patch(1, hidden)[0, :3].eq(2).all() and patch(1, hidden)[0, 3:].eq(0).all()
    assert torch.equal(patch(2, hidden), hidden)  # past the residuals: unchanged


def test_the_chain_runs_only_within_its_sigma_range_and_sums_its_links(files: dict[str, Path]) -> None:
    control = load_qwen_controlnet(files["union"], CPU, torch.float32)
    seen: list[list[torch.Tensor]] = []

    refs_seen: list[object] = []

    def model(x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, y: torch.Tensor | None,
              block_patch: object = None, refs: object = ()) -> torch.Tensor:
        hidden = torch.zeros(x.shape[0], 12, 64)
        seen.append([block_patch(i, hidden) for i in range(MAIN_MODEL_BLOCKS)])  # type: ignore[operator]
        refs_seen.append(refs)
        return x

    hint = torch.randn(1, 16, 1, 8, 6)
    link = QwenControlLink(control, lambda h, w: hint, 1.0, sigma_start=0.9, sigma_end=0.2)
    x, ctx, t = torch.randn(2, 16, 1, 8, 6), torch.randn(2, 5, 32), torch.tensor([0.5, 0.5])
    assert QwenControlChain([link], model)(x, t, ctx, None, torch.tensor(0.95), 2) is None
    QwenControlChain([link], model)(x, t, ctx, None, torch.tensor(0.5), 2)
    QwenControlChain([link, link], model)(x, t, ctx, None, torch.tensor(0.5), 2, refs=["ref"])
    one, two = seen
    assert refs_seen == [(), ["ref"]]  # an entry's reference latents reach the model call
    torch.testing.assert_close(two[0], one[0] * 2)
    torch.testing.assert_close(one[0], residuals(control, x, t, ctx, hint.expand(2, -1, -1, -1, -1), 1.0)[0])


def test_inpainting_hint_blanks_the_repainted_area_and_keeps_the_rest() -> None:
    image = torch.rand(1, 16, 16, 3)
    mask = torch.zeros(1, 16, 16)
    mask[:, 4:8, 2:10] = 1.0  # repaint
    hint, kept = masked_hint(image, mask)
    assert kept.shape == (1, 1, 16, 16) and torch.equal(kept, 1 - mask[:, None])
    assert hint[:, 4:8, 2:10].eq(0).all()
    assert torch.equal(hint[:, :4], image[:, :4])


def test_noise_mask_on_a_5d_latent_is_comfyui_reshape_mask() -> None:
    mask = torch.rand(1, 32, 24)
    m = MaskedDenoiser.prepare_mask(mask, torch.Size((2, 16, 1, 4, 3)), CPU)
    assert m.shape == (2, 16, 1, 4, 3)
    flat = F.interpolate(mask[None], size=(4, 3), mode="bilinear")[0]
    torch.testing.assert_close(m[1, 5, 0], flat[0])
    four = MaskedDenoiser.prepare_mask(mask, torch.Size((2, 16, 4, 3)), CPU)
    torch.testing.assert_close(four[:, :, None], m)
