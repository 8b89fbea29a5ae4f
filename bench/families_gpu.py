"""Issues 15 and 16's GPU benchmark: Z-Image Turbo, FLUX.1-dev, SD3.5-medium, Qwen-Image, FLUX.2 Klein 4B and FLUX.2 Dev
through the mesh against diffusers' own pipelines built from the same modules.

Run (repository root, CUDA machine): `python bench/families_gpu.py --out results.json` (zimage,sd3,flux);
issue 16's families: `--families qwen,klein,flux2dev --runs 2`.
CPU smoke test (tiny files, every phase): `python bench/families_gpu.py --tiny --device cpu --size 64 --steps 2 --runs 1`

Per family (`--families`, in that order), each family's files are written, measured and deleted before the next
(full-size files of all of them do not fit a 64 GiB disk together):
  files     random weights in ComfyUI's real file layouts at the released models' sizes (the tiny builders'
            shape functions with full dimensions; drawn on the GPU and streamed to disk tensor by tensor):
            zimage  z_image_turbo_bf16 (NextDiT 3840 wide, 30 layers, 2+2 refiners), qwen_3_4b (Qwen3-4B:
                    2560 wide, 36 layers), ae (FLUX's 16-channel VAE)
            flux    flux1-dev (19 double + 38 single blocks, 3072 wide, guidance embedder), the same weights as
                    ComfyUI's scaled fp8 (flux1-dev-fp8-scaled: fp8 e4m3fn ÷ per-tensor scale_weight),
                    clip_l, t5xxl_fp16 (T5 v1.1 XXL: 4096 wide, 24 blocks), ae
            sd3     sd3.5_medium_incl_clips_t5xxlfp16 (all-in-one: MMDiT-X 1536 wide, 24 blocks, dual attention
                    in 0-12, pos_embed 384², CLIP-L, CLIP-G 1280×32, T5-XXL, the SD3 VAE), fp16
            qwen    qwen_image_fp8_e4m3fn (60 blocks, 3072 wide, 24 heads × 128, joint attention 3584, 64 input
                    channels; the block linears plain fp8 e4m3fn casts, the rest bf16), qwen_2.5_vl_7b_fp8_scaled
                    (Qwen2.5-VL-7B: 3584 wide, 28 layers, 28 heads, 4 KV heads, 18944 intermediate, 152064 vocab;
                    the language model's linears scaled fp8, its embeddings and the vision tower (1280 wide,
                    32 blocks) bf16), qwen_image_vae (the Wan 2.1 VAE, base 96): 27.7 GiB
            klein   flux-2-klein-4b (5 double + 20 single blocks, 3072 wide, bf16), qwen_3_4b (Qwen3-4B),
                    flux2-vae (32-channel, bf16 where the released file is float32): 14.9 GiB
            flux2dev  flux2_dev_fp8mixed (8 double + 48 single blocks, 6144 wide, guidance; the block linears fp8
                    with `weight_scale` and `comfy_quant`, the rest bf16), mistral_3_small_flux2_fp8 (Mistral 3
                    Small at its real width, 5120, pruned to 30 layers as the fp8 template's file is: Dev reads
                    the hidden states entering layers 10, 20 and 30, so no shallower encoder serves; scaled fp8,
                    the tiny builder's tekken.json as `tekken_model`), flux2-vae: 47.7 GiB (the disk must hold it)
  pipeline  (a subprocess) our loaders build the modules on the GPU, diffusers' ZImagePipeline / FluxPipeline /
            StableDiffusion3Pipeline / QwenImagePipeline / Flux2KleinPipeline is assembled from them (no hub
            access) and timed: warm latency incl. PNG (Pillow level 4), it/s from latent-output calls (text
            encoding included), peak GPU memory. FLUX's subprocess then loads the scaled-fp8 file alone and
            measures its weight memory and the peak of one 1024² transformer call. Adaptations: Qwen-Image's
            transformer gets diffusers' RoPE module back (our loader drops it: the stage computes ComfyUI's
            positions); its text encoder is our Qwen2_5_VLTextModel as built (the pipeline's call is the VL
            model's for text, unwrapped), scheduler with the template's constant shift 3.1, true_cfg_scale 4 with
            the empty negative. Klein's VAE is our weights in diffusers' AutoencoderKLFlux2 (ours speaks ComfyUI's
            normalised latent, the pipeline normalises itself), distilled, guidance 1 as the template's cfg 1.
            FLUX.2 Dev has no pipeline: 32 B parameters in bf16 leave no room for activations on one H100.
  mesh      gateway + orchestrator + diffusion stage as processes (tests.mesh.Mesh); the template-shaped graph,
            cold (stage start, first job with model loads) then warm runs with new seeds: POST -> SSE
            `completed` -> PNG fetched. Sampler it/s from the stage's node timings; peak GPU memory of the
            stage process from bench/stage_probe (torch.cuda.max_memory_allocated). FLUX runs a second mesh
            on the scaled-fp8 file. This mesh runs eagerly (COMFYMESH_FAST_PATH=0). FLUX.2 Dev runs within a
            model budget (COMFYMESH_MODEL_CACHE_BYTES, `stream_budget`) that streams about `--stream-share` of its
            blocks from pinned host memory: the plan the stage logged (`memory_plan`) and, from its per-call lines
            (memory.streaming), the warm calls' share of time spent waiting on block copies (`streaming_warm`).
  --fast    one more mesh per family with the fast path on (`mesh_fast`): the cold job starts the model's and the
            VAE decode's buckets, which are waited for (graphed then compiled, `--compile-timeout`), then the warm
            runs with the eager mesh's seeds; `psnr_vs_eager_db` per seed compares their PNGs with the eager ones.
            Only zimage, flux, sd3 and klein (FAST): Qwen-Image's 60 blocks compile for minutes, and a streamed
            model (FLUX.2 Dev here) runs eagerly.
  --fp8-matmul  FLUX's scaled-fp8 transformer call is also run with the fp8 matmul mode (torch._scaled_mm on Ada or
            Hopper; elsewhere the upcast path, and the result says which kernel ran): call time and PSNR against the
            bf16-upcast call on the same inputs (`fp8_transformer.fp8_matmul`). The scaled-fp8 meshes' images are
            compared with the bf16 file's eager ones (`psnr_vs_bf16_db`), as are every mesh's with
            `--weight-dtype ... --compare-bf16` (one more eager mesh first, `mesh_bf16`).
Sizes and steps are the templates' (1024², Qwen-Image 1328²; 8 / 20 / 28 / 20 / 4 / 28 steps) unless --size / --steps.
Results are written after every phase (--out); a phase that fails is recorded and the next one runs.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from bench.diffusion_gpu import HttpClient, bucket_logs, psnr  # noqa: E402  (after the path and offline settings)

T0 = time.monotonic()
PROMPT = "a photograph of a red fox in a snowy birch forest at dawn, soft light, detailed fur"
NEGATIVE = ""
GiB = 2**30
Shapes = dict[str, tuple[int, ...]]


def say(msg: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {msg}", flush=True)


def p50(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# ------------------------------------------------------------------------------------------- file layouts


def full_vae(prefix: str) -> Shapes:
    """The released 16-channel VAE (FLUX's ae / SD3's): 128 base channels, (1, 2, 4, 4), 2 res blocks."""
    from comfymesh.diffusion.models.tiny_checkpoint import vae_shapes

    return {k: v for k, v in vae_shapes(ch=128, mult=(1, 2, 4, 4), res_blocks=2, z=16, prefix=prefix).items()
            if "quant_conv" not in k}


def clip_full(prefix: str, width: int, layers: int, projection: bool) -> Shapes:
    from comfymesh.diffusion.models.tiny_checkpoint import clip_hf_shapes

    s = {prefix + k: v for k, v in clip_hf_shapes("text_model.", width, layers).items()}
    if projection:
        s[prefix + "text_projection.weight"] = (width, width)
    return s


def file_specs(family: str, tiny: bool) -> list[dict[str, Any]]:
    """[{folder, name, shapes, dtype, fp8, fp8_keys, fixed, seed}] of one family's files, tiny (the builders' defaults)
    or full size. `fp8`: "scaled" (ComfyUI's scaled fp8), "mixed" (the fp8mixed form) or "plain" (fp8 casts);
    `fp8_keys`: only keys containing one of these are quantised; `fixed`: tensors written as given."""
    import torch

    from comfymesh.diffusion.models import tiny_flux, tiny_flux2, tiny_qwen_image, tiny_sd3, tiny_zimage

    if family == "zimage":
        return [
            {"folder": "diffusion_models", "name": tiny_zimage.DIFFUSION_MODEL, "dtype": torch.bfloat16,
             "shapes": tiny_zimage.zimage_shapes() if tiny else
             tiny_zimage.zimage_shapes(dim=3840, heads=30, layers=30, refiners=2, cap_dim=2560)},
            {"folder": "text_encoders", "name": tiny_zimage.TEXT_ENCODER, "dtype": torch.bfloat16,
             "shapes": tiny_zimage.qwen3_shapes() if tiny else
             tiny_zimage.qwen3_shapes(width=2560, layers=36, heads=32, kv_heads=8, head_dim=128, intermediate=9728)},
            {"folder": "vae", "name": tiny_zimage.VAE, "dtype": torch.bfloat16,
             "shapes": tiny_zimage.flux_vae_shapes() if tiny else full_vae("")},
        ]
    if family == "flux":
        dit = tiny_flux.flux_shapes() if tiny else tiny_flux.flux_shapes(
            width=3072, head_dim=128, depth=19, depth_single=38, context=4096, vec=768, guidance=True)
        return [
            {"folder": "diffusion_models", "name": tiny_flux.DIFFUSION_MODEL, "dtype": torch.bfloat16, "shapes": dit},
            # the bf16 file's weights (same seed, same draws) in ComfyUI's scaled-fp8 form
            {"folder": "diffusion_models", "name": FLUX_FP8, "dtype": torch.bfloat16, "shapes": dit, "fp8": "scaled",
             "seed": 0},
            {"folder": "text_encoders", "name": tiny_flux.CLIP_L, "dtype": torch.bfloat16,
             "shapes": tiny_flux.clip_l_shapes() if tiny else clip_full("", 768, 12, False)},
            {"folder": "text_encoders", "name": tiny_flux.T5, "dtype": torch.float16,
             "shapes": tiny_flux.t5_shapes() if tiny else
             tiny_flux.t5_shapes(width=4096, layers=24, heads=64, head_dim=64, ff=10240)},
            {"folder": "vae", "name": tiny_flux.VAE, "dtype": torch.bfloat16,
             "shapes": tiny_zimage.flux_vae_shapes() if tiny else full_vae("")},
        ]
    if family == "sd3":
        if tiny:
            state = tiny_sd3.checkpoint_state(t5_width=128)  # ≥ CLIP-L ‖ CLIP-G's 96
            shapes = {k: tuple(v.shape) for k, v in state.items()}
        else:
            shapes = {"model.diffusion_model." + k: v for k, v in tiny_sd3.mmdit_shapes(
                width=1536, blocks=24, context_dim=4096, pooled_dim=768 + 1280, pos_max=384,
                qk_norm=True, dual=tuple(range(13))).items()}
            shapes |= clip_full("text_encoders.clip_l.transformer.", 768, 12, False)
            shapes |= clip_full("text_encoders.clip_g.transformer.", 1280, 32, True)
            shapes |= {"text_encoders.t5xxl.transformer." + k: v for k, v in tiny_flux.t5_shapes(
                width=4096, layers=24, heads=64, head_dim=64, ff=10240).items()}
            shapes |= full_vae("first_stage_model.")
        return [{"folder": "checkpoints", "name": SD3_CKPT, "dtype": torch.float16, "shapes": shapes}]
    if family == "qwen":
        q = tiny_qwen_image
        text = q.qwen25_vl_text_shapes() | q.qwen25_vl_vision_shapes() if tiny else (
            q.qwen25_vl_text_shapes(width=3584, layers=28, heads=28, kv_heads=4, intermediate=18944)
            | q.qwen25_vl_vision_shapes(width=1280, depth=32, intermediate=3420, out_width=3584))
        return [
            {"folder": "diffusion_models", "name": q.DIFFUSION_MODEL, "dtype": torch.bfloat16, "fp8": "plain",
             "shapes": q.qwen_image_shapes() if tiny else q.qwen_image_shapes(dim=3072, heads=24, layers=60,
                                                                              text_dim=3584)},
            # the language model's linears in scaled fp8; the vision tower (unused by txt2img) stays bf16
            {"folder": "text_encoders", "name": q.TEXT_ENCODER, "dtype": torch.bfloat16, "shapes": text,
             "fp8": "scaled", "fp8_keys": ("model.layers.",)},
            {"folder": "vae", "name": q.VAE, "dtype": torch.bfloat16,
             "shapes": q.wan21_vae_shapes() if tiny else q.wan21_vae_shapes(dim=96)},
        ]
    f2 = tiny_flux2
    vae = {"folder": "vae", "name": FLUX2_VAE, "dtype": torch.bfloat16,
           "shapes": f2.flux2_vae_shapes() if tiny else f2.flux2_vae_shapes(128, mult=(1, 2, 4, 4), res_blocks=2)}
    if family == "klein":
        return [
            {"folder": "diffusion_models", "name": KLEIN_MODEL, "dtype": torch.bfloat16,
             "shapes": f2.flux2_shapes() if tiny else f2.flux2_shapes(**f2.KLEIN_4B)},
            {"folder": "text_encoders", "name": KLEIN_TEXT, "dtype": torch.bfloat16,
             "shapes": f2.klein_qwen3_shapes() if tiny else f2.klein_qwen3_shapes(**f2.QWEN3_4B)},
            vae,
        ]
    if family == "flux2dev":
        # Mistral 3 Small pruned to 30 layers, as the fp8 template's file is (Dev reads the hidden states entering
        # blocks 10, 20 and 30); the tiny builder's tekken.json as its tokenizer (ids < 301 of the 131 072 rows)
        mistral = {**(f2.TINY_MISTRAL if tiny else f2.MISTRAL3_SMALL), "layers": 30}
        tekken = torch.frombuffer(bytearray(f2.tiny_tekken()), dtype=torch.uint8)
        return [
            # tiny: 1 + 12 blocks wider than the builder's, each larger than the tiny VAE (see stream_budget)
            {"folder": "diffusion_models", "name": DEV_MODEL, "dtype": torch.bfloat16, "fp8": "mixed",
             "shapes": f2.flux2_shapes(width=512, head_dim=64, guidance=True, depth=1, depth_single=12) if tiny else
             f2.flux2_shapes(**f2.DEV)},
            {"folder": "text_encoders", "name": DEV_TEXT, "dtype": torch.bfloat16, "fp8": "scaled",
             "shapes": f2.mistral_shapes(**mistral), "fixed": {"tekken_model": tekken}},
            vae,
        ]
    raise ValueError(family)


FLUX_FP8 = "flux1-dev-fp8-scaled.safetensors"
SD3_CKPT = "sd3.5_medium_incl_clips_t5xxlfp16.safetensors"
KLEIN_MODEL, KLEIN_TEXT = "flux-2-klein-4b.safetensors", "qwen_3_4b.safetensors"
DEV_MODEL, DEV_TEXT = "flux2_dev_fp8mixed.safetensors", "mistral_3_small_flux2_fp8.safetensors"
FLUX2_VAE = "flux2-vae.safetensors"


def _init(name: str, shape: tuple[int, ...], gen: Any) -> Any:
    """tiny_checkpoint._init's scheme (norms near 1, small biases, weights / √fan-in), drawn where `gen` lives;
    FLUX's RMSNorm `.scale`s and the Wan VAE's `gamma`s near 1 as the tiny builders draw them, the FLUX.2 VAE's
    batch-norm statistics as a trained VAE has them (small means, variances near 1)."""
    import torch

    from comfymesh.diffusion.models.tiny_checkpoint import _init as tiny_init

    if name.endswith((".scale", "gamma")):
        return 1.0 + 0.01 * torch.randn(shape, generator=gen, device=gen.device)
    if name.endswith("running_mean"):
        return 0.1 * torch.randn(shape, generator=gen, device=gen.device)
    if name.endswith("running_var"):
        return 1.0 + 0.5 * torch.rand(shape, generator=gen, device=gen.device)
    return tiny_init(name, shape, gen)


SAFETENSORS_DTYPES = {"torch.bfloat16": "BF16", "torch.float16": "F16", "torch.float32": "F32",
                      "torch.float8_e4m3fn": "F8_E4M3", "torch.uint8": "U8"}
FP8_DESCRIPTOR = json.dumps({"format": "float8_e4m3fn"}).encode()  # an fp8mixed layer's `comfy_quant`
Entry = tuple[str, tuple[int, ...], Any]  # name, shape, stored dtype


def quantised(spec: dict[str, Any], name: str, shape: tuple[int, ...]) -> bool:
    """Whether the file's fp8 form stores this tensor in fp8: 2-D weights (within `fp8_keys`), in the scaled form
    outside the embeddings (and T5's shared table), in the mixed and plain forms inside the transformer blocks."""
    mode = spec.get("fp8")
    if not mode or len(shape) != 2 or not name.endswith(".weight"):
        return False
    if not any(k in name for k in spec.get("fp8_keys", ("",))):
        return False
    if mode == "scaled":
        return "embed" not in name and not name.startswith("shared.")
    return "blocks." in name


def file_layout(spec: dict[str, Any]) -> tuple[list[Entry], bytes, int]:
    """The file's tensors in write order, its safetensors header (length prefix included) and its data's bytes: every
    dtype and size is known up front, since quantisation keeps shapes and only adds scalars (and descriptors)."""
    import torch

    fp8, mode = torch.float8_e4m3fn, spec.get("fp8")
    entries: list[Entry] = []
    for name, shape in sorted(spec["shapes"].items()):
        if not quantised(spec, name, shape):
            entries.append((name, shape, spec["dtype"]))
            continue
        layer = name[: -len(".weight")]
        entries.append((name, shape, fp8))
        if mode == "scaled":
            entries.append((layer + ".scale_weight", (), torch.float32))
        elif mode == "mixed":
            entries += [(layer + ".weight_scale", (), torch.float32),
                        (layer + ".comfy_quant", (len(FP8_DESCRIPTOR),), torch.uint8)]
    entries += [(k, tuple(v.shape), v.dtype) for k, v in spec.get("fixed", {}).items()]
    if mode == "scaled":
        entries.append(("scaled_fp8", (0,), fp8))
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, dtype in entries:
        size = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": SAFETENSORS_DTYPES[str(dtype)], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return entries, len(raw).to_bytes(8, "little") + raw, offset


def write_file(path: Path, spec: dict[str, Any], device: str, seed: int) -> float:
    """Stream one safetensors file to disk tensor by tensor (a 24 GB file never sits in host memory whole).
    fp8 forms (`quantised` says which tensors): "scaled" and "mixed" store fp8(w / s) with s = max|w| / 448 as the
    layer's `scale_weight` (and the `scaled_fp8` marker) or `weight_scale` (and its `comfy_quant` descriptor);
    "plain" stores fp8(w). Returns the file size in bytes."""
    import torch

    gen = torch.Generator(device).manual_seed(seed)
    entries, header, _ = file_layout(spec)
    fixed: dict[str, torch.Tensor] = spec.get("fixed", {})
    fp8, mode = torch.float8_e4m3fn, spec.get("fp8")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(header)
        scales: dict[str, torch.Tensor] = {}  # written right after their weights
        for name, shape, dtype in entries:
            if name in scales:
                t = scales.pop(name)
            elif name in fixed:
                t = fixed[name]
            elif name == "scaled_fp8":
                t = torch.empty(0, dtype=fp8)
            elif name.endswith(".comfy_quant"):
                t = torch.frombuffer(bytearray(FP8_DESCRIPTOR), dtype=torch.uint8)
            else:
                w = _init(name, shape, gen)
                if dtype == fp8 and mode != "plain":
                    w = w.float()
                    s = w.abs().max() / 448.0
                    key = ".scale_weight" if mode == "scaled" else ".weight_scale"
                    scales[name[: -len(".weight")] + key] = s.reshape(()).float()
                    t = (w / s).to(fp8)
                else:
                    t = w.to(dtype)
            f.write(t.contiguous().reshape(-1).cpu().view(torch.uint8).numpy().tobytes())
    return path.stat().st_size


def make_files(family: str, models: Path, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    specs = file_specs(family, args.tiny)
    models.mkdir(parents=True, exist_ok=True)
    need, free = sum(len(h) + n for _, h, n in map(file_layout, specs)), shutil.disk_usage(models).free
    if need > free:
        raise RuntimeError(f"{family}'s files need {need / GiB:.2f} GiB but {models} has {free / GiB:.2f} GiB free")
    for k, spec in enumerate(specs):
        path = models / spec["folder"] / spec["name"]
        start = time.perf_counter()
        size = write_file(path, spec, args.device, seed=spec.get("seed", 100 * k))
        params = sum(math.prod(s) for s in spec["shapes"].values())
        out[spec["name"]] = {"params_M": round(params / 1e6, 1), "GiB": round(size / GiB, 3),
                             "write_s": round(time.perf_counter() - start, 1)}
        say(f"{family}: wrote {path.name}: {out[spec['name']]}")
    # tens of GiB of dirty pages flush in the background otherwise, and the mesh's first fsync (the job store's
    # commit) may wait behind them (the likely reason FLUX.2 Dev's first submit, made as its files were written,
    # timed out on the H100)
    start = time.perf_counter()
    os.sync()
    out["flushed_in_s"] = round(time.perf_counter() - start, 1)
    say(f"{family}: files flushed to disk in {out['flushed_in_s']} s")
    return out


# ------------------------------------------------------------------------------------------- graphs


def graph(family: str, args: argparse.Namespace, seed: int, variant: str = "") -> dict[str, Any]:
    """The family's template-shaped API prompt at the bench's size and steps."""
    from comfymesh.diffusion.models import tiny_flux, tiny_qwen_image, tiny_zimage

    size, steps = size_of(family, args), args.steps or STEPS[family]
    save = {"class_type": "SaveImage", "inputs": {"filename_prefix": "bench", "images": ["8", 0]}}
    if family == "zimage":  # the frontend's default graph (Z-Image Turbo): KSampler res_multistep/simple, cfg 1
        return {
            "62": {"class_type": "CLIPLoader", "inputs": {"clip_name": tiny_zimage.TEXT_ENCODER, "type": "lumina2",
                                                          "device": "default"}},
            "63": {"class_type": "VAELoader", "inputs": {"vae_name": tiny_zimage.VAE}},
            "66": {"class_type": "UNETLoader", "inputs": {"unet_name": tiny_zimage.DIFFUSION_MODEL,
                                                          "weight_dtype": args.weight_dtype}},
            "67": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["62", 0]}},
            "71": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["62", 0]}},
            "68": {"class_type": "EmptySD3LatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
            "69": {"class_type": "ModelSamplingAuraFlow", "inputs": {"shift": 3, "model": ["66", 0]}},
            "3": {"class_type": "KSampler", "inputs": {
                "seed": seed, "steps": steps, "cfg": 1, "sampler_name": "res_multistep", "scheduler": "simple",
                "denoise": 1, "model": ["69", 0], "positive": ["67", 0], "negative": ["71", 0],
                "latent_image": ["68", 0]}},
            "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["63", 0]}}, "9": save,
        }
    if family == "flux":  # flux_dev's graph: DualCLIPLoader flux → FluxGuidance → SamplerCustomAdvanced
        return {
            "10": {"class_type": "UNETLoader", "inputs": {"unet_name": variant or tiny_flux.DIFFUSION_MODEL,
                                                          "weight_dtype": args.weight_dtype}},
            "11": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": tiny_flux.T5, "clip_name2": tiny_flux.CLIP_L,
                                                              "type": "flux", "device": "default"}},
            "12": {"class_type": "VAELoader", "inputs": {"vae_name": tiny_flux.VAE}},
            "6": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["11", 0]}},
            "26": {"class_type": "FluxGuidance", "inputs": {"guidance": 3.5, "conditioning": ["6", 0]}},
            "30": {"class_type": "ModelSamplingFlux", "inputs": {"max_shift": 1.15, "base_shift": 0.5, "width": size,
                                                                 "height": size, "model": ["10", 0]}},
            "22": {"class_type": "BasicGuider", "inputs": {"model": ["30", 0], "conditioning": ["26", 0]}},
            "25": {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}},
            "16": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
            "17": {"class_type": "BasicScheduler", "inputs": {"scheduler": "simple", "steps": steps, "denoise": 1,
                                                              "model": ["30", 0]}},
            "27": {"class_type": "EmptySD3LatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
            "13": {"class_type": "SamplerCustomAdvanced", "inputs": {
                "noise": ["25", 0], "guider": ["22", 0], "sampler": ["16", 0], "sigmas": ["17", 0],
                "latent_image": ["27", 0]}},
            "8": {"class_type": "VAEDecode", "inputs": {"samples": ["13", 0], "vae": ["12", 0]}}, "9": save,
        }
    if family == "sd3":  # SD3.5 medium's example: the all-in-one checkpoint, euler/sgm_uniform, cfg 4.5
        return {
            "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": SD3_CKPT}},
            "16": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["4", 1]}},
            "40": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["4", 1]}},
            "53": {"class_type": "EmptySD3LatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
            "3": {"class_type": "KSampler", "inputs": {
                "seed": seed, "steps": steps, "cfg": SD3_CFG, "sampler_name": "euler", "scheduler": "sgm_uniform",
                "denoise": 1, "model": ["4", 0], "positive": ["16", 0], "negative": ["40", 0],
                "latent_image": ["53", 0]}},
            "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}}, "9": save,
        }
    if family == "qwen":  # image_qwen_image on its 20-step, cfg 4 branch (the Lightning LoRA switched off)
        return {
            "37": {"class_type": "UNETLoader", "inputs": {"unet_name": tiny_qwen_image.DIFFUSION_MODEL,
                                                          "weight_dtype": args.weight_dtype}},
            "38": {"class_type": "CLIPLoader", "inputs": {"clip_name": tiny_qwen_image.TEXT_ENCODER,
                                                          "type": "qwen_image", "device": "default"}},
            "39": {"class_type": "VAELoader", "inputs": {"vae_name": tiny_qwen_image.VAE}},
            "66": {"class_type": "ModelSamplingAuraFlow", "inputs": {"shift": QWEN_SHIFT, "model": ["37", 0]}},
            "6": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["38", 0]}},
            "7": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["38", 0]}},
            "58": {"class_type": "EmptySD3LatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
            "3": {"class_type": "KSampler", "inputs": {
                "seed": seed, "steps": steps, "cfg": QWEN_CFG, "sampler_name": "euler", "scheduler": "simple",
                "denoise": 1, "model": ["66", 0], "positive": ["6", 0], "negative": ["7", 0],
                "latent_image": ["58", 0]}},
            "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["39", 0]}}, "9": save,
        }
    if family == "klein":  # image_flux2_klein_text_to_image's distilled subgraph: cfg 1 against the zeroed prompt
        return {
            "70": {"class_type": "UNETLoader", "inputs": {"unet_name": KLEIN_MODEL, "weight_dtype": args.weight_dtype}},
            "71": {"class_type": "CLIPLoader", "inputs": {"clip_name": KLEIN_TEXT, "type": "flux2",
                                                          "device": "default"}},
            "72": {"class_type": "VAELoader", "inputs": {"vae_name": FLUX2_VAE}},
            "74": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["71", 0]}},
            "76": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["74", 0]}},
            "63": {"class_type": "CFGGuider", "inputs": {"cfg": 1, "model": ["70", 0], "positive": ["74", 0],
                                                         "negative": ["76", 0]}},
            "61": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
            "62": {"class_type": "Flux2Scheduler", "inputs": {"steps": steps, "width": size, "height": size}},
            "66": {"class_type": "EmptyFlux2LatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
            "73": {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}},
            "64": {"class_type": "SamplerCustomAdvanced", "inputs": {
                "noise": ["73", 0], "guider": ["63", 0], "sampler": ["61", 0], "sigmas": ["62", 0],
                "latent_image": ["66", 0]}},
            "8": {"class_type": "VAEDecode", "inputs": {"samples": ["64", 0], "vae": ["72", 0]}}, "9": save,
        }
    if family == "flux2dev":  # image_flux2_fp8's text-to-image part: FluxGuidance 4 → BasicGuider, Flux2Scheduler
        return {
            "12": {"class_type": "UNETLoader", "inputs": {"unet_name": DEV_MODEL, "weight_dtype": args.weight_dtype}},
            "38": {"class_type": "CLIPLoader", "inputs": {"clip_name": DEV_TEXT, "type": "flux2", "device": "default"}},
            "10": {"class_type": "VAELoader", "inputs": {"vae_name": FLUX2_VAE}},
            "6": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["38", 0]}},
            "26": {"class_type": "FluxGuidance", "inputs": {"guidance": 4, "conditioning": ["6", 0]}},
            "22": {"class_type": "BasicGuider", "inputs": {"model": ["12", 0], "conditioning": ["26", 0]}},
            "16": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
            "48": {"class_type": "Flux2Scheduler", "inputs": {"steps": steps, "width": size, "height": size}},
            "47": {"class_type": "EmptyFlux2LatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
            "25": {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}},
            "13": {"class_type": "SamplerCustomAdvanced", "inputs": {
                "noise": ["25", 0], "guider": ["22", 0], "sampler": ["16", 0], "sigmas": ["48", 0],
                "latent_image": ["47", 0]}},
            "8": {"class_type": "VAEDecode", "inputs": {"samples": ["13", 0], "vae": ["10", 0]}}, "9": save,
        }
    raise ValueError(family)


