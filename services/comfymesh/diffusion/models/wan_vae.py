"""The Wan 2.1 VAE, which ComfyUI's `qwen_image_vae.safetensors` is: recognised from its keys and shapes (any base
width), built as diffusers' AutoencoderKLQwenImage (the same network, diffusers' names), and called as ComfyUI's
VAE calls it.

ComfyUI's conventions: latents are 5-D [B, 16, T, H/8, W/8]; a batch of B images is encoded as one clip of B
frames ([1, 3, B, H, W], so four images after the first share a latent frame), pixels centre-cropped to
multiples of 8 and mapped to [−1, 1], the posterior's mean kept; decoding returns T' = 1 + 4(T − 1) frames per
latent, which VAEDecode lays out as images.

One call at a time per module: it keeps its causal convolutions' frame caches on itself (reset at the start of each
encode and decode), so two calls at once, e.g. a VAEEncode and TextEncodeQwenImageEditPlus's reference latent in
parallel branches of one graph, would read each other's caches; every call holds the module's lock.

A still image is one frame, and a causal convolution sees it after two frames of zeros, so only its kernel's last
time slice meets data: such a call runs as that slice's 2-D convolution (the same products, no padded copy; on the
CPU an encode at 1 MP takes half the time).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MethodType
from typing import Any

import torch
import torch.nn.functional as F

from comfymesh.contracts.errors import ModelError, ResourceExhaustedError
from comfymesh.diffusion.latents.vae_codec import crop_pixels, settled
from comfymesh.diffusion.models.flow_lora import model_lock
from comfymesh.diffusion.models.tensor_source import TensorSource

SPATIAL = 8  # pixels per latent cell
_MARKER = "decoder.middle.0.residual.0.gamma"
_WAN22_MARKER = "decoder.upsamples.0.upsamples.0.residual.2.weight"  # Wan 2.2's 48-channel VAE: not this one


@dataclass(frozen=True)
class Wan21VaeLayout:
    dim: int
    z_dim: int
    image_channels: int

    def describe(self) -> str:
        return f"Wan 2.1 VAE (base width {self.dim}, {self.z_dim} latent channels)"


def parse_wan21_vae(src: TensorSource) -> Wan21VaeLayout | None:
    """The layout of a Wan 2.1 / Qwen-Image VAE file, None for any other file (ComfyUI's test: the decoder's
    `middle.0.residual` norm, without Wan 2.2's nested upsamplers)."""
    if not src.has(_MARKER) or src.has(_WAN22_MARKER):
        return None
    return Wan21VaeLayout(dim=src.shape("decoder.head.0.gamma")[0], z_dim=src.shape("conv2.weight")[0],
                          image_channels=src.shape("encoder.conv1.weight")[1])


def build_wan21_vae(src: TensorSource, layout: Wan21VaeLayout, device: torch.device,
                    dtype: torch.dtype) -> torch.nn.Module:
    from diffusers import AutoencoderKLQwenImage
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
    from diffusers.models.autoencoders.autoencoder_kl_qwenimage import QwenImageCausalConv3d

    state = convert_wan_vae_to_diffusers({k: src.get(k) for k in src.keys})
    state = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
    with torch.device("meta"):
        vae: Any = AutoencoderKLQwenImage(base_dim=layout.dim, z_dim=layout.z_dim, input_channels=layout.image_channels)
    result = vae.load_state_dict(state, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise ModelError(f"{src.path.name}: the Wan VAE weights do not fit {layout.describe()} (missing "
                         f"{result.missing_keys[:4]}, unexpected {result.unexpected_keys[:4]})")
    module: torch.nn.Module = vae.eval().requires_grad_(False)
    for conv in module.modules():
        if isinstance(conv, QwenImageCausalConv3d) and _plain_causal(conv):
            conv.forward = MethodType(_causal_conv, conv)  # type: ignore[method-assign]  # this instance only
    return module


def _causal_conv(conv: Any, x: torch.Tensor, cache_x: torch.Tensor | None = None) -> torch.Tensor:
    """diffusers' QwenImageCausalConv3d.forward, with a lone first frame (no cached frames before it) convolved in
    2-D by the kernel's last time slice: the slices before it would meet only the causal zero padding."""
    if cache_x is None and x.shape[2] == 1:
        left, _, top, _ = conv._padding[:4]
        out: torch.Tensor = F.conv2d(x[:, :, 0], conv.weight[:, :, -1], conv.bias, conv.stride[1:], (top, left))
        return out.unsqueeze(2)
    return type(conv).forward(conv, x, cache_x)


def _plain_causal(conv: Any) -> bool:
    """Whether the convolution pads time only before the frames, by its kernel's length less one, and space evenly:
    the shape the 2-D shortcut assumes (decided once, when the VAE is built)."""
    left, right, top, bottom, before, after = conv._padding
    return (conv.stride[0] == 1 and before == conv.kernel_size[0] - 1 and after == 0 and left == right
            and top == bottom and conv.dilation == (1, 1, 1) and conv.groups == 1)


def load_wan21_vae(src: TensorSource, device: torch.device) -> torch.nn.Module:
    """The VAE in bf16 on a GPU, float32 on the CPU; ModelError when the file is no Wan 2.1 VAE."""
    layout = parse_wan21_vae(src)
    if layout is None:
        raise ModelError(f"{src.path.name} is not a Wan 2.1 / Qwen-Image VAE")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return build_wan21_vae(src, layout, device, dtype)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"{src.path.name}: Wan VAE could not be converted: {exc}") from exc


def is_wan_vae(vae: Any) -> bool:
    from diffusers import AutoencoderKLQwenImage

    return isinstance(vae, AutoencoderKLQwenImage)


def encode(vae: Any, pixels: torch.Tensor) -> torch.Tensor:
    """IMAGE [B, H, W, C] in [0, 1] → unscaled latent [1, z, 1 + ⌊(B − 1)/4⌋, H/8, W/8] float32 on the CPU
    (the batch is one clip, as ComfyUI encodes it)."""
    p = next(vae.parameters())
    channels = int(vae.config.input_channels)
    x = crop_pixels(pixels.float(), SPATIAL)[..., :channels]
    if x.shape[-1] < channels:  # Layered's RGBA VAE: missing channels padded with 1.0 (opaque), as ComfyUI pads
        x = torch.nn.functional.pad(x, (0, channels - x.shape[-1]), value=1.0)
    clip = (x * 2.0 - 1.0).movedim(-1, 1).movedim(1, 0).unsqueeze(0)  # [1, C, B, H, W]
    with model_lock(vae), torch.no_grad():  # one call at a time (module docstring)
        mean: torch.Tensor = vae.encode(clip.to(p.device, p.dtype)).latent_dist.mean
    return mean.float().cpu()


def decode(vae: Any, latent: torch.Tensor) -> torch.Tensor:
    """Unscaled latent [B, z, T, h, w] (or [B, z, h, w], one frame) → IMAGE [B·T', H, W, 3] float32 in [0, 1] on
    the VAE's device, each clip's frames in order."""
    p = next(vae.parameters())
    z = latent.unsqueeze(2) if latent.ndim == 4 else latent
    try:
        with model_lock(vae), torch.no_grad():  # one call at a time (module docstring)
            frames = vae.decode(z.to(p.device, p.dtype)).sample.float()  # [B, C, T', H, W]
        images = torch.clamp((frames + 1.0) / 2.0, 0.0, 1.0).movedim(1, -1)  # [B, T', H, W, 3]
        return settled(images.reshape(-1, *images.shape[-3:]).contiguous())
    except torch.cuda.OutOfMemoryError as exc:
        raise ResourceExhaustedError(f"out of GPU memory in VAE decode: {exc}") from exc
