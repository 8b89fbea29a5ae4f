"""The tokenizers, loaded once per process from the folders `tokenizer_build` wrote: CLIP's (transformers'
CLIPTokenizer) and the `tokenizers` files of T5, Qwen and Llama (`json_token_ids`)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from comfymesh.contracts.errors import ModelError
from comfymesh.diffusion.text.tokenizer_build import SETUP_COMMAND, clip_is_built, default_tokenizer_dir

BOS_ID = 49406
EOS_ID = 49407
WINDOW = 77  # BOS + 75 tokens + EOS


def tokenizer_dir() -> Path:
    """The folder the tokenizer is read from (see `default_tokenizer_dir`)."""
    return default_tokenizer_dir()


@functools.lru_cache(maxsize=4)
def _load(path: str) -> Any:
    from transformers import CLIPTokenizer

    # from_pretrained on a folder: the vocab_file constructor gives wrong ids under transformers 5.x
    return CLIPTokenizer.from_pretrained(path, local_files_only=True)


def get_tokenizer() -> Any:
    """The shared CLIPTokenizer; a clear ModelError when setup has not built it yet."""
    path = tokenizer_dir()
    if not clip_is_built(path):
        raise ModelError(f"CLIP tokenizer files are missing in {path}: run {SETUP_COMMAND} (set "
                         "COMFYMESH_TOKENIZER_DIR to use another folder)")
    return _load(str(path))


def token_ids(text: str) -> list[int]:
    """Token ids of `text` without BOS/EOS (the text is lower-cased by the tokenizer)."""
    ids: list[int] = get_tokenizer()(text, add_special_tokens=False)["input_ids"]
    return ids


@functools.lru_cache(maxsize=8)
def _load_json(path: str) -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(path)


def json_token_ids(path: Path, what: str, text: str) -> list[int]:
    """Token ids of `text` by the `tokenizers` file at `path` (special tokens written in the text become their
    ids; nothing is added); ModelError naming the folder and the setup command when the file is missing."""
    if not path.is_file():
        raise ModelError(f"{what} tokenizer file is missing in {path.parent}: run {SETUP_COMMAND}")
    ids: list[int] = _load_json(str(path)).encode(text, add_special_tokens=False).ids
    return ids