STEPS = {"zimage": 8, "flux": 20, "sd3": 28, "qwen": 20, "klein": 4, "flux2dev": 28}
SIZES = {"qwen": 1328}  # the templates' 1:1 size where it is not 1024
QWEN_SHIFT, QWEN_CFG = 3.1, 4.0
PIPELINES = ("zimage", "flux", "sd3", "qwen", "klein")  # FLUX.2 Dev's 32 B in bf16 leave no room beside activations
# the fast path's compile is measured where it takes about two minutes (Qwen-Image's 60 blocks take longer; a
# streamed model, FLUX.2 Dev's here, runs eagerly)
FAST = ("zimage", "flux", "sd3", "klein")


def size_of(family: str, args: argparse.Namespace) -> int:
    return int(args.size or SIZES.get(family, 1024))
SD3_CFG = 4.5
SAMPLER_NODES = ("KSampler", "SamplerCustomAdvanced")
COMPUTE_NODES = ("CLIPTextEncode", *SAMPLER_NODES, "VAEDecode")


# ------------------------------------------------------------------------------------------- pipeline phase


def png_bytes(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=4)
    return buf.getvalue()


def module_gib(*modules: Any) -> float:
    return round(sum(t.numel() * t.element_size() for m in modules if m is not None
                     for t in (*m.parameters(), *m.buffers())) / GiB, 3)


