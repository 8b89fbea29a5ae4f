"""SD3's prompt conditioning as ComfyUI builds it (sd3_clip): CLIP-L and CLIP-G each give their penultimate
hidden state (no final norm) over 77-token windows; the two are joined along features, padded to T5-XXL's
width (4096) and followed, along tokens, by T5-XXL's output when a T5 encoder is loaded. The pooled vector
is CLIP-L's pooled output (final norm at the first EOS, unprojected) ‖ CLIP-G's (projected).

T5-XXL's part follows ComfyUI's SD3 T5 tokenizer: the prompt's weighted segments tokenized one by one, the end
token, then pad tokens up to 77 (never truncated), no attention mask; prompt weights pull each weighted token
away from the same-length empty prompt's state (end token, then pads). A prompt of no tokens (CLIPTextEncodeSD3's
empty_padding "none" with an empty T5 text) is encoded as the end token alone.

What is missing is filled as ComfyUI fills it: no CLIP-L → zero pooled (768) and CLIP-G's features shifted
right by 768; no CLIP-G → zero pooled (1280); no T5 → the CLIP part alone; nothing at all → zeros [1, 77, 4096].
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from comfymesh.contracts.errors import ModelError
from comfymesh.diffusion.text.encode import (
    ClipRunner,
    EncoderSpec,
    Token,
    block_index,
    encode_windows,
    tokenize_weighted,
    windows,
)
from comfymesh.diffusion.text.prompt_weights import parse_weights
from comfymesh.diffusion.text.t5 import encode_t5
from comfymesh.diffusion.text.t5_tokenizer import EOS_ID as T5_EOS
from comfymesh.diffusion.text.t5_tokenizer import PAD_ID as T5_PAD
from comfymesh.diffusion.text.t5_tokenizer import t5_token_ids
from comfymesh.diffusion.text.tokenizer import EOS_ID

CONTEXT_WIDTH = 4096  # T5-XXL's width: the CLIP features are padded to it
L_POOLED, G_POOLED = 768, 1280  # the pooled widths ComfyUI fills with zeros for a missing encoder
CLIP_L = EncoderSpec("l", EOS_ID, -2, False)
CLIP_G = EncoderSpec("g", 0, -2, False)
Window = list[tuple[Token, float]]
# (T5 encoder, prompt or None for no tokens) → features [1, T, D]
T5Encode = Callable[[Any, str | None], torch.Tensor]
T5_MIN_LENGTH = 77  # ComfyUI's SD3 T5 tokenizer pads to 77 tokens (FLUX's to 256)


def t5_weighted_tokens(text: str | None, min_length: int = T5_MIN_LENGTH) -> list[tuple[int, float]]:
    """(token, weight) of a T5 prompt: each weighted segment's ids, the end token, pads up to `min_length`;
    None (no tokens) → the end token alone, unpadded."""
    if text is None:
        return [(T5_EOS, 1.0)]
    tokens = [(t, w) for segment, w in parse_weights(text) if segment for t in t5_token_ids(segment)]
    tokens.append((T5_EOS, 1.0))
    return tokens + [(T5_PAD, 1.0)] * max(0, min_length - len(tokens))


def encode_t5_weighted(model: Any, text: str | None, min_length: int = T5_MIN_LENGTH) -> torch.Tensor:
    """T5 features [1, T, D] of a prompt; weighted tokens are moved from the empty prompt's state:
    empty + w · (z − empty), as ComfyUI weights them."""
    tokens = t5_weighted_tokens(text, min_length)
    z = encode_t5(model, [t for t, _ in tokens])
    weights = torch.tensor([w for _, w in tokens], dtype=z.dtype)[None, :, None]
    if bool((weights == 1.0).all()):
        return z
    empty = encode_t5(model, [T5_EOS] + [T5_PAD] * (len(tokens) - 1))
    return torch.where(weights != 1.0, empty + weights * (z - empty), z)


def clip_windows(text: str, spec: EncoderSpec) -> list[Window]:
    """The prompt's 77-token windows for one CLIP encoder (weights kept per token)."""
    return windows(tokenize_weighted(text), spec.pad_id)


