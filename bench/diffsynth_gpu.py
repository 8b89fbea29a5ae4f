"""Issue 16's DiffSynth patch cost on a GPU: Qwen-Image's transformer call with and without a DiffSynth ControlNet
patch, at the released sizes, with random weights drawn on the device (no files, no hub).

Run (repository root, CUDA machine): `python bench/diffsynth_gpu.py --out diffsynth.json`
CPU smoke test: `python bench/diffsynth_gpu.py --device cpu --width 64 --heads 2 --layers 2 --text-width 32 --size 64`

Measured (eager, as patched calls run; bf16 on CUDA), per call at --size² pixels (latent size/8, batch 2 as cfg's
cond and uncond):
  plain_ms        the model call without the patch
  patched_ms      the same call with the patch after every block (strength 1)
  control_ms      the control tokens of one image latent (process_in, 2×2 patches, img_in; float32, as ComfyUI)
  patch_gib       the patch's weights (the released canny/depth patches: 60 blocks of 3072, bf16, ~2.1 GiB)
  strength0_equal whether strength 0 gave the unpatched call's tensor bit for bit
  peak_gib        torch.cuda.max_memory_allocated over the run
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from bench.model_calls import device_name, gib, random_, report, timed


def main() -> None:
    from diffusers import QwenImageTransformer2DModel

    from comfymesh.diffusion.families import qwen_image as q
    from comfymesh.diffusion.models.diffsynth_patch import BlockwiseControlNet, DiffSynthLayout, apply_after_block

    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--width", type=int, default=3072)
    parser.add_argument("--heads", type=int, default=24)
    parser.add_argument("--layers", type=int, default=60)
    parser.add_argument("--text-width", type=int, default=3584)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--text-len", type=int, default=64)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    layout = q.QwenImageLayout(prefix="", dim=args.width, head_dim=args.width // args.heads, n_heads=args.heads,
                               n_layers=args.layers, latent_channels=16, out_channels=16, text_dim=args.text_width,
                               timestep_zero=False, additional_t_cond=False)
    torch.set_default_dtype(dtype)  # built in place in its dtype: 20 B parameters in float32 would not fit
    with torch.device(device):
        model: Any = QwenImageTransformer2DModel(**q.model_config(layout))
    torch.set_default_dtype(torch.float32)
    with torch.device(device):
        net = BlockwiseControlNet(DiffSynthLayout(args.width, args.layers, 0)).to(torch.bfloat16)
    model.pos_embed = torch.nn.Identity()
    random_(model, 0)
    random_(net, 1)
    model.eval().requires_grad_(False)
    net.eval().requires_grad_(False)
    gen = torch.Generator(device).manual_seed(2)
    h = args.size // 8
    x = torch.randn(2, 16, h, h, generator=gen, device=device)
    ctx = torch.randn(2, args.text_len, args.text_width, generator=gen, device=device)
    t = torch.full((2,), 0.7, device=device)
    latent = torch.randn(1, 16, 1, h, h, generator=gen, device=device)
    result: dict[str, Any] = {"device": device_name(device), "width": args.width, "layers": args.layers,
                              "size": args.size}
    with torch.no_grad():
        result["control_ms"], control = timed(lambda: net.control_tokens(latent), device, args.runs)

        def patched(strength: float) -> Any:
            return lambda i, hidden: apply_after_block(net, control, strength, i, hidden)

        result["plain_ms"], plain = timed(lambda: q.qwen_image_forward(model, x, t, ctx), device, args.runs)
        result["patched_ms"], _ = timed(lambda: q.qwen_image_forward(model, x, t, ctx, block_patch=patched(1.0)),
                                        device, args.runs)
        zero = q.qwen_image_forward(model, x, t, ctx, block_patch=patched(0.0))
    result["strength0_equal"] = bool(torch.equal(zero, plain))
    result["patch_gib"] = gib(net)
    if device.type == "cuda":
        result["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    report(result, args.out)


if __name__ == "__main__":
    main()