def PooledFirst(clip: Any) -> Any:
    """A CLIPTextModel answering as CLIPTextModelWithProjection does for StableDiffusion3Pipeline: output[0] is the
    pooled output (our SD3 CLIP-L has no projection, as ComfyUI's sd3 CLIP-L pools without one)."""
    import torch
    from transformers.models.clip.modeling_clip import CLIPTextModelOutput

    class _PooledFirst(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        @property
        def dtype(self) -> Any:
            return self.inner.dtype

        @property
        def device(self) -> Any:
            return self.inner.device

        def forward(self, ids: Any, output_hidden_states: bool = True) -> Any:
            out = self.inner(ids, output_hidden_states=True)
            return CLIPTextModelOutput(text_embeds=out.pooler_output, last_hidden_state=out.last_hidden_state,
                                       hidden_states=out.hidden_states)

    return _PooledFirst(clip)


def build_pipeline(family: str, models: Path, device: Any) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """diffusers' pipeline for the family, assembled from the modules our loaders build from the bench's files;
    returns it, its call arguments, and the modules' sizes."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler
    from transformers import CLIPTokenizer, PreTrainedTokenizerFast

    from comfymesh.diffusion.families import registry
    from comfymesh.diffusion.models import tiny_flux, tiny_qwen_image, tiny_zimage
    from comfymesh.diffusion.models.checkpoint import (
        load_checkpoint,
        load_family_encoders,
        load_unet_file,
        load_vae_file,
    )
    from comfymesh.diffusion.models.convert import Placement
    from comfymesh.diffusion.text.qwen_tokenizer import qwen_tokenizer_dir
    from comfymesh.diffusion.text.t5_tokenizer import t5_tokenizer_dir
    from comfymesh.diffusion.text.tokenizer import tokenizer_dir

    place = Placement.for_device(device)
    pipe: Any
    dit: Any

    def t5_tok() -> Any:
        return PreTrainedTokenizerFast(tokenizer_file=str(t5_tokenizer_dir() / "tokenizer.json"), pad_token="<pad>",
                                       eos_token="</s>", unk_token="<unk>")

    def clip_tok() -> Any:
        return CLIPTokenizer.from_pretrained(str(tokenizer_dir()), local_files_only=True)

    def qwen_tok() -> Any:
        return PreTrainedTokenizerFast(tokenizer_file=str(qwen_tokenizer_dir() / "tokenizer.json"),
                                      pad_token="<|endoftext|>", eos_token="<|im_end|>")

    def flow16(vae: Any, scale: float, shift: float) -> Any:
        vae.register_to_config(scaling_factor=scale, shift_factor=shift)
        return vae

    if family == "zimage":
        from diffusers import ZImagePipeline

        family_obj = registry.get("zimage")
        assert family_obj is not None
        dit = load_unet_file(models / "diffusion_models" / tiny_zimage.DIFFUSION_MODEL, place).unet
        enc = load_family_encoders(family_obj, "lumina2", [models / "text_encoders" / tiny_zimage.TEXT_ENCODER], place)
        text = enc.clips["qwen3"]
        vae = flow16(load_vae_file(models / "vae" / tiny_zimage.VAE, place), 0.3611, 0.1159)
        tok = qwen_tok()
        # Qwen3's chat template as ZImagePipeline applies it (a user turn, then the assistant's turn opened)
        tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                             "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
        pipe = ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
                              vae=vae, text_encoder=text, tokenizer=tok, transformer=dit)
        kwargs: dict[str, Any] = {"guidance_scale": 0.0}
        sizes = {"transformer": module_gib(dit), "text_encoder": module_gib(text), "vae": module_gib(vae)}
    elif family == "flux":
        from diffusers import FluxPipeline

        family_obj = registry.get("flux")
        assert family_obj is not None
        dit = load_unet_file(models / "diffusion_models" / tiny_flux.DIFFUSION_MODEL, place).unet
        enc = load_family_encoders(family_obj, "flux", [models / "text_encoders" / tiny_flux.T5,
                                                        models / "text_encoders" / tiny_flux.CLIP_L], place)
        vae = flow16(load_vae_file(models / "vae" / tiny_flux.VAE, place), 0.3611, 0.1159)
        dtype = next(dit.parameters()).dtype
        # the pipeline hands the encoders' outputs to the transformer as they are: one dtype for all
        clip_l, t5 = enc.clips["l"].to(dtype), enc.clips["t5"].to(dtype)
        sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                                base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                                max_image_seq_len=4096)
        pipe = FluxPipeline(scheduler=sched, vae=vae, text_encoder=clip_l, tokenizer=clip_tok(), text_encoder_2=t5,
                            tokenizer_2=t5_tok(), transformer=dit)
        # ComfyUI pads T5 prompts to 256 tokens: the same sequence length here
        kwargs = {"guidance_scale": 3.5, "max_sequence_length": 256}
        sizes = {"transformer": module_gib(dit), "clip_l": module_gib(clip_l), "t5": module_gib(t5),
                 "vae": module_gib(vae)}
    elif family == "sd3":
        from diffusers import StableDiffusion3Pipeline

        parts = load_checkpoint(models / "checkpoints" / SD3_CKPT, place)
        dit, vae = parts.unet, flow16(parts.vae, 1.5305, 0.0609)
        assert dit is not None
        dtype = next(dit.parameters()).dtype
        clips = {k: v.to(dtype) for k, v in parts.clips.items()}
        if not hasattr(clips["l"], "text_projection"):  # the pipeline reads CLIP-L's pooled output first
            clips["l"] = PooledFirst(clips["l"])
        pipe = StableDiffusion3Pipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0), vae=vae,
            text_encoder=clips["l"], tokenizer=clip_tok(), text_encoder_2=clips["g"], tokenizer_2=clip_tok(),
            text_encoder_3=clips.get("t5"), tokenizer_3=t5_tok() if "t5" in clips else None, transformer=dit)
        kwargs = {"guidance_scale": SD3_CFG, "negative_prompt": NEGATIVE}
        sizes = {"transformer": module_gib(dit), "vae": module_gib(vae)} | {k: module_gib(v) for k, v in clips.items()}
    elif family == "qwen":
        from diffusers import QwenImagePipeline
        from diffusers.models.transformers.transformer_qwenimage import QwenEmbedRope

        from comfymesh.diffusion.text.qwen25_vl import TEXT

        family_obj = registry.get("qwen_image")
        assert family_obj is not None
        dit = load_unet_file(models / "diffusion_models" / tiny_qwen_image.DIFFUSION_MODEL, place).unet
        # our loader drops diffusers' RoPE table (the stage computes ComfyUI's positions): the pipeline needs it back
        dit.pos_embed = QwenEmbedRope(theta=10000, axes_dim=list(dit.config.axes_dims_rope), scale_rope=True).to(device)
        enc = load_family_encoders(family_obj, "qwen_image",
                                   [models / "text_encoders" / tiny_qwen_image.TEXT_ENCODER], place)
        # Qwen2.5-VL's language model as our loader builds it (transformers' Qwen2_5_VLTextModel) answers the
        # pipeline's call (input_ids, attention_mask, output_hidden_states) as the full VL model does for text
        text = enc.clips[TEXT]
        vae = load_vae_file(models / "vae" / tiny_qwen_image.VAE, place)
        # ModelSamplingAuraFlow's constant shift, as the template samples (the pipeline's μ is then unused)
        pipe = QwenImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=QWEN_SHIFT),
                                 vae=vae, text_encoder=text, tokenizer=qwen_tok(), transformer=dit)
        kwargs = {"true_cfg_scale": QWEN_CFG, "negative_prompt": NEGATIVE}
        sizes = {"transformer": module_gib(dit), "text_encoder": module_gib(*enc.clips.values()),
                 "vae": module_gib(vae)}
    elif family == "klein":
        from diffusers import AutoencoderKLFlux2, Flux2KleinPipeline

        family_obj = registry.get("flux2")
        assert family_obj is not None
        dit = load_unet_file(models / "diffusion_models" / KLEIN_MODEL, place).unet
        enc = load_family_encoders(family_obj, "flux2", [models / "text_encoders" / KLEIN_TEXT], place)
        text = enc.clips["qwen3"]
        ours = load_vae_file(models / "vae" / FLUX2_VAE, place)
        # our VAE speaks ComfyUI's normalised 128-channel latent; the pipeline normalises itself and decodes the
        # 32-channel one: the same weights in diffusers' own class
        with torch.device("meta"):
            vae = AutoencoderKLFlux2.from_config(ours.config)
        vae.load_state_dict(ours.state_dict(), assign=True)
        tok = qwen_tok()
        # Qwen3's chat template as Flux2KleinPipeline applies it (a user turn, the assistant's opened, thinking off)
        tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                             "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                             "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n"
                             "{% endif %}{% endif %}")
        sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                                time_shift_type="exponential")
        pipe = Flux2KleinPipeline(scheduler=sched, vae=vae, text_encoder=text, tokenizer=tok, transformer=dit,
                                  is_distilled=True)
        kwargs = {"guidance_scale": 1.0}  # the template's CFGGuider cfg 1: no unconditional pass
        sizes = {"transformer": module_gib(dit), "text_encoder": module_gib(text), "vae": module_gib(vae)}
    else:
        raise ValueError(family)
    pipe.set_progress_bar_config(disable=True)
    return pipe, kwargs, sizes


def pipeline_phase(family: str, models: Path, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    start = time.perf_counter()
    pipe, kwargs, sizes = build_pipeline(family, models, device)
    res: dict[str, Any] = {"load_s": round(time.perf_counter() - start, 1), "module_GiB": sizes}
    if cuda:
        res["allocated_after_load_GiB"] = round(torch.cuda.memory_allocated() / GiB, 2)
        torch.cuda.reset_peak_memory_stats()
    steps, size = args.steps or STEPS[family], size_of(family, args)
    say(f"{family} pipeline built in {res['load_s']} s: {sizes}")

    def call(output: str, seed: int) -> float:
        t = time.perf_counter()
        with torch.inference_mode():
            out = pipe(prompt=PROMPT, height=size, width=size, num_inference_steps=steps,
                       generator=torch.Generator(device).manual_seed(seed), output_type=output, **kwargs)
        if output == "pil":
            for image in out.images:
                png_bytes(image)
        elif cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t

    res["first_call_ms"] = round(call("pil", 1) * 1000, 1)
    lat = [call("pil", 2 + i) for i in range(args.runs)]
    latent = [call("latent", 20 + i) for i in range(max(2, args.runs - 1))]
    res |= {"latency_ms": round(p50(lat) * 1000, 1), "latency_all_ms": [round(x * 1000, 1) for x in lat],
            "it_s_incl_text_encode": round(steps / p50(latent), 3)}
    if cuda:
        res["peak_GiB"] = round(torch.cuda.max_memory_allocated() / GiB, 2)
    say(f"{family} pipeline: {res}")
    if family == "flux":
        del pipe
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
        try:
            res["fp8_transformer"] = fp8_transformer(models, device, args)
        except Exception as exc:
            res["fp8_transformer_error"] = repr(exc)[:500]
            traceback.print_exc()
    return res


def fp8_transformer(models: Path, device: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The scaled-fp8 FLUX file alone on the GPU: its weight memory and the peak of one transformer call at the
    bench's size (256 T5 tokens, guidance 3.5, batch 1), as the stage calls it; and its step time."""
    import torch

    from comfymesh.diffusion.families import flux as flux_family
    from comfymesh.diffusion.models.checkpoint import load_unet_file
    from comfymesh.diffusion.models.convert import Placement

    cuda = device.type == "cuda"
    base = torch.cuda.memory_allocated() if cuda else 0
    parts = load_unet_file(models / "diffusion_models" / FLUX_FP8, Placement.for_device(device))
    assert parts.recognition is not None and parts.unet is not None
    out: dict[str, Any] = {"fp8_params": sum(1 for m in parts.unet.modules() if "Fp8" in type(m).__name__)}
    if cuda:
        out["weights_GiB"] = round((torch.cuda.memory_allocated() - base) / GiB, 3)
        torch.cuda.reset_peak_memory_stats()
    sm = flux_family.FAMILY.sampling_model(parts.unet, parts.recognition, device)
    layout = flux_family.layout_of(parts.unet)
    lat = size_of("flux", args) // 8
    x = torch.randn(1, 16, lat, lat, device=device, dtype=sm.dtype)
    ctx = torch.randn(1, 256, layout.context_dim, device=device, dtype=sm.dtype)
    y = flux_family.flux_y(None, 3.5, layout.vec_dim).to(device, sm.dtype)
    t = torch.full((1,), 0.7, device=device, dtype=sm.dtype)
    times = []
    with torch.inference_mode():
        for _ in range(3):
            s = time.perf_counter()
            sm.unet(x, t, ctx, y)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - s)
    out["call_ms"] = round(p50(times[1:]) * 1000, 1)
    if cuda:
        out["peak_GiB"] = round((torch.cuda.max_memory_allocated() - base) / GiB, 3)
    if args.fp8_matmul:
        out["fp8_matmul"] = fp8_matmul_call(parts.unet, sm.unet, (x, t, ctx, y), device)
    say(f"flux fp8 transformer: {out}")
    return out


