"""Tiny random-weight SD3.5 files in ComfyUI's layouts: the MMDiT diffusion model (`joint_blocks.N.x_block` …,
SD3.5 medium's shape by default: RMS q/k norms and an MMDiT-X block), CLIP-L and CLIP-G text encoders
(Hugging Face naming, CLIP-G with its projection, as ComfyUI's clip_l / clip_g.safetensors ship), the
16-channel SD3 VAE (LDM keys, no quant convs), and the all-in-one checkpoint that holds them all
(`model.diffusion_model.`, `text_encoders.clip_l|clip_g.transformer.`, `first_stage_model.`), optionally in
ComfyUI's scaled-fp8 form (fp8 weights with a `scale_weight` each and a `scaled_fp8` marker). With `t5_width`
a T5-XXL encoder of that width joins them (`t5xxl_fp16.safetensors`, the checkpoint's
`text_encoders.t5xxl.transformer.`, T5's full vocabulary) and the MMDiT's text width is set to it, as the
released models' 4096 is T5-XXL's.

The loaders know these files only by keys and shapes. Heads are 64 wide (width / 64 heads, as ComfyUI
assumes), so the default width 128 gives 2 heads and 2 joint blocks (ComfyUI's depth = width / 64).
Usage: `python -m comfymesh.diffusion.models.tiny_sd3 <models folder>`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import save_file

from comfymesh.diffusion.models.tiny_checkpoint import _init, clip_hf_shapes, vae_shapes

CHECKPOINT = "sd3.5_large_fp8_scaled.safetensors"  # the name sd3.5_simple_example's CheckpointLoaderSimple asks
DIFFUSION_MODEL = "sd3.5_medium.safetensors"
CLIP_L, CLIP_G = "clip_l.safetensors", "clip_g.safetensors"
T5 = "t5xxl_fp16.safetensors"
VAE = "sd3_vae.safetensors"
LATENT_CHANNELS = 16
CONTEXT_WIDTH = 4096  # CLIP-L ‖ CLIP-G features are padded to T5-XXL's width
CLIP_L_WIDTH, CLIP_G_WIDTH, CLIP_LAYERS = 32, 64, 2
Shapes = dict[str, tuple[int, ...]]


def _attn(s: Shapes, name: str, width: int, qk_norm: bool, proj: bool = True) -> None:
    s[f"{name}.qkv.weight"], s[f"{name}.qkv.bias"] = (3 * width, width), (3 * width,)
    if proj:
        s[f"{name}.proj.weight"], s[f"{name}.proj.bias"] = (width, width), (width,)
    if qk_norm:
        s[f"{name}.ln_q.weight"] = s[f"{name}.ln_k.weight"] = (64,)


def _dit_block(s: Shapes, name: str, width: int, qk_norm: bool, pre_only: bool, self_attn2: bool) -> None:
    _attn(s, f"{name}.attn", width, qk_norm, proj=not pre_only)
    mods = 2 if pre_only else (9 if self_attn2 else 6)
    s[f"{name}.adaLN_modulation.1.weight"], s[f"{name}.adaLN_modulation.1.bias"] = (mods * width, width), (mods * width,)
    if self_attn2:
        _attn(s, f"{name}.attn2", width, qk_norm)
    if not pre_only:
        s[f"{name}.mlp.fc1.weight"], s[f"{name}.mlp.fc1.bias"] = (4 * width, width), (4 * width,)
        s[f"{name}.mlp.fc2.weight"], s[f"{name}.mlp.fc2.bias"] = (width, 4 * width), (width,)


def mmdit_shapes(width: int = 128, blocks: int = 2, context_dim: int = CONTEXT_WIDTH,
                 pooled_dim: int = CLIP_L_WIDTH + CLIP_G_WIDTH, pos_max: int = 32, patch: int = 2,
                 channels: int = LATENT_CHANNELS, qk_norm: bool = True, dual: tuple[int, ...] = (0,)) -> Shapes:
    """Every tensor of an MMDiT in ComfyUI's layout; `qk_norm` and `dual` (MMDiT-X blocks) make SD3.5 medium,
    `qk_norm` alone SD3.5 large, neither SD3 medium."""
    s: Shapes = {
        "x_embedder.proj.weight": (width, channels, patch, patch), "x_embedder.proj.bias": (width,),
        "pos_embed": (1, pos_max * pos_max, width),
        "t_embedder.mlp.0.weight": (width, 256), "t_embedder.mlp.0.bias": (width,),
        "t_embedder.mlp.2.weight": (width, width), "t_embedder.mlp.2.bias": (width,),
        "y_embedder.mlp.0.weight": (width, pooled_dim), "y_embedder.mlp.0.bias": (width,),
        "y_embedder.mlp.2.weight": (width, width), "y_embedder.mlp.2.bias": (width,),
        "context_embedder.weight": (width, context_dim), "context_embedder.bias": (width,),
        "final_layer.linear.weight": (patch * patch * channels, width),
        "final_layer.linear.bias": (patch * patch * channels,),
        "final_layer.adaLN_modulation.1.weight": (2 * width, width), "final_layer.adaLN_modulation.1.bias": (2 * width,),
    }
    for i in range(blocks):
        _dit_block(s, f"joint_blocks.{i}.x_block", width, qk_norm, False, i in dual)
        _dit_block(s, f"joint_blocks.{i}.context_block", width, qk_norm, i == blocks - 1, False)
    return s


def clip_shapes(width: int, projection: bool) -> Shapes:
    """A CLIP text encoder as ComfyUI's clip_l / clip_g files hold it (CLIPTextModel(WithProjection) naming)."""
    s = clip_hf_shapes("text_model.", width, CLIP_LAYERS)
    if projection:
        s["text_projection.weight"] = (width, width)
    return s


