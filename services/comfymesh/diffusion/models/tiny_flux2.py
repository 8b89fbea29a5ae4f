"""A tiny random-weight FLUX.2 set in ComfyUI's file layouts, under the official templates' file names: Klein's
and Dev's diffusion models (ComfyUI's double/single-block keys with the shared modulations `double_stream_modulation_*`
and `single_stream_modulation`, no biases, SwiGLU MLPs), the Qwen3 text encoders (Hugging Face keys, Qwen's full
vocabulary so real token ids fit, 28 layers so Klein's hidden states 9, 18 and 27 exist) and the FLUX.2 VAE (LDM
keys, 32 latent channels, the patchified latents' batch-norm statistics `bn.running_mean` / `bn.running_var`).

The shape functions take the full sizes too (KLEIN_4B, KLEIN_9B, DEV and QWEN3_4B, QWEN3_8B below), so
bench/families_gpu.py can write full-size files. The loaders know these files only by keys and shapes. Usage:
`python -m comfymesh.diffusion.models.tiny_flux2 <models folder>` writes diffusion_models/, text_encoders/, vae/.
"""

from __future__ import annotations

import argparse
import base64
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from comfymesh.diffusion.models.tiny_checkpoint import vae_shapes
from comfymesh.diffusion.models.tiny_flux import fp8_mixed, random_tensors
from comfymesh.diffusion.models.tiny_zimage import qwen3_shapes

Shapes = dict[str, tuple[int, ...]]
LATENT_CHANNELS = 128  # the VAE's 32 channels patchified 2×2
VAE_CHANNELS = 32
KLEIN_LAYERS = 28  # the smallest Qwen3 depth with hidden state 27 short of the final norm

# full sizes (ComfyUI's files): diffusion models and text encoders
KLEIN_4B: dict[str, Any] = {"width": 3072, "head_dim": 128, "depth": 5, "depth_single": 20, "context": 7680,
                            "guidance": False}
KLEIN_9B: dict[str, Any] = {"width": 4096, "head_dim": 128, "depth": 8, "depth_single": 24, "context": 12288,
                            "guidance": False}
DEV: dict[str, Any] = {"width": 6144, "head_dim": 128, "depth": 8, "depth_single": 48, "context": 15360,
                       "guidance": True}
QWEN3_4B: dict[str, Any] = {"width": 2560, "layers": 36, "heads": 32, "kv_heads": 8, "head_dim": 128,
                            "intermediate": 9728}
QWEN3_8B: dict[str, Any] = {"width": 4096, "layers": 36, "heads": 32, "kv_heads": 8, "head_dim": 128,
                            "intermediate": 12288}
TINY_QWEN3: dict[str, Any] = {"width": 64, "layers": KLEIN_LAYERS, "heads": 4, "kv_heads": 2, "head_dim": 16,
                              "intermediate": 128}
MISTRAL3_SMALL: dict[str, Any] = {"width": 5120, "layers": 40, "heads": 32, "kv_heads": 8, "intermediate": 32768,
                                  "vocab": 131072}
TINY_MISTRAL: dict[str, Any] = {"width": 64, "layers": 40, "heads": 2, "kv_heads": 1, "intermediate": 128}
# Tekken's split pattern and the first of its special tokens in rank order (tekken.json's own values)
TEKKEN_PATTERN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?"
                  r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)"
                  r"|\s+")
TEKKEN_SPECIALS = ("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
                   "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]",
                   "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]")
TINY_TEKKEN_SPECIALS = 32  # the real file reserves 1000
TINY_TEKKEN_MERGES = (b"th", b"he", b"the", b" t", b" the", b"an", b" a", b"in", b"on", b"er", b"es", b"at", b"ou")


