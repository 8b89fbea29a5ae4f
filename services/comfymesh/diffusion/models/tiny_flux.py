"""A tiny random-weight FLUX.1 set in ComfyUI's file layouts, under the official templates' file names: the
diffusion model (`flux1-dev.safetensors`, ComfyUI's double/single-block keys; `--schnell` leaves out
guidance_in), CLIP-L (`clip_l.safetensors`, Hugging Face keys), the T5-XXL encoder (`t5xxl_fp16.safetensors`,
T5's full 32 128-entry vocabulary so real token ids fit) and the 16-channel VAE (`ae.safetensors`).

The loaders know these files only by keys and shapes. Usage:
`python -m comfymesh.diffusion.models.tiny_flux <models folder> [--schnell]` writes diffusion_models/,
text_encoders/, vae/.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from comfymesh.diffusion.models.clip_vision import make_tiny_siglip_vision
from comfymesh.diffusion.models.style_model import make_tiny_style_model
from comfymesh.diffusion.models.tiny_checkpoint import _init, clip_hf_shapes
from comfymesh.diffusion.models.tiny_zimage import VAE, flux_vae_shapes

DIFFUSION_MODEL = "flux1-dev.safetensors"
SCHNELL_MODEL = "flux1-schnell.safetensors"
CLIP_L = "clip_l.safetensors"
T5 = "t5xxl_fp16.safetensors"
T5_VOCAB = 32_128
LATENT_CHANNELS = 16
FILL_CHANNELS = 2 * LATENT_CHANNELS + 64  # ComfyUI's FluxInpaint: 96
CANNY_CHANNELS = 2 * LATENT_CHANNELS
Shapes = dict[str, tuple[int, ...]]


def flux_shapes(width: int = 256, head_dim: int = 128, depth: int = 1, depth_single: int = 1, context: int = 64,
                vec: int = 32, guidance: bool = True, channels: int = LATENT_CHANNELS,
                in_channels: int | None = None) -> Shapes:
    """Every tensor of a FLUX.1 diffusion model in ComfyUI's layout (fused qkv, `linear1` = qkv ‖ MLP in);
    `in_channels` (default `channels`) makes a Fill (2·C + 64) or Canny/Depth (2·C) model."""
    s: Shapes = {}

    def linear(name: str, n_in: int, n_out: int) -> None:
        s[f"{name}.weight"] = (n_out, n_in)
        s[f"{name}.bias"] = (n_out,)

    def mlp_embedder(name: str, n_in: int) -> None:
        linear(f"{name}.in_layer", n_in, width)
        linear(f"{name}.out_layer", width, width)

    linear("img_in", (in_channels or channels) * 4, width)
    linear("txt_in", context, width)
    mlp_embedder("time_in", 256)
    mlp_embedder("vector_in", vec)
    if guidance:
        mlp_embedder("guidance_in", 256)
    for i in range(depth):
        for stream in ("img", "txt"):
            b = f"double_blocks.{i}.{stream}"
            linear(f"{b}_mod.lin", width, 6 * width)
            linear(f"{b}_attn.qkv", width, 3 * width)
            linear(f"{b}_attn.proj", width, width)
            s[f"{b}_attn.norm.query_norm.scale"] = (head_dim,)
            s[f"{b}_attn.norm.key_norm.scale"] = (head_dim,)
            linear(f"{b}_mlp.0", width, 4 * width)
            linear(f"{b}_mlp.2", 4 * width, width)
    for i in range(depth_single):
        b = f"single_blocks.{i}"
        linear(f"{b}.linear1", width, 3 * width + 4 * width)
        linear(f"{b}.linear2", width + 4 * width, width)
        linear(f"{b}.modulation.lin", width, 3 * width)
        s[f"{b}.norm.query_norm.scale"] = (head_dim,)
        s[f"{b}.norm.key_norm.scale"] = (head_dim,)
    linear("final_layer.linear", width, channels * 4)
    linear("final_layer.adaLN_modulation.1", width, 2 * width)
    return s


def chroma_shapes(width: int = 256, head_dim: int = 128, depth: int = 1, depth_single: int = 1, context: int = 64,
                  hidden: int = 32, layers: int = 2, channels: int = LATENT_CHANNELS) -> Shapes:
    """A Chroma diffusion model in ComfyUI's layout: FLUX.1's blocks without their modulation linears (and
    without time_in / vector_in / guidance_in), the modulations made by `distilled_guidance_layer`."""
    s = {k: v for k, v in flux_shapes(width, head_dim, depth, depth_single, context, guidance=False,
                                       channels=channels).items()
         if not k.startswith(("time_in.", "vector_in.", "final_layer.adaLN_modulation."))
         and "_mod.lin." not in k and ".modulation.lin." not in k}
    g = "distilled_guidance_layer"
    s.update({f"{g}.in_proj.weight": (hidden, 64), f"{g}.in_proj.bias": (hidden,),
              f"{g}.out_proj.weight": (width, hidden), f"{g}.out_proj.bias": (width,)})
    for i in range(layers):
        for part in ("in_layer", "out_layer"):
            s[f"{g}.layers.{i}.{part}.weight"] = (hidden, hidden)
            s[f"{g}.layers.{i}.{part}.bias"] = (hidden,)
        s[f"{g}.norms.{i}.scale"] = (hidden,)
    return s


def t5_shapes(width: int = 64, layers: int = 2, heads: int = 4, head_dim: int = 16, ff: int = 128,
              vocab: int = T5_VOCAB) -> Shapes:
    """Every tensor of a T5 v1.1 encoder in the layout of ComfyUI's t5xxl files."""
    s: Shapes = {"shared.weight": (vocab, width), "encoder.final_layer_norm.weight": (width,)}
    inner = heads * head_dim
    for i in range(layers):
        b = f"encoder.block.{i}.layer"
        for proj in ("q", "k", "v"):
            s[f"{b}.0.SelfAttention.{proj}.weight"] = (inner, width)
        s[f"{b}.0.SelfAttention.o.weight"] = (width, inner)
        s[f"{b}.0.layer_norm.weight"] = (width,)
        s[f"{b}.1.DenseReluDense.wi_0.weight"] = (ff, width)
        s[f"{b}.1.DenseReluDense.wi_1.weight"] = (ff, width)
        s[f"{b}.1.DenseReluDense.wo.weight"] = (width, ff)
        s[f"{b}.1.layer_norm.weight"] = (width,)
    s["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = (32, heads)
    return s


def clip_l_shapes(width: int = 32, layers: int = 2) -> Shapes:
    """CLIP-L as ComfyUI's clip_l.safetensors names it (Hugging Face keys under `text_model.`)."""
    return clip_hf_shapes("text_model.", width, layers)


def random_tensors(shapes: Shapes, seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    gen = torch.Generator("cpu").manual_seed(seed)
    out = {}
    for name, shape in sorted(shapes.items()):
        # RMSNorm scales (`.scale`) near 1, like the other norms' weights
        tensor = 1.0 + 0.01 * torch.randn(shape, generator=gen) if name.endswith(".scale") else _init(name, shape, gen)
        out[name] = tensor.to(dtype)
    return out


def scaled_fp8(state: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """The state as ComfyUI's "scaled fp8" files store it: each 2-D weight w as fp8(w / s) with a
    per-tensor `scale_weight` s = max|w| / 448, and the `scaled_fp8` marker."""
    out: dict[str, torch.Tensor] = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}
    for k, v in state.items():
        # linear layers only: embeddings (T5's `shared` and relative_attention_bias) stay as they are
        if k.endswith(".weight") and v.ndim == 2 and "embed" not in k and not k.startswith("shared.") \
                and "relative_attention_bias" not in k:
            scale = v.float().abs().max() / 448.0
            out[k] = (v.float() / scale).to(torch.float8_e4m3fn)
            out[k[: -len(".weight")] + ".scale_weight"] = scale.reshape(())
        else:
            out[k] = v
    return out


def fp8_mixed(state: dict[str, torch.Tensor], blocks: tuple[str, ...] = ("blocks.", "layers.")
              ) -> dict[str, torch.Tensor]:
    """The state as ComfyUI's mixed-precision files (`*_fp8mixed`) store it: each 2-D weight inside the
    transformer blocks (`blocks`: key parts) as fp8(w / s) with a per-tensor `weight_scale` s = max|w| / 448 and
    a `comfy_quant` descriptor (the format's JSON as bytes); the other layers as they are (bf16)."""
    descriptor = torch.tensor(list(json.dumps({"format": "float8_e4m3fn"}).encode()), dtype=torch.uint8)
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if k.endswith(".weight") and v.ndim == 2 and any(b in k for b in blocks):
            layer = k[: -len(".weight")]
            scale = v.float().abs().max() / 448.0
            out[k] = (v.float() / scale).to(torch.float8_e4m3fn)
            out[layer + ".weight_scale"] = scale.reshape(()).float()
            out[layer + ".comfy_quant"] = descriptor.clone()
        else:
            out[k] = v
    return out


def make_tiny_flux(models: str | Path, seed: int = 0, dtype: torch.dtype = torch.bfloat16,
                   schnell: bool = False) -> dict[str, Path]:
    """Write the four files under `models`; returns their paths by role."""
    root = Path(models)
    files = {
        "diffusion_model": ("diffusion_models", SCHNELL_MODEL if schnell else DIFFUSION_MODEL,
                            flux_shapes(guidance=not schnell)),
        "clip_l": ("text_encoders", CLIP_L, clip_l_shapes()),
        "t5": ("text_encoders", T5, t5_shapes()),
        "vae": ("vae", VAE, flux_vae_shapes()),
    }
    paths = {}
    for k, (role, (folder, name, shapes)) in enumerate(files.items()):
        path = root / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(random_tensors(shapes, seed + k, dtype), str(path), metadata={"format": "pt"})
        paths[role] = path
    return paths


CHECKPOINT = "flux1-schnell-fp8.safetensors"  # flux_schnell's CheckpointLoaderSimple file
SIGLIP = "sigclip_vision_patch14_384.safetensors"  # flux_redux_model_example's CLIP vision file
SIGLIP_WIDTH = 32
SIGLIP_LAYERS = 20  # USO reads the tower's layer -20 (sigclip so400m has 27)
T5_WIDTH = t5_shapes()["encoder.final_layer_norm.weight"][0]  # the context width flux_shapes() takes


def make_tiny_flux_checkpoint(path: str | Path, seed: int = 0, schnell: bool = True, fp8: bool = True) -> Path:
    """An all-in-one FLUX checkpoint as ComfyUI saves one (flux1-schnell-fp8 / flux1-dev-fp8):
    `model.diffusion_model.` (2-D weights in float8_e4m3fn with `fp8`), `vae.`, `text_encoders.clip_l.transformer.`
    and `text_encoders.t5xxl.transformer.`."""
    parts = {
        "model.diffusion_model.": random_tensors(flux_shapes(guidance=not schnell), seed, torch.bfloat16),
        "text_encoders.clip_l.transformer.": random_tensors(clip_l_shapes(), seed + 1, torch.bfloat16),
        "text_encoders.t5xxl.transformer.": random_tensors(t5_shapes(), seed + 2, torch.bfloat16),
        "vae.": random_tensors(flux_vae_shapes(), seed + 3, torch.bfloat16),
    }
    state = {}
    for prefix, tensors in parts.items():
        for k, v in tensors.items():
            quantise = fp8 and prefix == "model.diffusion_model." and k.endswith(".weight") and v.ndim == 2
            state[prefix + k] = v.to(torch.float8_e4m3fn) if quantise else v
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out), metadata={"format": "pt"})
    return out


