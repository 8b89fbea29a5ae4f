"""The FLUX.2 VAE (`flux2-vae.safetensors`, `full_encoder_small_decoder.safetensors`): an LDM-layout VAE with 32
latent channels whose file also holds `bn.running_mean` / `bn.running_var`, recognised by those statistics and
built as diffusers' AutoencoderKLFlux2.

ComfyUI's VAE works in the patchified space: encoding takes the posterior's mean, folds each 2×2 cell into the
channels ([B, 32, H/8, W/8] → [B, 128, H/16, W/16], channel order (c, row, column)) and normalises every channel
with the batch-norm statistics, (z − mean) / √(var + 1e-4); decoding undoes both. The 128-channel latent is
what the FLUX.2 model samples (its latent format is the identity). Pixels are cropped to multiples of 16.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from comfymesh.contracts.errors import ModelError
from comfymesh.diffusion.models.recognise import VAELayout, parse_vae
from comfymesh.diffusion.models.tensor_source import TensorSource

PATCH = 2
BN_EPS = 1e-4
_STATS = ("bn.running_mean", "bn.running_var")


@dataclass(frozen=True)
class Flux2VaeLayout:
    prefix: str
    vae: VAELayout
    decoder_channels: tuple[int, ...]  # narrower than the encoder's in full_encoder_small_decoder

    def describe(self) -> str:
        return (f"FLUX.2 VAE (encoder widths {self.vae.level_channels}, decoder widths {self.decoder_channels}, "
                f"{self.vae.z_channels} latent channels)")


def parse_flux2_vae(src: TensorSource, prefix: str = "") -> Flux2VaeLayout | None:
    """The layout of a FLUX.2 VAE, None for any other file (ComfyUI's test: the batch-norm statistics beside an
    LDM VAE)."""
    if not all(src.has(prefix + k) for k in _STATS):
        return None
    vae = parse_vae(src, prefix)
    if vae is None or vae.diffusers_naming:
        return None
    levels = len(vae.level_channels)
    decoder = tuple(src.shape(f"{prefix}decoder.up.{i}.block.0.conv2.weight")[0] for i in range(levels))
    if src.shape(prefix + _STATS[0])[0] != PATCH**2 * vae.z_channels:
        raise ModelError(f"{src.path.name}: batch-norm statistics of {src.shape(prefix + _STATS[0])[0]} channels "
                         f"do not fit {vae.z_channels} latent channels patchified 2×2")
    return Flux2VaeLayout(prefix, vae, decoder)


def patchify(z: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] → [B, C·4, H/2, W/2], channels ordered (c, row in cell, column in cell)."""
    b, c, h, w = z.shape
    z = z.reshape(b, c, h // PATCH, PATCH, w // PATCH, PATCH).permute(0, 1, 3, 5, 2, 4)
    return z.reshape(b, c * PATCH**2, h // PATCH, w // PATCH)


def unpatchify(z: torch.Tensor) -> torch.Tensor:
    """The inverse of `patchify`."""
    b, c4, h, w = z.shape
    c = c4 // PATCH**2
    z = z.reshape(b, c, PATCH, PATCH, h, w).permute(0, 1, 4, 2, 5, 3)
    return z.reshape(b, c, h * PATCH, w * PATCH)


@dataclass
class _Posterior:
    mean: torch.Tensor  # what vae_codec reads of a posterior


@dataclass
class _Encoded:
    latent_dist: _Posterior


def _flux2_class() -> Any:
    from diffusers import AutoencoderKLFlux2
    from diffusers.models.autoencoders.vae import DecoderOutput

    base: Any = AutoencoderKLFlux2

    class Flux2Autoencoder(base):  # type: ignore[misc]
        """AutoencoderKLFlux2 with ComfyUI's latent space: encode and decode speak the normalised 128-channel
        latent (the base class, and diffusers' pipelines, the 32-channel one)."""

        latent_patch = PATCH  # pixels per latent cell are the base factor times this (vae_codec.spatial_factor)

        def _stats(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            mean = self.bn.running_mean.view(1, -1, 1, 1).to(z.dtype)
            std = torch.sqrt(self.bn.running_var.view(1, -1, 1, 1).to(z.dtype) + BN_EPS)
            return mean, std

        def encode(self, x: torch.Tensor, return_dict: bool = True) -> Any:
            z = patchify(super().encode(x).latent_dist.mean)
            mean, std = self._stats(z)
            return _Encoded(_Posterior((z - mean) / std))

        def decode(self, z: torch.Tensor, return_dict: bool = True, generator: Any = None) -> Any:
            mean, std = self._stats(z)
            pixels = super().decode(unpatchify(z * std + mean)).sample
            return DecoderOutput(sample=pixels) if return_dict else (pixels,)

    return Flux2Autoencoder


def build_flux2_vae(src: TensorSource, layout: Flux2VaeLayout, device: torch.device,
                    dtype: torch.dtype) -> torch.nn.Module:
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    vae = layout.vae
    n = len(vae.level_channels)
    cfg: dict[str, Any] = {
        "in_channels": vae.in_channels, "out_channels": vae.out_channels,
        "down_block_types": ["DownEncoderBlock2D"] * n, "up_block_types": ["UpDecoderBlock2D"] * n,
        "block_out_channels": list(vae.level_channels), "decoder_block_out_channels": list(layout.decoder_channels),
        "layers_per_block": vae.res_blocks, "latent_channels": vae.z_channels, "norm_num_groups": 32,
        "use_quant_conv": src.has(layout.prefix + "quant_conv.weight"),
        "use_post_quant_conv": src.has(layout.prefix + "post_quant_conv.weight"),
    }
    raw = src.with_prefix(layout.prefix)
    state = convert_ldm_vae_checkpoint(raw, cfg)
    for k in _STATS:
        state[k] = raw[layout.prefix + k]
    state = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
    with torch.device("meta"):
        model = _flux2_class()(**cfg)
    result = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in result.missing_keys if k != "bn.num_batches_tracked"]
    if missing or result.unexpected_keys:
        raise ModelError(f"{src.path.name}: the FLUX.2 VAE weights do not fit {layout.describe()} (missing "
                         f"{missing[:4]}, unexpected {result.unexpected_keys[:4]})")
    model.bn.num_batches_tracked = torch.zeros((), dtype=torch.long, device=device)
    module: torch.nn.Module = model.eval().requires_grad_(False)
    return module


def load_flux2_vae(src: TensorSource, layout: Flux2VaeLayout, device: torch.device,
                   dtype: torch.dtype) -> torch.nn.Module:
    """The VAE on `device` in `dtype` (ComfyUI: bf16 on a GPU, float32 on the CPU)."""
    try:
        return build_flux2_vae(src, layout, device, dtype)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"{src.path.name}: FLUX.2 VAE could not be converted: {exc}") from exc


def is_flux2_vae(vae: Any) -> bool:
    return getattr(vae, "latent_patch", None) == PATCH and hasattr(vae, "bn")
