"""T5-XXL's encoder as a text encoder (FLUX's, SD3's and Chroma's `t5xxl_*.safetensors`), built with
transformers' T5EncoderModel from the file's shapes, so a reduced encoder loads.

The file is a T5 v1.1 encoder state dict (`shared`, `encoder.block.N.layer.0.SelfAttention.q`, gated-GELU
`DenseReluDense.wi_0/wi_1/wo`), bare or under a checkpoint's `text_encoders.t5xxl.transformer.`; fp8 and
scaled-fp8 weights stay fp8 in memory (models.fp8_weights). Encoding follows ComfyUI's T5XXL tokenizer: the
prompt's tokens, the end token 1, then pad tokens 0 up to a family's minimum length (FLUX 256, SD3 77) with no
attention mask unless a family asks for one; no truncation. The last hidden state (after the final norm) is the
context.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from comfymesh.contracts.errors import ModelError
from comfymesh.diffusion.models.fp8_weights import held_by_fp8_linear, install_fp8_linears, row_scales, split_scales
from comfymesh.diffusion.models.tensor_source import TensorSource, converted
from comfymesh.diffusion.text.llm_encoder import encoder_dtype
from comfymesh.diffusion.text.t5_tokenizer import EOS_ID, PAD_ID, t5_token_ids

PREFIXES = ("", "text_encoders.t5xxl.transformer.", "t5xxl.transformer.")
_MARKER = "encoder.block.0.layer.1.DenseReluDense.wi_1.weight"  # gated GELU: T5 v1.1, not the original T5


@dataclass(frozen=True)
class T5Layout:
    prefix: str
    vocab: int
    width: int
    layers: int
    heads: int
    head_dim: int
    ff: int
    buckets: int

    def describe(self) -> str:
        return f"T5 encoder (width {self.width}, {self.layers} blocks, vocabulary {self.vocab})"


def parse_t5(src: TensorSource) -> T5Layout | None:
    """The T5 v1.1 encoder layout of a file, None for any other file."""
    for p in PREFIXES:
        if not (src.has(p + _MARKER) and src.has(p + "encoder.final_layer_norm.weight")):
            continue
        vocab, width = src.shape(p + "shared.weight")
        rx = re.compile(re.escape(p) + r"encoder\.block\.(\d+)\.")
        buckets, heads = src.shape(p + "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
        return T5Layout(
            prefix=p, vocab=vocab, width=width, layers=len({m.group(1) for k in src.keys if (m := rx.match(k))}),
            heads=heads, head_dim=src.shape(p + "encoder.block.0.layer.0.SelfAttention.q.weight")[0] // heads,
            ff=src.shape(p + _MARKER)[0], buckets=buckets,
        )
    return None


def t5_config(layout: T5Layout) -> Any:
    from transformers import T5Config

    return T5Config(
        vocab_size=layout.vocab, d_model=layout.width, d_kv=layout.head_dim, d_ff=layout.ff,
        num_layers=layout.layers, num_heads=layout.heads, relative_attention_num_buckets=layout.buckets,
        relative_attention_max_distance=128, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
        use_cache=False, dropout_rate=0.0, layer_norm_epsilon=1e-6,
    )


def build_t5(src: TensorSource, layout: T5Layout, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """T5EncoderModel with the file's weights on `device`; fp8 linears stay fp8 and compute in `dtype`."""
    from transformers import T5EncoderModel

    raw = {k[len(layout.prefix):]: v for k, v in src.with_prefix(layout.prefix).items()}
    weights, scales = split_scales(raw, src.path.name)
    weights = {k: v for k, v in weights.items() if k.startswith(("shared.", "encoder."))}
    with torch.device("meta"):
        model = T5EncoderModel(t5_config(layout))
    rest = install_fp8_linears(model, weights, row_scales(weights, scales), dtype, device)
    # the file names the embedding once (`shared`); transformers also reads it as the encoder's
    rest.setdefault("encoder.embed_tokens.weight", rest["shared.weight"])
    result = model.load_state_dict(rest, strict=False, assign=True)
    missing = [k for k in result.missing_keys if not held_by_fp8_linear(model, k)]
    if missing or result.unexpected_keys:
        raise ModelError(f"{src.path.name}: the T5 weights do not fit the layout read from the file "
                         f"(missing {missing[:4]}, unexpected {result.unexpected_keys[:4]})")
    _keep_fp8_out_projections_in_compute_dtype(model)
    return model.eval().requires_grad_(False)


