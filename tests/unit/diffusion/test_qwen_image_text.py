"""Qwen-Image's text encoder (CLIPLoader type `qwen_image`, a qwen_2.5_vl_7b file): its language model read from
shapes, ComfyUI's template and the 34 tokens it drops, and text-only encoding equal to Qwen2.5-VL's own text
model with M-RoPE (the three position rows equal, as they are for text)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from comfymesh.contracts.errors import ModelError
from comfymesh.diffusion.models.tensor_source import TensorSource
from comfymesh.diffusion.models.tiny_qwen_image import qwen25_vl_text_shapes, tensors
from comfymesh.diffusion.models.tiny_zimage import qwen3_shapes
from comfymesh.diffusion.text import qwen25_vl, qwen_tokenizer

CPU = torch.device("cpu")
needs_tokenizer = pytest.mark.skipif(not qwen_tokenizer.is_built(), reason="Qwen tokenizer files not built")


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
