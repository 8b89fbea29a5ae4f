"""CLIPTextEncode: weighted tokens in 77-token windows, layer selection, weighting against the empty
prompt, SDXL's two encoders and pooled vector (spec §3)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from comfymesh.diffusion.text.prompt_weights import parse_weights
from comfymesh.diffusion.text.tokenizer import BOS_ID, EOS_ID, WINDOW, token_ids

log = logging.getLogger(__name__)

Token = int | torch.Tensor  # a vocabulary id or an embedding vector (textual inversion)
EmbeddingLookup = Callable[[str], torch.Tensor | None]
_EMBED_SPLIT = re.compile(r"(?:^|(?<=[ \n]))embedding:")


@dataclass(frozen=True)
class EncoderSpec:
    """How a family uses one text encoder (what the shapes cannot tell)."""

    role: str  # "l", "h", "g"
    pad_id: int
    default_layer: int  # −1 last block, −2 penultimate
    final_norm: bool


FAMILY_ENCODERS: dict[str, tuple[EncoderSpec, ...]] = {
    "sd1": (EncoderSpec("l", EOS_ID, -1, True),),
    "sd2": (EncoderSpec("h", 0, -2, True),),
    "sdxl": (EncoderSpec("l", EOS_ID, -2, False), EncoderSpec("g", 0, -2, False)),
}


def tokenize_weighted(text: str, embeddings: EmbeddingLookup | None = None) -> list[list[tuple[Token, float]]]:
    """Token groups (one per weighted segment piece or embedding) with their weights, no BOS/EOS."""
    groups: list[list[tuple[Token, float]]] = []
    for segment, weight in parse_weights(text):
        pieces = _EMBED_SPLIT.split(segment)
        if pieces[0]:
            groups.append([(t, weight) for t in token_ids(pieces[0])])
        for piece in pieces[1:]:
            name, _, rest = piece.partition(" ") if " " in piece else piece.partition("\n")
            vectors = _find_embedding(name, embeddings)
            if vectors is None:
                log.warning("embedding %r not found, ignored", name)
            else:
                groups.append([(v, weight) for v in vectors])
            if rest:
                groups.append([(t, weight) for t in token_ids(rest)])
    return [g for g in groups if g]


def _find_embedding(name: str, lookup: EmbeddingLookup | None) -> torch.Tensor | None:
    if lookup is None:
        return None
    found = lookup(name)
    if found is None and name.endswith(","):
        found = lookup(name[:-1])
    return found


def windows(groups: list[list[tuple[Token, float]]], pad_id: int,
            size: int = WINDOW) -> list[list[tuple[Token, float]]]:
    """Pack token groups into 77-token windows (BOS … EOS pad…; `size` for a long CLIP's, e.g. 248); long
    groups (≥ 8) may split."""
    limit = size - 1  # room before the closing EOS
    out: list[list[tuple[Token, float]]] = []
    batch: list[tuple[Token, float]] = [(BOS_ID, 1.0)]

    def close() -> None:
        nonlocal batch
        batch.append((EOS_ID, 1.0))
        batch.extend([(pad_id, 1.0)] * (size - len(batch)))
        out.append(batch)
        batch = [(BOS_ID, 1.0)]

    for group in groups:
        rest = list(group)
        while rest:
            if len(batch) + len(rest) <= limit:
                batch.extend(rest)
                rest = []
            elif len(rest) >= 8:
                room = limit - len(batch)
                batch.extend(rest[:room])
                rest = rest[room:]
                close()
            else:
                close()
    close()
    return out


class ClipRunner(nn.Module):
    """Runs a transformers CLIP text model block by block so any layer's output can be taken."""

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.clip = clip

    def text(self) -> Any:
        return getattr(self.clip, "text_model", self.clip)

    def forward(self, ids: torch.Tensor, vectors: torch.Tensor, use_vectors: torch.Tensor, layer: int,
                final_norm: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden state after block `layer` [1, 77, D], final-norm last hidden state [1, 77, D])."""
        text = self.text()
        emb = text.embeddings
        h = emb.token_embedding(ids)
        h = torch.where(use_vectors[..., None], vectors.to(h.dtype), h)
        h = h + emb.position_embedding(emb.position_ids[:, : ids.shape[1]])
        n = ids.shape[1]
        mask = torch.full((n, n), float("-inf"), device=h.device).triu(1)[None, None].to(h.dtype)
        chosen = h
        layers = text.encoder.layers
        for i, block in enumerate(layers):
            h = block(h, mask)
            if i == layer:
                chosen = h
        last = text.final_layer_norm(h)
        if final_norm:
            chosen = text.final_layer_norm(chosen)
        return chosen, last


def block_index(stop_at_clip_layer: int | None, default: int, n_layers: int) -> int:
    """0-based block whose output is used: CLIPSetLastLayer's k means block N+k; |k| > N → last."""
    k = default if stop_at_clip_layer is None else stop_at_clip_layer
    idx = n_layers + k
    return idx if 0 <= idx < n_layers else n_layers - 1


Runner = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int, bool], tuple[torch.Tensor, torch.Tensor]]


