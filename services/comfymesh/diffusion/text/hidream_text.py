"""HiDream's prompt conditioning as ComfyUI builds it (text_encoders/hidream.py): four encoders, each optional.

- CLIP-L and CLIP-G give only their pooled outputs, both projected (final norm at the first EOS of the first
  window; a long CLIP's window is as long as its position table), joined L ‖ G: the pooled vector [1, 2048].
- T5-XXL gives the context: the prompt's first 128-token chunk (ids, end token, pads to 128; a chunk that
  closes early on a short weighted segment stays unpadded), pad tokens masked out of attention.
- Llama 3.1 gives `conditioning_llama3` [1, 32, T, 4096]: every hidden state but the embeddings, of
  <|begin_of_text|> + the prompt padded with <|eot_id|> to at least 128 tokens (never truncated), pads masked.

Prompt weights move a token's state from the empty prompt's, as ComfyUI does: for T5 per token; for Llama,
ComfyUI's loop walks the first axis of the all-layers output, so hidden state j is moved by token j's weight —
reproduced as it is. What is missing is filled as ComfyUI fills it: zero pooled halves (768, 1280), a zero T5
context [1, 128, 4096], a zero Llama stack [1, 32, 1, 4096].
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from comfymesh.contracts.errors import ModelError
from comfymesh.diffusion.models.tensor_source import TensorSource
from comfymesh.diffusion.text.encode import tokenize_weighted, windows
from comfymesh.diffusion.text.llama import all_hidden_states, is_llama, load_llama_file
from comfymesh.diffusion.text.llama_tokenizer import BEGIN_ID, EOT_ID, llama_token_ids
from comfymesh.diffusion.text.prompt_weights import parse_weights
from comfymesh.diffusion.text.sd3_text import CLIP_G, CLIP_L, G_POOLED, L_POOLED, encode_clip_windows
from comfymesh.diffusion.text.t5 import encode_t5, load_t5_file, parse_t5
from comfymesh.diffusion.text.t5_tokenizer import EOS_ID as T5_EOS
from comfymesh.diffusion.text.t5_tokenizer import PAD_ID as T5_PAD
from comfymesh.diffusion.text.t5_tokenizer import t5_token_ids

CLIP_TYPE = "hidream"
T5_LENGTH = 128  # ComfyUI's HiDream T5 tokenizer: 128-token chunks, only the first is used
LLAMA_MIN_LENGTH = 128
CONTEXT_WIDTH = 4096
LLAMA_STATES = 32  # hidden states HiDream's Llama-3.1-8B gives after the embeddings are dropped
ROLES = ("l", "g", "t5", "llama")
L_PROJECTION = "hidream_text_projection"  # CLIP-L's projection weight, kept on its tower
Pairs = list[tuple[int, float]]


def load_encoders(paths: list[Path], device: torch.device) -> dict[str, Any]:
    """Role ("l", "g", "t5", "llama") → encoder for a CLIP loader's files of type hidream (QuadrupleCLIPLoader's
    four, or any of them), in any order; ModelError naming each file and what it holds."""
    from comfymesh.diffusion.families.sd3 import clip_roles
    from comfymesh.diffusion.models.convert import Placement, build_clip
    from comfymesh.diffusion.models.split_files import describe_encoder, text_encoder_layout

    sources = [TensorSource(p) for p in paths]
    t5s = [s for s in sources if parse_t5(s) is not None]
    llamas = [s for s in sources if s not in t5s and is_llama(s)]
    clips = [(s, text_encoder_layout(s)) for s in sources if s not in t5s and s not in llamas]
    roles = clip_roles([lay for _, lay in clips])
    found = "; ".join([f"{s.path.name}: {describe_encoder(lay)}" for s, lay in clips]
                      + [f"{s.path.name}: T5" for s in t5s] + [f"{s.path.name}: Llama" for s in llamas])
    if len(t5s) > 1 or len(llamas) > 1 or len(set(roles)) != len(roles) or not sources:
        raise ModelError(f"CLIP type 'hidream' takes at most one each of CLIP-L, CLIP-G, T5-XXL and Llama-3.1; "
                         f"found {found}")
    out: dict[str, Any] = {}
    for (src, lay), role in zip(clips, roles, strict=True):
        try:
            out[role] = build_clip(src, dataclasses.replace(lay, role=role), Placement(device))
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(f"{src.path.name}: text encoder could not be converted: {exc}") from exc
        out[role].eval().requires_grad_(False)
        key = lay.prefix + "text_projection.weight"
        if role == "l" and src.has(key):  # the CLIP-L tower is built without it; HiDream projects its pooled output
            out[role].register_buffer(L_PROJECTION, src.get(key).float().to(device))
    if t5s:
        out["t5"] = load_t5_file(t5s[0], device)
    if llamas:
        out["llama"] = load_llama_file(llamas[0], device)
    return out


def clip_pooled(clip: Any, spec: Any, text: str) -> torch.Tensor:
    """One CLIP's projected pooled output [1, P] of the prompt's first window (at the model's position count)."""
    text_model: Any = getattr(clip, "text_model", clip)
    size = int(text_model.embeddings.position_embedding.weight.shape[0])
    first = windows(tokenize_weighted(text), spec.pad_id, size)[:1]
    _, pooled = encode_clip_windows(clip, spec, first, None)
    projection: Any = getattr(clip, L_PROJECTION, None)
    if spec.role == "l" and projection is not None:  # HiDream asks CLIP-L's projected pooled output too
        pooled = pooled @ projection.float().T.cpu()
    return pooled


def pooled_output(encoders: dict[str, Any], l_text: str, g_text: str) -> torch.Tensor:
    """CLIP-L pooled ‖ CLIP-G pooled [1, 2048], zeros for a missing encoder."""
    clip_l, clip_g = encoders.get("l"), encoders.get("g")
    lp = torch.zeros(1, L_POOLED) if clip_l is None else clip_pooled(clip_l, CLIP_L, l_text)
    gp = torch.zeros(1, G_POOLED) if clip_g is None else clip_pooled(clip_g, CLIP_G, g_text)
    return torch.cat([lp, gp], dim=-1)


def _groups(text: str, ids_of: Any) -> list[Pairs]:
    return [g for g in ([(t, w) for t in ids_of(seg)] for seg, w in parse_weights(text) if seg) if g]


def t5_chunk(text: str) -> Pairs:
    """The first of the prompt's 128-token T5 chunks, as ComfyUI's tokenizer closes it: a weighted segment of
    fewer than 8 tokens that does not fit moves whole to the next chunk (this one ends on the end token,
    unpadded); a longer one is split; the last chunk is padded to 128."""
    limit = T5_LENGTH - 1
    batch: Pairs = []
    for group in _groups(text, t5_token_ids):
        if len(batch) + len(group) <= limit:
            batch += group
            continue
        if len(group) >= 8:
            batch += group[:limit - len(batch)]
        return [*batch, (T5_EOS, 1.0)]
    batch.append((T5_EOS, 1.0))
    return batch + [(T5_PAD, 1.0)] * (T5_LENGTH - len(batch))


def _t5_states(model: Any, ids: list[int], layer: int | None) -> torch.Tensor:
    """T5's output [1, T, D], pads masked: the last hidden state, or with CLIPSetLastLayer's k ≤ −2 the output
    of block N+k through the final norm (ComfyUI's T5 takes that layer; its |k| beyond the depth means the last)."""
    n = int(model.config.num_layers)
    if layer is None or layer >= -1 or -layer > n:
        return encode_t5(model, ids, attention_mask=True)
    tokens = torch.tensor([ids], device=model.get_input_embeddings().weight.device)
    with torch.no_grad():
        out = model(input_ids=tokens, attention_mask=(tokens != T5_PAD).long(), output_hidden_states=True)
        hidden: torch.Tensor = model.encoder.final_layer_norm(out.hidden_states[n + layer + 1])
    return hidden.float().cpu()


def encode_t5_chunk(model: Any, pairs: Pairs, layer: int | None = None) -> torch.Tensor:
    """T5 context [1, T, D] with pads masked; weighted tokens moved from the empty prompt's state (end, pads)."""
    z = _t5_states(model, [t for t, _ in pairs], layer)
    weights = torch.tensor([w for _, w in pairs])[None, :, None]
    if bool((weights == 1.0).all()):
        return z
    empty = _t5_states(model, [T5_EOS] + [T5_PAD] * (len(pairs) - 1), layer)
    return torch.where(weights != 1.0, (z - empty) * weights + empty, z)


def llama_tokens(text: str) -> Pairs:
    """<|begin_of_text|>, each weighted segment's ids, <|eot_id|> pads up to 128 tokens."""
    pairs: Pairs = [(BEGIN_ID, 1.0)] + [p for g in _groups(text, llama_token_ids) for p in g]
    return pairs + [(EOT_ID, 1.0)] * max(0, LLAMA_MIN_LENGTH - len(pairs))


def _llama_mask(ids: list[int]) -> list[int]:
    """ComfyUI's mask for a prompt without an end token: 0 from the first pad token on."""
    first = ids.index(EOT_ID) if EOT_ID in ids else len(ids)
    return [1] * first + [0] * (len(ids) - first)


def encode_llama(model: Any, pairs: Pairs) -> torch.Tensor:
    """`conditioning_llama3` [1, states − 1, T, D]: the hidden states after the embeddings'."""
    ids = [t for t, _ in pairs]
    out = all_hidden_states(model, ids, _llama_mask(ids))
    weights = [w for _, w in pairs]
    if any(w != 1.0 for w in weights):
        empty_ids = [BEGIN_ID] + [EOT_ID] * (len(ids) - 1)
        empty = all_hidden_states(model, empty_ids, _llama_mask(empty_ids))
        for j in range(min(out.shape[1], len(weights))):  # ComfyUI's loop: state j takes token j's weight
            if weights[j] != 1.0:
                out[0, j] = (out[0, j] - empty[0, j]) * weights[j] + empty[0, j]
    return out[:, 1:]


def hidream_conditioning(encoders: dict[str, Any], l_text: str, g_text: str, t5_text: str, llama_text: str,
                         stop_at_clip_layer: int | None = None) -> list[list[Any]]:
    """The CONDITIONING of one prompt per encoder (CLIPTextEncodeHiDream; CLIPTextEncode gives all four the
    same): [[T5 context, {pooled_output, conditioning_llama3}]]. CLIPSetLastLayer moves only T5's layer: the
    pooled outputs come from the CLIPs' last layer and the Llama states are all of them."""
    if not encoders:
        raise ModelError("the HiDream CLIP holds no text encoder")
    pooled = pooled_output(encoders, l_text, g_text)
    t5 = encoders.get("t5")
    context = (torch.zeros(1, T5_LENGTH, CONTEXT_WIDTH) if t5 is None
               else encode_t5_chunk(t5, t5_chunk(t5_text), stop_at_clip_layer))
    llama = encoders.get("llama")
    ll = (torch.zeros(1, LLAMA_STATES, 1, CONTEXT_WIDTH) if llama is None
          else encode_llama(llama, llama_tokens(llama_text)))
    return [[context, {"pooled_output": pooled, "conditioning_llama3": ll}]]
