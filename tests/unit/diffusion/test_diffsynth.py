"""Qwen-Image DiffSynth ControlNet patches: ModelPatchLoader and QwenImageDiffsynthControlnet as ComfyUI 0.8.0
declares them (golden diffsynth_object_info.json), the patch files recognised by keys and shapes, the numbers
against ComfyUI's formulas (comfy_extras/nodes_model_patch.py, written out here from their definitions), and the
patch inside Qwen-Image's model call: strength 0 is the unpatched model bit for bit, a patch changes it."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from google.protobuf import json_format
from safetensors.torch import save_file

from comfymesh.artifacts import ArtifactStore, encode_value
from comfymesh.contracts.errors import ModelError, NodeInputError
from comfymesh.contracts.values import EMBEDDED_REF, embed_ref, tensors_in
from comfymesh.diffusion.families import qwen_image as q
from comfymesh.diffusion.latents.wan21 import WAN21
from comfymesh.diffusion.models import tiny_diffsynth, tiny_qwen_image
from comfymesh.diffusion.models.cache import ModelCache, get_model_cache
from comfymesh.diffusion.models.diffsynth_patch import (
    apply_after_block,
    load_diffsynth_patch,
    parse_diffsynth,
)
from comfymesh.diffusion.models.tensor_source import TensorSource
from comfymesh.diffusion.nodes import diffsynth, loaders
from comfymesh.diffusion.nodes.handles import checkpoint_of, loras_of, weights_identity
from comfymesh.diffusion.nodes.latent import _upscale
from comfymesh.diffusion.nodes.model_patches import apply_model_sampling
from comfymesh.diffusion.nodes.registry import nodes
from comfymesh.jobs import JobStore
from comfymesh.orchestrator.retention import RetentionPolicy, collect
from comfymesh.stage.node import NodeContext
from comfymesh.v1 import common_pb2

GOLDEN = Path(__file__).parents[2] / "golden" / "diffsynth_object_info.json"
CPU = torch.device("cpu")


def test_object_info_equals_comfyui_080() -> None:
    golden = json.loads(GOLDEN.read_text())
    golden.pop("_about")
    assert {name: nodes.schemas[name].object_info() for name in golden} == golden


@pytest.fixture(scope="module")
def patches(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return tiny_diffsynth.make_tiny_diffsynth(tmp_path_factory.mktemp("patches"), seed=1)


def test_patches_recognised_by_keys_and_shapes(patches: dict[str, Path], tmp_path: Path) -> None:
    canny = parse_diffsynth(TensorSource(patches["canny"]))
    inpaint = parse_diffsynth(TensorSource(patches["inpaint"]))
    assert canny is not None and (canny.dim, canny.n_blocks, canny.additional_in_dim) == (64, 2, 0)
    assert inpaint is not None and inpaint.additional_in_dim == 4
    # the real files: 60 blocks of width 3072, img_in 64 (68 for inpaint) wide, six tensors a block
    full = tiny_diffsynth.diffsynth_shapes(3072, 60, 4)
    assert full["img_in.weight"] == (3072, 68) and len(full) == 2 + 60 * 6
    # a Qwen-Image model is no patch; the other kinds ModelPatchLoader takes are refused by name
    model = tmp_path / "model.safetensors"
    save_file(tiny_qwen_image.tensors(tiny_qwen_image.qwen_image_shapes(), 0, torch.float32), str(model))
    assert parse_diffsynth(TensorSource(model)) is None
    uso = tmp_path / "uso.safetensors"
    save_file({"feature_embedder.mid_layer_norm.bias": torch.zeros(4)}, str(uso))
    with pytest.raises(ModelError, match="USO style projector"):
        load_diffsynth_patch(uso, CPU)
    with pytest.raises(ModelError, match="no model patch"):
        load_diffsynth_patch(model, CPU)


# --- ComfyUI's formulas, written out from comfy_extras/nodes_model_patch.py ---------------------------------


def _linear(x: torch.Tensor, sd: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return F.linear(x, sd[name + ".weight"].to(x.dtype), sd[name + ".bias"].to(x.dtype))


def comfy_process_input_latent_image(sd: dict[str, torch.Tensor], latent_image: torch.Tensor) -> torch.Tensor:
    latent_image = latent_image.clone()
    latent_image[:, :16] = WAN21.process_in(latent_image[:, :16])
    hidden = latent_image  # [B, C, 1, h, w] with even h, w
    s = hidden.shape
    hidden = hidden.view(s[0], s[1], s[-2] // 2, 2, s[-1] // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return _linear(hidden.reshape(s[0], (s[-2] // 2) * (s[-1] // 2), s[1] * 4), sd, "img_in")


def comfy_control_block(sd: dict[str, torch.Tensor], i: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    p = f"controlnet_blocks.{i}."
    x = torch.nn.functional.rms_norm(x, (x.shape[-1],), sd[p + "x_rms.weight"].to(x.dtype), 1e-6)
    y = torch.nn.functional.rms_norm(y, (y.shape[-1],), sd[p + "y_rms.weight"].to(y.dtype), 1e-6)
    return _linear(torch.nn.GELU()(_linear(x + y, sd, p + "input_proj")), sd, p + "output_proj")


def comfy_patch(sd: dict[str, torch.Tensor], encoded: torch.Tensor, strength: float, i: int,
                img: torch.Tensor) -> torch.Tensor:
    img = img.clone()
    n = encoded.shape[1]
    img[:, :n] += comfy_control_block(sd, i, img[:, :n], encoded.to(img.dtype), ) * strength
    return img


def _state(path: Path) -> dict[str, torch.Tensor]:
    src = TensorSource(path)
    return {k: src.get(k) for k in src.keys}


def test_control_tokens_and_blocks_follow_comfyui(patches: dict[str, Path]) -> None:
    net = load_diffsynth_patch(patches["inpaint"], CPU)
    sd = _state(patches["inpaint"])
    gen = torch.Generator().manual_seed(0)
    latent = torch.cat([torch.randn(1, 16, 1, 6, 8, generator=gen), torch.rand(1, 1, 1, 6, 8, generator=gen)], 1)
    tokens = net.control_tokens(latent)
    torch.testing.assert_close(tokens, comfy_process_input_latent_image(sd, latent), rtol=0, atol=1e-6)
    # image tokens (12) followed by reference tokens (5) that the patch leaves alone; a batch of 2 (cond, uncond)
    hidden = torch.randn(2, 17, 64, generator=gen)
    for i in range(2):
        ours = apply_after_block(net, tokens, 0.7, i, hidden)
        torch.testing.assert_close(ours, comfy_patch(sd, tokens, 0.7, i, hidden), rtol=0, atol=1e-6)
        assert torch.equal(ours[:, 12:], hidden[:, 12:])
        assert torch.equal(apply_after_block(net, tokens, 0.0, i, hidden), hidden)
    with pytest.raises(ModelError, match="2 blocks"):
        apply_after_block(net, tokens, 1.0, 2, hidden)


def test_mask_is_kept_as_comfyui_keeps_it() -> None:
    # ComfyUI: MASK [B, H, W] → [B, 1, 1, H, W], then 1 − mask (1 where the image is kept)
    mask = torch.zeros(1, 32, 48)
    mask[:, 8:24, 16:40] = 1.0
    kept = diffsynth.control_mask(mask)
    assert kept is not None and kept.shape == (1, 1, 1, 32, 48)
    assert torch.equal(kept[:, 0, 0], 1.0 - mask)
    flat = diffsynth.control_mask(mask[0])
    assert flat is not None and torch.equal(flat, kept)
    assert diffsynth.control_mask(None) is None


def _model(tmp_path: Path) -> torch.nn.Module:
    path = tmp_path / "q.safetensors"
    save_file(tiny_qwen_image.tensors(tiny_qwen_image.qwen_image_shapes(), 3, torch.float32), str(path))
    src = TensorSource(path)
    layout = q.parse_qwen_image(src)
    assert layout is not None
    return q.load_qwen_image(src, layout, CPU)


def test_strength_zero_is_the_unpatched_model_and_a_patch_changes_it(tmp_path: Path,
                                                                    patches: dict[str, Path]) -> None:
    model = _model(tmp_path)
    net = load_diffsynth_patch(patches["canny"], CPU)
    gen = torch.Generator().manual_seed(1)
    x, ctx = torch.randn(2, 16, 8, 8, generator=gen), torch.randn(2, 5, 32, generator=gen)
    t = torch.tensor([0.7, 0.7])
    control = net.control_tokens(torch.randn(1, 16, 1, 8, 8, generator=gen))
    ref = torch.randn(1, 16, 8, 8, generator=gen)

    def patched(strength: float) -> Any:
        return lambda i, h: apply_after_block(net, control, strength, i, h)

    for refs in ((), (ref,)):
        plain = q.qwen_image_forward(model, x, t, ctx, refs)
        assert torch.equal(q.qwen_image_forward(model, x, t, ctx, refs, block_patch=patched(0.0)), plain)
        out = q.qwen_image_forward(model, x, t, ctx, refs, block_patch=patched(1.0))
        assert out.shape == plain.shape and not torch.allclose(out, plain)
    # the fast path's static form leaves patched calls to the eager call
    assert q.QwenImageStaticForm(model).inputs(x, t, ctx, None, block_patch=patched(1.0)) is None


# --- the nodes, through the model cache and the sampler's binding ------------------------------------------


@pytest.fixture(scope="module")
def qwen_home(tmp_path_factory: pytest.TempPathFactory, tiny_home: Path) -> Path:
    """A home of its own (the shared tiny home's folders stay as other tests list them): the tiny Qwen-Image set,
    the DiffSynth patches, and the shared SD1.5 checkpoint for the refusals."""
    home = tmp_path_factory.mktemp("diffsynth-home")
    tiny_qwen_image.make_tiny_qwen_image(home / "models", seed=3, dtype=torch.float32)
    tiny_diffsynth.make_tiny_diffsynth(home / "models", seed=1)
    (home / "models" / "checkpoints").mkdir(parents=True)
    shutil.copy(tiny_home / "models" / "checkpoints" / "sd15.safetensors", home / "models" / "checkpoints")
    return home


@pytest.fixture
def qwen_ctx(qwen_home: Path, model_cache: ModelCache, tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch) -> NodeContext:
    monkeypatch.setenv("COMFYMESH_ARTIFACTS_URL", (tmp_path / "artifacts").as_uri())
    return NodeContext(job_id="job", node_id="7", class_type="test", home=qwen_home)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((1, h, w, 3)).astype(np.float32)


def _velocity(ctx: NodeContext, model: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
    sm = apply_model_sampling(ctx, model, get_model_cache().sampling_model(checkpoint_of(ctx, model),
                                                                            loras_of(ctx, model)))
    gen = torch.Generator().manual_seed(5)
    text = torch.randn(1, 4, 32, generator=gen)
    out: torch.Tensor = sm.unet(x, torch.tensor([0.6]), text, None)
    return out


def test_nodes_patch_the_sampled_model(qwen_ctx: NodeContext) -> None:
    ctx = qwen_ctx
    (model,) = loaders.unet_loader(ctx, unet_name=tiny_qwen_image.DIFFUSION_MODEL, weight_dtype="default")
    (vae,) = loaders.vae_loader(ctx, vae_name=tiny_qwen_image.VAE)
    (patch,) = diffsynth.model_patch_loader(ctx, name=tiny_diffsynth.CANNY)
    assert patch["kind"] == "model_patch"
    x = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(2))
    plain = _velocity(ctx, model, x)
    (zero,) = diffsynth.qwen_image_diffsynth_controlnet(ctx, model=model, model_patch=patch, vae=vae,
                                                        image=_image(64, 64), strength=0.0)
    assert torch.equal(_velocity(ctx, zero, x), plain)
    (one,) = diffsynth.qwen_image_diffsynth_controlnet(ctx, model=model, model_patch=patch, vae=vae,
                                                       image=_image(64, 64), strength=1.0)
    patched = _velocity(ctx, one, x)
    assert not torch.allclose(patched, plain)
    assert weights_identity(one) != weights_identity(model) != weights_identity(zero)
    # the handle is JSON; its control inputs are a stored bundle that a cache hit checks for
    wire = common_pb2.Value(type="MODEL", json=json.dumps(one))
    refs = tensors_in(wire)
    assert len(refs) == 1 and EMBEDDED_REF in json.dumps(one)
    assert diffsynth.patch_store().exists(refs[0])
    # another image gives another result
    (other,) = diffsynth.qwen_image_diffsynth_controlnet(ctx, model=model, model_patch=patch, vae=vae,
                                                         image=_image(64, 64, seed=9), strength=1.0)
    assert not torch.equal(_velocity(ctx, other, x), patched)


def test_control_image_of_another_size_is_rescaled_and_reencoded(qwen_ctx: NodeContext) -> None:
    ctx = qwen_ctx
    (model,) = loaders.unet_loader(ctx, unet_name=tiny_qwen_image.DIFFUSION_MODEL, weight_dtype="default")
    (vae,) = loaders.vae_loader(ctx, vae_name=tiny_qwen_image.VAE)
    (patch,) = diffsynth.model_patch_loader(ctx, name=tiny_diffsynth.INPAINT)
    image = _image(80, 48, seed=4)
    mask = np.zeros((1, 80, 48), np.float32)
    mask[:, 20:60, 10:30] = 1.0
    (patched,) = diffsynth.qwen_image_diffsynth_controlnet(ctx, model=model, model_patch=patch, vae=vae,
                                                           image=image, strength=0.8, mask=mask)
    sm = apply_model_sampling(ctx, patched, get_model_cache().sampling_model(checkpoint_of(ctx, patched), []))
    call = sm.unet
    assert isinstance(call, diffsynth.PatchedModelCall)
    applied = call.patches[0]
    module = diffsynth._wan_vae(ctx, vae)
    # sampled at 8×8 latents (64×64 pixels): ComfyUI scales the image (area, centre crop) and encodes it again;
    # the mask goes straight to the latent size
    scaled = _upscale(torch.from_numpy(image).movedim(-1, 1), 64, 64, "area", "center").movedim(1, -1)
    kept = diffsynth.control_mask(torch.from_numpy(mask))
    assert kept is not None
    expected = applied.net.control_tokens(diffsynth.encode_control(module, scaled, kept, 4))
    torch.testing.assert_close(applied.control((8, 8)), expected, rtol=0, atol=0)
    # at the image's own size (10×6 latents) the node's encoding serves
    own = applied.net.control_tokens(diffsynth.encode_control(module, torch.from_numpy(image), kept, 4))
    torch.testing.assert_close(applied.control((10, 6)), own, rtol=0, atol=0)
    assert applied.latent.shape == (1, 17, 1, 10, 6)
    assert torch.equal(applied.latent[:, 16:], F.interpolate(kept[:, 0], size=(10, 6), mode="bilinear")[:, None])


def test_patches_refused_on_other_vaes_and_inputs(qwen_ctx: NodeContext) -> None:
    ctx = qwen_ctx
    (model,) = loaders.unet_loader(ctx, unet_name=tiny_qwen_image.DIFFUSION_MODEL, weight_dtype="default")
    (patch,) = diffsynth.model_patch_loader(ctx, name=tiny_diffsynth.CANNY)
    (sd_model, _, sd_vae) = loaders.checkpoint_loader_simple(ctx, ckpt_name="sd15.safetensors")
    with pytest.raises(NodeInputError, match="Qwen-Image's VAE"):
        diffsynth.qwen_image_diffsynth_controlnet(ctx, model=model, model_patch=patch, vae=sd_vae,
                                                  image=_image(64, 64), strength=1.0)
    with pytest.raises(NodeInputError, match="MODEL_PATCH"):
        diffsynth.qwen_image_diffsynth_controlnet(ctx, model=model, model_patch={"kind": "x"}, vae=sd_vae,
                                                  image=_image(64, 64), strength=1.0)
    # a Qwen-Image patch record on an SD1.5 model is refused when the sampler binds it
    (vae,) = loaders.vae_loader(ctx, vae_name=tiny_qwen_image.VAE)
    (patched,) = diffsynth.qwen_image_diffsynth_controlnet(ctx, model=model, model_patch=patch, vae=vae,
                                                           image=_image(64, 64), strength=1.0)
    wrong = {**sd_model, "model_patches": patched["model_patches"]}
    with pytest.raises(NodeInputError, match="apply to Qwen-Image models"):
        apply_model_sampling(ctx, wrong, get_model_cache().sampling_model(checkpoint_of(ctx, wrong), []))


def test_retention_keeps_a_bundle_a_cached_model_handle_embeds(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    artifacts = ArtifactStore((tmp_path / "artifacts").as_uri())
    refs = [artifacts.put_bundle({"latent": np.full((1, 4), float(i), np.float32)}) for i in range(2)]
    handle = {"unet_file": "q.safetensors", "model_patches": [{"kind": "diffsynth", "inputs": embed_ref(refs[0])}]}
    value = encode_value("MODEL", handle, artifacts)
    store.cache_put("patched", "QwenImageDiffsynthControlnet",
                    [json_format.MessageToDict(value, preserving_proto_field_name=True)], None)
    paths = [Path(ref.uri.removeprefix("file://")) for ref in refs]
    old = time.time() - 7200
    for path in paths:
        os.utime(path, (old, old))
    report = collect(store, artifacts, tmp_path, RetentionPolicy(cache_max_age_s=86400))
    # the bundle the cached handle embeds stays; the unreferenced one goes
    assert report.artifacts_removed == 1 and paths[0].exists() and not paths[1].exists()