def encode_clip_windows(clip: nn.Module, spec: EncoderSpec, wins: list[Window], stop_at_clip_layer: int | None,
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [1, 77·k, D] with prompt weights applied against the empty prompt, pooled [1, P]): the pooled
    output is the first window's final-norm state at its first EOS, through CLIP-G's projection."""
    runner = ClipRunner(clip)
    text: Any = runner.text()
    device = next(clip.parameters()).device
    layer = block_index(stop_at_clip_layer, spec.default_layer, text.config.num_hidden_layers)
    with torch.no_grad():
        context, first_last = encode_windows(runner, wins, text.config.hidden_size, layer, spec, device)
        eos = next(j for j, (t, _) in enumerate(wins[0]) if isinstance(t, int) and t == EOS_ID)
        pooled = first_last[:, eos]
        projection: Any = getattr(clip, "text_projection", None)
        if spec.role == "g" and projection is not None:
            pooled = pooled @ projection.weight.float().T
    return context.cpu(), pooled.float().cpu()


def clip_tokens(l_text: str | None, g_text: str | None) -> tuple[list[Window], list[Window]]:
    """CLIP-L's and CLIP-G's windows; None means no tokens (CLIPTextEncodeSD3's empty_padding "none" with an
    empty text). The side with fewer windows is topped up with the empty prompt's, as ComfyUI does."""
    wl = [] if l_text is None else clip_windows(l_text, CLIP_L)
    wg = [] if g_text is None else clip_windows(g_text, CLIP_G)
    if len(wl) != len(wg):
        wl += windows([], CLIP_L.pad_id) * (len(wg) - len(wl))
        wg += windows([], CLIP_G.pad_id) * (len(wl) - len(wg))
    return wl, wg


def sd3_conditioning(encoders: dict[str, Any], l_text: str | None, g_text: str | None, t5_text: str | None,
                     stop_at_clip_layer: int | None = None, t5_encode: T5Encode | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [1, T, 4096], pooled [1, 2048]) of the prompts for the loaded encoders (roles "l", "g", "t5")."""
    wl, wg = clip_tokens(l_text, g_text)
    lg: torch.Tensor | None = None
    pooled: torch.Tensor | None = None
    if wl or wg:
        clip_l, clip_g = encoders.get("l"), encoders.get("g")
        l_pooled = torch.zeros(1, L_POOLED)
        if clip_l is not None:
            lg, l_pooled = encode_clip_windows(clip_l, CLIP_L, wl, stop_at_clip_layer)
        g_pooled = torch.zeros(1, G_POOLED)
        if clip_g is not None:
            g_out, g_pooled = encode_clip_windows(clip_g, CLIP_G, wg, stop_at_clip_layer)
            if lg is not None:
                n = min(lg.shape[1], g_out.shape[1])
                lg = torch.cat([lg[:, :n], g_out[:, :n]], dim=-1)
            else:
                lg = F.pad(g_out, (L_POOLED, 0))
        pooled = torch.cat([l_pooled, g_pooled], dim=-1)
    t5 = encoders.get("t5")
    t5_out = None
    if t5 is not None:
        if t5_encode is None:
            raise ValueError("a T5 encoder is loaded but no T5 encode function was given")
        t5_out = t5_encode(t5, t5_text).float().cpu()
    width = CONTEXT_WIDTH if t5_out is None else t5_out.shape[-1]
    if lg is not None:
        if lg.shape[-1] > width:
            raise ModelError(f"the CLIP-L ‖ CLIP-G features ({lg.shape[-1]} wide) do not fit the T5 encoder's width "
                             f"{width}")
        lg = F.pad(lg, (0, width - lg.shape[-1]))
    parts = [p for p in (lg, t5_out) if p is not None]
    cond = torch.cat(parts, dim=-2) if parts else torch.zeros(1, 77, CONTEXT_WIDTH)
    if pooled is None:
        pooled = torch.zeros(1, L_POOLED + G_POOLED)
    return cond, pooled
