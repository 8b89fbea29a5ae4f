"""Fixtures for the diffusion tests (reusable by other suites): tiny checkpoints in a models home."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from comfymesh.diffusion.models.cache import ModelCache, set_model_cache
from comfymesh.diffusion.models.tiny_checkpoint import make_tiny_checkpoint, make_tiny_lora
from comfymesh.diffusion.text import qwen_tokenizer, t5_tokenizer
from comfymesh.diffusion.text.tokenizer_build import SETUP_COMMAND, clip_is_built, default_tokenizer_dir
from comfymesh.stage.node import NodeContext

__all__ = ["make_tiny_checkpoint"]


def _built(name: str, folder: Path, is_built: Callable[[Path], bool]) -> Path:
    # a missing tokenizer fails the test (setup is part of the suite), never skips it
    if not is_built(folder):
        pytest.fail(f"{name} tokenizer not built in {folder}: run {SETUP_COMMAND}")
    return folder


@pytest.fixture(scope="session")
def tokenizer_ready() -> Path:
    """The CLIP tokenizer's folder."""
    return _built("CLIP", default_tokenizer_dir(), clip_is_built)


@pytest.fixture(scope="session")
def t5_tokenizer_ready() -> Path:
    """The T5 tokenizer's folder (FLUX, SD3, Chroma prompts)."""
    return _built("T5", t5_tokenizer.t5_tokenizer_dir(), t5_tokenizer.is_built)


@pytest.fixture(scope="session")
def qwen_tokenizer_ready() -> Path:
    """The Qwen tokenizer's folder (Qwen3 and Qwen2.5-VL prompts)."""
    return _built("Qwen", qwen_tokenizer.qwen_tokenizer_dir(), qwen_tokenizer.is_built)


@pytest.fixture(scope="session")
def tiny_home(tmp_path_factory: pytest.TempPathFactory, tokenizer_ready: Path) -> Path:
    """A ComfyUI-style home with models/checkpoints/{sd15,sd2v,sdxl}.safetensors and a LoRA for sd15."""
    home = tmp_path_factory.mktemp("home")
    ckpts = home / "models" / "checkpoints"
    for family in ("sd15", "sd2v", "sdxl"):
        make_tiny_checkpoint(ckpts / f"{family}.safetensors", family, seed=0)
    make_tiny_lora(home / "models" / "loras" / "tiny_sd15.safetensors", ckpts / "sd15.safetensors", seed=1)
    make_tiny_lora(home / "models" / "loras" / "tiny_sdxl.safetensors", ckpts / "sdxl.safetensors", seed=2)
    (home / "models" / "vae").mkdir(parents=True)
    return home


@pytest.fixture(scope="session")
def model_cache() -> Iterator[ModelCache]:
    """One CPU cache for the whole session, installed as the process-wide cache."""
    cache = ModelCache(budget_bytes=2 * 2**30, device=__import__("torch").device("cpu"))
    set_model_cache(cache)
    yield cache
    set_model_cache(None)


@pytest.fixture
def node_ctx(tiny_home: Path, model_cache: ModelCache) -> NodeContext:
    return NodeContext(job_id="job", node_id="7", class_type="test", home=tiny_home)
