"""Stage start-up on a GPU: import the model code, point the compile caches, build the manifest's buckets."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from comfymesh.catalog.model_folders import model_folders
from comfymesh.config import Settings
from comfymesh.contracts.errors import ModelError
from comfymesh.diffusion.fast.compile_cache import compile_cache_dir
from comfymesh.diffusion.fast.manifest import WarmTarget, warmup_from_manifest
from comfymesh.diffusion.models.cache import get_model_cache
from comfymesh.diffusion.models.convert import import_model_code
from comfymesh.logs import log_fields

log = logging.getLogger(__name__)


def start_warmup(settings: Settings) -> None:
    """Stage start on a GPU: import the model code before serving (so the first request pays only for
    its model's load, like a started ComfyUI), point the compile caches at <home>, and build the buckets
    of the warm-up manifest (COMFYMESH_WARMUP_MANIFEST) in the background. CPU stages (tests, laptops)
    start at once and import on first use."""
    cache = get_model_cache()
    if not cache.fast.fast_enabled(cache.device.type):
        return
    log.info("model code imported", extra=log_fields(seconds=round(import_model_code(), 2)))
    compile_cache_dir(settings.home)
    if not settings.warmup_manifest:
        return
    folders = model_folders(settings)
    manifest = Path(settings.warmup_manifest)

    def resolve(folder: str, name: str) -> Path:
        path = folders.resolve(folder, name)
        if path is None:
            raise ModelError(f"warm-up manifest names {name!r}, which is not in models/{folder}")
        return path

    def load(entry: dict[str, Any]) -> WarmTarget:
        if "diffusion_model" in entry:  # a registered family's model file, and the VAE file its jobs decode with
            ckpt = cache.unet_file(resolve("diffusion_models", entry["diffusion_model"]),
                                   entry.get("weight_dtype", "default"))
            model = cache.sampling_model(ckpt)
            if not entry.get("vae"):
                return WarmTarget(model, None, model.latent_format.channels)
            digest, file_vae = cache.vae_file(resolve("vae", entry["vae"]))
            return WarmTarget(model, cache.vae_file_decoder(digest, file_vae), model.latent_format.channels)
        ckpt = cache.get(resolve("checkpoints", entry["ckpt"]))
        vae: Any = ckpt.parts.vae
        return WarmTarget(cache.sampling_model(ckpt), cache.decoder(ckpt), vae.config.latent_channels)

    def run() -> None:
        started = warmup_from_manifest(load, manifest)
        log.info("warm-up manifest: building %s", ", ".join(started) or "nothing")

    threading.Thread(target=run, name="comfymesh-warmup", daemon=True).start()
