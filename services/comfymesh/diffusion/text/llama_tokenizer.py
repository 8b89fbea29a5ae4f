"""The Llama 3 byte-level BPE tokenizer (Llama-3.1-8B's, HiDream's fourth text encoder), built at setup from the
tiktoken rank file `llama_models/llama3/tokenizer.model` that Meta's llama-models wheel ships, then loaded
offline as a `tokenizers` model.

The merges are recovered from the ranks as for Qwen (qwen_tokenizer.tokenizer_json); what differs is Llama 3's
own: its split pattern (digits in runs of up to three), no normalizer, whole pieces found in the vocabulary taken
as they are (tiktoken's rule, `ignore_merges`), and the added tokens from id 128 000 named as in the tokenizer
ComfyUI ships (<|begin_of_text|> 128 000, <|eot_id|> 128 009, reserved tokens between, <unk> <image> <pad> after).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from comfymesh.diffusion.text import qwen_tokenizer
from comfymesh.diffusion.text.tokenizer import json_token_ids
from comfymesh.diffusion.text.tokenizer_build import default_tokenizer_dir, wheel_member

LLAMA_WHEEL = "llama-models==0.3.0"
RANKS_MEMBER = "llama_models/llama3/tokenizer.model"
RANKS_SHA256 = "82e9d31979e92ab929cd544440f129d9ecd797b69e327f80f17e1c50d5551b55"
RANK_COUNT = 128_000
SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# ids 128 000… as the Llama 3 tokenizer ComfyUI ships names them (Llama 3.0's names: reserved tokens around the
# header and end-of-turn tokens), then the three LLaVA tokens that tokenizer adds after the 256
NAMED_SPECIALS = {0: "<|begin_of_text|>", 1: "<|end_of_text|>", 6: "<|start_header_id|>", 7: "<|end_header_id|>",
                  9: "<|eot_id|>"}
SPECIAL_COUNT = 256
EXTRA_TOKENS = ("<unk>", "<image>", "<pad>")
BEGIN_ID = RANK_COUNT  # <|begin_of_text|>: ComfyUI's start token for Llama prompts
EOT_ID = RANK_COUNT + 9  # <|eot_id|>: HiDream pads Llama prompts with it
FILE_NAME = "tokenizer.json"


def special_tokens() -> list[str]:
    """The added tokens in id order from 128 000: the named ones, reserved tokens numbered in order between and
    after them, then the LLaVA tokens."""
    out, reserved = [], 0
    for i in range(SPECIAL_COUNT):
        if i in NAMED_SPECIALS:
            out.append(NAMED_SPECIALS[i])
        else:
            out.append(f"<|reserved_special_token_{reserved}|>")
            reserved += 1
    return [*out, *EXTRA_TOKENS]


def llama_tokenizer_dir() -> Path:
    """Beside the CLIP tokenizer files: <tokenizer dir>/llama3."""
    return default_tokenizer_dir() / "llama3"


def parse_ranks(text: bytes) -> dict[bytes, int]:
    return qwen_tokenizer.parse_ranks(text, RANK_COUNT, "Llama 3")


def tokenizer_json(ranks: dict[bytes, int]) -> dict[str, Any]:
    """A `tokenizers` model of Llama 3 from its tiktoken ranks."""
    spec = qwen_tokenizer.tokenizer_json(ranks)  # byte-level BPE with merges from the ranks; Llama's parts below
    spec["added_tokens"] = [{"id": RANK_COUNT + i, "content": tok, "single_word": False, "lstrip": False,
                             "rstrip": False, "normalized": False, "special": True}
                            for i, tok in enumerate(special_tokens())]
    spec["normalizer"] = None
    spec["pre_tokenizer"]["pretokenizers"][0]["pattern"] = {"Regex": SPLIT_PATTERN}
    spec["model"]["ignore_merges"] = True
    return spec


def fetch_ranks(wheel: Path | None = None) -> bytes:
    """The rank file from a given wheel, or from one `pip download` fetches; checked against its hash."""
    return wheel_member(LLAMA_WHEEL, RANKS_MEMBER, wheel, RANKS_SHA256)


def build_files(ranks_text: bytes, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    (dest / FILE_NAME).write_text(json.dumps(tokenizer_json(parse_ranks(ranks_text)), ensure_ascii=False),
                                  encoding="utf-8")


def is_built(dest: Path | None = None) -> bool:
    return ((dest or llama_tokenizer_dir()) / FILE_NAME).is_file()


def llama_token_ids(text: str) -> list[int]:
    """Token ids of `text` (special tokens written in it become their ids; nothing is added)."""
    return json_token_ids(llama_tokenizer_dir() / FILE_NAME, "Llama 3", text)