def flux2_shapes(width: int = 128, head_dim: int = 32, depth: int = 1, depth_single: int = 1,
                 context: int = 3 * TINY_QWEN3["width"], guidance: bool = False, mlp_ratio: float = 3.0,
                 channels: int = LATENT_CHANNELS) -> Shapes:
    """Every tensor of a FLUX.2 diffusion model in ComfyUI's layout: 1×1 patches of the 128-channel latent,
    fused qkv, `linear1` = qkv ‖ SwiGLU in (gate and value halves), no biases."""
    mlp = int(width * mlp_ratio)
    s: Shapes = {
        "img_in.weight": (width, channels), "txt_in.weight": (width, context),
        "time_in.in_layer.weight": (width, 256), "time_in.out_layer.weight": (width, width),
        "double_stream_modulation_img.lin.weight": (6 * width, width),
        "double_stream_modulation_txt.lin.weight": (6 * width, width),
        "single_stream_modulation.lin.weight": (3 * width, width),
        "final_layer.linear.weight": (channels, width), "final_layer.adaLN_modulation.1.weight": (2 * width, width),
    }
    if guidance:
        s.update({"guidance_in.in_layer.weight": (width, 256), "guidance_in.out_layer.weight": (width, width)})
    for i in range(depth):
        for stream in ("img", "txt"):
            b = f"double_blocks.{i}.{stream}"
            s[f"{b}_attn.qkv.weight"] = (3 * width, width)
            s[f"{b}_attn.proj.weight"] = (width, width)
            s[f"{b}_attn.norm.query_norm.scale"] = (head_dim,)
            s[f"{b}_attn.norm.key_norm.scale"] = (head_dim,)
            s[f"{b}_mlp.0.weight"] = (2 * mlp, width)
            s[f"{b}_mlp.2.weight"] = (width, mlp)
    for i in range(depth_single):
        b = f"single_blocks.{i}"
        s[f"{b}.linear1.weight"] = (3 * width + 2 * mlp, width)
        s[f"{b}.linear2.weight"] = (width, width + mlp)
        s[f"{b}.norm.query_norm.scale"] = (head_dim,)
        s[f"{b}.norm.key_norm.scale"] = (head_dim,)
    return s


def klein_qwen3_shapes(**sizes: Any) -> Shapes:
    """Klein's Qwen3 text encoder (TINY_QWEN3 unless sizes are given, e.g. QWEN3_4B)."""
    return qwen3_shapes(**{**TINY_QWEN3, **sizes})


