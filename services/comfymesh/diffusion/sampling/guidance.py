"""The guided denoiser D(x, σ) the samplers see: UNet call, eps/v parameterisation, CFG, inpaint mask."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from comfymesh.diffusion.sampling.model_sampling import ModelSampling
from comfymesh.diffusion.sampling.post_cfg import PostCfg, apply_post_cfg
from comfymesh.diffusion.sampling.regions import Region, weighted_sum

UNetFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
"""(x_in [N, C, h, w] in the UNet dtype, timesteps [N], context [N, T, D], y [N, adm] or None) → output."""

ResidualUNetFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, list[torch.Tensor],
                          torch.Tensor], torch.Tensor]
"""UNetFn with ControlNet residuals: (x_in, timesteps, context, y, one residual per down-block output, the
middle block's residual) → output."""

ControlledUNet = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, int],
                          torch.Tensor | None]
"""(x_in, timesteps, context, y as for UNetFn, the step's σ, entries in the call) → the UNet output with the
entry's ControlNet residuals added, or None where no ControlNet of its chain applies at this σ."""


@dataclass
class CondEntry:
    """One conditioning entry ready for the UNet: context [1, T, D] and the ADM vector y [1, adm] or None."""

    context: torch.Tensor
    y: torch.Tensor | None = None
    # extra input channels [B, c, h, w] appended to x_in (inpainting / instruct-pix2pix models; see `concat`)
    concat: torch.Tensor | None = None
    # where and when the entry counts (ConditioningSetArea/Mask/AreaStrength/TimestepRange; see `regions`)
    region: Region | None = None
    # the UNet with this entry's ControlNet chain (see `ControlledUNet`)
    control: ControlledUNet | None = None
    # keyword inputs the family's model takes for this entry beyond (x, t, context, y), e.g. FLUX Kontext's
    # reference latents and their method; entries with other inputs never share a call
    model_inputs: dict[str, Any] | None = None


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
    """Classifier-free guided x0 prediction; negative and positive run in one UNet call when possible.
    `post_cfg` (a model patch such as CFGNorm) then rewrites the guided prediction."""

    post_cfg: tuple[PostCfg, ...] = ()
    # the CFG++ samplers' wish (ComfyUI's post-CFG capture with disable_cfg1_optimization): evaluate the
    # negative even at cfg 1 and keep each evaluation's unconditional x0 in `last_uncond` (0 with no negative)
    keep_uncond: bool = False
    last_uncond: torch.Tensor | None = None

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
        self.tile_context = True  # False: only entries of equal context length share a UNet call

    def _to_x0(self, x: torch.Tensor, sigma: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        if self.prediction == "v":
            return x / (sigma**2 + 1.0) - out * sigma / (sigma**2 + 1.0) ** 0.5
        return x - out * sigma  # eps, and flow (CONST: the model's output is x − x0 per unit σ)

    def _run(self, x: torch.Tensor, sigma: torch.Tensor, entries: list[CondEntry]) -> list[torch.Tensor]:
        """One x0 prediction per entry (on its area), batching entries into one UNet call when they share
        area and ControlNet and their lengths tile."""
        s, t = sigma_and_timestep(self.sampling, sigma, x.device)
        # flow models (CONST) take x as it is; eps and v models take it scaled to unit variance
        x_in = (x if self.prediction == "flow" else x / (s**2 + 1.0) ** 0.5).to(self.dtype)
        outs: list[torch.Tensor] = [x] * len(entries)
        for indexes in _call_groups(entries, self.tile_context):
            for i, x0 in zip(indexes, self._run_call(x, x_in, s, t, sigma, [entries[i] for i in indexes]),
                             strict=True):
                outs[i] = x0
        return outs

    def _run_call(self, x: torch.Tensor, x_in: torch.Tensor, s: torch.Tensor, t: torch.Tensor, sigma: torch.Tensor,
                  group: list[CondEntry]) -> tuple[torch.Tensor, ...]:
        """The x0 predictions of entries sharing one UNet call (same area, same ControlNet)."""
        region = group[0].region
        if region is not None:
            x, x_in = region.crop(x), region.crop(x_in)
        batch = x.shape[0]
        lengths = [e.context.shape[1] for e in group]
        length = max(lengths) if len(group) == 1 else math.lcm(*lengths)
        ctx = torch.cat([_tile_to(e.context, length).expand(batch, -1, -1) for e in group])
        ys = [e.y for e in group]
        y = None if ys[0] is None else torch.cat([yy.expand(batch, -1) for yy in ys if yy is not None])
        n = len(group)
        rows = x_in.repeat(n, *[1] * (x_in.ndim - 1))  # 4-D latents, or 5-D with frames (Qwen-Image)
        if group[0].concat is not None:
            concat = torch.cat([e.concat for e in group if e.concat is not None])
            rows = torch.cat([rows, (concat if region is None else region.crop(concat)).to(self.dtype)], 1)
        y = None if y is None else y.to(self.dtype)
        control = group[0].control
        # an entry's model inputs (reference latents) reach the controlled call too; only families that have them
        # (Qwen-Image's chain) take them
        inputs = group[0].model_inputs or {}
        out = None if control is None else control(rows, t.expand(n * batch), ctx.to(self.dtype), y, sigma, n,
                                                   **inputs)
        if out is None:
            out = self.unet(rows, t.expand(n * batch), ctx.to(self.dtype), y, **(group[0].model_inputs or {}))
        out = out.float()
        x0 = self._to_x0(x.repeat(n, *[1] * (x.ndim - 1)), s, out)
        return x0.chunk(n)

    def _predict(self, x: torch.Tensor, sigma: torch.Tensor, sides: list[list[CondEntry]]) -> list[torch.Tensor]:
        """Each side's x0 prediction from its entries, all evaluated together: a plain average, or ComfyUI's
        area/mask/strength weighting once any entry has a Region (entries outside their timestep range
        skipped); an empty side predicts 0."""
        if any(e.region is not None for side in sides for e in side):
            step_sigma = float(sigma.reshape(-1)[0])
            sides = [[e for e in side if e.region is None or e.region.active(step_sigma)] for side in sides]
            outs = self._run(x, sigma, [e for side in sides for e in side])
            preds, start = [], 0
            for side in sides:
                preds.append(weighted_sum(x, [e.region for e in side], outs[start:start + len(side)]))
                start += len(side)
            return preds
        outs = self._run(x, sigma, [e for side in sides for e in side])
        preds, start = [], 0
        for side in sides:
            preds.append(_average(outs[start:start + len(side)]) if side else torch.zeros_like(x))
            start += len(side)
        return preds

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if self.before_eval is not None:
            self.before_eval()
        if self.skip_negative and not self.keep_uncond:
            pos = self._predict(x, sigma, [self.positive])[0]
            return apply_post_cfg(self.post_cfg, pos, pos)
        neg, pos = self._predict(x, sigma, [self.negative, self.positive])
        if self.keep_uncond:
            self.last_uncond = neg
        return apply_post_cfg(self.post_cfg, pos, neg + (pos - neg) * self.cfg)


def _average(outs: list[torch.Tensor]) -> torch.Tensor:
    if len(outs) == 1:
        return outs[0]
    return torch.stack(outs).sum(0) / len(outs)


def _call_groups(entries: list[CondEntry], tile: bool = True) -> list[list[int]]:
    """Indexes of the entries that share one UNet call: same area, ControlNet and model inputs, then all
    of them when their context lengths tile to a common length (lcm ≤ 4 × the shortest; with `tile` off only
    when they are equal), else one by one."""
    parts: dict[tuple[object, int, int], list[int]] = {}
    for i, e in enumerate(entries):
        area = None if e.region is None else e.region.area
        parts.setdefault((area, id(e.control), id(e.model_inputs)), []).append(i)
    groups: list[list[int]] = []
    for indexes in parts.values():
        lengths = [entries[i].context.shape[1] for i in indexes]
        together = len(set(lengths)) == 1 or (tile and math.lcm(*lengths) <= 4 * min(lengths))
        groups += [indexes] if together else [[i] for i in indexes]
    return groups


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
        self.flow = False  # True: the original is re-noised as a flow model's start point, σ·noise + (1 − σ)·x0

    @staticmethod
    def prepare_mask(mask: torch.Tensor, shape: torch.Size, device: torch.device) -> torch.Tensor:
        """ComfyUI's reshape_mask: to the latent's size (bilinear), channels and batch; for a 5-D latent
        (Qwen-Image's frames) the mask's batch is the frame axis, resized trilinearly."""
        if len(shape) == 5:
            m = mask.float()
            m = m if m.ndim == 5 else m.reshape(1, 1, -1, mask.shape[-2], mask.shape[-1])
            m = F.interpolate(m, size=tuple(shape[2:]), mode="trilinear")
        else:
            m = mask.float().reshape(-1, 1, mask.shape[-2], mask.shape[-1])
            m = F.interpolate(m, size=(shape[2], shape[3]), mode="bilinear")
        m = m.expand(-1, shape[1], *[-1] * (len(shape) - 2))
        reps = math.ceil(shape[0] / m.shape[0])
        return m.repeat(reps, *[1] * (len(shape) - 1))[: shape[0]].to(device)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        mask = self.mask if self.mask_fn is None else self.mask_fn(self.mask, sigma)
        keep = 1.0 - mask
        s = sigma.to(x.device, non_blocking=True)
        renoised = s * self.noise + (1.0 - s) * self.latent if self.flow else self.latent + self.noise * s
        x = x * mask + renoised * keep
        return self.inner(x, sigma) * mask + self.latent * keep