def _encode_window(run: Runner, window: list[tuple[Token, float]], width: int, layer: int, final_norm: bool,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids = torch.tensor([[t if isinstance(t, int) else 0 for t, _ in window]], device=device)
    use = torch.tensor([[not isinstance(t, int) for t, _ in window]], device=device)
    vecs = torch.zeros(1, len(window), width, device=device)
    for j, (t, _) in enumerate(window):
        if not isinstance(t, int):
            vecs[0, j] = t.to(device).float()
    chosen, last = run(ids, vecs, use, layer, final_norm)
    return chosen, last, ids


def encode_one(run: Runner, n_layers: int, width: int, spec: EncoderSpec, groups: list[list[tuple[Token, float]]],
               stop_at_clip_layer: int | None, device: torch.device,
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """One encoder: (context [1, 77·k, D] with weights applied, final-norm state of window 0 [1, 77, D])."""
    layer = block_index(stop_at_clip_layer, spec.default_layer, n_layers)
    return encode_windows(run, windows(groups, spec.pad_id), width, layer, spec, device)


def encode_windows(run: Runner, wins: list[list[tuple[Token, float]]], width: int, layer: int, spec: EncoderSpec,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(context [1, 77·k, D] of the windows at `layer`, weighted tokens moved from the empty prompt's state as
    empty + w·(z − empty), final-norm state of window 0 [1, 77, D]), float32 on `device`."""
    outs = []
    first_last: torch.Tensor | None = None
    weighted = any(w != 1.0 for win in wins for _, w in win)
    empty = None
    if weighted:
        empty_win = windows([], spec.pad_id)[0]
        empty = _encode_window(run, empty_win, width, layer, spec.final_norm, device)[0]
    for k, win in enumerate(wins):
        z, last, _ = _encode_window(run, win, width, layer, spec.final_norm, device)
        if k == 0:
            first_last = last
        if empty is not None:
            w = torch.tensor([wt for _, wt in win], dtype=z.dtype, device=device)[None, :, None]
            z = torch.where(w != 1.0, empty + w * (z - empty), z)
        outs.append(z)
    assert first_last is not None
    return torch.cat(outs, dim=1).float(), first_last.float()


def first_eos_pooled(last: torch.Tensor, groups: list[list[tuple[Token, float]]], pad_id: int) -> torch.Tensor:
    """The final-norm hidden state at the first EOS of window 0 [1, D]."""
    win = windows(groups, pad_id)[0]
    pos = next(j for j, (t, _) in enumerate(win) if isinstance(t, int) and t == EOS_ID)
    return last[:, pos]


@dataclass
class TextEncoders:
    """A checkpoint's text encoders as runnable functions (LoRA patches already bound)."""

    family: str
    runners: dict[str, Runner]  # role → runner
    layers: dict[str, int]
    widths: dict[str, int]
    projection: torch.Tensor | None  # clip_g's text_projection weight [proj, D] (SDXL)
    device: torch.device


def encode_prompt(enc: TextEncoders, text: str, stop_at_clip_layer: int | None = None,
                  embeddings: EmbeddingLookup | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(context [1, 77·k, D] on the CPU, pooled [1, Dp] or None)."""
    groups = tokenize_weighted(text, embeddings)
    outs = []
    pooled = None
    with torch.no_grad():
        for spec in FAMILY_ENCODERS[enc.family]:
            run = enc.runners[spec.role]
            z, last = encode_one(run, enc.layers[spec.role], enc.widths[spec.role], spec, groups,
                                 stop_at_clip_layer, enc.device)
            outs.append(z)
            if spec.role == "g" and enc.projection is not None:
                # pooled: first window only, unweighted, through the projection (no bias)
                pooled = first_eos_pooled(last, groups, spec.pad_id) @ enc.projection.float().T
    n = min(o.shape[1] for o in outs)
    cond = torch.cat([o[:, :n] for o in outs], dim=-1)
    return cond.float().cpu(), None if pooled is None else pooled.float().cpu()
