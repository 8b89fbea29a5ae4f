"""A tiny random-weight Qwen-Image set in ComfyUI's file layouts, under the official templates' file names: the
diffusion model (`qwen_image_fp8_e4m3fn.safetensors`, ComfyUI's `transformer_blocks.N.img_mod` keys), the
Qwen2.5-VL text encoder (`qwen_2.5_vl_7b_fp8_scaled.safetensors`, Hugging Face keys, Qwen2.5-VL's full
152 064-entry vocabulary so real token ids fit, and its `visual.` tower) and the Qwen-Image VAE (`qwen_image_vae.safetensors`, the Wan 2.1
VAE's keys: `encoder.downsamples.N.residual`, `decoder.upsamples.N`, `conv1`/`conv2`).

The loaders know these files only by keys and shapes. Usage:
`python -m comfymesh.diffusion.models.tiny_qwen_image <models folder>` writes diffusion_models/, text_encoders/,
vae/.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import torch
from safetensors.torch import save_file

from comfymesh.diffusion.models.tiny_checkpoint import _init
from comfymesh.diffusion.models.tiny_flux import fp8_mixed

DIFFUSION_MODEL = "qwen_image_fp8_e4m3fn.safetensors"
TEXT_ENCODER = "qwen_2.5_vl_7b_fp8_scaled.safetensors"
VAE = "qwen_image_vae.safetensors"
QWEN25_VL_VOCAB = 152_064
LATENT_CHANNELS = 16


def qwen_image_shapes(dim: int = 64, heads: int = 2, layers: int = 2, text_dim: int = 32,
                      channels: int = LATENT_CHANNELS, variant: str = "base") -> dict[str, tuple[int, ...]]:
    """Every tensor of a Qwen-Image diffusion model in ComfyUI's layout; `variant` "2511" adds the
    `__index_timestep_zero__` marker, "layered" the additional time embedding."""
    head = dim // heads
    s: dict[str, tuple[int, ...]] = {
        "img_in.weight": (dim, 4 * channels), "img_in.bias": (dim,),
        "txt_in.weight": (dim, text_dim), "txt_in.bias": (dim,), "txt_norm.weight": (text_dim,),
        "time_text_embed.timestep_embedder.linear_1.weight": (dim, 256),
        "time_text_embed.timestep_embedder.linear_1.bias": (dim,),
        "time_text_embed.timestep_embedder.linear_2.weight": (dim, dim),
        "time_text_embed.timestep_embedder.linear_2.bias": (dim,),
        "norm_out.linear.weight": (2 * dim, dim), "norm_out.linear.bias": (2 * dim,),
        "proj_out.weight": (4 * channels, dim), "proj_out.bias": (4 * channels,),
    }
    if variant == "2511":
        s["__index_timestep_zero__"] = (0,)
    if variant == "layered":
        s["time_text_embed.addition_t_embedding.weight"] = (2, dim)
    for i in range(layers):
        p = f"transformer_blocks.{i}."
        for stream in ("img", "txt"):
            s[f"{p}{stream}_mod.1.weight"] = (6 * dim, dim)
            s[f"{p}{stream}_mod.1.bias"] = (6 * dim,)
            s[f"{p}{stream}_mlp.net.0.proj.weight"] = (4 * dim, dim)
            s[f"{p}{stream}_mlp.net.0.proj.bias"] = (4 * dim,)
            s[f"{p}{stream}_mlp.net.2.weight"] = (dim, 4 * dim)
            s[f"{p}{stream}_mlp.net.2.bias"] = (dim,)
        for proj in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0", "to_add_out"):
            s[f"{p}attn.{proj}.weight"] = (dim, dim)
            s[f"{p}attn.{proj}.bias"] = (dim,)
        for norm in ("norm_q", "norm_k", "norm_added_q", "norm_added_k"):
            s[f"{p}attn.{norm}.weight"] = (head,)
    return s


def qwen25_vl_text_shapes(width: int = 32, layers: int = 2, heads: int = 2, kv_heads: int = 1, intermediate: int = 64,
                          vocab: int = QWEN25_VL_VOCAB) -> dict[str, tuple[int, ...]]:
    """The language model of a Qwen2.5-VL text encoder in the Hugging Face layout (q/k/v biases, no q/k norms)."""
    head_dim = width // heads
    s: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, width), "model.norm.weight": (width,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        s.update({
            p + "self_attn.q_proj.weight": (heads * head_dim, width), p + "self_attn.q_proj.bias": (heads * head_dim,),
            p + "self_attn.k_proj.weight": (kv_heads * head_dim, width),
            p + "self_attn.k_proj.bias": (kv_heads * head_dim,),
            p + "self_attn.v_proj.weight": (kv_heads * head_dim, width),
            p + "self_attn.v_proj.bias": (kv_heads * head_dim,),
            p + "self_attn.o_proj.weight": (width, heads * head_dim),
            p + "mlp.gate_proj.weight": (intermediate, width), p + "mlp.up_proj.weight": (intermediate, width),
            p + "mlp.down_proj.weight": (width, intermediate),
            p + "input_layernorm.weight": (width,), p + "post_attention_layernorm.weight": (width,),
        })
    return s


def qwen25_vl_vision_shapes(width: int = 64, depth: int = 2, intermediate: int = 48,
                            out_width: int = 32) -> dict[str, tuple[int, ...]]:
    """Qwen2.5-VL's vision tower (`visual.`, 2×14×14 patches, 2×2 merger into the language model's width) in the
    Hugging Face layout; 16 heads, as ComfyUI fixes them, so the width is a multiple of 64."""
    s: dict[str, tuple[int, ...]] = {
        "visual.patch_embed.proj.weight": (width, 3, 2, 14, 14), "visual.merger.ln_q.weight": (width,),
        "visual.merger.mlp.0.weight": (4 * width, 4 * width), "visual.merger.mlp.0.bias": (4 * width,),
        "visual.merger.mlp.2.weight": (out_width, 4 * width), "visual.merger.mlp.2.bias": (out_width,),
    }
    for i in range(depth):
        p = f"visual.blocks.{i}."
        s.update({
            p + "norm1.weight": (width,), p + "norm2.weight": (width,),
            p + "attn.qkv.weight": (3 * width, width), p + "attn.qkv.bias": (3 * width,),
            p + "attn.proj.weight": (width, width), p + "attn.proj.bias": (width,),
            p + "mlp.gate_proj.weight": (intermediate, width), p + "mlp.gate_proj.bias": (intermediate,),
            p + "mlp.up_proj.weight": (intermediate, width), p + "mlp.up_proj.bias": (intermediate,),
            p + "mlp.down_proj.weight": (width, intermediate), p + "mlp.down_proj.bias": (width,),
        })
    return s


def _residual(s: dict[str, tuple[int, ...]], p: str, cin: int, cout: int) -> None:
    # ComfyUI's ResidualBlock: RMS norm, SiLU, causal 3×3×3 conv, RMS norm, SiLU, dropout, conv (+ 1×1×1 shortcut)
    s[p + "residual.0.gamma"] = (cin, 1, 1, 1)
    s[p + "residual.2.weight"] = (cout, cin, 3, 3, 3)
    s[p + "residual.2.bias"] = (cout,)
    s[p + "residual.3.gamma"] = (cout, 1, 1, 1)
    s[p + "residual.6.weight"] = (cout, cout, 3, 3, 3)
    s[p + "residual.6.bias"] = (cout,)
    if cin != cout:
        s[p + "shortcut.weight"] = (cout, cin, 1, 1, 1)
        s[p + "shortcut.bias"] = (cout,)


def _middle(s: dict[str, tuple[int, ...]], p: str, c: int) -> None:
    _residual(s, p + "middle.0.", c, c)
    s[p + "middle.1.norm.gamma"] = (c, 1, 1)
    s[p + "middle.1.to_qkv.weight"] = (3 * c, c, 1, 1)
    s[p + "middle.1.to_qkv.bias"] = (3 * c,)
    s[p + "middle.1.proj.weight"] = (c, c, 1, 1)
    s[p + "middle.1.proj.bias"] = (c,)
    _residual(s, p + "middle.2.", c, c)


def wan21_vae_shapes(dim: int = 8, z_dim: int = LATENT_CHANNELS, image_channels: int = 3) -> dict[str, tuple[int, ...]]:
    """The Wan 2.1 VAE (channel multipliers 1, 2, 4, 4; two residual blocks per level; time downsampled at the
    two deeper levels) in ComfyUI's layout, at base width `dim`; Layered's VAE takes and gives 4 channels (RGBA)."""
    s: dict[str, tuple[int, ...]] = {"encoder.conv1.weight": (dim, image_channels, 3, 3, 3),
                                     "encoder.conv1.bias": (dim,)}
    widths = [dim, dim, 2 * dim, 4 * dim, 4 * dim]
    k = 0
    for level, (cin, cout) in enumerate(itertools.pairwise(widths)):
        for _ in range(2):
            _residual(s, f"encoder.downsamples.{k}.", cin, cout)
            cin, k = cout, k + 1
        if level < 3:
            s[f"encoder.downsamples.{k}.resample.1.weight"] = (cout, cout, 3, 3)
            s[f"encoder.downsamples.{k}.resample.1.bias"] = (cout,)
            if level > 0:
                s[f"encoder.downsamples.{k}.time_conv.weight"] = (cout, cout, 3, 1, 1)
                s[f"encoder.downsamples.{k}.time_conv.bias"] = (cout,)
            k += 1
    _middle(s, "encoder.", 4 * dim)
    s["encoder.head.0.gamma"] = (4 * dim, 1, 1, 1)
    s["encoder.head.2.weight"] = (2 * z_dim, 4 * dim, 3, 3, 3)
    s["encoder.head.2.bias"] = (2 * z_dim,)
    s["conv1.weight"] = (2 * z_dim, 2 * z_dim, 1, 1, 1)
    s["conv1.bias"] = (2 * z_dim,)
    s["conv2.weight"] = (z_dim, z_dim, 1, 1, 1)
    s["conv2.bias"] = (z_dim,)
    s["decoder.conv1.weight"] = (4 * dim, z_dim, 3, 3, 3)
    s["decoder.conv1.bias"] = (4 * dim,)
    _middle(s, "decoder.", 4 * dim)
    widths = [4 * dim, 4 * dim, 4 * dim, 2 * dim, dim]
    k = 0
    for level, (cin, cout) in enumerate(itertools.pairwise(widths)):
        cin = cin if level == 0 else cin // 2  # each upsampler halves its channels
        for _ in range(3):
            _residual(s, f"decoder.upsamples.{k}.", cin, cout)
            cin, k = cout, k + 1
        if level < 3:
            s[f"decoder.upsamples.{k}.resample.1.weight"] = (cout // 2, cout, 3, 3)
            s[f"decoder.upsamples.{k}.resample.1.bias"] = (cout // 2,)
            if level < 2:
                s[f"decoder.upsamples.{k}.time_conv.weight"] = (2 * cout, cout, 3, 1, 1)
                s[f"decoder.upsamples.{k}.time_conv.bias"] = (2 * cout,)
            k += 1
    s["decoder.head.0.gamma"] = (dim, 1, 1, 1)
    s["decoder.head.2.weight"] = (image_channels, dim, 3, 3, 3)
    s["decoder.head.2.bias"] = (image_channels,)
    return s


def tensors(shapes: dict[str, tuple[int, ...]], seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Small random weights: norm gains near 1, the rest scaled by fan-in (tiny_checkpoint's rule)."""
    gen = torch.Generator("cpu").manual_seed(seed)
    out = {}
    for name, shape in sorted(shapes.items()):
        if name.endswith("gamma"):  # the RMS norms' gains, shaped for broadcasting
            out[name] = (1.0 + 0.01 * torch.randn(shape, generator=gen)).to(dtype)
        else:
            out[name] = _init(name, shape, gen).to(dtype)
    return out


