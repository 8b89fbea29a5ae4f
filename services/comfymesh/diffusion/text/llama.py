"""Llama 3.1 as a text encoder (HiDream's fourth: ComfyUI's `llama_3.1_8b_instruct_fp8_scaled.safetensors`),
built with transformers' LlamaModel from the file's shapes, so a reduced encoder loads.

The file is a Hugging Face Llama state dict (`model.embed_tokens`, `model.layers.N.self_attn.q_proj`, no q/k
norms, no attention biases); fp8 and scaled-fp8 linears stay fp8. As ComfyUI's Llama2 module computes it: RoPE
θ 500 000 without Llama 3.1's frequency scaling, RMS ε 1e-5, a causal mask with the pad tokens masked out as keys.
HiDream reads every hidden state: the embeddings, each block's output, and the last after the final norm
(ComfyUI's layer "all", the same list as transformers' `hidden_states`).
"""

from __future__ import annotations

from typing import Any

import torch

from comfymesh.contracts.errors import ModelError
from comfymesh.diffusion.models.tensor_source import TensorSource, converted
from comfymesh.diffusion.text.llm_encoder import (
    PREFIXES,
    DecoderLayout,
    build_decoder,
    config_sizes,
    encoder_dtype,
    read_layout,
)

ROPE_THETA = 500_000.0
RMS_EPS = 1e-5
HEAD_DIM = 128  # Llama 3's; a reduced encoder's heads are read from its k_proj when 128 does not divide


class LlamaLayout(DecoderLayout):
    kind = "Llama"


def parse_llama(src: TensorSource) -> LlamaLayout | None:
    """The Llama layout of a text encoder file: grouped k/v projections, no q/k norms (Qwen3) and no attention
    biases (Qwen2.5); None for any other file."""
    for p in PREFIXES:
        if not (src.has(p + "layers.0.self_attn.q_proj.weight") and src.has(p + "embed_tokens.weight")):
            continue
        if src.has(p + "layers.0.self_attn.q_norm.weight") or src.has(p + "layers.0.self_attn.k_proj.bias"):
            return None
        return read_layout(LlamaLayout, src, p, _head_dim)
    return None


def _head_dim(q_rows: int, kv_rows: int) -> int:
    return HEAD_DIM if q_rows % HEAD_DIM == 0 and kv_rows % HEAD_DIM == 0 else kv_rows


def llama_config(layout: LlamaLayout) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        **config_sizes(layout), rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        rms_norm_eps=RMS_EPS, max_position_embeddings=131072, attention_bias=False, mlp_bias=False,
        tie_word_embeddings=False,
    )


def build_llama(src: TensorSource, layout: LlamaLayout, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """transformers' LlamaModel with the file's weights (an lm_head, if the file has one, is not needed); fp8
    linears stay fp8 and compute in `dtype`."""
    from transformers import LlamaModel

    return build_decoder(src, layout, lambda: LlamaModel(llama_config(layout)), device, dtype)


def is_llama(src: TensorSource) -> bool:
    return parse_llama(src) is not None


def load_llama_file(src: TensorSource, device: torch.device) -> torch.nn.Module:
    """The Llama encoder of a text encoder file (bf16 on a GPU, float32 on the CPU); ModelError when the file
    holds something else."""
    layout = parse_llama(src)
    if layout is None:
        raise ModelError(f"{src.path.name} is not a Llama text encoder (llama_3.1_8b_instruct_fp8_scaled)")
    return converted(src, "Llama text encoder", lambda: build_llama(src, layout, device, encoder_dtype(device)))


def all_hidden_states(model: Any, ids: list[int], mask: list[int]) -> torch.Tensor:
    """Every hidden state [1, layers + 1, T, D] (float32, CPU) of one token sequence: the embeddings, each block's
    output, the last after the final norm; `mask` 0 marks pad tokens, which no token attends to."""
    vocab = int(model.get_input_embeddings().weight.shape[0])
    if max(ids) >= vocab:
        raise ModelError(f"the prompt has token id {max(ids)} but the Llama encoder's vocabulary has {vocab} entries")
    device = model.get_input_embeddings().weight.device
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids], device=device),
                    attention_mask=torch.tensor([mask], device=device), output_hidden_states=True)
    return torch.stack([h.float() for h in out.hidden_states], dim=1).cpu()
