"""The Qwen3 tokenizer built from tiktoken ranks: merges recovered from ranks, special tokens, and the ids of
Z-Image's chat template (Qwen's published ids: <|im_start|> 151644, "user" 872, "\\n" 198, "assistant" 77091)."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer

from comfymesh.diffusion.text import qwen_tokenizer
from comfymesh.diffusion.text.qwen3 import template_ids


def test_merges_follow_the_ranks() -> None:
    # bytes a, b, c, then "ab" (rank 3) before "bc" (rank 4): "abc" merges a+b first, as tiktoken would
    ranks = {b"a": 0, b"b": 1, b"c": 2, b"ab": 3, b"bc": 4, b"abc": 5}
    spec = qwen_tokenizer.tokenizer_json(ranks)
    assert spec["model"]["merges"] == [["a", "b"], ["b", "c"], ["a", "bc"], ["ab", "c"]]
    tok = Tokenizer.from_str(json.dumps(spec))
    assert tok.encode("abc", add_special_tokens=False).ids == [5]
    assert tok.encode("bcab", add_special_tokens=False).ids == [4, 3]


@pytest.mark.usefixtures("qwen_tokenizer_ready")
def test_chat_template_ids() -> None:
    ids = template_ids("Hello world")
    assert ids == [151644, 872, 198, 9707, 1879, 151645, 198, 151644, 77091, 198]
    assert qwen_tokenizer.qwen_token_ids("<think></think>") == [151667, 151668]