# the official FLUX templates' files (under models/) → the tiny form written under that name
TEMPLATE_FILES = {
    "diffusion_models/flux1-dev.safetensors": "dev",
    "diffusion_models/flux1-krea-dev_fp8_scaled.safetensors": "dev_fp8_scaled",
    "diffusion_models/flux1-dev-kontext_fp8_scaled.safetensors": "dev_fp8_scaled",
    "diffusion_models/flux1-schnell.safetensors": "schnell",
    # FLUX.1 Fill (latent ‖ masked image latent ‖ 64 mask channels) and Canny (latent ‖ control image latent)
    "diffusion_models/flux1-fill-dev.safetensors": "fill",
    "diffusion_models/flux.1-fill-dev-OneReward-transformer_fp8.safetensors": "fill",  # a bf16 stand-in
    "diffusion_models/flux1-canny-dev.safetensors": "canny",
    "diffusion_models/Chroma1-HD-fp8mixed.safetensors": "chroma_fp8mixed",  # image_chroma_text_to_image
    f"checkpoints/{CHECKPOINT}": "schnell_checkpoint",
    f"text_encoders/{CLIP_L}": "clip_l",
    f"text_encoders/{T5}": "t5",
    "text_encoders/t5xxl_fp8_e4m3fn_scaled.safetensors": "t5_fp8_scaled",
    f"vae/{VAE}": "vae",
    # Redux: the SigLIP vision tower and the style model mapping its tokens to T5's width
    f"clip_vision/{SIGLIP}": "siglip",
    "style_models/flux1-redux-dev.safetensors": "redux",
}