def make_tiny_qwen_image(models: str | Path, seed: int = 0, dtype: torch.dtype = torch.bfloat16,
                         variant: str = "base", name: str = DIFFUSION_MODEL) -> dict[str, Path]:
    """Write the three files under `models` (diffusion_models/, text_encoders/, vae/); returns their paths."""
    root = Path(models)
    files = {
        "diffusion_models": (name, qwen_image_shapes(variant=variant)),
        "text_encoders": (TEXT_ENCODER, qwen25_vl_text_shapes() | qwen25_vl_vision_shapes()),
        "vae": (VAE, wan21_vae_shapes()),
    }
    paths = {}
    for k, (folder, (file_name, shapes)) in enumerate(files.items()):
        path = root / folder / file_name
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors(shapes, seed + k, dtype), str(path), metadata={"format": "pt"})
        paths[folder] = path
    return paths


# the official Qwen-Image templates' diffusion models (2512 and Edit share the base architecture) and the Lightning
# LoRAs their switches leave unused by default (listed so the prompts validate; they carry one placeholder tensor)
TEMPLATE_MODELS = ("qwen_image_2512_fp8_e4m3fn.safetensors", "qwen_image_edit_fp8_e4m3fn.safetensors",
                   "qwen_image_edit_2509_fp8_e4m3fn.safetensors",
                   # FireRed-Image-Edit 1.1 is a Qwen-Image-Edit fine-tune (same keys, no 2511 marker)
                   "FireRed-Image-Edit-1.1-transformer.safetensors")
