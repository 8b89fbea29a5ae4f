"""SigLIP vision (FLUX Redux's sigclip_vision_patch14_384): recognised by shape, and its CLIP_VISION_OUTPUT
checked against a forward written here from ComfyUI 0.8.0's CLIPVision for siglip_vision_model (biased patch
conv, no class token or pre-norm, pre-LN blocks with tanh GELU, LayerNorm ε 1e-5, post-LN over the sequence,
which is image_embeds too), and its preprocessing (384 px, mean and std 0.5); then Redux's tokens from it."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from comfymesh.diffusion.models import clip_vision, style_model


def _ln(sd: dict[str, torch.Tensor], name: str, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], eps=1e-5)


def _lin(sd: dict[str, torch.Tensor], name: str, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, sd[f"{name}.weight"], sd[f"{name}.bias"])


def reference(sd: dict[str, torch.Tensor], pixels: torch.Tensor, heads: int = 16) -> tuple[torch.Tensor, ...]:
    p = "vision_model."
    x = F.conv2d(pixels, sd[f"{p}embeddings.patch_embedding.weight"], sd[f"{p}embeddings.patch_embedding.bias"],
                 stride=14).flatten(2).transpose(1, 2)
    x = x + sd[f"{p}embeddings.position_embedding.weight"]
    layers = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith(f"{p}encoder.layers."))
    states = []
    for i in range(layers):
        b = f"{p}encoder.layers.{i}"
        h = _ln(sd, f"{b}.layer_norm1", x)
        q, k, v = (_lin(sd, f"{b}.self_attn.{n}_proj", h).unflatten(-1, (heads, -1)).transpose(1, 2) for n in "qkv")
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        x = x + _lin(sd, f"{b}.self_attn.out_proj", a)
        h = F.gelu(_lin(sd, f"{b}.mlp.fc1", _ln(sd, f"{b}.layer_norm2", x)), approximate="tanh")
        x = x + _lin(sd, f"{b}.mlp.fc2", h)
        states.append(x)
    return _ln(sd, f"{p}post_layernorm", x), states[-2]


def test_siglip_file_runs_as_comfyui_runs_it(tmp_path: Path) -> None:
    path = clip_vision.make_tiny_siglip_vision(tmp_path / "any_name.safetensors", seed=3)
    sd = load_file(str(path))
    assert any(k.startswith("vision_model.head.") for k in sd)  # the real file's pooling head, left unused
    model = clip_vision.load_clip_vision(path)
    assert isinstance(model, clip_vision.SiglipVision) and model.image_size == 384
    image = torch.rand(1, 300, 420, 3, generator=torch.Generator().manual_seed(4))
    out = clip_vision.encode_image(model, image, "center")
    pixels = clip_vision.preprocess(image, 384, "center", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert pixels.shape == (1, 3, 384, 384) and pixels.min() >= -1.0 and pixels.max() <= 1.0
    last, penultimate = reference(sd, pixels)
    assert out["last_hidden_state"].shape == (1, 729, 32)  # 384 // 14 = 27 patches a side
    assert torch.allclose(out["last_hidden_state"], last, atol=1e-5)
    assert torch.equal(out["image_embeds"], out["last_hidden_state"])
    assert torch.allclose(out["penultimate_hidden_states"], penultimate, atol=1e-5)


def test_redux_tokens_from_siglip_are_t5_wide(tmp_path: Path) -> None:
    vision = clip_vision.load_clip_vision(clip_vision.make_tiny_siglip_vision(tmp_path / "v.safetensors"))
    redux = style_model.load_style_model(style_model.make_tiny_style_model(tmp_path / "r.safetensors",
                                                                           redux_dim=32, text_dim=64))
    hidden = clip_vision.encode_image(vision, torch.rand(2, 64, 64, 3), "center")["last_hidden_state"]
    tokens = style_model.style_tokens(redux, hidden)
    assert tokens.shape == (1, 2 * 729, 64)  # both images' tokens in one sequence, as StyleModelApply joins them
    sd = load_file(str(tmp_path / "r.safetensors"))
    expected = F.linear(F.silu(F.linear(hidden, sd["redux_up.weight"], sd["redux_up.bias"])),
                        sd["redux_down.weight"], sd["redux_down.bias"]).flatten(0, 1)[None]
    assert torch.allclose(tokens, expected, atol=1e-5)