def fp8_matmul_call(model: Any, call: Any, inputs: tuple[Any, ...], device: Any) -> dict[str, Any]:
    """The same transformer call with the fp8 matmul mode (COMFYMESH_FP8_MATMUL's kernel) against the upcast bf16
    path: its time and the PSNR of its output (peak-to-peak of the bf16 output over the RMS difference)."""
    import torch

    from comfymesh.diffusion.memory.fp8_matmul import device_capability, fp8_kernel
    from comfymesh.diffusion.models.fp8_weights import set_fp8_kernel

    kernel = fp8_kernel(True, device, device_capability(device))
    with torch.inference_mode():
        ref = call(*inputs).float()
        layers = set_fp8_kernel(model, kernel)
        times = []
        for _ in range(3):
            s = time.perf_counter()
            got = call(*inputs).float()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - s)
        set_fp8_kernel(model, "upcast")
    mse = float((got - ref).pow(2).mean())
    span = float(ref.max() - ref.min())
    return {"kernel": kernel, "scaled_mm_layers": layers, "call_ms": round(p50(times[1:]) * 1000, 1),
            "psnr_vs_bf16_db": round(10 * math.log10(span**2 / mse), 2) if mse > 0 else float("inf")}


# ------------------------------------------------------------------------------------------- mesh phase


