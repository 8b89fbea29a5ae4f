"""Where and when a conditioning entry counts: area, mask, strength and timestep range, as ComfyUI weighs them.

An entry with a `Region` predicts x0 on its area only (the latent cropped to (h, w) at (y, x)); each
side's prediction is then Σ x0_e·mult_e / (1e-37 + Σ mult_e) per element, where mult_e is the entry's
strength times its mask (times mask_strength), or, for an area without a mask, ones feathered linearly over
min(8, size // 4) rows and columns along every edge that is not the latent's own edge. Elements that no
entry covers come out 0, as in ComfyUI. An entry is skipped at steps whose σ lies outside
[σ(end_percent), σ(start_percent)] (ModelSampling.percent_to_sigma).

The CONDITIONING extras read here are ComfyUI's: "area" ((h, w, y, x) in latent pixels, or
("percentage", h, w, y, x) as fractions), "strength", "mask" (MASK at any size), "mask_strength",
"set_area_to_bounds", "start_percent" and "end_percent".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.nn.functional as F

from comfymesh.contracts.errors import NodeInputError
from comfymesh.diffusion.sampling.model_sampling import ModelSampling

Area = tuple[int, int, int, int]  # (height, width, y, x) in latent pixels
Entry = TypeVar("Entry")

FEATHER = 8
REGION_KEYS = ("area", "strength", "mask", "start_percent", "end_percent")


@dataclass(frozen=True)
class Region:
    """One entry's weighting; the defaults weigh it like a plain entry."""

    area: Area | None = None
    strength: float = 1.0
    mask: torch.Tensor | None = field(default=None, compare=False)  # [Bm, H, W] at the latent's size
    mask_strength: float = 1.0
    sigma_start: float | None = None  # the entry runs while sigma_end ≤ σ ≤ sigma_start
    sigma_end: float | None = None

    def active(self, sigma: float) -> bool:
        if self.sigma_start is not None and sigma > self.sigma_start:
            return False
        return not (self.sigma_end is not None and sigma < self.sigma_end)

    def crop(self, t: torch.Tensor) -> torch.Tensor:
        """The area of `t` [..., H, W] (all of it without an area)."""
        if self.area is None:
            return t
        h, w, y, x = self.area
        return t[..., y:y + h, x:x + w]

    def mult(self, like: torch.Tensor, full_hw: tuple[int, int]) -> torch.Tensor:
        """The weight of each element of the entry's (cropped) prediction `like` [B, C, h, w]."""
        if self.mask is not None:
            mask = self.crop(self.mask.to(like.device)[: like.shape[0]]) * self.mask_strength
            mult = mask.unsqueeze(1).repeat(like.shape[0] // mask.shape[0], like.shape[1], 1, 1) * self.strength
            return mult
        mult = torch.ones_like(like) * self.strength
        if self.area is None:
            return mult
        h, w, y, x = self.area
        for dim, size, offset, full in ((2, h, y, full_hw[0]), (3, w, x, full_hw[1])):
            ramp = min(FEATHER, size // 4)
            for t in range(ramp):
                if offset != 0:
                    mult.narrow(dim, t, 1).mul_((t + 1) / ramp)
                if size + offset < full:
                    mult.narrow(dim, size - 1 - t, 1).mul_((t + 1) / ramp)
        return mult


def has_region(extras: dict[str, Any]) -> bool:
    return any(k in extras for k in REGION_KEYS)


def _mask_bounds(mask: torch.Tensor) -> Area:
    """ComfyUI's set_area_to_bounds: the box around every non-zero element of any mask, at least 8×8."""
    bounds = mask.abs().amax(dim=0)
    nonzero = torch.nonzero(bounds)
    if nonzero.numel() == 0:
        return (8, 8, 0, 0)  # an all-zero mask weighs nothing anyway
    y0, x0 = (int(v) for v in nonzero.min(dim=0).values)
    y1, x1 = (int(v) for v in nonzero.max(dim=0).values)
    return (max(8, y1 - y0 + 1), max(8, x1 - x0 + 1), y0, x0)


def region_of(extras: dict[str, Any], sampling: ModelSampling, latent_hw: tuple[int, int], which: str,
              device: torch.device) -> Region | None:
    """The entry's Region at this latent size, its mask on `device` (None for a plain entry)."""
    if not has_region(extras):
        return None
    h, w = latent_hw
    area: Area | None = None
    raw = extras.get("area")
    if raw is not None:
        raw = list(raw)
        if raw[0] == "percentage":
            fh, fw, fy, fx = (float(v) for v in raw[1:5])
            area = (max(1, round(fh * h)), max(1, round(fw * w)), round(fy * h), round(fx * w))
        else:
            area = (int(raw[0]), int(raw[1]), int(raw[2]), int(raw[3]))
    mask = None
    if extras.get("mask") is not None:
        mask = torch.as_tensor(extras["mask"]).float()
        if mask.ndim == 2:
            mask = mask.unsqueeze(0)
        if tuple(mask.shape[1:]) != (h, w):
            mask = F.interpolate(mask.unsqueeze(1), size=(h, w), mode="bilinear", align_corners=False).squeeze(1)
        if extras.get("set_area_to_bounds"):
            area = _mask_bounds(mask)
        mask = mask.to(device)
    if area is not None:
        ah, aw, y, x = area
        # an area reaching past the latent is cut at its edge, as ComfyUI does
        area = (min(h - y, ah), min(w - x, aw), y, x)
        if area[0] <= 0 or area[1] <= 0:
            raise NodeInputError(f"{which} conditioning area {raw} lies outside the {w * 8}x{h * 8} latent")
    start, end = extras.get("start_percent"), extras.get("end_percent")
    return Region(area=area, strength=float(extras.get("strength", 1.0)), mask=mask,
                  mask_strength=float(extras.get("mask_strength", 1.0)),
                  sigma_start=None if start is None else sampling.percent_to_sigma(float(start)),
                  sigma_end=None if end is None else sampling.percent_to_sigma(float(end)))


def weighted_sum(x: torch.Tensor, regions: Sequence[Region | None], outs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Σ out·mult / (1e-37 + Σ mult) over each entry's area; 0 where no entry counts."""
    total = torch.zeros_like(x)
    count = torch.full_like(x, 1e-37)
    full_hw = (x.shape[2], x.shape[3])
    for region, out in zip(regions, outs, strict=True):
        region = region or Region()
        mult = region.mult(out, full_hw)
        region.crop(total).add_(out * mult)
        region.crop(count).add_(mult)
    return total / count


def _covers(outer: Area, inner: Area) -> bool:
    return (inner[2] >= outer[2] and inner[3] >= outer[3] and outer[0] + outer[2] >= inner[0] + inner[2]
            and outer[1] + outer[3] >= inner[1] + inner[3])


def add_opposite_areas(sides: Sequence[list[Entry]], region_of_entry: Callable[[Entry], Region | None],
                       model_conds_of: Callable[[Entry, Entry], Entry]) -> None:
    """ComfyUI's "each cond area has an opposite one with the same area": for every entry with an area, each
    other side gets the entry again with the model inputs (context, y) of that side's smallest entry covering
    the area (one without an area covers all), unless that smallest entry has exactly this area already.

    `region_of_entry(e)` reads an entry's Region; `model_conds_of(e, donor)` is e with donor's model inputs."""
    for side in sides:
        for entry in list(side):
            region = region_of_entry(entry)
            if region is None or region.area is None:
                continue
            for other in sides:
                if other is side:
                    continue
                smallest, best = None, None
                for candidate in other:
                    cand = region_of_entry(candidate)
                    if cand is not None and cand.area is not None:
                        if _covers(cand.area, region.area) and (
                                smallest is None or best is None or best[0] * best[1] > cand.area[0] * cand.area[1]):
                            smallest, best = candidate, cand.area
                    elif smallest is None:
                        smallest = candidate
                if smallest is None or best == region.area:
                    continue
                other.append(model_conds_of(entry, smallest))


__all__ = ["Area", "Region", "add_opposite_areas", "has_region", "region_of", "weighted_sum"]
