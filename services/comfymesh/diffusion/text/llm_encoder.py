"""Decoder language models as text encoders (Qwen2.5-VL's language model, Qwen3, Llama 3): their sizes read
from a Hugging Face state dict's shapes, so reduced encoders load, the transformers config arguments those
sizes give, and the model built with the file's weights (fp8 linears kept fp8, rotary tables remade).
Each model's module keeps what is its own: how it is told apart from the others, its RoPE and its encoding.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch

from comfymesh.contracts.errors import ModelError
from comfymesh.diffusion.models.fp8_weights import held_by_fp8_linear, install_fp8_linears, row_scales, split_scales
from comfymesh.diffusion.models.tensor_source import TensorSource

PREFIXES = ("model.", "")  # a causal LM's file (`model.embed_tokens`, ...) or the bare model's


def encoder_dtype(device: torch.device) -> torch.dtype:
    """The dtype ComfyUI computes its text encoders in (T5, Qwen, Llama): bf16 on a GPU, float32 on the CPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


@dataclass(frozen=True)
class DecoderLayout:
    """A decoder's sizes as its file's shapes give them; `kind` names the model in messages."""

    kind: ClassVar[str] = "decoder"
    prefix: str
    vocab: int
    width: int
    layers: int
    intermediate: int
    head_dim: int
    heads: int
    kv_heads: int

    def describe(self) -> str:
        return f"{self.kind} (width {self.width}, {self.layers} layers, vocabulary {self.vocab})"


L = TypeVar("L", bound=DecoderLayout)


def read_layout(cls: type[L], src: TensorSource, prefix: str, head_dim: int | Callable[[int, int], int]) -> L:
    """The sizes of the decoder at `prefix`, with the head width given (a q/k norm's width) or told by
    `head_dim(q rows, kv rows)`: the projections' shapes give only heads × head width."""
    p = prefix
    vocab, width = src.shape(p + "embed_tokens.weight")
    q_rows = src.shape(p + "layers.0.self_attn.q_proj.weight")[0]
    kv_rows = src.shape(p + "layers.0.self_attn.k_proj.weight")[0]
    head = head_dim if isinstance(head_dim, int) else head_dim(q_rows, kv_rows)
    rx = re.compile(re.escape(p) + r"layers\.(\d+)\.")
    return cls(prefix=p, vocab=vocab, width=width, layers=len({m.group(1) for k in src.keys if (m := rx.match(k))}),
               intermediate=src.shape(p + "layers.0.mlp.gate_proj.weight")[0], head_dim=head,
               heads=q_rows // head, kv_heads=kv_rows // head)


def config_sizes(layout: DecoderLayout) -> dict[str, Any]:
    """The transformers config arguments the layout gives (the model's own settings are added by its module)."""
    return {"vocab_size": layout.vocab, "hidden_size": layout.width, "intermediate_size": layout.intermediate,
            "num_hidden_layers": layout.layers, "num_attention_heads": layout.heads,
            "num_key_value_heads": layout.kv_heads, "head_dim": layout.head_dim}


def build_decoder(src: TensorSource, layout: DecoderLayout, make: Callable[[], Any], device: torch.device,
                  dtype: torch.dtype, skip: tuple[str, ...] = ("lm_head.",)) -> torch.nn.Module:
    """`make()`'s transformers model (built on the meta device) with the file's weights under the layout's
    prefix, but those starting with `skip` (an lm_head, a vision tower: not the encoder's), on `device`: fp8
    linears (fp8 and scaled-fp8 files) stay fp8 and compute in `dtype`, the rest in `dtype`. ModelError naming
    the file when the weights do not fit."""
    p = layout.prefix
    raw = {k[len(p):]: v for k, v in src.with_prefix(p).items() if not k[len(p):].startswith(skip)}
    weights, scales = split_scales(raw, src.path.name)
    with torch.device("meta"):
        model = make()
    rest = install_fp8_linears(model, weights, row_scales(weights, scales), dtype, device)
    result = model.load_state_dict(rest, strict=False, assign=True)
    # rotary inverse frequencies are computed buffers, not weights: made again on the real device below
    missing = [k for k in result.missing_keys if not k.startswith("rotary_emb.") and not held_by_fp8_linear(model, k)]
    if missing or result.unexpected_keys:
        raise ModelError(f"{src.path.name}: the {layout.kind} weights do not fit the layout read from the file "
                         f"(missing {missing[:4]}, unexpected {result.unexpected_keys[:4]})")
    with torch.device(device):
        model.rotary_emb = type(model.rotary_emb)(config=model.config)
    module: torch.nn.Module = model.eval().requires_grad_(False)
    return module