def _keep_fp8_out_projections_in_compute_dtype(model: Any) -> None:
    """transformers' gated feed-forward casts its hidden states to `wo`'s weight dtype (for int8 models); an fp8
    `wo` would round the activations to fp8. Those blocks run as ComfyUI's T5 does instead: wo(act(wi_0 x) · wi_1 x)
    in the compute dtype (Fp8Linear upcasts its weight)."""
    from transformers.models.t5.modeling_t5 import T5DenseGatedActDense

    from comfymesh.diffusion.models.fp8_weights import Fp8Linear

    class ComputeDtypeGatedFF(T5DenseGatedActDense):  # type: ignore[misc]
        def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
            gated = self.act(self.wi_0(hidden_states)) * self.wi_1(hidden_states)
            return self.wo(self.dropout(gated))  # type: ignore[no-any-return]

    for module in model.modules():
        if isinstance(module, T5DenseGatedActDense) and isinstance(module.wo, Fp8Linear):
            module.__class__ = ComputeDtypeGatedFF


def t5_tokens(text: str, min_length: int) -> list[int]:
    """The prompt's ids, the end token, then pad tokens up to `min_length` (ComfyUI's T5XXL tokenizer)."""
    ids = [*t5_token_ids(text), EOS_ID]
    return ids + [PAD_ID] * max(0, min_length - len(ids))


def t5_weighted_tokens(text: str, min_length: int, min_padding: int = 0) -> list[tuple[int, float]]:
    """(id, weight) per token: each weighted segment of the prompt (`(word:1.2)`, as ComfyUI parses it)
    tokenized on its own, then the end token, `min_padding` pad tokens, and pad tokens (weight 1) up to
    `min_length` (ComfyUI's tokenizer order; T5TokenizerOptions sets both)."""
    from comfymesh.diffusion.text.prompt_weights import parse_weights

    pairs = [(i, w) for segment, w in parse_weights(text) for i in t5_token_ids(segment)]
    pairs.append((EOS_ID, 1.0))
    pairs += [(PAD_ID, 1.0)] * min_padding
    return pairs + [(PAD_ID, 1.0)] * max(0, min_length - len(pairs))


def encode_t5_weighted(model: Any, text: str, min_length: int, attention_mask: bool = False, min_padding: int = 0,
                       empty_has_end: bool = True) -> torch.Tensor:
    """Context [1, T, D] of a prompt with ComfyUI's token weights: a weighted token's state is moved from the
    empty prompt's (end token, then pads, as long; all pads for Chroma's PixArt tokenizer when not
    `empty_has_end`) by its weight, z_empty + w·(z − z_empty)."""
    pairs = t5_weighted_tokens(text, min_length, min_padding)
    z = encode_t5(model, [i for i, _ in pairs], attention_mask)
    weights = torch.tensor([w for _, w in pairs])
    if bool((weights == 1.0).all()):
        return z
    first = [EOS_ID] if empty_has_end else [PAD_ID]
    empty = encode_t5(model, first + [PAD_ID] * (len(pairs) - 1), attention_mask)
    w = weights[None, :, None]
    return torch.where(w != 1.0, (z - empty) * w + empty, z)


def encode_t5(model: Any, ids: list[int], attention_mask: bool = False) -> torch.Tensor:
    """Context [1, T, D] (float32, CPU): the last hidden state; with `attention_mask` the pad tokens are
    masked out of attention (ComfyUI's default for FLUX and SD3 is no mask)."""
    vocab = int(model.get_input_embeddings().weight.shape[0])
    if max(ids) >= vocab:
        raise ModelError(f"the prompt has token id {max(ids)} but the T5 encoder's vocabulary has {vocab} entries")
    device = model.get_input_embeddings().weight.device
    tokens = torch.tensor([ids], device=device)
    mask = (tokens != PAD_ID).long() if attention_mask else None
    with torch.no_grad():
        out = model(input_ids=tokens, attention_mask=mask)
    hidden: torch.Tensor = out.last_hidden_state
    return hidden.float().cpu()


def load_t5_file(src: TensorSource, device: torch.device) -> torch.nn.Module:
    """The T5 encoder of a text encoder file (bf16 on a GPU, float32 on the CPU); ModelError when the file
    holds something else."""
    layout = parse_t5(src)
    if layout is None:
        raise ModelError(f"{src.path.name} is not a T5-XXL text encoder (t5xxl_fp16 / t5xxl_fp8_e4m3fn[_scaled])")
    return converted(src, "T5 text encoder", lambda: build_t5(src, layout, device, encoder_dtype(device)))
