"""Step previews: latent→RGB through the family's factors, with the factor tensors made once per device."""

from __future__ import annotations

import torch

from comfymesh.diffusion.latents import previews
from comfymesh.diffusion.latents.formats import for_family


def test_preview_is_the_factor_product_of_the_first_latent() -> None:
    fmt = for_family("sd15")
    denoised = torch.randn(2, 4, 3, 5, generator=torch.Generator().manual_seed(0))
    rgb = previews.latent_rgb_tensor(denoised, fmt)
    assert rgb.shape == (3, 5, 3) and rgb.dtype == torch.uint8
    # computed here by hand: sum over channels of latent * factor, (+bias), mapped from [-1, 1] to [0, 255]
    for y, x in ((0, 0), (2, 4), (1, 2)):
        for r in range(3):
            value = sum(float(denoised[0, c, y, x]) * fmt.rgb_factors[c][r] for c in range(4))
            value += fmt.rgb_bias[r] if fmt.rgb_bias is not None else 0.0
            expected = int(min(max((value + 1.0) / 2.0, 0.0), 1.0) * 255.0)
            assert abs(int(rgb[y, x, r]) - expected) <= 1


def test_factor_tensors_are_made_once_per_device() -> None:
    fmt = for_family("sd15")
    first = previews._factors(fmt, torch.device("cpu"))
    assert previews._factors(fmt, torch.device("cpu"))[0] is first[0]  # no new tensor (no copy) per step
