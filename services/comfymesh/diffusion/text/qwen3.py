"""Qwen3 as a text encoder (ComfyUI's CLIPLoader type `lumina2` with a Qwen3 file: Z-Image's prompt encoder).

The file is a Hugging Face Qwen3 state dict (`model.embed_tokens`, `model.layers.N.self_attn.q_norm`, ...); its
sizes are read from the shapes, so a reduced encoder loads. Encoding follows ComfyUI's Z-Image text encoder:
the prompt inside Qwen's chat template, no padding, the hidden state after the second-to-last block (no final
norm) as the caption features; prompt weights are not applied.
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
from comfymesh.diffusion.text.qwen_tokenizer import qwen_token_ids

CHAT_TEMPLATE = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
HIDDEN_LAYER = -2
ROPE_THETA = 1_000_000.0
RMS_EPS = 1e-6


class Qwen3Layout(DecoderLayout):
    kind = "Qwen3"


def parse_qwen3(src: TensorSource) -> Qwen3Layout | None:
    """The Qwen3 layout of a text encoder file: per-head q/k norms and no attention biases (Qwen2.5 has
    biases, Llama no q norm); None for any other file."""
    for p in PREFIXES:
        if not (src.has(p + "layers.0.self_attn.q_norm.weight") and src.has(p + "embed_tokens.weight")):
            continue
        if src.has(p + "layers.0.self_attn.k_proj.bias"):
            return None
        # the per-head q norms are one head wide
        return read_layout(Qwen3Layout, src, p, src.shape(p + "layers.0.self_attn.q_norm.weight")[0])
    return None


def qwen3_config(layout: Qwen3Layout) -> Any:
    from transformers import Qwen3Config

    return Qwen3Config(
        **config_sizes(layout), rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        rms_norm_eps=RMS_EPS, max_position_embeddings=40960, tie_word_embeddings=True,
    )


def build_qwen3(src: TensorSource, layout: Qwen3Layout, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """transformers' Qwen3Model with the file's weights (an lm_head, if the file has one, is not needed)."""
    from transformers import Qwen3Model

    return build_decoder(src, layout, lambda: Qwen3Model(qwen3_config(layout)), device, dtype)


def template_ids(text: str) -> list[int]:
    """The prompt's token ids inside the chat template (ComfyUI tokenizes the templated text as one piece)."""
    return qwen_token_ids(CHAT_TEMPLATE.format(text))


def encode_qwen3(model: Any, text: str) -> torch.Tensor:
    """Caption features [1, T, D] (float32, CPU) of one prompt."""
    ids = template_ids(text)
    vocab = int(model.get_input_embeddings().weight.shape[0])
    if max(ids) >= vocab:
        raise ModelError(f"the prompt has token id {max(ids)} but the text encoder's vocabulary has {vocab} entries")
    device = next(model.parameters()).device
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids], device=device), output_hidden_states=True)
    hidden: torch.Tensor = out.hidden_states[HIDDEN_LAYER]
    return hidden.float().cpu()


def load_qwen3_file(src: TensorSource, device: torch.device) -> torch.nn.Module:
    """The Qwen3 encoder of a CLIPLoader file (bf16 on a GPU, float32 on the CPU, as ComfyUI computes it);
    ModelError when the file holds something else."""
    layout = parse_qwen3(src)
    if layout is None:
        raise ModelError(f"{src.path.name} is not a Qwen3 text encoder (CLIP type 'lumina2' with Z-Image takes "
                         "qwen_3_4b)")
    return converted(src, "Qwen3 text encoder", lambda: build_qwen3(src, layout, device, encoder_dtype(device)))
