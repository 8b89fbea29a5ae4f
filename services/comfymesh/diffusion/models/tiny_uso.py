"""Tiny random-weight files of FLUX.1 USO (template flux1_dev_uso_reference_image_gen): the style projector in
the real key layout (`feature_embedder.<level>_…`), sized to tiny_flux's SigLIP tower (729 tokens: its 27×27
grid at 384 px, width SIGLIP_WIDTH) and tiny_flux's model width, with 4 style tokens a level (64 at full
size), and the dev-form fp8 all-in-one checkpoint the template loads. `uso_shapes` with its defaults gives the
full-size projector's shapes."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from comfymesh.diffusion.models.tiny_flux import SIGLIP_WIDTH, flux_shapes, make_tiny_flux_checkpoint, random_tensors
from comfymesh.diffusion.models.uso_projector import LEVELS, PREFIX

PROJECTOR = "uso-flux1-projector-v1.safetensors"  # the template's model_patches file
CHECKPOINT = "flux1-dev-fp8.safetensors"  # the template's CheckpointLoaderSimple file
TINY_STYLE_TOKENS = 4
TINY_HIDDEN = flux_shapes()["img_in.weight"][0]


def uso_shapes(siglip_tokens: int = 729, style_tokens: int = 64, siglip_width: int = 1152,
               hidden: int = 3072) -> dict[str, tuple[int, ...]]:
    s: dict[str, tuple[int, ...]] = {}
    for level in LEVELS:
        s[f"{PREFIX}{level}_embedding_linear.0.weight"] = (style_tokens, siglip_tokens)
        s[f"{PREFIX}{level}_embedding_linear.0.bias"] = (style_tokens,)
        s[f"{PREFIX}{level}_layer_norm.weight"] = (siglip_width,)
        s[f"{PREFIX}{level}_layer_norm.bias"] = (siglip_width,)
        s[f"{PREFIX}{level}_projection.weight"] = (hidden, siglip_width)
        s[f"{PREFIX}{level}_projection.bias"] = (hidden,)
    return s


def make_tiny_uso_projector(path: str | Path, seed: int = 0, dtype: torch.dtype = torch.bfloat16,
                            style_tokens: int = TINY_STYLE_TOKENS, siglip_width: int = SIGLIP_WIDTH,
                            hidden: int = TINY_HIDDEN, siglip_tokens: int = 729) -> Path:
    state = random_tensors(uso_shapes(siglip_tokens, style_tokens, siglip_width, hidden), seed, dtype)
    for level in LEVELS:  # LayerNorm weights near one, as a trained norm's are
        key = f"{PREFIX}{level}_layer_norm.weight"
        state[key] = (1.0 + 0.1 * state[key].float()).to(dtype)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out), metadata={"format": "pt"})
    return out


def make_template_files(models: str | Path, seed: int = 0) -> list[Path]:
    """The projector under models/model_patches/ and the dev fp8 checkpoint under models/checkpoints/ (its
    LoRA, uso-flux1-dit-lora-v1, is tiny_lora's, shaped after tiny_flux's flux1-dev)."""
    root = Path(models)
    return [make_tiny_uso_projector(root / "model_patches" / PROJECTOR, seed),
            make_tiny_flux_checkpoint(root / "checkpoints" / CHECKPOINT, seed, schnell=False)]
