"""HiDream's text side and nodes: QuadrupleCLIPLoader / CLIPTextEncodeHiDream as ComfyUI 0.8.0 declares them
(golden hidream_object_info.json), the Llama 3 tokenizer built from the pinned llama-models ranks, ComfyUI's
HiDream tokenization (T5's first 128-token chunk, Llama's begin token and <|eot_id|> padding), the Llama states
(every hidden state but the embeddings, pads masked), the projected pooled CLIP-L ‖ CLIP-G and the zero fills."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from comfymesh.diffusion.models.tiny_hidream import CLIP_G, CLIP_L, LLAMA, T5, make_tiny_hidream
from comfymesh.diffusion.nodes import nodes
from comfymesh.diffusion.text import hidream_text, llama_tokenizer
from comfymesh.diffusion.text.llama import all_hidden_states
from comfymesh.diffusion.text.t5_tokenizer import EOS_ID, PAD_ID, t5_token_ids

GOLDEN = Path(__file__).parents[2] / "golden" / "hidream_object_info.json"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def encoders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    paths = make_tiny_hidream(tmp_path_factory.mktemp("hidream"))
    # QuadrupleCLIPLoader's order in hidream_e1_full: G first; roles are read from the files
    return hidream_text.load_encoders([paths[CLIP_G], paths[CLIP_L], paths[T5], paths[LLAMA]], CPU)


def test_object_info_equals_comfyui_080() -> None:
    golden = json.loads(GOLDEN.read_text())
    golden.pop("_about")
    assert {name: nodes.schemas[name].object_info() for name in golden} == golden


def test_llama_tokenizer_is_llama_3s() -> None:
    data = (llama_tokenizer.llama_tokenizer_dir() / llama_tokenizer.FILE_NAME).read_text(encoding="utf-8")
    spec = json.loads(data)
    assert len(spec["model"]["vocab"]) == 128_000 and spec["model"]["ignore_merges"] is True
    specials = {t["content"]: t["id"] for t in spec["added_tokens"]}
    assert specials["<|begin_of_text|>"] == 128_000 and specials["<|eot_id|>"] == 128_009
    assert specials["<|reserved_special_token_250|>"] == 128_255 and specials["<image>"] == 128_257
    # Llama 3's ids for well-known text (digits split in runs of three, specials written in the text kept)
    assert llama_tokenizer.llama_token_ids("Hello world") == [9906, 1917]
    assert llama_tokenizer.llama_token_ids("12345") == [4513, 1774]
    assert llama_tokenizer.llama_token_ids("<|eot_id|>") == [128_009]


def test_pinned_rank_file_hash_is_checked(tmp_path: Path) -> None:
    import zipfile

    wheel = tmp_path / "llama_models-0.0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(llama_tokenizer.RANKS_MEMBER, b"not the ranks")
    with pytest.raises(ValueError, match="sha256 differs"):
        llama_tokenizer.fetch_ranks(wheel)
    assert hashlib.sha256(b"not the ranks").hexdigest() != llama_tokenizer.RANKS_SHA256


def test_t5_first_chunk_as_comfyui_closes_it() -> None:
    short = hidream_text.t5_chunk("a red tree")
    ids = [*t5_token_ids("a red tree"), EOS_ID]
    assert [t for t, _ in short] == ids + [PAD_ID] * (128 - len(ids))
    long_text = " ".join(["tree"] * 300)  # one segment of 300 tokens: split at 127, the end token closes it
    chunk = hidream_text.t5_chunk(long_text)
    assert len(chunk) == 128 and chunk[-1] == (EOS_ID, 1.0)
    # a short weighted segment that does not fit moves to the next chunk: this one closes early, unpadded
    first = " ".join(["tree"] * 125)
    moved = hidream_text.t5_chunk(f"{first} (red apple sky:1.2)")
    assert moved[-1] == (EOS_ID, 1.0) and len(moved) == len(t5_token_ids(first)) + 1 < 128


def test_llama_tokens_begin_and_pad_to_128_never_truncated() -> None:
    pairs = hidream_text.llama_tokens("a red tree")
    ids = [t for t, _ in pairs]
    assert ids[0] == llama_tokenizer.BEGIN_ID and len(ids) == 128
    assert ids[1:1 + len(llama_tokenizer.llama_token_ids("a red tree"))] == llama_tokenizer.llama_token_ids("a red tree")
    assert ids[-1] == llama_tokenizer.EOT_ID
    assert len(hidream_text.llama_tokens(" ".join(["tree"] * 200))) == 201


def test_llama_states_drop_the_embeddings_and_mask_pads(encoders: dict[str, Any]) -> None:
    llama = encoders["llama"]
    pairs = hidream_text.llama_tokens("a red tree")
    ll = hidream_text.encode_llama(llama, pairs)
    layers = llama.config.num_hidden_layers
    assert ll.shape == (1, layers, 128, 32)
    ids = [t for t, _ in pairs]
    n = ids.index(llama_tokenizer.EOT_ID)
    full = all_hidden_states(llama, ids, [1] * n + [0] * (128 - n))
    torch.testing.assert_close(ll, full[:, 1:])
    # pads masked as keys: the prompt's own tokens are the same whatever follows them
    other = ids[:n] + [llama_tokenizer.BEGIN_ID] * (128 - n)
    torch.testing.assert_close(all_hidden_states(llama, other, [1] * n + [0] * (128 - n))[:, :, :n], full[:, :, :n])


def test_conditioning_shapes_pooled_projection_and_zero_fills(encoders: dict[str, Any]) -> None:
    cond = hidream_text.hidream_conditioning(encoders, "a red tree", "a blue sky", "a red tree", "a red tree")
    (context, extras), = cond
    assert context.shape == (1, 128, 64) and extras["conditioning_llama3"].shape == (1, 3, 128, 32)
    pooled = extras["pooled_output"]
    assert pooled.shape == (1, 32 + 64)
    # CLIP-L's part is projected by its text_projection (ComfyUI's return_projected_pooled)
    from comfymesh.diffusion.text.encode import tokenize_weighted, windows
    from comfymesh.diffusion.text.sd3_text import CLIP_L as SPEC_L
    from comfymesh.diffusion.text.sd3_text import encode_clip_windows

    _, raw = encode_clip_windows(encoders["l"], SPEC_L, windows(tokenize_weighted("a red tree"), SPEC_L.pad_id)[:1],
                                 None)
    projection = getattr(encoders["l"], hidream_text.L_PROJECTION)
    torch.testing.assert_close(pooled[:, :32], raw @ projection.T)
    # each prompt goes to its own encoder: CLIP-G's half follows clip_g's text only
    again = hidream_text.hidream_conditioning(encoders, "a red tree", "a red tree", "a red tree", "a red tree")
    assert torch.equal(again[0][1]["pooled_output"][:, :32], pooled[:, :32])
    assert not torch.equal(again[0][1]["pooled_output"][:, 32:], pooled[:, 32:])
    # missing encoders: ComfyUI's zeros at the released widths
    only_llama = hidream_text.hidream_conditioning({"llama": encoders["llama"]}, "x", "x", "x", "x")
    assert torch.equal(only_llama[0][0], torch.zeros(1, 128, 4096))
    assert torch.equal(only_llama[0][1]["pooled_output"], torch.zeros(1, 2048))
    only_t5 = hidream_text.hidream_conditioning({"t5": encoders["t5"]}, "x", "x", "x", "x")
    assert torch.equal(only_t5[0][1]["conditioning_llama3"], torch.zeros(1, 32, 1, 4096))


def test_weighted_prompts_move_states_from_the_empty_prompts(encoders: dict[str, Any]) -> None:
    plain = hidream_text.encode_t5_chunk(encoders["t5"], hidream_text.t5_chunk("a red tree"))
    weighted_pairs = hidream_text.t5_chunk("a (red:1.5) tree")
    weighted = hidream_text.encode_t5_chunk(encoders["t5"], weighted_pairs)
    w = torch.tensor([wt for _, wt in weighted_pairs])
    assert (w != 1.0).any()
    torch.testing.assert_close(weighted[:, w == 1.0], plain[:, w == 1.0])
    assert not torch.allclose(weighted[:, w != 1.0], plain[:, w != 1.0])
    # Llama: ComfyUI's loop moves hidden state j by token j's weight (the first axis is the layers')
    pairs = hidream_text.llama_tokens("(a:2) red tree")
    assert pairs[1][1] == 2.0
    ll = hidream_text.encode_llama(encoders["llama"], pairs)
    plain_ll = hidream_text.encode_llama(encoders["llama"], [(t, 1.0) for t, _ in pairs])
    assert torch.equal(ll[:, 1:], plain_ll[:, 1:])  # state 2 onwards (tokens 2… weigh 1) untouched
    assert not torch.allclose(ll[:, 0], plain_ll[:, 0])  # state 1 (first kept) moved by token 1's weight


def test_llama_runs_as_comfyuis_llama2_config(encoders: dict[str, Any]) -> None:
    # RoPE θ 500 000 without Llama 3.1's frequency scaling (ComfyUI's Llama2Config has no rope_scale), RMS ε 1e-5
    config = encoders["llama"].config
    assert config.rope_parameters["rope_type"] == "default" and config.rope_parameters["rope_theta"] == 500_000.0
    assert config.rms_norm_eps == 1e-5 and not config.attention_bias


def _tiktoken_bpe(text: str, ranks: dict[bytes, int]) -> list[int]:
    """tiktoken's rule, written here from its definition: split by the pattern, a piece in the ranks is one token,
    else its bytes merge pair by pair, lowest rank first."""
    import regex

    out = []
    for piece in regex.findall(llama_tokenizer.SPLIT_PATTERN, text):
        data = piece.encode("utf-8")
        if data in ranks:
            out.append(ranks[data])
            continue
        parts = [bytes([b]) for b in data]
        while len(parts) > 1:
            best = min(range(len(parts) - 1), key=lambda i: ranks.get(parts[i] + parts[i + 1], 1 << 30))
            if parts[best] + parts[best + 1] not in ranks:
                break
            parts[best:best + 2] = [parts[best] + parts[best + 1]]
        out += [ranks[p] for p in parts]
    return out


def test_llama_tokenizer_follows_tiktoken_on_metas_ranks() -> None:
    # the ranks as the built file's vocabulary holds them (byte-level symbols back to bytes): what is checked is the
    # merge list recovered from them, the split pattern and whole pieces taken as they are
    from comfymesh.diffusion.text.tokenizer_build import byte_symbol_map

    back = {v: k for k, v in byte_symbol_map().items()}
    vocab = json.loads((llama_tokenizer.llama_tokenizer_dir() / llama_tokenizer.FILE_NAME).read_text())["model"]["vocab"]
    ranks = {bytes(back[c] for c in token): rank for token, rank in vocab.items()}
    texts = ["A lo-fi, grungy wide shot of a ragged large red tree leaning slightly to one side Polaroid aesthetic.",
             "Let the girl put on the VR glasses, just like the scenes in Ready Player One!!  \n\n 1234567 x²",
             "Änderungen: naïve café — 東京タワー, 😀 emoji, tabs\tand   spaces", "don't WE'LL it's 3.14159"]
    for text in texts:
        assert llama_tokenizer.llama_token_ids(text) == _tiktoken_bpe(text, ranks), text


def test_clip_set_last_layer_moves_only_t5s_layer(encoders: dict[str, Any]) -> None:
    base = hidream_text.hidream_conditioning(encoders, "a red tree", "a red tree", "a red tree", "a red tree")
    moved = hidream_text.hidream_conditioning(encoders, "a red tree", "a red tree", "a red tree", "a red tree", -2)
    t5 = encoders["t5"]
    ids = [t for t, _ in hidream_text.t5_chunk("a red tree")]
    tokens = torch.tensor([ids])
    with torch.no_grad():
        out = t5(input_ids=tokens, attention_mask=(tokens != PAD_ID).long(), output_hidden_states=True)
        first_block = t5.encoder.final_layer_norm(out.hidden_states[1])  # 2 blocks: k = −2 is block 0's output
    torch.testing.assert_close(moved[0][0], first_block)
    assert not torch.allclose(moved[0][0], base[0][0])
    for key in ("pooled_output", "conditioning_llama3"):
        assert torch.equal(moved[0][1][key], base[0][1][key])
    # −1 and a k past the depth are the last layer, as in ComfyUI
    for k in (-1, -30):
        assert torch.equal(hidream_text.hidream_conditioning(encoders, "a red tree", "a red tree", "a red tree",
                                                              "a red tree", k)[0][0], base[0][0])
