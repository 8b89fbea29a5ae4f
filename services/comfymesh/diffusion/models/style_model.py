"""Style models (models/style_models): FLUX Redux, a two-layer MLP from the CLIP vision tokens to text
tokens, `redux_down(silu(redux_up(last_hidden_state)))`, sized from its file; and StyleModelApply's rule
for joining its tokens to a conditioning, strength applied by multiplying or as an attention bias."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from comfymesh.contracts.errors import ModelError

STRENGTH_TYPES = ("multiply", "attn_bias")


class ReduxEncoder(nn.Module):
    def __init__(self, redux_dim: int, text_dim: int) -> None:
        super().__init__()
        self.redux_up = nn.Linear(redux_dim, text_dim * 3)
        self.redux_down = nn.Linear(text_dim * 3, text_dim)

    def forward(self, vision_tokens: torch.Tensor) -> torch.Tensor:
        return self.redux_down(F.silu(self.redux_up(vision_tokens)))


def load_style_model(path: Path) -> ReduxEncoder:
    state = load_file(str(path))
    if "style_embedding" in state:
        raise ModelError(f"style model {path.name} is a T2I style adapter, which is not supported yet (FLUX Redux is)")
    if "redux_down.weight" not in state or "redux_up.weight" not in state:
        raise ModelError(f"style model {path.name} is not a style model ComfyUI knows (no redux_up/redux_down weights)")
    model = ReduxEncoder(int(state["redux_up.weight"].shape[1]), int(state["redux_down.weight"].shape[0]))
    model.load_state_dict(state)
    return model.eval()


def style_tokens(model: ReduxEncoder, last_hidden_state: torch.Tensor) -> torch.Tensor:
    """The style model's tokens of a CLIP_VISION_OUTPUT batch, flattened into one sequence [1, B·T, D]."""
    width = model.redux_up.in_features
    if last_hidden_state.shape[-1] != width:
        raise ModelError(f"the style model takes {width}-wide CLIP vision tokens, the CLIP vision output has "
                         f"{last_hidden_state.shape[-1]}: use the CLIP vision model it was made for")
    device = next(model.parameters()).device
    with torch.no_grad():
        cond = model(last_hidden_state.float().to(device)).cpu()
    return cond.flatten(0, 1)[None]


def apply_style(conditioning: list[Any], cond: torch.Tensor, strength: float, strength_type: str) -> list[Any]:
    """StyleModelApply: `cond` [1, n, D] appended to every entry's tokens; "multiply" scales it, "attn_bias"
    (or an entry that already has an attention mask) extends the entry's attention mask [B, L, L] with
    log(strength) on the new tokens' columns (float16, ComfyUI's layout: text, style tokens, reference)."""
    if strength_type not in STRENGTH_TYPES:
        raise ModelError(f"strength_type must be one of {', '.join(STRENGTH_TYPES)}, got {strength_type!r}")
    if strength_type == "multiply":
        cond = cond * strength
    n = cond.shape[1]
    out = []
    for item in conditioning:
        text = torch.as_tensor(item[0]).float()
        extras = dict(item[1]) if len(item) > 1 and item[1] else {}
        if "attention_mask" in extras or (strength_type == "attn_bias" and strength != 1.0):
            bias = torch.log(torch.tensor([strength if strength_type == "attn_bias" else 1.0]))
            ref_h, ref_w = extras.get("attention_mask_img_shape", (1, 1))
            n_ref, n_txt = int(ref_h) * int(ref_w), text.shape[1]
            mask = extras.get("attention_mask")
            mask = (torch.zeros((text.shape[0], n_txt + n_ref, n_txt + n_ref), dtype=torch.float16) if mask is None
                    else torch.as_tensor(mask))
            if mask.dtype == torch.bool:
                mask = torch.log(mask.to(dtype=torch.float16))
            grown = torch.zeros((text.shape[0], n_txt + n + n_ref, n_txt + n + n_ref), dtype=torch.float16)
            grown[:, :n_txt, :n_txt] = mask[:, :n_txt, :n_txt]
            grown[:, :n_txt, n_txt + n:] = mask[:, :n_txt, n_txt:]
            grown[:, n_txt + n:, :n_txt] = mask[:, n_txt:, :n_txt]
            grown[:, n_txt + n:, n_txt + n:] = mask[:, n_txt:, n_txt:]
            grown[:, :n_txt, n_txt:n_txt + n] = bias
            grown[:, n_txt + n:, n_txt:n_txt + n] = bias
            extras["attention_mask"] = grown
            extras["attention_mask_img_shape"] = [int(ref_h), int(ref_w)]
        out.append([torch.cat((text, cond.to(text.dtype)), dim=1), extras])
    return out


def make_tiny_style_model(path: Path, *, redux_dim: int = 32, text_dim: int = 32, seed: int = 0) -> Path:
    """A random-weight FLUX Redux style model file (`redux_up`, `redux_down`)."""
    torch.manual_seed(seed)
    model = ReduxEncoder(redux_dim, text_dim)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(path))
    return path
