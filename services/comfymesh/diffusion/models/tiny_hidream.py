"""Tiny random-weight HiDream files in ComfyUI's layouts: the diffusion model (`double_stream_blocks.N.block`,
`single_stream_blocks.N.block`, MoE feed-forwards, `caption_projection.N`), the four text encoders of
QuadrupleCLIPLoader (CLIP-L and CLIP-G with their projections, T5-XXL, a Llama in the Hugging Face layout with
Llama 3's full vocabulary) and FLUX's 16-channel VAE (`ae.safetensors`).

The loaders know these files only by keys and shapes. Heads are 128 wide as ComfyUI fixes them (the default width
128: one head); the feed-forward widths follow HiDream's SwiGLU rule (families.hidream.swiglu_hidden). The shape
functions take the released sizes too.
Usage: `python -m comfymesh.diffusion.models.tiny_hidream <models folder>`.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from comfymesh.diffusion.families.hidream import swiglu_hidden
from comfymesh.diffusion.models.tiny_checkpoint import clip_hf_shapes
from comfymesh.diffusion.models.tiny_flux import flux_vae_shapes, random_tensors, scaled_fp8, t5_shapes

LATENT_CHANNELS = 16
LLAMA_VOCAB = 128_256
CLIP_L_WIDTH, CLIP_G_WIDTH = 32, 64
T5_WIDTH, LLAMA_WIDTH = 64, 32
Shapes = dict[str, tuple[int, ...]]

DIFFUSION_MODEL = "hidream_i1_full_fp8.safetensors"
CLIP_L, CLIP_G = "clip_l_hidream.safetensors", "clip_g_hidream.safetensors"
T5 = "t5xxl_fp8_e4m3fn_scaled.safetensors"
LLAMA = "llama_3.1_8b_instruct_fp8_scaled.safetensors"
VAE = "ae.safetensors"
# the official templates' diffusion models (I1 full/dev/fast, E1 full and 1.1): one architecture
TEMPLATE_MODELS = ("hidream_i1_full_fp8.safetensors", "hidream_i1_dev_fp8.safetensors",
                   "hidream_i1_fast_fp8.safetensors", "hidream_e1_full_bf16.safetensors",
                   "hidream_e1_1_bf16.safetensors")


def _linear(s: Shapes, name: str, n_in: int, n_out: int, bias: bool = True) -> None:
    s[f"{name}.weight"] = (n_out, n_in)
    if bias:
        s[f"{name}.bias"] = (n_out,)


def _swiglu(s: Shapes, name: str, width: int, hidden: int) -> None:
    inner = swiglu_hidden(hidden)
    _linear(s, f"{name}.w1", width, inner, bias=False)
    _linear(s, f"{name}.w2", inner, width, bias=False)
    _linear(s, f"{name}.w3", width, inner, bias=False)


def _attention(s: Shapes, name: str, width: int, text: bool) -> None:
    for suffix in ("", "_t") if text else ("",):
        for proj in ("to_q", "to_k", "to_v", "to_out"):
            _linear(s, f"{name}.{proj}{suffix}", width, width)
        s[f"{name}.q_rms_norm{suffix}.weight"] = s[f"{name}.k_rms_norm{suffix}.weight"] = (width,)


def _moe(s: Shapes, name: str, width: int, experts: int) -> None:
    if experts == 0:
        _swiglu(s, name, width, 4 * width)
        return
    _swiglu(s, f"{name}.shared_experts", width, 2 * width)
    for j in range(experts):
        _swiglu(s, f"{name}.experts.{j}", width, 4 * width)
    s[f"{name}.gate.weight"] = (experts, width)


def hidream_shapes(width: int = 128, depth: int = 1, depth_single: int = 1, experts: int = 2,
                   channels: int = LATENT_CHANNELS, pooled: int = CLIP_L_WIDTH + CLIP_G_WIDTH,
                   t5: int = T5_WIDTH, llama: int = LLAMA_WIDTH) -> Shapes:
    """Every tensor of a HiDream diffusion model in ComfyUI's layout (the released model: width 2560, 16 + 32
    blocks, 4 experts, pooled 2048, T5 and Llama 4096)."""
    s: Shapes = {}
    _linear(s, "t_embedder.timestep_embedder.linear_1", 256, width)
    _linear(s, "t_embedder.timestep_embedder.linear_2", width, width)
    _linear(s, "p_embedder.pooled_embedder.linear_1", pooled, width)
    _linear(s, "p_embedder.pooled_embedder.linear_2", width, width)
    _linear(s, "x_embedder.proj", channels * 4, width)
    _linear(s, "final_layer.linear", width, channels * 4)
    _linear(s, "final_layer.adaLN_modulation.1", width, 2 * width)
    for i in range(depth + depth_single):
        _linear(s, f"caption_projection.{i}.linear", llama, width, bias=False)
    _linear(s, f"caption_projection.{depth + depth_single}.linear", t5, width, bias=False)
    for i in range(depth):
        b = f"double_stream_blocks.{i}.block"
        _linear(s, f"{b}.adaLN_modulation.1", width, 12 * width)
        _attention(s, f"{b}.attn1", width, text=True)
        _moe(s, f"{b}.ff_i", width, experts)
        _swiglu(s, f"{b}.ff_t", width, 4 * width)
    for i in range(depth_single):
        b = f"single_stream_blocks.{i}.block"
        _linear(s, f"{b}.adaLN_modulation.1", width, 6 * width)
        _attention(s, f"{b}.attn1", width, text=False)
        _moe(s, f"{b}.ff_i", width, experts)
    return s


def llama_shapes(width: int = LLAMA_WIDTH, layers: int = 3, heads: int = 2, kv_heads: int = 1,
                 intermediate: int = 64, vocab: int = LLAMA_VOCAB) -> Shapes:
    """A Llama text encoder as ComfyUI's llama_3.1_8b_instruct files name it (Hugging Face keys under `model.`;
    the released one: width 4096, 32 layers, 32 heads of 128 with 8 for keys and values, 14 336, 128 256)."""
    head = width // heads
    s: Shapes = {"model.embed_tokens.weight": (vocab, width), "model.norm.weight": (width,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        s.update({
            p + "self_attn.q_proj.weight": (heads * head, width), p + "self_attn.k_proj.weight": (kv_heads * head, width),
            p + "self_attn.v_proj.weight": (kv_heads * head, width), p + "self_attn.o_proj.weight": (width, heads * head),
            p + "mlp.gate_proj.weight": (intermediate, width), p + "mlp.up_proj.weight": (intermediate, width),
            p + "mlp.down_proj.weight": (width, intermediate),
            p + "input_layernorm.weight": (width,), p + "post_attention_layernorm.weight": (width,),
        })
    return s


def clip_shapes(width: int, layers: int = 2) -> Shapes:
    """CLIP-L / CLIP-G as ComfyUI's clip_l_hidream / clip_g_hidream files name them, with their projections."""
    s = clip_hf_shapes("text_model.", width, layers)
    s["text_projection.weight"] = (width, width)
    return s


