"""The Wan 2.1 latent format (ComfyUI's `Wan21`), which Qwen-Image's VAE shares: 16 channels normalised per
channel, (z − mean_c) / std_c, with scale 1, on latents of one or more frames ([B, C, T, H, W], or [B, C, H, W])."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from comfymesh.diffusion.latents.formats import LatentFormat


@dataclass(frozen=True)
class ChannelLatentFormat(LatentFormat):
    """A latent format with a mean and a standard deviation per channel instead of one shift and scale."""

    means: tuple[float, ...] = ()
    stds: tuple[float, ...] = ()
    dimensions: int = 3  # ComfyUI's latent_dimensions: a frame axis between channels and rows

    def _per_channel(self, values: tuple[float, ...], latent: torch.Tensor) -> torch.Tensor:
        shape = (1, len(values)) + (1,) * (latent.ndim - 2)
        return torch.tensor(values, dtype=latent.dtype, device=latent.device).view(shape)

    def process_in(self, latent: torch.Tensor) -> torch.Tensor:
        mean, std = self._per_channel(self.means, latent), self._per_channel(self.stds, latent)
        return (latent - mean) * self.scale_factor / std

    def process_out(self, latent: torch.Tensor) -> torch.Tensor:
        mean, std = self._per_channel(self.means, latent), self._per_channel(self.stds, latent)
        return latent * std / self.scale_factor + mean


WAN21 = ChannelLatentFormat(
    1.0,
    ((-0.1299, -0.1692, 0.2932), (0.0671, 0.0406, 0.0442), (0.3568, 0.2548, 0.1747), (0.0372, 0.2344, 0.1420),
     (0.0313, 0.0189, -0.0328), (0.0296, -0.0956, -0.0665), (-0.3477, -0.4059, -0.2925), (0.0166, 0.1902, 0.1975),
     (-0.0412, 0.0267, -0.1364), (-0.1293, 0.0740, 0.1636), (0.0680, 0.3019, 0.1128), (0.0032, 0.0581, 0.0639),
     (-0.1251, 0.0927, 0.1699), (0.0060, -0.0633, 0.0005), (0.3477, 0.2275, 0.2950), (0.1984, 0.0913, 0.1861)),
    (-0.1835, -0.0868, -0.3360),
    means=(-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
           0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921),
    stds=(2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
          3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160),
)
