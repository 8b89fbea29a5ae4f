"""Latent formats per family: the scale (and shift) applied around sampling and the Latent2RGB preview factors."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LatentFormat:
    scale_factor: float
    rgb_factors: tuple[tuple[float, float, float], ...]  # rows: latent channels; columns: R, G, B
    rgb_bias: tuple[float, float, float] | None = None
    shift_factor: float = 0.0  # the 16-channel VAEs' latents are centred before scaling
    patch: int = 1  # latent cells folded into channels (FLUX.2: 2×2); the preview factors are per unfolded channel

    @property
    def channels(self) -> int:
        return len(self.rgb_factors) * self.patch**2

    def process_in(self, latent: torch.Tensor) -> torch.Tensor:
        return (latent - self.shift_factor) * self.scale_factor

    def process_out(self, latent: torch.Tensor) -> torch.Tensor:
        return latent / self.scale_factor + self.shift_factor


SD15 = LatentFormat(
    0.18215,
    ((0.3512, 0.2297, 0.3227), (0.3250, 0.4974, 0.2350), (-0.2829, 0.1762, 0.2721), (-0.2120, -0.2616, -0.7177)),
)
SDXL = LatentFormat(
    0.13025,
    ((0.3651, 0.4232, 0.4341), (-0.2533, -0.0042, 0.1068), (0.1076, 0.1111, -0.0362), (-0.3165, -0.2492, -0.2188)),
    (0.1084, -0.0175, -0.0011),
)

# FLUX.1's 16-channel VAE (ae.safetensors), shared by Z-Image
FLUX = LatentFormat(
    0.3611,
    ((-0.0346, 0.0244, 0.0681), (0.0034, 0.0210, 0.0687), (0.0275, -0.0668, -0.0433), (-0.0174, 0.0160, 0.0617),
     (0.0859, 0.0721, 0.0329), (0.0004, 0.0383, 0.0115), (0.0405, 0.0861, 0.0915), (-0.0236, -0.0185, -0.0259),
     (-0.0245, 0.0250, 0.1180), (0.1008, 0.0755, -0.0421), (-0.0515, 0.0201, 0.0011), (0.0428, -0.0012, -0.0036),
     (0.0817, 0.0765, 0.0749), (-0.1264, -0.0522, -0.1103), (-0.0280, -0.0881, -0.0499), (-0.1262, -0.0982, -0.0778)),
    (-0.0329, -0.0718, -0.0851),
    shift_factor=0.1159,
)

# FLUX.2's VAE latents: 32 channels patchified 2×2 into 128 and batch-normalised by the VAE itself (models.flux2_vae),
# so sampling takes them as they are; the preview factors apply to the 32 channels after unfolding
FLUX2 = LatentFormat(
    1.0,
    ((0.0058, 0.0113, 0.0073), (0.0495, 0.0443, 0.0836), (-0.0099, 0.0096, 0.0644), (0.2144, 0.3009, 0.3652),
     (0.0166, -0.0039, -0.0054), (0.0157, 0.0103, -0.0160), (-0.0398, 0.0902, -0.0235), (-0.0052, 0.0095, 0.0109),
     (-0.3527, -0.2712, -0.1666), (-0.0301, -0.0356, -0.0180), (-0.0107, 0.0078, 0.0013), (0.0746, 0.0090, -0.0941),
     (0.0156, 0.0169, 0.0070), (-0.0034, -0.0040, -0.0114), (0.0032, 0.0181, 0.0080), (-0.0939, -0.0008, 0.0186),
     (0.0018, 0.0043, 0.0104), (0.0284, 0.0056, -0.0127), (-0.0024, -0.0022, -0.0030), (0.1207, -0.0026, 0.0065),
     (0.0128, 0.0101, 0.0142), (0.0137, -0.0072, -0.0007), (0.0095, 0.0092, -0.0059), (0.0000, -0.0077, -0.0049),
     (-0.0465, -0.0204, -0.0312), (0.0095, 0.0012, -0.0066), (0.0290, -0.0034, 0.0025), (0.0220, 0.0169, -0.0048),
     (-0.0332, -0.0457, -0.0468), (-0.0085, 0.0389, 0.0609), (-0.0076, 0.0003, -0.0043), (-0.0111, -0.0460, -0.0614)),
    (-0.0329, -0.0718, -0.0851),
    patch=2,
)

# Chroma Radiance samples pixels: the latent is the RGB image in [-1, 1] as it is (ComfyUI's ChromaRadiance format)
CHROMA_RADIANCE = LatentFormat(1.0, ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)))


def for_family(family: str) -> LatentFormat:
    """A registered family's own format; the UNet families' SD1.5 / SDXL formats."""
    from comfymesh.diffusion.families import registry  # its families import these formats

    registered = registry.get(family)
    if registered is not None:
        return registered.latent_format
    return SDXL if family.startswith("sdxl") else SD15
