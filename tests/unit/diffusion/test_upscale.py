"""UpscaleModelLoader / ImageUpscaleWithModel: spandrel ESRGAN models from .pth (tensors only) and
.safetensors files, ComfyUI's tiled blending, and pickles that would run code refused."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from comfymesh.contracts.errors import ModelError, NodeInputError
from comfymesh.diffusion.models import upscale
from comfymesh.diffusion.nodes import nodes
from comfymesh.stage.node import NodeContext

GOLDEN = Path(__file__).parents[2] / "golden" / "vision_upscale_object_info.json"


def run(ctx: NodeContext, name: str, **inputs: Any) -> tuple[Any, ...]:
    return nodes.impls[name](ctx, **inputs)


@pytest.fixture(scope="module")
def upscale_home(tiny_home: Path) -> Path:
    folder = tiny_home / "models" / "upscale_models"
    upscale.make_tiny_esrgan(folder / "tiny_x4.pth", scale=4, blocks=2, seed=3)
    upscale.make_tiny_esrgan(folder / "tiny_x2.safetensors", scale=2, seed=4)
    return tiny_home


class RunsCode:
    """A pickled object whose unpickling would call os.system."""

    def __reduce__(self) -> tuple[Any, ...]:
        import os

        return (os.system, ("echo pwned > /tmp/comfymesh-pickle-ran",))


def test_a_pth_model_upscales_as_spandrel_runs_it_whole(node_ctx: NodeContext, upscale_home: Path) -> None:
    handle, = run(node_ctx, "UpscaleModelLoader", model_name="tiny_x4.pth")
    assert handle["kind"] == "upscale_model" and handle["file"] == "tiny_x4.pth"
    image = torch.rand(2, 20, 24, 3, generator=torch.Generator().manual_seed(0))
    out, = run(node_ctx, "ImageUpscaleWithModel", upscale_model=handle, image=image)
    assert out.shape == (2, 80, 96, 3)
    model = upscale.load_upscale_model(upscale_home / "models" / "upscale_models" / "tiny_x4.pth")
    assert model.architecture.name == "ESRGAN" and model.scale == 4
    with torch.no_grad():
        expected = torch.clamp(model(image.movedim(-1, 1)).movedim(1, -1), 0, 1)
    torch.testing.assert_close(out, expected)


def test_a_safetensors_model_of_another_scale(node_ctx: NodeContext, upscale_home: Path) -> None:
    handle, = run(node_ctx, "UpscaleModelLoader", model_name="tiny_x2.safetensors")
    out, = run(node_ctx, "ImageUpscaleWithModel", upscale_model=handle, image=torch.rand(1, 8, 8, 3))
    assert out.shape == (1, 16, 16, 3)


def test_real_esrgans_key_naming_loads_to_the_same_model(tmp_path: Path) -> None:
    old = upscale.load_upscale_model(upscale.make_tiny_esrgan(tmp_path / "old.pth", blocks=2, seed=8))
    new_path = upscale.make_tiny_esrgan(tmp_path / "RealESRGAN_x4plus.safetensors", blocks=2, seed=8, naming="basicsr")
    assert "conv_first.weight" in upscale.read_state_dict(new_path)
    new = upscale.load_upscale_model(new_path)
    image = torch.rand(1, 3, 12, 10)
    with torch.no_grad():
        torch.testing.assert_close(new(image), old(image))


def test_tiles_blend_back_to_the_whole_image_for_a_pointwise_model() -> None:
    # nearest-neighbour upscaling is exact per tile, so the feathered average must give the whole-image result
    image = torch.rand(2, 3, 70, 45, generator=torch.Generator().manual_seed(1))

    def nearest(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=3, mode="nearest")

    tiles = []
    out = upscale.tiled_scale(image, nearest, 3, tile=32, overlap=8, on_tile=lambda: tiles.append(1))
    torch.testing.assert_close(out, nearest(image))
    assert len(tiles) == 2 * upscale.tile_count(70, 45, tile=32, overlap=8) == 2 * 3 * 2


def test_the_feather_weights_are_comfyuis_linear_ramps() -> None:
    # a model that outputs a constant per tile shows each tile's weight: two tiles of 16 wide, overlap 4, scale 1
    calls: list[int] = []

    def constant(x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return torch.full_like(x, float(len(calls)))

    out = upscale.tiled_scale(torch.zeros(1, 1, 8, 28), constant, 1, tile=16, overlap=4)
    # tiles start at 0 and 12 (28 - 16); the first tile's mask ramps 1/4..4/4 on each edge, the second's too
    ramp = torch.tensor([0.25, 0.5, 0.75, 1.0])
    overlap_cols = out[0, 0, 4, 12:16]
    expected = (1 * ramp.flip(0) + 2 * ramp) / (ramp.flip(0) + ramp)
    torch.testing.assert_close(overlap_cols, expected)
    assert torch.all(out[0, 0, :, :12] == 1) and torch.all(out[0, 0, :, 16:] == 2)


def test_a_pickle_that_would_run_code_is_refused(node_ctx: NodeContext, upscale_home: Path) -> None:
    marker = Path("/tmp/comfymesh-pickle-ran")
    marker.unlink(missing_ok=True)
    evil = upscale_home / "models" / "upscale_models" / "evil.pth"
    torch.save({"model.0.weight": torch.zeros(1), "payload": RunsCode()}, str(evil))
    with pytest.raises(ModelError, match="could run code"):
        run(node_ctx, "UpscaleModelLoader", model_name="evil.pth")
    assert not marker.exists()
    raw = upscale_home / "models" / "upscale_models" / "raw.pth"
    raw.write_bytes(pickle.dumps(RunsCode()))
    with pytest.raises(ModelError, match="could run code"):
        upscale.read_state_dict(raw)
    assert not marker.exists()


def test_other_pickle_formats_stay_refused(node_ctx: NodeContext, upscale_home: Path) -> None:
    (upscale_home / "models" / "upscale_models" / "model.ckpt").write_bytes(b"x")
    with pytest.raises(NodeInputError, match=r"only \.safetensors, \.sft and \.pth files load"):
        run(node_ctx, "UpscaleModelLoader", model_name="model.ckpt")
    assert node_ctx.models.accepts("x.pth", "upscale_models") and not node_ctx.models.accepts("x.pth", "checkpoints")


def test_a_changed_file_needs_its_loader_again(node_ctx: NodeContext, upscale_home: Path) -> None:
    path = upscale.make_tiny_esrgan(upscale_home / "models" / "upscale_models" / "changing.pth", scale=2, seed=5)
    handle, = run(node_ctx, "UpscaleModelLoader", model_name="changing.pth")
    upscale.make_tiny_esrgan(path, scale=2, seed=6)
    with pytest.raises(ModelError, match="changed on disk"):
        run(node_ctx, "ImageUpscaleWithModel", upscale_model=handle, image=torch.rand(1, 4, 4, 3))


def test_declarations_match_comfyuis_object_info() -> None:
    golden = json.loads(GOLDEN.read_text())
    golden.pop("_about")
    assert {name: nodes.schemas[name].object_info() for name in golden} == golden


@pytest.mark.parametrize(("name", "inputs", "instead"), [
    ("CheckpointLoader", {"config_name": "v1-inference.yaml", "ckpt_name": "sd15.safetensors"}, "Load Checkpoint"),
    ("DiffusersLoader", {"model_path": "sd15"}, "Load Checkpoint"),
    ("GLIGENLoader", {"gligen_name": "gligen.safetensors"}, "Set Area"),
    ("GLIGENTextBoxApply", {"conditioning_to": [], "clip": {}, "gligen_textbox_model": {}, "text": "a",
                            "width": 64, "height": 64, "x": 0, "y": 0}, "Set Area"),
])
def test_deprecated_loaders_and_gligen_refuse_saying_what_to_use(node_ctx: NodeContext, name: str,
                                                                  inputs: dict[str, Any], instead: str) -> None:
    with pytest.raises(NodeInputError, match=instead) as caught:
        run(node_ctx, name, **inputs)
    assert caught.value.node_id == node_ctx.node_id