def make_template_files(models: str | Path, seed: int = 0) -> list[Path]:
    """Every file of TEMPLATE_FILES under `models`, each in its tiny form (the fp8_scaled ones as ComfyUI's
    scaled-fp8 files store them)."""
    root = Path(models)
    written = []
    for rel, form in TEMPLATE_FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if form == "schnell_checkpoint":
            written.append(make_tiny_flux_checkpoint(path, seed))
            continue
        if form in ("siglip", "redux"):
            # Redux reads the SigLIP tower's last hidden state (its width) and answers T5-wide tokens
            written.append(make_tiny_siglip_vision(path, hidden=SIGLIP_WIDTH, layers=SIGLIP_LAYERS, seed=seed) if form == "siglip" else
                           make_tiny_style_model(path, redux_dim=SIGLIP_WIDTH, text_dim=T5_WIDTH, seed=seed))
            continue
        shapes = {"dev": flux_shapes(), "dev_fp8_scaled": flux_shapes(), "schnell": flux_shapes(guidance=False),
                  "fill": flux_shapes(in_channels=FILL_CHANNELS), "canny": flux_shapes(in_channels=CANNY_CHANNELS),
                  "chroma": chroma_shapes(), "chroma_fp8mixed": chroma_shapes(),
                  "clip_l": clip_l_shapes(), "t5": t5_shapes(), "t5_fp8_scaled": t5_shapes(),
                  "vae": flux_vae_shapes()}[form]
        state = random_tensors(shapes, seed, torch.bfloat16)
        if form.endswith("fp8_scaled"):
            state = scaled_fp8(state)
        elif form.endswith("fp8mixed"):
            state = fp8_mixed(state)
        save_file(state, str(path), metadata={"format": "pt"})
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m comfymesh.diffusion.models.tiny_flux",
                                     description="Write a tiny random-weight FLUX.1 set in ComfyUI's file layouts.")
    parser.add_argument("models", type=Path, help="models folder (diffusion_models/, text_encoders/, vae/ inside)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--schnell", action="store_true", help="no guidance embedder (FLUX.1 schnell's layout)")
    args = parser.parse_args(argv)
    for path in make_tiny_flux(args.models, args.seed, schnell=args.schnell).values():
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