class FamilyMesh:
    def __init__(self, home: Path, args: argparse.Namespace, label: str, fast: bool = False,
                 env: dict[str, str] | None = None) -> None:
        from tests.mesh import Mesh

        # a fresh data root per mesh (no node cache carries over), the family's models linked in
        root = home / f"mesh-{label}"
        root.mkdir(parents=True, exist_ok=True)
        if not (root / "models").exists():
            (root / "models").symlink_to(home / "models")
        home = root
        self.mem_file = home / "stage-mem.json"
        probe = str(REPO / "bench" / "stage_probe")
        path = os.pathsep.join(p for p in (probe, os.environ.get("PYTHONPATH", "")) if p)
        self.mesh = Mesh(home, stages=("diffusion",), imaging_replicas=0,
                         env={"COMFYMESH_NODE_TIMINGS": "1", "COMFYMESH_DEVICE": args.device, "PYTHONPATH": path,
                              "COMFYMESH_BENCH_MEM_FILE": str(self.mem_file),
                              "COMFYMESH_FAST_PATH": "1" if fast else "0",
                              # the scaled-fp8 FLUX mesh multiplies in fp8 too when asked (with the fast path:
                              # compiled _scaled_mm, the way to ≤ 0.5× the pipeline on Hopper)
                              "COMFYMESH_FP8_MATMUL": "1" if args.fp8_matmul and label.startswith(FLUX_FP8) else "0",
                              **(env or {})})
        self.client = HttpClient(self.mesh.port)
        self.label = label

    def node_timings(self, job_id: str) -> dict[str, float]:
        nodes: dict[str, float] = {}
        for line in list(self.mesh.logs):
            if '"node timing"' in line and job_id in line:
                entry = json.loads(line.split(": ", 1)[1])
                if entry.get("job") == job_id:
                    nodes[entry["class_type"]] = nodes.get(entry["class_type"], 0.0) + float(entry["ms"])
        return nodes

    def job(self, prompt: dict[str, Any]) -> dict[str, Any]:
        start = time.perf_counter()
        status, reply = self.client.request("POST", "/v1/workflows", {"prompt": prompt})
        assert status == 202, reply[:2000]
        job_id = json.loads(reply)["job_id"]
        events = self.client.events_until_finished(f"/v1/jobs/{job_id}/events")
        if events[-1]["event"] != "completed":
            raise RuntimeError(f"job {events[-1]['event']}: {json.dumps(events[-1].get('data'))[:1500]}")
        pngs = [self.client.request("GET", image["url"])[1] for image in events[-1]["data"]["images"]]
        ms = (time.perf_counter() - start) * 1000
        assert pngs and all(p[:4] == b"\x89PNG" for p in pngs)
        time.sleep(0.05)  # the stage's timing lines travel through the supervisor's pipe
        nodes = self.node_timings(job_id)
        return {"ms": ms, "nodes": nodes, "compute_ms": sum(nodes.get(k, 0.0) for k in COMPUTE_NODES),
                "png_bytes": len(pngs[0]), "png": pngs[0]}

    def wait_buckets(self, count: int, timeout: float) -> float:
        """Seconds until `count` fast-path buckets have built all their tiers or given up (or `timeout`)."""
        start = time.perf_counter()
        while time.perf_counter() - start < timeout:
            if len([e for e in bucket_logs(self.mesh.logs) if " done: tier " in e.get("msg", "")]) >= count:
                break
            time.sleep(0.5)
        return round(time.perf_counter() - start, 1)

    def memory(self) -> dict[str, float]:
        try:
            state = json.loads(self.mem_file.read_text())
        except (OSError, ValueError):
            return {}
        return {k: round(v / GiB, 2) for k, v in state.items() if k != "t"}


