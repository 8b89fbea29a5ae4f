"""FLUX.2 Dev's prompt encoder: Mistral 3 Small's language model (ComfyUI's mistral_3_small_flux2 files, CLIPLoader
type `flux2`), with the Tekken tokenizer the file itself carries.

The file is a Hugging Face Mistral state dict (`model.layers.N.self_attn.q_proj`, no q/k norms or biases) plus
`tekken_model`, Mistral's tekken.json as a uint8 tensor, which ComfyUI builds its tokenizer from (so no tokenizer
wheel is needed: transformers' MistralConverter turns it into a byte-level BPE). Sizes come from the shapes with
128-wide heads; the files of 30 layers are the pruned form, whose last hidden state ComfyUI reads before the final
norm. Encoding follows ComfyUI 0.8.0's Flux2 text encoder: the prompt inside its system-prompt template,
`<s>` first, no padding, and the hidden states entering blocks 10, 20 and 30 side by side per token (3·width).
Prompt weights are not applied.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from comfymesh.contracts.errors import ModelError
from comfymesh.diffusion.models.tensor_source import TensorSource
from comfymesh.diffusion.text.llm_encoder import DecoderLayout, build_decoder, config_sizes, read_layout
from comfymesh.diffusion.text.prompt_weights import unweighted

PREFIX = "model."
TOKENIZER_KEY = "tekken_model"
TEMPLATE = ("[SYSTEM_PROMPT]You are an AI that reasons about image descriptions. You give structured responses "
            "focusing on object relationships, object\nattribution and actions without speculation.[/SYSTEM_PROMPT]"
            "[INST]{}[/INST]")
LAYERS = (10, 20, 30)  # hidden_states indices: the input of those blocks (0 is the embedding)
FULL_DEPTH = 40  # Mistral 3 Small's depth; shallower (pruned) files end without the final norm
HEAD_DIM = 128
ROPE_THETA = 1_000_000_000.0
RMS_EPS = 1e-5
BOS = "<s>"


class MistralLayout(DecoderLayout):
    kind = "Mistral"


def parse_mistral(src: TensorSource) -> MistralLayout | None:
    """The layout of a Mistral-form text encoder file (Llama keys without q/k norms or attention biases), None for
    any other file."""
    p = PREFIX
    if not (src.has(p + "embed_tokens.weight") and src.has(p + "layers.0.self_attn.q_proj.weight")):
        return None
    if src.has(p + "layers.0.self_attn.q_norm.weight") or src.has(p + "layers.0.self_attn.k_proj.bias"):
        return None
    return read_layout(MistralLayout, src, p, HEAD_DIM)


def _config(layout: MistralLayout) -> Any:
    from transformers import MistralConfig

    return MistralConfig(
        **config_sizes(layout), rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        rms_norm_eps=RMS_EPS, max_position_embeddings=131072, sliding_window=None, tie_word_embeddings=False,
    )


class MistralEncoder(torch.nn.Module):
    """The language model with its tokenizer (a `tokenizers.Tokenizer` built from the file's tekken.json)."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer

    def token_ids(self, text: str) -> list[int]:
        """`<s>` and the templated prompt's ids (special tokens such as [INST] as single ids)."""
        ids: list[int] = self.tokenizer.encode(TEMPLATE.format(unweighted(text)), add_special_tokens=False).ids
        return [int(self.tokenizer.token_to_id(BOS)), *ids]

    def encode(self, text: str) -> torch.Tensor:
        """The prompt's context [1, T, 3·width] (float32, CPU)."""
        ids = self.token_ids(text)
        device = next(self.model.parameters()).device
        with torch.no_grad():
            out = self.model(input_ids=torch.tensor([ids], device=device), output_hidden_states=True)
        stacked = torch.stack([out.hidden_states[i] for i in LAYERS], dim=2)  # [1, T, 3, width]
        return stacked.reshape(1, len(ids), -1).float().cpu()


def tekken_tokenizer(data: bytes) -> Any:
    """A `tokenizers.Tokenizer` from tekken.json bytes (Mistral's BPE ranks, pattern and special tokens)."""
    from transformers.integrations.mistral import MistralConverter

    try:
        json.loads(data)
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / "tekken.json"
            path.write_bytes(data)
            return MistralConverter(vocab_file=str(path)).converted()
    except Exception as exc:
        raise ModelError(f"the text encoder's `{TOKENIZER_KEY}` is not a readable tekken.json: {exc}") from exc


def build_mistral(src: TensorSource, layout: MistralLayout, device: torch.device,
                  dtype: torch.dtype) -> torch.nn.Module:
    """transformers' MistralModel with the file's weights, the final norm left out for a pruned file; fp8 linears
    stay fp8 and compute in `dtype`."""
    from transformers import MistralModel

    pruned = layout.layers < FULL_DEPTH

    def make() -> Any:
        model: Any = MistralModel(_config(layout))
        if pruned:
            model.norm = torch.nn.Identity()
        return model

    return build_decoder(src, layout, make, device, dtype, skip=("lm_head.", "norm.") if pruned else ("lm_head.",))


def load_mistral_encoder(src: TensorSource, device: torch.device) -> MistralEncoder:
    """The Mistral encoder of a CLIPLoader file (bf16 on a GPU, float32 on the CPU); ModelError when the file
    holds something else, lacks its tokenizer or has too few layers for the hidden states FLUX.2 reads."""
    layout = parse_mistral(src)
    if layout is None:
        raise ModelError(f"{src.path.name} is not a Mistral text encoder (FLUX.2 Dev's CLIP type 'flux2' takes "
                         "mistral_3_small_flux2)")
    if not src.has(TOKENIZER_KEY):
        raise ModelError(f"{src.path.name} carries no `{TOKENIZER_KEY}` (the Tekken tokenizer ComfyUI's FLUX.2 Dev "
                         "text encoder files hold): use ComfyUI's mistral_3_small_flux2 file")
    if layout.layers < max(LAYERS) or layout.heads == 0:
        raise ModelError(f"{src.path.name}: {layout.describe()} is too small for FLUX.2 Dev, which reads the hidden "
                         f"states entering layers {', '.join(map(str, LAYERS))} of {HEAD_DIM}-wide heads")
    tokenizer = tekken_tokenizer(src.get(TOKENIZER_KEY).numpy().tobytes())
    if tokenizer.token_to_id(BOS) is None:
        raise ModelError(f"{src.path.name}: its tekken.json has no {BOS} token")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return MistralEncoder(build_mistral(src, layout, device, dtype), tokenizer)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"{src.path.name}: Mistral text encoder could not be converted: {exc}") from exc
