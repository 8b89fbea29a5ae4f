"""Chroma Radiance's NeRF head: each image patch's pixels, with a DCT-like code of their place in the patch,
through small MLPs whose weights the transformer's hidden state of that patch generates; the patches folded back
into the image and a last norm and projection (a linear map, or a 3×3 convolution) give its pixels.

The module's names are the file's (`nerf_image_embedder.embedder.0`, `nerf_blocks.N.{param_generator,norm}`,
`nerf_final_layer{,_conv}`), so the file's tensors load as they are. Numerics as ComfyUI 0.8.0 computes them: the
embedder in float32; the code cos(π·fx·x)·cos(π·fy·y) / (1 + fx·fy) for x, y in linspace(0, 1, P) and
fx, fy in 0…F−1 (fx major); each block's three generated matrices L2-normalised over their input axis, a GLU
(silu(x·G) ⊙ (x·V))·O on the RMS-normed input plus the input; RMS norms with ε 1e-6.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from comfymesh.contracts.errors import ModelError
from comfymesh.diffusion.models.tensor_source import TensorSource

EPS = 1e-6


@dataclass(frozen=True)
class NerfLayout:
    width: int  # the NeRF's hidden size
    depth: int
    mlp_ratio: int
    freqs: int  # DCT frequencies per axis
    conv_head: bool

    @classmethod
    def read(cls, src: TensorSource, prefix: str, hidden: int, channels: int) -> NerfLayout:
        width = src.shape(prefix + "nerf_blocks.0.norm.scale")[0]
        depth = len({m.group(1) for k in src.keys
                     if (m := re.match(re.escape(prefix) + r"nerf_blocks\.(\d+)\.", k))})
        code = src.shape(prefix + "nerf_image_embedder.embedder.0.weight")[1] - channels
        freqs = math.isqrt(code)
        generated = src.shape(prefix + "nerf_blocks.0.param_generator.weight")[0]
        ratio, rest = divmod(generated, 3 * width * width)
        if freqs * freqs != code or rest or not ratio:
            raise ModelError(f"{src.path.name}: a NeRF head whose shapes do not fit Chroma Radiance's (embedder input "
                             f"{code + channels}, generated weights {generated} for width {width})")
        return cls(width, depth, ratio, freqs, src.has(prefix + "nerf_final_layer_conv.norm.scale"))


class _Embedder(nn.Module):
    def __init__(self, features: int, width: int) -> None:
        super().__init__()
        self.embedder = nn.Sequential(nn.Linear(features, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.embedder(x)
        return out


class _RMSNorm(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.scale.shape, weight=self.scale.to(x.dtype), eps=EPS)


class _GLUBlock(nn.Module):
    def __init__(self, hidden: int, width: int, ratio: int) -> None:
        super().__init__()
        self.param_generator = nn.Linear(hidden, 3 * width * width * ratio)
        self.norm = _RMSNorm(width)
        self.width, self.ratio = width, ratio

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        rows, inner = x.shape[0], self.width * self.ratio
        gate, value, out = self.param_generator(s).chunk(3, dim=-1)
        gate = F.normalize(gate.view(rows, self.width, inner), dim=-2)
        value = F.normalize(value.view(rows, self.width, inner), dim=-2)
        out = F.normalize(out.view(rows, inner, self.width), dim=-2)
        y = self.norm(x)
        return torch.bmm(F.silu(torch.bmm(y, gate)) * torch.bmm(y, value), out) + x


class _FinalLinear(nn.Module):
    def __init__(self, width: int, channels: int) -> None:
        super().__init__()
        self.norm = _RMSNorm(width)
        self.linear = nn.Linear(width, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(x.movedim(1, -1))).movedim(-1, 1)


class _FinalConv(nn.Module):
    def __init__(self, width: int, channels: int) -> None:
        super().__init__()
        self.norm = _RMSNorm(width)
        self.conv = nn.Conv2d(width, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.norm(x.movedim(1, -1)).movedim(-1, 1))


def dct_code(patch: int, freqs: int) -> torch.Tensor:
    """[patch², freqs²] float32: the code of each pixel (row major) of a patch."""
    pos = torch.linspace(0, 1, patch, dtype=torch.float32)
    y, x = torch.meshgrid(pos, pos, indexing="ij")
    f = torch.linspace(0, freqs - 1, freqs, dtype=torch.float32)
    fx, fy = f[None, :, None], f[None, None, :]
    code = torch.cos(x.reshape(-1, 1, 1) * fx * torch.pi) * torch.cos(y.reshape(-1, 1, 1) * fy * torch.pi)
    return (code / (1 + fx * fy)).reshape(patch * patch, freqs * freqs)


class NerfHead(nn.Module):
    def __init__(self, layout: NerfLayout, channels: int, hidden: int) -> None:
        """`hidden`: the transformer's width, which each block's weight generator reads."""
        super().__init__()
        self.layout = layout
        self.nerf_image_embedder = _Embedder(channels + layout.freqs**2, layout.width)
        self.nerf_blocks = nn.ModuleList(_GLUBlock(hidden, layout.width, layout.mlp_ratio)
                                         for _ in range(layout.depth))
        if layout.conv_head:
            self.nerf_final_layer_conv = _FinalConv(layout.width, channels)
        else:
            self.nerf_final_layer = _FinalLinear(layout.width, channels)

    def load(self, state: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype) -> None:
        """The file's NeRF tensors (names as in the file, without its prefix), in `dtype` on `device`; the
        embedder's in float32, as ComfyUI keeps it."""
        self.to(device, dtype)
        self.nerf_image_embedder.to(torch.float32)
        ours = {k: v for k, v in state.items() if k.startswith("nerf_")}
        result = self.load_state_dict(ours, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ModelError(f"the NeRF head's weights do not fit its layout (missing {result.missing_keys[:4]}, "
                             f"unexpected {result.unexpected_keys[:4]})")

    def forward(self, img: torch.Tensor, hidden: torch.Tensor, patch: int) -> torch.Tensor:
        """img [B, C, H, W] (whole patches) and the transformer's hidden states [B, patches, D] → [B, C, H, W]."""
        b, c, h, w = img.shape
        n = hidden.shape[1]
        pixels = F.unfold(img, kernel_size=patch, stride=patch).transpose(1, 2)  # [B, patches, C·P²]
        pixels = pixels.reshape(b * n, c, patch * patch).transpose(1, 2)  # [B·patches, P², C]
        s = hidden.reshape(b * n, -1)
        code = dct_code(patch, self.layout.freqs).to(img.device)[None].expand(b * n, -1, -1)
        x = self.nerf_image_embedder(torch.cat([pixels.float(), code], dim=-1)).to(img.dtype)
        for block in self.nerf_blocks:
            x = block(x, s.to(x.dtype))
        x = x.transpose(1, 2).reshape(b, n, -1).transpose(1, 2)  # [B, width·P², patches]
        folded = F.fold(x, output_size=(h, w), kernel_size=patch, stride=patch)
        head = self.nerf_final_layer_conv if self.layout.conv_head else self.nerf_final_layer
        out: torch.Tensor = head(folded)
        return out