def stream_budget(models: Path, args: argparse.Namespace) -> int:
    """FLUX.2 Dev's model budget (COMFYMESH_MODEL_CACHE_BYTES), planned from the file as the stage plans it: its
    non-block weights, the two-block window and (1 − `--stream-share`) of its blocks' bytes, plus room for the VAE,
    which loads after the model (without room it would evict the model every job; the plan fills the budget it gets,
    so the room holds only where a block is larger than the VAE, as at full size). The text encoder is not in the
    sum: it leaves the GPU once the prompt is encoded (memory.encoders)."""
    import torch

    from comfymesh.diffusion.memory import offload_plan
    from comfymesh.diffusion.memory.fit import resident_bytes, tensor_bytes
    from comfymesh.diffusion.models.convert import Placement

    dtype = Placement.for_device(torch.device(args.device)).unet_dtype
    blocks, other = offload_plan.file_blocks(tensor_bytes([models / "diffusion_models" / DEV_MODEL], dtype))
    room = resident_bytes([models / "vae" / FLUX2_VAE], dtype) * 5 // 4  # a quarter over: built modules' extras
    target = offload_plan.minimum_bytes(blocks, other) + int((1 - args.stream_share) * sum(blocks.values()))
    budget = offload_plan.plan(DEV_MODEL, blocks, other, target).device_bytes + room
    plan = offload_plan.plan(DEV_MODEL, blocks, other, budget)
    if not plan.streamed or plan.device_bytes + room > budget:
        raise ValueError(f"--stream-share {args.stream_share}: no budget streams blocks of {DEV_MODEL} and leaves "
                         "room for the VAE")
    return budget