# Edit 2511's files carry the `__index_timestep_zero__` marker
TEMPLATE_MODELS_2511 = ("qwen_image_edit_2511_fp8mixed.safetensors", "qwen_image_edit_2511_bf16.safetensors")
LAYERED_CONTROL = "qwen_image_layered_control_bf16.safetensors"
TEMPLATE_LORAS = ("Qwen-Image-Lightning-8steps-V1.0.safetensors",
                  "Qwen-Image-2512-Lightning-4steps-V1.0-fp32.safetensors",
                  "Qwen-Image-Edit-Lightning-4steps-V1.0-bf16.safetensors")


def make_template_files(models: str | Path, seed: int = 0) -> None:
    """The tiny set under the names the Qwen-Image templates ask for (base, 2512, Edit, Edit 2509/2511, FireRed)."""
    root = Path(models)
    paths = make_tiny_qwen_image(root, seed)
    for name in TEMPLATE_MODELS:
        (root / "diffusion_models" / name).write_bytes(paths["diffusion_models"].read_bytes())
    # Edit 2511: the bf16 file, and the fp8mixed one in ComfyUI's mixed-precision form (fp8 block linears)
    state_2511 = tensors(qwen_image_shapes(variant="2511"), seed, torch.bfloat16)
    for name in TEMPLATE_MODELS_2511:
        save_file(fp8_mixed(state_2511) if "fp8mixed" in name else state_2511, str(root / "diffusion_models" / name),
                  metadata={"format": "pt"})
    # Layered: the additional time embedding, and its RGBA VAE
    layered = root / "diffusion_models" / "qwen_image_layered_bf16.safetensors"
    save_file(tensors(qwen_image_shapes(variant="layered"), seed, torch.bfloat16), str(layered),
              metadata={"format": "pt"})
    # Layered Control: the Layered keys under its name (its template loads it with weight_dtype fp8_e4m3fn)
    (root / "diffusion_models" / LAYERED_CONTROL).write_bytes(layered.read_bytes())
    save_file(tensors(wan21_vae_shapes(image_channels=4), seed + 2, torch.bfloat16),
              str(root / "vae" / "qwen_image_layered_vae.safetensors"), metadata={"format": "pt"})
    (root / "loras").mkdir(parents=True, exist_ok=True)
    for name in TEMPLATE_LORAS:
        save_file({"placeholder": torch.zeros(1)}, str(root / "loras" / name))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m comfymesh.diffusion.models.tiny_qwen_image",
                                     description="Write a tiny random-weight Qwen-Image set in ComfyUI's layouts.")
    parser.add_argument("models", type=Path, help="models folder (diffusion_models/, text_encoders/, vae/ inside)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", choices=("base", "2511", "layered"), default="base")
    args = parser.parse_args(argv)
    for path in make_tiny_qwen_image(args.models, args.seed, variant=args.variant).values():
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
