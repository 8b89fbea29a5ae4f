"""A tiny random-weight Z-Image set in ComfyUI's file layouts, under the frontend default graph's file names:
the diffusion model (`z_image_turbo_bf16.safetensors`, ComfyUI's NextDiT keys), the Qwen3 text encoder
(`qwen_3_4b.safetensors`, Hugging Face keys, Qwen's full 151 936-entry vocabulary so real token ids fit) and
the 16-channel FLUX VAE (`ae.safetensors`, LDM keys without quant convs).

The loaders know these files only by keys and shapes. Usage:
`python -m comfymesh.diffusion.models.tiny_zimage <models folder>` writes diffusion_models/, text_encoders/, vae/.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import save_file

from comfymesh.diffusion.models.tiny_checkpoint import _init, vae_shapes

DIFFUSION_MODEL = "z_image_turbo_bf16.safetensors"
TEXT_ENCODER = "qwen_3_4b.safetensors"
VAE = "ae.safetensors"
QWEN_VOCAB = 151_936
LATENT_CHANNELS = 16


def zimage_shapes(dim: int = 256, heads: int = 4, layers: int = 2, refiners: int = 1, cap_dim: int = 64,
                  channels: int = LATENT_CHANNELS) -> dict[str, tuple[int, ...]]:
    """Every tensor of a Z-Image diffusion model in ComfyUI's layout (fused qkv, `final_layer`, `x_embedder`)."""
    head = dim // heads
    adaln = min(dim, 256)
    mid = min(dim, 1024)
    hidden = int(dim / 3 * 8)
    s: dict[str, tuple[int, ...]] = {
        "x_embedder.weight": (dim, 4 * channels), "x_embedder.bias": (dim,),
        "final_layer.linear.weight": (4 * channels, dim), "final_layer.linear.bias": (4 * channels,),
        "final_layer.adaLN_modulation.1.weight": (dim, adaln), "final_layer.adaLN_modulation.1.bias": (dim,),
        "t_embedder.mlp.0.weight": (mid, 256), "t_embedder.mlp.0.bias": (mid,),
        "t_embedder.mlp.2.weight": (adaln, mid), "t_embedder.mlp.2.bias": (adaln,),
        "cap_embedder.0.weight": (cap_dim,), "cap_embedder.1.weight": (dim, cap_dim), "cap_embedder.1.bias": (dim,),
        "x_pad_token": (1, dim), "cap_pad_token": (1, dim), "norm_final.weight": (dim,),
    }
    blocks = ([(f"layers.{i}", True) for i in range(layers)] + [(f"noise_refiner.{i}", True) for i in range(refiners)]
              + [(f"context_refiner.{i}", False) for i in range(refiners)])
    for name, modulated in blocks:
        s[f"{name}.attention.qkv.weight"] = (3 * dim, dim)
        s[f"{name}.attention.out.weight"] = (dim, dim)
        s[f"{name}.attention.q_norm.weight"] = (head,)
        s[f"{name}.attention.k_norm.weight"] = (head,)
        s[f"{name}.feed_forward.w1.weight"] = (hidden, dim)
        s[f"{name}.feed_forward.w2.weight"] = (dim, hidden)
        s[f"{name}.feed_forward.w3.weight"] = (hidden, dim)
        for norm in ("attention_norm1", "ffn_norm1", "attention_norm2", "ffn_norm2"):
            s[f"{name}.{norm}.weight"] = (dim,)
        if modulated:
            s[f"{name}.adaLN_modulation.0.weight"] = (4 * dim, adaln)
            s[f"{name}.adaLN_modulation.0.bias"] = (4 * dim,)
    return s


def qwen3_shapes(width: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2, head_dim: int = 16,
                 intermediate: int = 128, vocab: int = QWEN_VOCAB) -> dict[str, tuple[int, ...]]:
    """Every tensor of a Qwen3 text encoder in the Hugging Face layout ComfyUI's qwen_3_4b file uses."""
    s: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, width), "model.norm.weight": (width,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        s.update({
            p + "self_attn.q_proj.weight": (heads * head_dim, width),
            p + "self_attn.k_proj.weight": (kv_heads * head_dim, width),
            p + "self_attn.v_proj.weight": (kv_heads * head_dim, width),
            p + "self_attn.o_proj.weight": (width, heads * head_dim),
            p + "self_attn.q_norm.weight": (head_dim,), p + "self_attn.k_norm.weight": (head_dim,),
            p + "mlp.gate_proj.weight": (intermediate, width), p + "mlp.up_proj.weight": (intermediate, width),
            p + "mlp.down_proj.weight": (width, intermediate),
            p + "input_layernorm.weight": (width,), p + "post_attention_layernorm.weight": (width,),
        })
    return s


def flux_vae_shapes() -> dict[str, tuple[int, ...]]:
    """The 16-channel VAE of `ae.safetensors`: LDM keys at the root, no quant_conv / post_quant_conv."""
    return {k: v for k, v in vae_shapes(z=LATENT_CHANNELS, prefix="").items() if "quant_conv" not in k}


def _tensors(shapes: dict[str, tuple[int, ...]], seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    gen = torch.Generator("cpu").manual_seed(seed)
    out = {}
    for name, shape in sorted(shapes.items()):
        # the pad tokens and modulations stand for learned values: small, like the other weights
        out[name] = _init(name, shape, gen).to(dtype)
    return out


def make_tiny_zimage(models: str | Path, seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> dict[str, Path]:
    """Write the three files under `models` (diffusion_models/, text_encoders/, vae/); returns their paths."""
    root = Path(models)
    files = {
        "diffusion_models": (DIFFUSION_MODEL, zimage_shapes()),
        "text_encoders": (TEXT_ENCODER, qwen3_shapes()),
        "vae": (VAE, flux_vae_shapes()),
    }
    paths = {}
    for k, (folder, (name, shapes)) in enumerate(files.items()):
        path = root / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(_tensors(shapes, seed + k, dtype), str(path), metadata={"format": "pt"})
        paths[folder] = path
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m comfymesh.diffusion.models.tiny_zimage",
                                     description="Write a tiny random-weight Z-Image set in ComfyUI's file layouts.")
    parser.add_argument("models", type=Path, help="models folder (diffusion_models/, text_encoders/, vae/ inside)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fp16", action="store_true", help="store float16 tensors (default bfloat16)")
    args = parser.parse_args(argv)
    for path in make_tiny_zimage(args.models, args.seed, torch.float16 if args.fp16 else torch.bfloat16).values():
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