def file_states(seed: int = 0, fp8: bool = True) -> dict[str, dict[str, torch.Tensor]]:
    """File name → state: the diffusion model, the four encoders (T5 and Llama in ComfyUI's scaled-fp8 form with
    `fp8`, as the templates' files are) and the VAE."""
    states = {
        DIFFUSION_MODEL: random_tensors(hidream_shapes(), seed, torch.bfloat16),
        CLIP_L: random_tensors(clip_shapes(CLIP_L_WIDTH), seed + 1, torch.bfloat16),
        CLIP_G: random_tensors(clip_shapes(CLIP_G_WIDTH, layers=3), seed + 2, torch.bfloat16),
        T5: random_tensors(t5_shapes(width=T5_WIDTH), seed + 3, torch.bfloat16),
        LLAMA: random_tensors(llama_shapes(), seed + 4, torch.bfloat16),
        VAE: random_tensors(flux_vae_shapes(), seed + 5, torch.bfloat16),
    }
    if fp8:
        for name in (T5, LLAMA):
            states[name] = scaled_fp8(states[name])
    return states


FOLDERS = {DIFFUSION_MODEL: "diffusion_models", CLIP_L: "text_encoders", CLIP_G: "text_encoders",
           T5: "text_encoders", LLAMA: "text_encoders", VAE: "vae"}


def make_tiny_hidream(models: str | Path, seed: int = 0, fp8: bool = True) -> dict[str, Path]:
    """Write the six files under `models`; returns their paths by file name."""
    root = Path(models)
    paths = {}
    for name, state in file_states(seed, fp8).items():
        path = root / FOLDERS[name] / name
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(path), metadata={"format": "pt"})
        paths[name] = path
    return paths


def make_template_files(models: str | Path, seed: int = 0, keep_existing: bool = False) -> None:
    """The tiny set under every name the HiDream templates ask for; with `keep_existing`, a file already there is
    kept (the FLUX set's ae.safetensors and t5xxl_fp8_e4m3fn_scaled have the shapes these models take)."""
    root = Path(models)
    with tempfile.TemporaryDirectory() as scratch:
        paths = make_tiny_hidream(scratch, seed)
        for name in TEMPLATE_MODELS:
            paths[name] = paths[DIFFUSION_MODEL]
        for name, source in paths.items():
            target = root / FOLDERS.get(name, "diffusion_models") / name
            if keep_existing and target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m comfymesh.diffusion.models.tiny_hidream",
                                     description="Write a tiny random-weight HiDream set in ComfyUI's layouts.")
    parser.add_argument("models", type=Path, help="models folder (diffusion_models/, text_encoders/, vae/ inside)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for path in make_tiny_hidream(args.models, args.seed).values():
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
