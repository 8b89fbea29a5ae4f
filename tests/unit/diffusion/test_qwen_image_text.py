"""Qwen-Image's text encoder (CLIPLoader type `qwen_image`, a qwen_2.5_vl_7b file): its language model read from
shapes, ComfyUI's template and the 34 tokens it drops, text-only encoding equal to Qwen2.5-VL's own text model
with M-RoPE (the three position rows equal, as they are for text), and the vision path: ComfyUI's resizing rule,
the image-token count it gives, the M-RoPE positions of image tokens, and images reaching the conditioning."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from comfymesh.contracts.errors import ModelError
from comfymesh.diffusion.models.tensor_source import TensorSource
from comfymesh.diffusion.models.tiny_qwen_image import qwen25_vl_text_shapes, qwen25_vl_vision_shapes, tensors
from comfymesh.diffusion.models.tiny_zimage import qwen3_shapes
from comfymesh.diffusion.text import qwen25_vision, qwen25_vl, qwen_tokenizer

CPU = torch.device("cpu")
needs_tokenizer = pytest.mark.usefixtures("qwen_tokenizer_ready")


def _file(tmp_path: Path, shapes: dict[str, tuple[int, ...]], name: str = "te.safetensors") -> TensorSource:
    path = tmp_path / name
    save_file(tensors(shapes, 0, torch.float32), str(path))
    return TensorSource(path)


def test_layout_read_from_shapes(tmp_path: Path) -> None:
    layout = qwen25_vl.parse_qwen25(_file(tmp_path, qwen25_vl_text_shapes(width=48, layers=3, heads=3, kv_heads=1,
                                                                          intermediate=96, vocab=1000)))
    assert layout == qwen25_vl.Qwen25Layout("model.", 1000, 48, 3, 96, 16, 3, 1)


def test_heads_are_128_wide_where_the_rows_allow(tmp_path: Path) -> None:
    # Qwen2.5-VL 7B has 28 heads and 4 kv heads of 128; the shapes give only their products
    shapes = qwen25_vl_text_shapes(width=256, layers=1, heads=2, kv_heads=1, intermediate=8, vocab=10)
    layout = qwen25_vl.parse_qwen25(_file(tmp_path, shapes))
    assert layout is not None and (layout.head_dim, layout.heads, layout.kv_heads) == (128, 2, 1)


def test_qwen3_and_other_files_are_not_qwen25(tmp_path: Path) -> None:
    assert qwen25_vl.parse_qwen25(_file(tmp_path, qwen3_shapes(vocab=100), "q3.safetensors")) is None
    with pytest.raises(ModelError, match=r"not a Qwen2\.5-VL text encoder"):
        qwen25_vl.load_qwen25_file(_file(tmp_path, qwen3_shapes(vocab=100), "q3.safetensors"), CPU)


def test_template_end_rule() -> None:
    im, user, nl = qwen25_vl.IM_START, qwen25_vl.USER, qwen25_vl.NEWLINE
    assert qwen25_vl.template_end([im, 1, 2, im, user, nl, 5, 6]) == 6
    assert qwen25_vl.template_end([im, 1, 2, im, 9, nl, 5, 6]) == 3  # no `user\n`: from the second <|im_start|>
    assert qwen25_vl.template_end([im, user, nl, 5, 6]) == 3  # one <|im_start|>
    assert qwen25_vl.template_end([5, 6, 7]) == -1  # none: ComfyUI keeps the last token


@needs_tokenizer
def test_template_drops_the_system_turn() -> None:
    ids = qwen25_vl.prompt_ids("a red fox")
    end = qwen25_vl.template_end(ids)
    assert end == 34
    prompt = qwen_tokenizer.qwen_token_ids("a red fox")
    assert ids[end:] == [*prompt, 151645, 198, 151644, 77091, 198]
    # a prompt written as its own chat turn is not wrapped again
    own = "<|im_start|>user\nhi<|im_end|>"
    assert qwen25_vl.prompt_ids(own) == qwen_tokenizer.qwen_token_ids(own)


@needs_tokenizer
def test_encoding_equals_qwen25_vl_text_model_with_mrope(tmp_path: Path) -> None:
    from transformers import Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel

    src = _file(tmp_path, qwen25_vl_text_shapes())
    model = qwen25_vl.load_qwen25_file(src, CPU)
    assert set(model) == {qwen25_vl.TEXT}  # no vision tower in this file
    layout = qwen25_vl.parse_qwen25(src)
    assert layout is not None
    config = Qwen2_5_VLTextConfig(
        vocab_size=layout.vocab, hidden_size=layout.width, intermediate_size=layout.intermediate,
        num_hidden_layers=layout.layers, num_attention_heads=layout.heads, num_key_value_heads=layout.kv_heads,
        rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0,
                                            "mrope_section": [2, 3, 3]})
    reference = Qwen2_5_VLTextModel(config)
    state = {k[len("model."):]: v for k, v in src.with_prefix("model.").items()}
    reference.load_state_dict(state, strict=False)
    out = qwen25_vl.encode_qwen25(model, "a red fox")
    ids = qwen25_vl.prompt_ids("a red fox")
    positions = torch.arange(len(ids))[None, None].expand(3, 1, -1)
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor([ids]), position_ids=positions).last_hidden_state[:, 34:]
    assert out.shape == (1, len(ids) - 34, layout.width)
    assert torch.allclose(out, expected, atol=1e-5)
    assert not torch.allclose(out, qwen25_vl.encode_qwen25(model, "a blue fox")[:, :out.shape[1]])
    with pytest.raises(ModelError, match="no vision tower"):
        qwen25_vl.encode_qwen25(model, "x", qwen25_vl.IMAGES_TEMPLATE, [torch.rand(1, 28, 28, 3)])


def test_resizing_rule_and_image_token_count() -> None:
    # sides to the nearest multiples of 28; the merged tokens are (h/28)·(w/28)
    assert qwen25_vision.resized_side(100, 150) == (112, 140)
    assert qwen25_vision.resized_side(384, 384) == (392, 392)
    assert qwen25_vision.resized_side(20, 20) == (56, 56)  # below 3 136 pixels: scaled up, rounded up
    assert qwen25_vision.resized_side(4000, 4000) == (3584, 3584)  # above 12 845 056: scaled down, rounded down
    flat, grid = qwen25_vision.patches(torch.rand(1, 100, 150, 3))
    assert grid.tolist() == [[1, 8, 10]] and flat.shape == (80, 3 * 2 * 14 * 14)


def test_mrope_positions_of_image_tokens() -> None:
    # 3 text tokens, a 4×6-patch image (2×3 merged = 6 tokens) at 3, then 2 text tokens
    pos = qwen25_vl.mrope_positions(11, [(3, 6, 4, 6)])
    assert pos[:, :3].tolist() == [[0, 1, 2]] * 3
    assert pos[0, 3:9].tolist() == [3] * 6
    assert pos[1, 3:9].tolist() == [3, 3, 3, 4, 4, 4]
    assert pos[2, 3:9].tolist() == [3, 4, 5, 3, 4, 5]
    assert pos[:, 9:].tolist() == [[6, 7]] * 3  # resumes at 3 + 6/2 (half the longer side)
    # a second image is shifted by the first one's (longer side / 2 − tokens)
    two = qwen25_vl.mrope_positions(12, [(1, 4, 4, 4), (6, 4, 4, 4)])
    assert two[0, 1:5].tolist() == [1] * 4 and two[:, 5].tolist() == [3] * 3
    assert two[0, 6:10].tolist() == [4] * 4 and two[1, 6:10].tolist() == [4, 4, 5, 5]


@needs_tokenizer
def test_images_replace_their_pads_and_reach_the_conditioning(tmp_path: Path) -> None:
    src = _file(tmp_path, qwen25_vl_text_shapes() | qwen25_vl_vision_shapes(), "vl.safetensors")
    encoders = qwen25_vl.load_qwen25_file(src, CPU)
    assert set(encoders) == {qwen25_vl.TEXT, qwen25_vl.VISION}
    gen = torch.Generator().manual_seed(0)
    image, other = torch.rand(1, 100, 150, 3, generator=gen), torch.rand(1, 100, 150, 3, generator=gen)
    text_only = qwen25_vl.encode_qwen25(encoders, "make it blue", qwen25_vl.IMAGES_TEMPLATE)
    with_image = qwen25_vl.encode_qwen25(encoders, "make it blue", qwen25_vl.IMAGES_TEMPLATE, [image])
    # the pad token becomes the image's (112/28)·(140/28) = 20 merged tokens
    assert with_image.shape[1] == text_only.shape[1] - 1 + 20
    changed = qwen25_vl.encode_qwen25(encoders, "make it blue", qwen25_vl.IMAGES_TEMPLATE, [other])
    assert not torch.allclose(with_image, changed)
    # before the image (the user turn's <|vision_start|>) nothing changes; causal attention
    assert torch.equal(with_image[:, :1], changed[:, :1])
