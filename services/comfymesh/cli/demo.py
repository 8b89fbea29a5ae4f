"""`comfymesh demo`: tiny random-weight models under the file names the shipped templates, ComfyUI's official
templates and the frontend's default graph ask for, and the templates' input image, so every template runs on a fresh machine (as noise)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from comfymesh.cli.gateway import GatewayError
from comfymesh.config import get_settings

TEMPLATES = Path(__file__).resolve().parents[3] / "ui" / "templates"
# checkpoint file → the tiny family written under its name: ui/templates' names, and the classic default graph's
CHECKPOINTS = {"sd15.safetensors": "sd15", "sdxl.safetensors": "sdxl", "v1-5-pruned-emaonly-fp16.safetensors": "sd15"}
REAL_WEIGHTS = """\
[bold]These models have random weights: every image they make is noise.[/]
They show that the mesh, the templates and the CLI work. For real images, put real weights under the same
names (or pick yours in the workflow), e.g.:
  comfymesh models pull https://huggingface.co/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/\
v1-5-pruned-emaonly-fp16.safetensors --folder checkpoints --name sd15.safetensors
  comfymesh models pull https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/\
sd_xl_base_1.0.safetensors --folder checkpoints --name sdxl.safetensors
or copy .safetensors files into {models}/checkpoints/ (FLUX, SD3.5, Qwen-Image, Z-Image: diffusion_models/,
text_encoders/, vae/, under the names the templates ask for: the files written here).
`comfymesh demo --force` writes the tiny files again over whatever is there."""


def demo(force: Annotated[bool, typer.Option(help="overwrite model files that already exist")] = False) -> None:
    """Write tiny random-weight models for every supported family under the file names of our templates and of
    ComfyUI's official ones (SD1.5, SDXL, FLUX.1, Chroma, SD3.5, Qwen-Image, Z-Image, their LoRAs), and the
    templates' input image, into this machine's data folder (COMFYMESH_HOME)."""
    console = Console(stderr=True, soft_wrap=True)
    settings = get_settings()
    models = settings.folder("models")
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("comfymesh.diffusion") is None:
        console.print("[red]the diffusion extras are not installed[/]: install them with `make venv` "
                      "(or `pip install -e '.[diffusion]'`)")
        raise typer.Exit(1)
    # the diffusion stage's own writers, run as programs: the CLI imports no other service
    for name, family in CHECKPOINTS.items():
        target = models / "checkpoints" / name
        if target.exists() and not force:
            console.print(f"kept      {target} (exists)")
            continue
        _write("comfymesh.diffusion.models.tiny_checkpoint", "--family", family, str(target))
        console.print(f"wrote     {target} (tiny {family})")
    # the official templates' files (FLUX.1, Chroma, SD3.5, SDXL, Qwen-Image, Z-Image, LoRAs), the default graph's too
    console.print("writing the official templates' model files (tiny) ...")
    written = _write("comfymesh.diffusion.models.tiny_templates", str(models), *(["--force"] if force else []))
    for line in written:
        verb, _, path = line.partition(" ")
        console.print(f"{verb:<9} {path}" + (" (exists)" if verb == "kept" else ""))
    inputs = settings.folder("input")
    for image in sorted((TEMPLATES / "input").glob("*")):
        if not (inputs / image.name).exists():
            shutil.copy(image, inputs / image.name)
            console.print(f"copied    {inputs / image.name} (the templates' input image)")
    console.print()
    console.print(REAL_WEIGHTS.format(models=models))
    console.print("\nTry: [bold]comfymesh run comfymesh-sd15-txt2img --out outputs/[/] "
                  "(templates: comfymesh-sd15-txt2img, -img2img, -hires-fix, comfymesh-sdxl-txt2img, comfymesh-imaging);\n"
                  "in the browser, the official FLUX.1, SD3.5, Qwen-Image, Z-Image and SDXL templates find their files "
                  "too (on a CPU, set 64×64 and a few steps)")


def _write(module: str, *args: str) -> list[str]:
    """Run a tiny-model writer; answers its output lines."""
    result = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise GatewayError([f"writing the tiny models failed ({module}): {last}"])
    return result.stdout.splitlines()