def sd3_vae_shapes(prefix: str = "") -> Shapes:
    """The 16-channel SD3 VAE: LDM keys, no quant_conv / post_quant_conv."""
    return {k: v for k, v in vae_shapes(z=LATENT_CHANNELS, prefix=prefix).items() if "quant_conv" not in k}


def tensors(shapes: Shapes, seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    gen = torch.Generator("cpu").manual_seed(seed)
    return {name: _init(name, shape, gen).to(dtype) for name, shape in sorted(shapes.items())}


def scaled_fp8(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """ComfyUI's scaled-fp8 form of the 2-D weights under `prefix`: weight / scale in fp8 e4m3fn, the float32
    scale beside it as `.scale_weight`, and the `scaled_fp8` marker."""
    out = dict(state)
    for key, tensor in state.items():
        if key.startswith(prefix) and key.endswith(".weight") and tensor.ndim == 2:
            scale = tensor.float().abs().max() / 448.0  # e4m3fn's largest finite value
            out[key] = (tensor.float() / scale).to(torch.float8_e4m3fn)
            out[key[: -len("weight")] + "scale_weight"] = scale.reshape(())
    out[prefix + "scaled_fp8"] = torch.zeros(0, dtype=torch.float8_e4m3fn)
    return out


def t5_shapes(width: int) -> Shapes:
    """A T5 v1.1 encoder of `width` (4 heads, 2 blocks) with T5's full vocabulary, as t5xxl files name it."""
    from comfymesh.diffusion.models.tiny_flux import t5_shapes as flux_t5

    return flux_t5(width=width, heads=4, head_dim=width // 4, ff=2 * width)


def checkpoint_state(seed: int = 0, dtype: torch.dtype = torch.float16, fp8: bool = False,
                     t5_width: int | None = None, **mmdit: object) -> dict[str, torch.Tensor]:
    """The all-in-one checkpoint's tensors: MMDiT, CLIP-L, CLIP-G (and T5-XXL with `t5_width`) and the VAE
    under ComfyUI's prefixes."""
    if t5_width is not None:
        mmdit["context_dim"] = t5_width
    parts = {
        "model.diffusion_model.": mmdit_shapes(**mmdit),  # type: ignore[arg-type]
        "text_encoders.clip_l.transformer.": clip_shapes(CLIP_L_WIDTH, projection=False),
        "text_encoders.clip_g.transformer.": clip_shapes(CLIP_G_WIDTH, projection=True),
        "first_stage_model.": sd3_vae_shapes(),
    }
    if t5_width is not None:
        parts["text_encoders.t5xxl.transformer."] = t5_shapes(t5_width)
    state: dict[str, torch.Tensor] = {}
    for k, (prefix, shapes) in enumerate(parts.items()):
        state.update({prefix + name: t for name, t in tensors(shapes, seed + k, dtype).items()})
    return scaled_fp8(state, "model.diffusion_model.") if fp8 else state


def make_tiny_sd3(models: str | Path, seed: int = 0, dtype: torch.dtype = torch.float16,
                  fp8_checkpoint: bool = True, t5_width: int | None = None,
                  checkpoint: str = CHECKPOINT) -> dict[str, Path]:
    """Write the checkpoint (checkpoints/) and the split files (diffusion_models/, text_encoders/, vae/) of the
    same weights under `models`; returns their paths by part ("t5" too with `t5_width`)."""
    root = Path(models)
    state = checkpoint_state(seed, dtype, t5_width=t5_width)
    split = {
        "diffusion_models": (DIFFUSION_MODEL, "model.diffusion_model."),
        "clip_l": (CLIP_L, "text_encoders.clip_l.transformer."),
        "clip_g": (CLIP_G, "text_encoders.clip_g.transformer."),
        "vae": (VAE, "first_stage_model."),
    }
    if t5_width is not None:
        split["t5"] = (T5, "text_encoders.t5xxl.transformer.")
    paths: dict[str, Path] = {}
    for part, (name, prefix) in split.items():
        folder = "text_encoders" if part.startswith(("clip", "t5")) else part
        paths[part] = root / folder / name
        paths[part].parent.mkdir(parents=True, exist_ok=True)
        save_file({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, str(paths[part]),
                  metadata={"format": "pt"})
    paths["checkpoints"] = root / "checkpoints" / checkpoint
    paths["checkpoints"].parent.mkdir(parents=True, exist_ok=True)
    full = scaled_fp8(state, "model.diffusion_model.") if fp8_checkpoint else state
    save_file(full, str(paths["checkpoints"]), metadata={"format": "pt"})
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m comfymesh.diffusion.models.tiny_sd3",
                                     description="Write tiny random-weight SD3.5 files in ComfyUI's layouts.")
    parser.add_argument("models", type=Path, help="models folder (checkpoints/, diffusion_models/, text_encoders/, vae/)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-fp8", action="store_true", help="write the checkpoint in fp16, not scaled fp8")
    parser.add_argument("--t5-width", type=int, default=None, help="add a T5-XXL encoder of this width")
    parser.add_argument("--checkpoint", default=CHECKPOINT, help="the checkpoint's file name")
    args = parser.parse_args(argv)
    for path in make_tiny_sd3(args.models, args.seed, fp8_checkpoint=not args.no_fp8, t5_width=args.t5_width,
                              checkpoint=args.checkpoint).values():
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
