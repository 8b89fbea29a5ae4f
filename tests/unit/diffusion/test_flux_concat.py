"""FLUX.1 Fill / Canny concat channels against ComfyUI 0.8.0's Flux.concat_cond, written out here from its
formulas: the image latent process_in'd (zeros without one), the mask channel-averaged, resized bilinearly to
8× the latent and each 8×8 cell laid along 64 channels by view/permute."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from comfymesh.contracts.errors import NodeInputError
from comfymesh.diffusion.latents.formats import FLUX
from comfymesh.diffusion.sampling.concat import concat_for, concat_kind

SHIFT, SCALE = 0.1159, 0.3611  # ComfyUI's latent_formats.Flux


def comfy_mask(mask: torch.Tensor, h: int, w: int) -> torch.Tensor:
    mask = torch.mean(mask, dim=1, keepdim=True)
    # common_upscale(..., "bilinear", "center"): crop the centre to the target's aspect, then resize
    old_h, old_w = mask.shape[-2:]
    old_aspect, new_aspect = old_w / old_h, w / h
    x = round((old_w - old_w * (new_aspect / old_aspect)) / 2) if old_aspect > new_aspect else 0
    y = round((old_h - old_h * (old_aspect / new_aspect)) / 2) if old_aspect < new_aspect else 0
    mask = mask.narrow(-2, y, old_h - y * 2).narrow(-1, x, old_w - x * 2)
    mask = F.interpolate(mask, size=(h * 8, w * 8), mode="bilinear")
    return mask.view(mask.shape[0], mask.shape[2] // 8, 8, mask.shape[3] // 8, 8).permute(0, 2, 4, 1, 3).reshape(
        mask.shape[0], -1, mask.shape[2] // 8, mask.shape[3] // 8)


def test_kinds_follow_the_input_channels() -> None:
    assert concat_kind(16, 16, "flux") is None
    assert concat_kind(32, 16, "flux") == "flux_image"
    assert concat_kind(96, 16, "flux") == "flux_fill"
    assert concat_kind(9, 4, "sd15") == "inpaint"  # other families keep their rules
    with pytest.raises(NodeInputError, match="50 input channels"):
        concat_kind(50, 16, "flux")


def test_fill_concat_is_comfyuis() -> None:
    gen = torch.Generator().manual_seed(0)
    latent = torch.randn(2, 16, 5, 6, generator=gen)
    image = torch.randn(1, 16, 5, 6, generator=gen)
    mask = torch.rand(1, 1, 40, 48, generator=gen)  # a soft pixel mask: ComfyUI does not round it
    out = concat_for("flux_fill", {"concat_latent_image": image, "concat_mask": mask}, FLUX, "flux", latent, None)
    expected = torch.cat([((image - SHIFT) * SCALE).expand(2, -1, -1, -1), comfy_mask(mask, 5, 6).expand(2, -1, -1, -1)], 1)
    assert out is not None and out.shape == (2, 80, 5, 6)  # x (16) ‖ this: the model's 96
    assert torch.allclose(out, expected, atol=1e-6)
    # a mask at another size is resized to 8× the latent first
    small = torch.rand(1, 1, 17, 23, generator=gen)
    out = concat_for("flux_fill", {"concat_latent_image": image, "concat_mask": small}, FLUX, "flux", latent, None)
    assert out is not None and torch.allclose(out[:1, 16:], comfy_mask(small, 5, 6), atol=1e-6)


def test_fill_falls_back_to_the_noise_mask_then_ones() -> None:
    latent = torch.zeros(1, 16, 3, 4)
    noise_mask = torch.rand(1, 1, 3, 4, generator=torch.Generator().manual_seed(1)).expand(1, 16, 3, 4)
    out = concat_for("flux_fill", {}, FLUX, "flux", latent, noise_mask)
    assert out is not None
    assert torch.allclose(out[:, :16], torch.full((1, 16, 3, 4), -SHIFT * SCALE))  # no image: zeros, process_in'd
    assert torch.allclose(out[:, 16:], comfy_mask(noise_mask, 3, 4), atol=1e-6)
    ones = concat_for("flux_fill", {}, FLUX, "flux", latent, None)
    assert ones is not None and torch.equal(ones[:, 16:], torch.ones(1, 64, 3, 4))


def test_canny_concat_is_the_scaled_control_latent() -> None:
    gen = torch.Generator().manual_seed(2)
    latent = torch.randn(1, 16, 4, 4, generator=gen)
    control = torch.randn(1, 16, 8, 8, generator=gen)  # another size: bilinear to the latent's
    out = concat_for("flux_image", {"concat_latent_image": control}, FLUX, "flux", latent, None)
    expected = (F.interpolate(control, size=(4, 4), mode="bilinear") - SHIFT) * SCALE
    assert out is not None and torch.allclose(out, expected, atol=1e-6)
    blank = concat_for("flux_image", {}, FLUX, "flux", latent, None)
    assert blank is not None and torch.allclose(blank, torch.full_like(latent, -SHIFT * SCALE))
