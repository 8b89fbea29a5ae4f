"""Tiny random-weight stand-ins for the model files the official ComfyUI templates load, under the templates' own
file names and folders: what `comfymesh demo` writes so those templates run on a fresh machine (as noise), and
what the template tests run on. Each family's files fit each other (the LoRAs fit the models written here)."""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from comfymesh.diffusion.models import tiny_sd3
from comfymesh.diffusion.models.clip_vision import make_tiny_clip_vision
from comfymesh.diffusion.models.tiny_checkpoint import make_tiny_checkpoint
from comfymesh.diffusion.models.tiny_chroma_radiance import make_tiny_chroma_radiance
from comfymesh.diffusion.models.tiny_diffsynth import make_tiny_diffsynth
from comfymesh.diffusion.models.tiny_flux import make_template_files as make_flux_files
from comfymesh.diffusion.models.tiny_flux2 import make_template_files as make_flux2_files
from comfymesh.diffusion.models.tiny_hidream import make_template_files as make_hidream_files
from comfymesh.diffusion.models.tiny_lora import make_template_loras
from comfymesh.diffusion.models.tiny_qwen_controlnet import make_tiny_qwen_controlnets
from comfymesh.diffusion.models.tiny_qwen_image import make_template_files as make_qwen_image_files
from comfymesh.diffusion.models.tiny_sd3_controlnet import make_template_files as make_sd35_controlnets
from comfymesh.diffusion.models.tiny_uso import make_template_files as make_uso_files
from comfymesh.diffusion.models.tiny_zimage import make_tiny_zimage
from comfymesh.diffusion.models.tiny_zimage_fun import make_template_files as make_zimage_fun

# checkpoint file → the tiny family that stands in for it
CHECKPOINTS = {
    "sd_xl_base_1.0.safetensors": "sdxl",
    "sd_xl_refiner_1.0.safetensors": "sdxl",  # no tiny refiner form yet: a tiny SDXL base under its name
    "sd_xl_turbo_1.0_fp16.safetensors": "sdxl",
}
# CLIP vision files: a tiny HF CLIP vision model whose image embeds are as wide as the tiny SDXL's pooled output
CLIP_VISION = ("clip_vision_g.safetensors",)


def _write_all(models: Path, seed: int) -> None:
    for name, family in CHECKPOINTS.items():
        make_tiny_checkpoint(models / "checkpoints" / name, family)
    for name in CLIP_VISION:
        make_tiny_clip_vision(models / "clip_vision" / name)
    make_flux_files(models, seed=seed)  # FLUX.1 and Chroma, with the FLUX VAE ae.safetensors
    make_tiny_chroma_radiance(models, seed=seed)  # Chroma Radiance (pixel space: VAELoader's pixel_space, no file)
    make_uso_files(models, seed=seed)  # FLUX.1 USO's style projector and the dev fp8 checkpoint
    # HiDream's diffusion models and four encoders; the FLUX VAE and scaled-fp8 T5 above are shaped as it takes
    make_hidream_files(models, seed=seed, keep_existing=True)
    make_qwen_image_files(models, seed=seed)
    make_tiny_diffsynth(models, seed=seed)  # Qwen-Image's DiffSynth ControlNet patches (model_patches/)
    make_tiny_qwen_controlnets(models, seed=seed)  # Qwen-Image's InstantX ControlNets (controlnet/)
    make_zimage_fun(models, seed=seed)  # the Z-Image Fun union ControlNet (model_patches/)
    # Z-Image's diffusion model and Qwen3 encoder; its ae.safetensors is the FLUX VAE written above
    with tempfile.TemporaryDirectory() as scratch:
        zimage = make_tiny_zimage(Path(scratch), seed=seed)
        for folder in ("diffusion_models", "text_encoders"):
            (models / folder).mkdir(parents=True, exist_ok=True)
            shutil.move(zimage[folder], models / folder / zimage[folder].name)
        # SD3.5's template loads one checkpoint; its split files' names belong to other families
        sd3 = tiny_sd3.make_tiny_sd3(Path(scratch) / "sd3", seed=seed)
        shutil.move(sd3["checkpoints"], models / "checkpoints" / tiny_sd3.CHECKPOINT)
    make_sd35_controlnets(models, seed=seed)  # SD3.5 Large's blur and canny ControlNets, shaped for that checkpoint
    # FLUX.2 Klein, with the FLUX.2 VAEs; its 28-layer qwen_3_4b replaces Z-Image's (same width, so Z-Image runs too)
    make_flux2_files(models, seed=seed)
    make_template_loras(models, seed=seed)  # last: they are shaped after the models written above


def write_template_models(models: str | Path, seed: int = 3, overwrite: bool = False) -> tuple[list[Path], list[Path]]:
    """Write every template's tiny model files under `models` (checkpoints/, diffusion_models/, ...); a file that
    exists is kept unless `overwrite`. Answers (written, kept)."""
    root = Path(models)
    written, kept = [], []
    with tempfile.TemporaryDirectory(dir=root.parent if root.parent.is_dir() else None) as scratch:
        staged = Path(scratch)
        _write_all(staged, seed)
        for source in sorted(path for path in staged.rglob("*") if path.is_file()):
            target = root / source.relative_to(staged)
            if target.exists() and not overwrite:
                kept.append(target)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(source, target)
            written.append(target)
    return written, kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m comfymesh.diffusion.models.tiny_templates",
                                     description="Write tiny random-weight models under the file names the official "
                                                 "ComfyUI templates load (FLUX.1, FLUX.2 Klein, Chroma, SD3.5, SDXL, "
                                                 "Qwen-Image, Z-Image, their LoRAs).")
    parser.add_argument("models", type=Path, help="the models folder (checkpoints/, diffusion_models/, ... inside)")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--force", action="store_true", help="overwrite files that exist")
    args = parser.parse_args(argv)
    written, kept = write_template_models(args.models, args.seed, overwrite=args.force)
    for path in written:
        print(f"wrote {path}")
    for path in kept:
        print(f"kept {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
