"""The guided denoiser D(x, σ) the samplers see: UNet call, eps/v parameterisation, CFG, inpaint mask."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from comfymesh.diffusion.sampling.model_sampling import ModelSampling

UNetFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
"""(x_in [N, C, h, w] in the UNet dtype, timesteps [N], context [N, T, D], y [N, adm] or None) → output."""


@dataclass
class CondEntry:
    """One conditioning entry ready for the UNet: context [1, T, D] and the ADM vector y [1, adm] or None."""

    context: torch.Tensor
    y: torch.Tensor | None = None
    # extra input channels [B, c, h, w] appended to x_in (inpainting / instruct-pix2pix models; see `concat`)
    concat: torch.Tensor | None = None


def _tile_to(ctx: torch.Tensor, length: int) -> torch.Tensor:
    # repeating keys/values whole-sequence does not change attention results
    return ctx.repeat(1, length // ctx.shape[1], 1)


def sigma_and_timestep(sampling: ModelSampling, sigma: torch.Tensor, device: torch.device,
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """σ as the step's arithmetic uses it, and the UNet's timestep on `device`.

    No host-to-device copy on a GPU: one from pageable memory may wait for the GPU queue to drain, and the
    step loop could then never run ahead of the GPU. A one-element CPU σ goes to the kernels as an
    argument, and the timestep is filled on the device from a number."""
    if device.type == "cuda" and sigma.numel() == 1 and not sigma.is_cuda:
        return sigma.reshape(()), torch.full((), float(sampling.timestep(sigma)), device=device)
    return sigma.to(device, non_blocking=True), sampling.timestep(sigma).to(device, non_blocking=True)


class GuidedDenoiser:
    """Classifier-free guided x0 prediction; negative and positive run in one UNet call when possible."""

    def __init__(self, unet: UNetFn, sampling: ModelSampling, prediction: str, positive: list[CondEntry],
                 negative: list[CondEntry], cfg: float, dtype: torch.dtype,
                 before_eval: Callable[[], None] | None = None) -> None:
        self.unet = unet
        self.sampling = sampling
        self.prediction = prediction
        self.positive = positive
        self.negative = negative
        self.cfg = cfg
        self.dtype = dtype
        self.before_eval = before_eval
        self.skip_negative = math.isclose(cfg, 1.0)

    def _to_x0(self, x: torch.Tensor, sigma: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        if self.prediction == "v":
            return x / (sigma**2 + 1.0) - out * sigma / (sigma**2 + 1.0) ** 0.5
        return x - out * sigma  # eps, and flow (CONST: the model's output is x − x0 per unit σ)

    def _run(self, x: torch.Tensor, sigma: torch.Tensor, entries: list[CondEntry]) -> list[torch.Tensor]:
        """One x0 prediction per entry, batching entries into one UNet call when their lengths tile."""
        batch = x.shape[0]
        s, t = sigma_and_timestep(self.sampling, sigma, x.device)
        # flow models (CONST) take x as it is; eps and v models take it scaled to unit variance
        x_in = (x if self.prediction == "flow" else x / (s**2 + 1.0) ** 0.5).to(self.dtype)
        lengths = [e.context.shape[1] for e in entries]
        lcm = math.lcm(*lengths)
        groups = [entries] if lcm <= 4 * min(lengths) else [[e] for e in entries]
        outs: list[torch.Tensor] = []
        for group in groups:
            length = max(e.context.shape[1] for e in group) if len(group) == 1 else lcm
            ctx = torch.cat([_tile_to(e.context, length).expand(batch, -1, -1) for e in group])
            ys = [e.y for e in group]
            y = None if ys[0] is None else torch.cat([yy.expand(batch, -1) for yy in ys if yy is not None])
            n = len(group)
            rows = x_in.repeat(n, 1, 1, 1)
            if group[0].concat is not None:
                rows = torch.cat([rows, torch.cat([e.concat for e in group if e.concat is not None]).to(self.dtype)], 1)
            out = self.unet(rows, t.expand(n * batch), ctx.to(self.dtype),
                            None if y is None else y.to(self.dtype)).float()
            x0 = self._to_x0(x.repeat(n, 1, 1, 1), s, out)
            outs.extend(x0.chunk(n))
        return outs

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if self.before_eval is not None:
            self.before_eval()
        entries = self.positive if self.skip_negative else self.negative + self.positive
        outs = self._run(x, sigma, entries)
        pos = _average(outs[len(outs) - len(self.positive):])
        if self.skip_negative:
            return pos
        neg = _average(outs[: len(self.negative)])
        return neg + (pos - neg) * self.cfg


def _average(outs: list[torch.Tensor]) -> torch.Tensor:
    if len(outs) == 1:
        return outs[0]
    return torch.stack(outs).sum(0) / len(outs)


class MaskedDenoiser:
    """Inpainting with a noise_mask (1 = regenerate): outside the mask x follows the re-noised original."""

    def __init__(self, inner: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], mask: torch.Tensor,
                 latent: torch.Tensor, noise: torch.Tensor,
                 mask_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> None:
        """`mask_fn(mask, σ)`, where given, makes each evaluation's mask (DifferentialDiffusion)."""
        self.inner = inner
        self.mask = mask
        self.latent = latent
        self.noise = noise
        self.mask_fn = mask_fn

    @staticmethod
    def prepare_mask(mask: torch.Tensor, shape: torch.Size, device: torch.device) -> torch.Tensor:
        m = mask.float().reshape(-1, 1, mask.shape[-2], mask.shape[-1])
        m = F.interpolate(m, size=(shape[2], shape[3]), mode="bilinear")
        m = m.expand(-1, shape[1], -1, -1)
        reps = math.ceil(shape[0] / m.shape[0])
        return m.repeat(reps, 1, 1, 1)[: shape[0]].to(device)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        mask = self.mask if self.mask_fn is None else self.mask_fn(self.mask, sigma)
        keep = 1.0 - mask
        s = sigma.to(x.device, non_blocking=True)
        x = x * mask + (self.latent + self.noise * s) * keep
        return self.inner(x, sigma) * mask + self.latent * keep
