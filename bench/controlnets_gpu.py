"""Issue 15's DiT ControlNet cost on a GPU: the SD3.5 Large model call with and without an SD3.5 Large ControlNet
(blur/canny/depth form), the Z-Image call with and without the Z-Image Fun union ControlNet (1.0), and the
Qwen-Image call with and without the InstantX inpainting ControlNet (5 blocks, hint 16 latent + 1 mask channel), at
the released sizes, with random weights drawn on the device (no files, no hub).

Run (repository root, CUDA machine): `python bench/controlnets_gpu.py --out controlnets.json`
CPU smoke test: `python bench/controlnets_gpu.py --device cpu --small`

Measured (eager, as controlled calls run; bf16 on CUDA), per call at --size² pixels, batch 2 (cfg's cond and
uncond), for `sd35`, `zimage_fun` and `qwen_instantx`:
  plain_ms        the model call without the ControlNet
  controlled_ms   the call with the ControlNet (strength 1; SD3.5: the net's own forward included)
  net_gib         the ControlNet's weights
  strength0_equal whether strength 0 gave the plain call's tensor bit for bit
  peak_gib        torch.cuda.max_memory_allocated over that model's part
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from bench.model_calls import built, device_name, gib, report, timed

SD35 = {"width": 2432, "blocks": 38, "cn_blocks": 19, "context": 4096, "pooled": 2048, "pos_max": 192}
ZIMAGE = {"dim": 3840, "heads": 30, "layers": 30, "refiners": 2, "cap": 2560, "controls": 6}
SMALL_SD35 = {"width": 128, "blocks": 2, "cn_blocks": 1, "context": 64, "pooled": 32, "pos_max": 32}
SMALL_ZIMAGE = {"dim": 128, "heads": 2, "layers": 4, "refiners": 2, "cap": 32, "controls": 2}
QWEN = {"heads": 24, "head_dim": 128, "layers": 60, "text": 3584, "cn_blocks": 5}
SMALL_QWEN = {"heads": 2, "head_dim": 32, "layers": 4, "text": 32, "cn_blocks": 2}


def bench_sd35(s: dict[str, int], device: torch.device, dtype: torch.dtype, size: int, runs: int) -> dict[str, Any]:
    from diffusers import SD3ControlNetModel, SD3Transformer2DModel

    from comfymesh.diffusion.families import sd3
    from comfymesh.diffusion.models.sd3_controlnet import BLUR, HEAD_DIM, SD35ControlNet, residuals

    layout = sd3.SD3Layout(prefix="", in_channels=16, out_channels=16, patch=2, width=s["width"],
                           n_blocks=s["blocks"], context_dim=s["context"], pooled_dim=s["pooled"],
                           pos_embed_max=s["pos_max"], dual_attention=(), qk_norm=True)
    model = built(lambda: SD3Transformer2DModel(**sd3.model_config(layout)), device, dtype, 0)
    cfg = {"sample_size": 128, "patch_size": 2, "in_channels": 16, "num_layers": s["cn_blocks"],
           "attention_head_dim": HEAD_DIM, "num_attention_heads": s["width"] // HEAD_DIM, "joint_attention_dim": None,
           "caption_projection_dim": s["width"], "pooled_projection_dim": s["pooled"], "out_channels": 16,
           "pos_embed_max_size": None, "pos_embed_type": None}
    net = built(lambda: SD3ControlNetModel(**cfg), device, dtype, 1)
    control = SD35ControlNet(net, BLUR, -(-(s["width"] // HEAD_DIM) // s["cn_blocks"]))
    gen = torch.Generator(device).manual_seed(2)
    h = size // 8
    x, hint = (torch.randn(2, 16, h, h, generator=gen, device=device, dtype=dtype) for _ in range(2))
    ctx = torch.randn(2, 154, s["context"], generator=gen, device=device, dtype=dtype)
    y = torch.randn(2, s["pooled"], generator=gen, device=device, dtype=dtype)
    t = torch.full((2,), 700.0, device=device)
    call: Any = sd3.sd3_fn(model)
    with torch.no_grad():
        plain_ms, plain = timed(lambda: call(x, t, ctx, y), device, runs)

        def controlled(strength: float) -> torch.Tensor:
            return call(x, t, ctx, y, residuals=residuals(control, model, x, t, y, hint, strength))

        controlled_ms, _ = timed(lambda: controlled(1.0), device, runs)
        zero = controlled(0.0)
    return {"plain_ms": plain_ms, "controlled_ms": controlled_ms, "net_gib": gib(net),
            "strength0_equal": bool(torch.equal(zero, plain))}


def bench_zimage_fun(s: dict[str, int], device: torch.device, dtype: torch.dtype, size: int,
                     runs: int) -> dict[str, Any]:
    from comfymesh.diffusion.families import zimage
    from comfymesh.diffusion.models.zimage_fun_control import FunControlNet, FunPatch

    layout = zimage.ZImageLayout(prefix="", dim=s["dim"], cap_feat_dim=s["cap"], in_channels=16,
                                 n_layers=s["layers"], n_refiner_layers=s["refiners"], head_dim=s["dim"] // s["heads"],
                                 n_heads=s["heads"], n_kv_heads=s["heads"], t_mid=min(s["dim"], 1024))
    model = built(lambda: zimage._new_model(layout), device, dtype, 0)
    net = built(lambda: FunControlNet(s["dim"], s["heads"], s["controls"], 2, 16, False), device, dtype, 1)
    gen = torch.Generator(device).manual_seed(2)
    h = size // 8
    x = torch.randn(2, 16, h, h, generator=gen, device=device, dtype=dtype)
    latent = torch.randn(1, 16, h, h, generator=gen, device=device, dtype=dtype)
    ctx = torch.randn(2, 64, s["cap"], generator=gen, device=device, dtype=dtype)
    t = torch.full((2,), 0.7, device=device)
    call: Any = zimage.zimage_fn(model)
    with torch.no_grad():
        plain_ms, plain = timed(lambda: call(x, t, ctx, None), device, runs)
        controlled_ms, _ = timed(lambda: call(x, t, ctx, None, controls=[FunPatch(net, latent, 1.0)]), device, runs)
        zero = call(x, t, ctx, None, controls=[FunPatch(net, latent, 0.0)])
    return {"plain_ms": plain_ms, "controlled_ms": controlled_ms, "net_gib": gib(net),
            "strength0_equal": bool(torch.equal(zero, plain))}


def bench_qwen_instantx(s: dict[str, int], device: torch.device, dtype: torch.dtype, size: int,
                        runs: int) -> dict[str, Any]:
    from diffusers import QwenImageControlNetModel, QwenImageTransformer2DModel

    from comfymesh.diffusion.families import qwen_image
    from comfymesh.diffusion.models.qwen_controlnet import QwenControlNet, add_after_block, residuals

    width = s["heads"] * s["head_dim"]
    layout = qwen_image.QwenImageLayout(prefix="", dim=width, head_dim=s["head_dim"], n_heads=s["heads"],
                                        n_layers=s["layers"], latent_channels=16, out_channels=16, text_dim=s["text"],
                                        timestep_zero=False, additional_t_cond=False)
    model = built(lambda: QwenImageTransformer2DModel(**qwen_image.model_config(layout)), device, dtype, 0)
    model.pos_embed = torch.nn.Identity()  # the rotations are ours, as the family builds it
    cfg = {k: v for k, v in qwen_image.model_config(layout).items()
           if k not in ("zero_cond_t", "use_additional_t_cond")} | {"num_layers": s["cn_blocks"],
                                                                    "extra_condition_channels": 4}
    net = built(lambda: QwenImageControlNetModel(**cfg), device, dtype, 1)
    net.pos_embed = torch.nn.Identity()
    control = QwenControlNet(net, concat_mask=True)
    gen = torch.Generator(device).manual_seed(2)
    h = size // 8
    x = torch.randn(2, 16, 1, h, h, generator=gen, device=device, dtype=dtype)
    hint = torch.randn(2, 17, 1, h, h, generator=gen, device=device, dtype=dtype)
    ctx = torch.randn(2, 64, s["text"], generator=gen, device=device, dtype=dtype)
    t = torch.full((2,), 0.7, device=device)
    call: Any = qwen_image.qwen_image_fn(model)
    with torch.no_grad():
        plain_ms, plain = timed(lambda: call(x, t, ctx, None), device, runs)

        def controlled(strength: float) -> torch.Tensor:
            out: torch.Tensor = call(x, t, ctx, None,
                                     block_patch=add_after_block(residuals(control, x, t, ctx, hint, strength)))
            return out

        controlled_ms, _ = timed(lambda: controlled(1.0), device, runs)
        zero = controlled(0.0)
    return {"plain_ms": plain_ms, "controlled_ms": controlled_ms, "net_gib": gib(net),
            "strength0_equal": bool(torch.equal(zero, plain))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--small", action="store_true", help="tiny widths and depths (a CPU smoke test)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    size = 64 if args.small else args.size
    result: dict[str, Any] = {"device": device_name(device), "size": size}
    for name, bench, shapes in (("sd35", bench_sd35, SMALL_SD35 if args.small else SD35),
                                ("zimage_fun", bench_zimage_fun, SMALL_ZIMAGE if args.small else ZIMAGE),
                                ("qwen_instantx", bench_qwen_instantx, SMALL_QWEN if args.small else QWEN)):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        result[name] = bench(shapes, device, dtype, size, args.runs)
        if device.type == "cuda":
            result[name]["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            torch.cuda.empty_cache()
    report(result, args.out)


if __name__ == "__main__":
    main()
