"""FLUX.2 Klein's prompt encoder: a Qwen3 file (qwen_3_4b for Klein 4B, qwen_3_8b for 9B) under CLIPLoader type
`flux2`.

ComfyUI 0.8.0 itself runs no Klein (it gives a Qwen3 file Z-Image's encoder, whose width no Klein model takes);
this follows the Klein encoder ComfyUI added next (comfy/text_encoders/flux.py KleinTokenizer, Qwen3_4BModel), as
diffusers' Flux2KleinPipeline also encodes: the prompt inside Qwen's chat template with an empty think block,
tokenized as one piece, padded at the end to at least 512 tokens with <|endoftext|> (masked in attention), and the
hidden states entering blocks 9, 18 and 27 (no final norm) joined per token into one 3·width feature. Prompt
weights are not applied (escaped parentheses lose their backslash, as there).
"""

from __future__ import annotations

from typing import Any

import torch

from comfymesh.contracts.errors import ModelError
from comfymesh.diffusion.models.tensor_source import TensorSource
from comfymesh.diffusion.text.prompt_weights import unweighted
from comfymesh.diffusion.text.qwen3 import build_qwen3, parse_qwen3
from comfymesh.diffusion.text.qwen_tokenizer import PAD_ID, qwen_token_ids

TEMPLATE = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
MIN_LENGTH = 512
LAYERS = (9, 18, 27)  # hidden_states indices: the input of those blocks (0 is the embedding)


def klein_tokens(text: str) -> tuple[list[int], list[int]]:
    """(token ids, attention mask) of one prompt: templated, padded to MIN_LENGTH at the end."""
    ids = qwen_token_ids(TEMPLATE.format(unweighted(text)))
    pad = max(MIN_LENGTH - len(ids), 0)
    return ids + [PAD_ID] * pad, [1] * len(ids) + [0] * pad


def encode_klein(model: Any, text: str) -> torch.Tensor:
    """The prompt's context [1, T ≥ 512, 3·width] (float32, CPU)."""
    ids, mask = klein_tokens(text)
    vocab = int(model.get_input_embeddings().weight.shape[0])
    if max(ids) >= vocab:
        raise ModelError(f"the prompt has token id {max(ids)} but the text encoder's vocabulary has {vocab} entries")
    device = next(model.parameters()).device
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids], device=device), attention_mask=torch.tensor([mask], device=device),
                    output_hidden_states=True)
    stacked = torch.stack([out.hidden_states[i] for i in LAYERS], dim=2)  # [1, T, 3, width]
    return stacked.reshape(1, len(ids), -1).float().cpu()


def load_klein_encoder(src: TensorSource, device: torch.device) -> torch.nn.Module:
    """The Qwen3 encoder of a CLIPLoader file (bf16 on a GPU, float32 on the CPU, as ComfyUI computes it);
    ModelError when the file holds something else or too few layers for Klein's hidden states."""
    layout = parse_qwen3(src)
    if layout is None:
        raise ModelError(f"{src.path.name} is not a Qwen3 text encoder (FLUX.2 Klein's CLIP type 'flux2' takes "
                         "qwen_3_4b or qwen_3_8b)")
    if layout.layers < max(LAYERS):
        raise ModelError(f"{src.path.name}: {layout.describe()} has too few layers for FLUX.2 Klein, which reads "
                         f"the hidden states entering layers {', '.join(map(str, LAYERS))}")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return build_qwen3(src, layout, device, dtype)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"{src.path.name}: Qwen3 text encoder could not be converted: {exc}") from exc