def mistral_shapes(width: int = 64, layers: int = 40, heads: int = 2, kv_heads: int = 1, intermediate: int = 128,
                   vocab: int = 0, head_dim: int = 128) -> Shapes:
    """Mistral 3 Small's language model in the Hugging Face layout of ComfyUI's mistral_3_small_flux2 files
    (MISTRAL3_SMALL for the full size; vocab 0: the tiny tekken's)."""
    vocab = vocab or TINY_TEKKEN_SPECIALS + 256 + len(TINY_TEKKEN_MERGES)
    s: Shapes = {"model.embed_tokens.weight": (vocab, width), "model.norm.weight": (width,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        s.update({
            p + "self_attn.q_proj.weight": (heads * head_dim, width), p + "self_attn.k_proj.weight": (kv_heads * head_dim, width),
            p + "self_attn.v_proj.weight": (kv_heads * head_dim, width), p + "self_attn.o_proj.weight": (width, heads * head_dim),
            p + "mlp.gate_proj.weight": (intermediate, width), p + "mlp.up_proj.weight": (intermediate, width),
            p + "mlp.down_proj.weight": (width, intermediate),
            p + "input_layernorm.weight": (width,), p + "post_attention_layernorm.weight": (width,),
        })
    return s


def tiny_tekken() -> bytes:
    """A tekken.json in Mistral's format: the 256 bytes and a few merges as ranks, Tekken's pattern, special tokens
    in Tekken's order (padded with <SPECIAL_i> to TINY_TEKKEN_SPECIALS)."""
    tokens = [bytes([b]) for b in range(256)] + list(TINY_TEKKEN_MERGES)
    specials = [*TEKKEN_SPECIALS, *(f"<SPECIAL_{i}>" for i in range(len(TEKKEN_SPECIALS), TINY_TEKKEN_SPECIALS))]
    return json.dumps({
        "config": {"pattern": TEKKEN_PATTERN, "num_vocab_tokens": len(tokens),
                   "default_vocab_size": TINY_TEKKEN_SPECIALS + len(tokens),
                   "default_num_special_tokens": TINY_TEKKEN_SPECIALS, "version": "v7"},
        "vocab": [{"rank": r, "token_bytes": base64.b64encode(t).decode(), "token_str": t.decode("latin-1")}
                  for r, t in enumerate(tokens)],
        "special_tokens": [{"rank": r, "token_str": t, "is_control": True} for r, t in enumerate(specials)],
    }).encode()


def mistral_file_tensors(seed: int, dtype: torch.dtype, layers: int = TINY_MISTRAL["layers"]) -> dict[str, torch.Tensor]:
    """A tiny mistral_3_small_flux2 file: the language model and its tokenizer as `tekken_model` (uint8)."""
    state = random_tensors(mistral_shapes(**{**TINY_MISTRAL, "layers": layers}), seed, dtype)
    state["tekken_model"] = torch.frombuffer(bytearray(tiny_tekken()), dtype=torch.uint8)
    return state


def flux2_vae_shapes(ch: int = 32, decoder_ch: int | None = None, mult: tuple[int, ...] = (1, 1, 1, 1),
                     res_blocks: int = 1) -> Shapes:
    """The FLUX.2 VAE in the LDM layout (quant convs, 32 latent channels) with the 128 batch-norm statistics;
    `decoder_ch` narrower than `ch` is full_encoder_small_decoder's form. Full size: ch 128, mult (1, 2, 4, 4),
    res_blocks 2."""
    encoder = vae_shapes(ch, mult, res_blocks, z=VAE_CHANNELS, prefix="")
    decoder = vae_shapes(decoder_ch or ch, mult, res_blocks, z=VAE_CHANNELS, prefix="")
    s = {k: v for k, v in encoder.items() if k.startswith(("encoder.", "quant_conv."))}
    s.update({k: v for k, v in decoder.items() if k.startswith(("decoder.", "post_quant_conv."))})
    s.update({"bn.running_mean": (LATENT_CHANNELS,), "bn.running_var": (LATENT_CHANNELS,)})
    return s


def flux2_vae_tensors(shapes: Shapes, seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Random VAE weights; the batch-norm statistics as a trained VAE has them (small means, variances near 1)."""
    out = random_tensors({k: v for k, v in shapes.items() if not k.startswith("bn.")}, seed, dtype)
    gen = torch.Generator("cpu").manual_seed(seed + 1000)
    n = shapes["bn.running_mean"][0]
    out["bn.running_mean"] = (0.1 * torch.randn(n, generator=gen)).to(dtype)
    out["bn.running_var"] = (1.0 + 0.5 * torch.rand(n, generator=gen)).to(dtype)
    return out


def fp8(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The 2-D weights in fp8 e4m3fn without scales (the `-fp8` files' linears), the rest as they are."""
    return {k: v.to(torch.float8_e4m3fn) if k.endswith(".weight") and v.ndim == 2 else v for k, v in state.items()}


# the official FLUX.2 Klein templates' files (under models/) → the tiny form written under that name
TEMPLATE_FILES = {
    "diffusion_models/flux-2-klein-4b.safetensors": "klein",
    "diffusion_models/flux-2-klein-base-4b.safetensors": "klein",
    "diffusion_models/flux-2-klein-4b-fp8.safetensors": "klein_fp8",
    "diffusion_models/flux-2-klein-base-4b-fp8.safetensors": "klein_fp8",
    "diffusion_models/flux-2-klein-9b-fp8.safetensors": "klein_fp8",
    "diffusion_models/flux-2-klein-base-9b-fp8.safetensors": "klein_fp8",
    "text_encoders/qwen_3_4b.safetensors": "qwen3",
    "text_encoders/qwen_3_8b_fp8mixed.safetensors": "qwen3_fp8mixed",
    # FLUX.2 Dev: its text encoders carry their tokenizer; the fp8 one is the pruned (30-layer) form, bf16 weights
    "diffusion_models/flux2_dev_fp8mixed.safetensors": "dev_fp8mixed",
    "text_encoders/mistral_3_small_flux2_bf16.safetensors": "mistral",
    "text_encoders/mistral_3_small_flux2_fp8.safetensors": "mistral_pruned",
    "vae/flux2-vae.safetensors": "vae",
    "vae/full_encoder_small_decoder.safetensors": "vae_small_decoder",
}


def make_template_files(models: str | Path, seed: int = 0) -> list[Path]:
    """Every file of TEMPLATE_FILES under `models` in its tiny form; returns their paths. The Qwen3 file also
    serves Z-Image (its caption width is the encoder's)."""
    root = Path(models)
    written = []
    for rel, form in TEMPLATE_FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if form.startswith("vae"):
            shapes = flux2_vae_shapes(64, 32) if form == "vae_small_decoder" else flux2_vae_shapes()
            state = flux2_vae_tensors(shapes, seed + 2, torch.bfloat16)
        elif form.startswith("qwen3"):
            state = random_tensors(klein_qwen3_shapes(), seed + 1, torch.bfloat16)
            state = fp8_mixed(state) if form.endswith("fp8mixed") else state
        elif form.startswith("mistral"):
            state = mistral_file_tensors(seed + 3, torch.bfloat16, 30 if form == "mistral_pruned" else 40)
        else:
            state = random_tensors(flux2_shapes(guidance=form.startswith("dev")), seed, torch.bfloat16)
            state = fp8(state) if form.endswith("fp8") else fp8_mixed(state) if form.endswith("fp8mixed") else state
        save_file(state, str(path), metadata={"format": "pt"})
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m comfymesh.diffusion.models.tiny_flux2",
                                     description="Write a tiny random-weight FLUX.2 Klein set in ComfyUI's layouts.")
    parser.add_argument("models", type=Path, help="models folder (diffusion_models/, text_encoders/, vae/ inside)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for path in make_template_files(args.models, args.seed):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
