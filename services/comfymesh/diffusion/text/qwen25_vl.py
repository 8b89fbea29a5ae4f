"""Qwen2.5-VL as Qwen-Image's text encoder (ComfyUI's CLIPLoader type `qwen_image` with a qwen_2.5_vl_7b file):
its language model, read from the file's shapes so a reduced encoder loads, encoding as ComfyUI's Qwen-Image
text encoder does.

The prompt goes inside ComfyUI's Qwen-Image chat template (a system message asking to describe the image), is
tokenized whole with no padding, and the last hidden state (after the final norm) is kept from the user turn on:
the tokens up to the second `<|im_start|>` and its `user\\n` are dropped (34 for the text-only template). A prompt
that already starts with `<|im_start|>` is taken as its own template, as ComfyUI takes it.

Images (the edit encoders') replace the template's `<|image_pad|>` tokens with the vision encoder's embeddings
(text.qwen25_vision), and the language model (transformers' Qwen2_5_VLTextModel) gets ComfyUI's M-RoPE positions:
text counts on, an image's tokens share one time position and count their merge grid's rows and columns from
where the image starts, and the text after it resumes past the image's longer side.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from comfymesh.contracts.errors import ModelError
from comfymesh.diffusion.models.tensor_source import TensorSource, converted
from comfymesh.diffusion.text import qwen25_vision
from comfymesh.diffusion.text.llm_encoder import (
    PREFIXES,
    DecoderLayout,
    build_decoder,
    config_sizes,
    encoder_dtype,
    read_layout,
)
from comfymesh.diffusion.text.qwen_tokenizer import qwen_token_ids

TEMPLATE = ("<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, "
            "spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n"
            "<|im_start|>assistant\n")
# the template ComfyUI's tokenizer takes when images come without a template of their own (TextEncodeQwenImageEdit)
IMAGES_TEMPLATE = ("<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, "
                   "objects, background), then explain how the user's text instruction should alter or modify the "
                   "image. Generate a new image that meets the user's requirements while maintaining consistency with "
                   "the original input where appropriate.<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|>"
                   "<|vision_end|>{}<|im_end|>\n<|im_start|>assistant\n")
# TextEncodeQwenImageEditPlus's template (images, when given, come as "Picture N: <|vision_start|>…" before the prompt)
EDIT_PLUS_TEMPLATE = ("<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, "
                      "objects, background), then explain how the user's text instruction should alter or modify the "
                      "image. Generate a new image that meets the user's requirements while maintaining consistency "
                      "with the original input where appropriate.<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n"
                      "<|im_start|>assistant\n")
IM_START, USER, NEWLINE, IMAGE_PAD = 151_644, 872, 198, 151_655
ROPE_THETA = 1_000_000.0
RMS_EPS = 1e-6


class Qwen25Layout(DecoderLayout):
    kind = "Qwen2.5"


def parse_qwen25(src: TensorSource) -> Qwen25Layout | None:
    """The language-model layout of a Qwen2.5(-VL) file: attention biases and no q/k norms (Qwen3 has norms
    and no biases, Llama neither); None for any other file. The head width is Qwen2.5's 128 where the width
    allows it (the shapes give only heads × head width)."""
    for p in PREFIXES:
        if not (src.has(p + "layers.0.self_attn.k_proj.bias") and src.has(p + "embed_tokens.weight")):
            continue
        if src.has(p + "layers.0.self_attn.q_norm.weight"):
            return None
        return read_layout(Qwen25Layout, src, p, _head_dim)
    return None


def _head_dim(q_rows: int, kv_rows: int) -> int:
    # Qwen2.5's 128 where both projections split into it; a reduced encoder: the largest head width (≤ 128)
    # that splits both, one kv head at least
    return next(d for d in range(min(128, kv_rows), 0, -1) if q_rows % d == 0 and kv_rows % d == 0)


def mrope_sections(head_dim: int) -> list[int]:
    """Qwen2.5-VL's (time, row, column) split of a head's rotary pairs: 16/24/24 of 64, kept in proportion."""
    return [head_dim // 8, head_dim * 3 // 16, head_dim * 3 // 16]


def qwen25_config(layout: Qwen25Layout) -> Any:
    from transformers import Qwen2_5_VLTextConfig

    # head_dim reaches the config through its extra kwargs
    return Qwen2_5_VLTextConfig(
        **config_sizes(layout), rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA,
                         "mrope_section": mrope_sections(layout.head_dim)},
        rms_norm_eps=RMS_EPS, max_position_embeddings=128_000,
    )


def build_qwen25(src: TensorSource, layout: Qwen25Layout, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """transformers' Qwen2_5_VLTextModel with the file's language-model weights (not the vision tower or lm_head)."""
    from transformers import Qwen2_5_VLTextModel

    return build_decoder(src, layout, lambda: Qwen2_5_VLTextModel(qwen25_config(layout)), device, dtype,
                         skip=("lm_head.", "visual."))


TEXT, VISION = "qwen25_7b", "qwen25_7b_vision"  # the CLIP's encoder roles


def load_qwen25_file(src: TensorSource, device: torch.device) -> dict[str, torch.nn.Module]:
    """The encoders of a CLIPLoader `qwen_image` file (bf16 on a GPU, float32 on the CPU, as ComfyUI computes
    them): the language model, and the vision tower when the file has one; ModelError when it holds something
    else."""
    layout = parse_qwen25(src)
    if layout is None:
        raise ModelError(f"{src.path.name} is not a Qwen2.5-VL text encoder (CLIP type 'qwen_image' takes "
                         "qwen_2.5_vl_7b)")
    dtype = encoder_dtype(device)

    def build() -> dict[str, torch.nn.Module]:
        encoders = {TEXT: build_qwen25(src, layout, device, dtype)}
        vision = qwen25_vision.parse_vision(src)
        if vision is not None:
            encoders[VISION] = qwen25_vision.build_vision(src, vision, device, dtype)
        return encoders

    return converted(src, "Qwen2.5-VL text encoder", build)


def prompt_ids(text: str, template: str = TEMPLATE) -> list[int]:
    """The token ids ComfyUI encodes: the prompt in the template unless it starts with its own `<|im_start|>`."""
    return qwen_token_ids(text if text.startswith("<|im_start|>") else template.format(text))


def template_end(ids: list[int]) -> int:
    """Where the kept tokens start: at the second `<|im_start|>` (the first if only one), past its `user\\n`
    when those follow. Ids without one keep only the last token (ComfyUI's start of −1), or from the third on
    when they open with `user\\n`."""
    starts = [i for i, t in enumerate(ids) if t == IM_START][:2]
    end = starts[-1] if starts else -1
    if len(ids) > end + 3 and ids[end + 1] == USER and ids[end + 2] == NEWLINE:
        end += 3
    return end


def mrope_positions(length: int, spans: list[tuple[int, int, int, int]]) -> torch.Tensor:
    """ComfyUI's M-RoPE positions [3, length] of a sequence whose images sit at `spans` (start, tokens, grid rows,
    grid columns in patches): text counts up; an image's tokens take its start (plus the shift of earlier images)
    as time and count their merge cells' rows and columns from it; the text after resumes at start + half the
    grid's longer side."""
    pos = torch.arange(length, dtype=torch.float32).expand(3, -1).clone()
    offset = 0
    for start, size, rows, cols in spans:
        end = start + size
        longer = max(1, rows, cols) // 2
        resume = start + longer + offset
        pos[:, end:] = torch.arange(resume, resume + length - end, dtype=torch.float32)
        i = torch.arange(size)
        pos[0, start:end] = start + offset
        pos[1, start:end] = (start + offset + i // math.ceil(size / (rows // 2))).float()
        pos[2, start:end] = (start + offset + i % (cols // 2)).float()
        offset += longer - size
    return pos


def encode_qwen25(encoders: dict[str, Any], text: str, template: str = TEMPLATE,
                  images: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Text features [1, T, D] (float32, CPU) of one prompt in `template`, from the user turn on; each IMAGE in
    `images` takes the place of the next `<|image_pad|>` token (ComfyUI ignores images beyond the pads)."""
    model = encoders[TEXT]
    ids = prompt_ids(text, template)
    vocab = int(model.get_input_embeddings().weight.shape[0])
    if max(ids) >= vocab:
        raise ModelError(f"the prompt has token id {max(ids)} but the text encoder's vocabulary has {vocab} entries")
    pads = [i for i, t in enumerate(ids) if t == IMAGE_PAD][:len(images or [])]
    if pads and VISION not in encoders:
        raise ModelError("the text encoder file has no vision tower (visual.*), which image inputs need")
    device = next(model.parameters()).device
    with torch.no_grad():
        tokens = model.get_input_embeddings()(torch.tensor(ids, device=device)).float()
        pieces, spans, last, at = [], [], 0, 0
        for pad, image in zip(pads, images or [], strict=False):
            embeds, grid = qwen25_vision.encode_image(encoders[VISION], image)
            pieces += [tokens[last:pad], embeds.to(device)]
            at += pad - last
            spans.append((at, embeds.shape[0], int(grid[0, 1]), int(grid[0, 2])))
            at += embeds.shape[0]
            last = pad + 1
        pieces.append(tokens[last:])
        sequence = torch.cat(pieces)
        positions = mrope_positions(sequence.shape[0], spans).to(device)
        param = next(model.parameters())
        # an explicit mask: positions that repeat (an image's) must not read as packed sequences
        hidden: torch.Tensor = model(inputs_embeds=sequence[None].to(param.dtype), position_ids=positions[:, None],
                                     attention_mask=torch.ones(1, sequence.shape[0], device=device,
                                                               dtype=torch.long)).last_hidden_state
    return hidden[:, template_end(ids):].float().cpu()