STREAMED_CALL = re.compile(r"streamed call of .*: ([0-9.]+) s, ([0-9.]+) s of it waiting on block copies")


def log_entries(lines: list[str], marker: str) -> list[dict[str, Any]]:
    """A mesh's JSON log lines that contain `marker`, parsed, with the process that wrote each (a line that is not
    JSON as its text)."""
    found: list[dict[str, Any]] = []
    for line in lines:
        if marker in line:
            process, _, text = line.partition(": ")
            try:
                found.append({"process": process, **json.loads(text)})
            except (ValueError, TypeError):
                found.append({"process": process, "msg": line})
    return found


def log_messages(lines: list[str], marker: str) -> list[str]:
    """The messages of a mesh's JSON log lines that contain `marker`."""
    return [str(entry.get("msg", "")) for entry in log_entries(lines, marker)]


def streaming_stats(lines: list[str]) -> dict[str, Any]:
    """The stage's per-call streaming lines (memory.streaming): calls, their median time and copy wait, and the
    share of the calls' time spent waiting on copies (Σ wait / Σ call)."""
    calls = [tuple(map(float, m.groups())) for msg in log_messages(lines, "streamed call of")
             if (m := STREAMED_CALL.search(msg))]
    if not calls:
        return {"streamed_calls": 0}
    total, wait = sum(c for c, _ in calls), sum(w for _, w in calls)
    return {"streamed_calls": len(calls), "call_s_p50": round(p50([c for c, _ in calls]), 4),
            "copy_wait_s_p50": round(p50([w for _, w in calls]), 4),
            "copy_wait_share": round(wait / total, 4) if total > 0 else float("nan")}


def image_psnr(pngs: dict[int, bytes], reference: dict[int, bytes]) -> dict[int, float]:
    """Each image's PSNR (dB) against the reference image of the same seed."""
    from PIL import Image

    return {seed: round(psnr(Image.open(io.BytesIO(png)).convert("RGB"),
                             Image.open(io.BytesIO(reference[seed])).convert("RGB")), 2)
            for seed, png in pngs.items() if seed in reference}


def mesh_phase(family: str, home: Path, args: argparse.Namespace, variant: str = "",
               eager_pngs: dict[int, bytes] | None = None,
               bf16_pngs: dict[int, bytes] | None = None) -> dict[str, Any]:
    """The mesh run of a family; with `eager_pngs` (the eager run's PNG per seed) on the fast path, its buckets
    built after the cold job and each warm image's PSNR against the eager one; with `bf16_pngs` (the bf16 file's
    eager images) each image's PSNR against those too. FLUX.2 Dev runs within `stream_budget`: the plan the stage
    logged and its streamed calls' copy waits are recorded."""

    steps = args.steps or STEPS[family]
    fast = eager_pngs is not None
    res: dict[str, Any] = {}
    env = {}
    if family == "flux2dev":
        budget = stream_budget(home / "models", args)
        env["COMFYMESH_MODEL_CACHE_BYTES"] = str(budget)
        res["memory_budget_GiB"] = round(budget / GiB, 2)
    run = FamilyMesh(home, args, (variant or family) + ("-fast" if fast else ""), fast, env)
    start = time.perf_counter()
    try:
        run.mesh.start()
    except Exception:
        print("\n".join(run.mesh.logs[-40:]), flush=True)
        raise
    try:
        res["mesh_up_s"] = round(time.perf_counter() - start, 1)
        try:
            cold = run.job(graph(family, args, seed=1, variant=variant))
        except Exception:
            print("\n".join(run.mesh.logs[-60:]), flush=True)  # what the services said, beside the failure
            raise
        res["cold_first_job_ms"] = round(cold["ms"], 1)
        res["cold_first_job_nodes_ms"] = {k: round(v, 1) for k, v in cold["nodes"].items()}
        res["cold_start_to_first_png_s"] = round(time.perf_counter() - start, 1)
        res["stage_memory_after_cold_GiB"] = run.memory()
        # a model file met the first time is hashed once for the cache keys: part of the cold start
        res["cold_hashed"] = [{k: e.get(k) for k in ("process", "file", "GiB", "s")}
                              for e in log_entries(run.mesh.logs, "hashed a model file")]
        say(f"{family}{'/' + variant if variant else ''} mesh cold: {res}")
        if fast:
            # one job of the graph makes two buckets: the model call (CFG's batch, text length) and the VAE decode
            res["waited_for_buckets_s"] = run.wait_buckets(2, args.compile_timeout)
            res["buckets"] = [e.get("msg", "") for e in bucket_logs(run.mesh.logs)]
        warm_from = len(run.mesh.logs)
        runs = [run.job(graph(family, args, seed=2 + i, variant=variant)) for i in range(args.runs)]
        res["_pngs"] = {2 + i: r["png"] for i, r in enumerate(runs)}
        if eager_pngs:
            res["psnr_vs_eager_db"] = image_psnr(res["_pngs"], eager_pngs)
        if bf16_pngs:
            res["psnr_vs_bf16_db"] = image_psnr(res["_pngs"], bf16_pngs)
        sampler = [sum(r["nodes"].get(k, 0.0) for k in SAMPLER_NODES) for r in runs]
        res |= {
            "latency_ms": round(p50([r["ms"] for r in runs]), 1), "latency_all_ms": [round(r["ms"], 1) for r in runs],
            "sampler_ms": round(p50(sampler), 1), "sampler_it_s": round(steps / (p50(sampler) / 1000), 3),
            "nodes_ms": {k: round(p50([r["nodes"].get(k, 0.0) for r in runs]), 1) for k in runs[0]["nodes"]},
            "overhead_ms": round(p50([r["ms"] - r["compute_ms"] for r in runs]), 1),
        }
        time.sleep(0.5)  # the probe's last write
        res["stage_memory_GiB"] = run.memory()
        if family == "flux2dev":
            res["memory_plan"] = log_messages(run.mesh.logs, "memory plan")
            res["streaming_warm"] = streaming_stats(run.mesh.logs[warm_from:])
        say(f"{family}{'/' + variant if variant else ''} mesh warm: { {k: v for k, v in res.items() if k != '_pngs'} }")
    finally:
        run.mesh.stop()
        if args.out:
            Path(args.out).with_name(f"mesh-{variant or family}.log").write_text("\n".join(run.mesh.logs[-400:]))
    return res


# ------------------------------------------------------------------------------------------- driver


RESULTS: dict[str, Any] = {}


def write(args: argparse.Namespace) -> None:
    RESULTS["elapsed_s"] = round(time.monotonic() - T0, 1)
    if args.out:
        Path(args.out).write_text(json.dumps(RESULTS, indent=1, default=str))


def run_family(family: str, base: Path, args: argparse.Namespace) -> None:
    res: dict[str, Any] = RESULTS.setdefault(family, {})
    home = base / family
    models = home / "models"
    try:
        if "files" not in res:
            res["files"] = make_files(family, models, args)
            write(args)
        if "pipeline" in args.phases and family in PIPELINES:
            # its own process: every byte it put on the GPU is gone before the mesh's stage loads the models
            out = home / "pipeline.json"
            cmd = [sys.executable, __file__, "--_pipeline", family, "--home", str(base), "--device", args.device,
                   "--size", str(args.size), "--runs", str(args.runs), "--_result", str(out)]
            if args.steps:
                cmd += ["--steps", str(args.steps)]
            if args.tiny:
                cmd.append("--tiny")
            if args.fp8_matmul:
                cmd.append("--fp8-matmul")
            start = time.perf_counter()
            proc = subprocess.run(cmd, timeout=args.phase_timeout)
            res["pipeline"] = json.loads(out.read_text()) if out.is_file() else {"error": f"exit {proc.returncode}"}
            res["pipeline"]["process_s"] = round(time.perf_counter() - start, 1)
            write(args)
        if "mesh" in args.phases:
            bf16_pngs: dict[int, bytes] = {}  # the bf16 file's eager images, which fp8 runs are compared with
            if args.compare_bf16 and args.weight_dtype != "default" and "mesh_bf16" not in args.skip:
                try:
                    res["mesh_bf16"] = mesh_phase(family, home, argparse.Namespace(**{**vars(args),
                                                                                      "weight_dtype": "default"}))
                    bf16_pngs = res["mesh_bf16"].pop("_pngs")
                except Exception as exc:
                    res["mesh_bf16"] = {"error": repr(exc)[:2000]}
                    traceback.print_exc()
                write(args)
            for variant in ([""] + ([FLUX_FP8] if family == "flux" and not args.no_fp8_mesh else [])):
                key = "mesh" if not variant else "mesh_fp8"
                eager_pngs: dict[int, bytes] = {}  # the eager mesh's images, which the fast one is compared with
                for fast in (False, True) if args.fast and family in FAST else (False,):
                    name = key + ("_fast" if fast else "")
                    if name in args.skip:
                        continue
                    try:
                        res[name] = mesh_phase(family, home, args, variant, eager_pngs if fast else None,
                                               bf16_pngs or None)
                        pngs = res[name].pop("_pngs")
                        eager_pngs = eager_pngs if fast else pngs
                        if not variant and not fast and args.weight_dtype == "default":
                            bf16_pngs = pngs  # FLUX's scaled-fp8 file is compared with its bf16 one
                    except Exception as exc:
                        res[name] = {"error": repr(exc)[:2000]}
                        traceback.print_exc()
                    write(args)
    except Exception as exc:
        res["error"] = repr(exc)[:2000]
        traceback.print_exc()
    finally:
        write(args)
        if not args.keep_files:
            shutil.rmtree(models, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default="zimage,sd3,flux", help="comma-separated, run in this order")
    parser.add_argument("--phases", default="pipeline,mesh", help="pipeline,mesh (files are always written)")
    parser.add_argument("--home", type=Path, default=None, help="work folder (default: a temp folder)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="the builders' tiny files (CPU smoke test)")
    parser.add_argument("--size", type=int, default=0, help="override every family's size (0: 1024; Qwen 1328)")
    parser.add_argument("--steps", type=int, default=0,
                        help="override every family's steps (0: the templates': 8 / 20 / 28 / 20 / 4 / 28)")
    parser.add_argument("--stream-share", type=float, default=0.33,
                        help="flux2dev: the share of its blocks' bytes the model budget leaves to stream")
    parser.add_argument("--runs", type=int, default=3, help="warm runs per case (median reported)")
    parser.add_argument("--no-fp8-mesh", action="store_true", help="skip FLUX's second mesh on the scaled-fp8 file")
    parser.add_argument("--fast", action="store_true", help="each mesh again on the fast path, PSNR against eager")
    parser.add_argument("--compile-timeout", type=float, default=900, help="--fast: longest wait for the buckets")
    parser.add_argument("--fp8-matmul", action="store_true",
                        help="FLUX's scaled-fp8 transformer call also in the fp8 matmul mode (COMFYMESH_FP8_MATMUL): "
                             "its time and PSNR against the bf16-upcast call; the scaled-fp8 mesh (unless "
                             "--no-fp8-mesh) runs in that mode too")
    parser.add_argument("--weight-dtype", default="default", choices=("default", "fp8_e4m3fn", "fp8_e4m3fn_fast"),
                        help="UNETLoader's weight_dtype in every graph: fp8_e4m3fn holds the model's linears in fp8, "
                             "fp8_e4m3fn_fast also multiplies them in fp8 (torch._scaled_mm) on Ada or Hopper, as "
                             "ComfyUI does (the pipelines stay in their file's dtype)")
    parser.add_argument("--compare-bf16", action="store_true",
                        help="with --weight-dtype: first an eager mesh in the file's own dtype (`mesh_bf16`), whose "
                             "images every later mesh's are compared with (`psnr_vs_bf16_db`)")
    parser.add_argument("--skip", default="",
                        help="mesh results not to run (comma-separated: mesh_bf16, mesh, mesh_fast, mesh_fp8, "
                             "mesh_fp8_fast; `--phases` leaves out the pipeline), e.g. a case an earlier run "
                             "measured; an eager mesh skipped leaves its fast mesh without `psnr_vs_eager_db`")
    parser.add_argument("--keep-files", action="store_true", help="keep each family's files after it ran")
    parser.add_argument("--phase-timeout", type=float, default=900)
    parser.add_argument("--out", default=None, help="write the results as JSON here (logs beside it)")
    parser.add_argument("--_pipeline", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.phases = args.phases.split(",")
    args.skip = set(filter(None, args.skip.split(",")))
    if args._pipeline:  # the pipeline subprocess
        try:
            res = pipeline_phase(args._pipeline, args.home / args._pipeline / "models", args)
        except Exception as exc:
            traceback.print_exc()
            res = {"error": repr(exc)[:2000]}
        Path(args._result).write_text(json.dumps(res, default=str))
        return
    import torch

    base = args.home or Path(tempfile.mkdtemp(prefix="comfymesh-families-bench-"))
    RESULTS.update({"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
                    "torch": torch.__version__, "argv": sys.argv,
                    "size": args.size or {f: size_of(f, args) for f in args.families.split(",")}})
    try:
        import diffusers
        import transformers

        RESULTS["diffusers"], RESULTS["transformers"] = diffusers.__version__, transformers.__version__
    except ImportError as exc:
        RESULTS["import_error"] = repr(exc)
    for family in args.families.split(","):
        run_family(family, base, args)
        gc.collect()
    write(args)
    if args.home is None:
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(RESULTS, indent=1, default=str))


if __name__ == "__main__":
    main()
