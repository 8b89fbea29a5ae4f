"""Tiny random LoRAs for the registered families' diffusion models, in the key formats real files use: kohya
(`lora_unet_<ComfyUI name>` with lora_up/lora_down/alpha, as sd-scripts writes FLUX's) and diffusers/PEFT
(`transformer.<diffusers name>.lora_B/lora_A`, as AI-toolkit and diffusers' trainers write them; no alpha).

`peft_from_kohya` rewrites a kohya file's pairs as the same weights in diffusers' names: each ComfyUI weight's
up matrix goes through the family's converter (row splits and reorders only), its down matrix is shared by the
pieces, and alpha/rank is folded into lora_B.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from comfymesh.diffusion.models.flow_lora import LoraKeyMap
from comfymesh.diffusion.models.tensor_source import TensorSource


def linear_keys(src: TensorSource, prefix: str = "") -> dict[str, tuple[int, int]]:
    """The 2-D `.weight` tensors of a diffusion model file (ComfyUI names, `prefix` removed): its linears."""
    out = {}
    for k in src.keys:
        if k.startswith(prefix) and k.endswith(".weight") and len(src.shape(k)) == 2:
            rows, cols = src.shape(k)
            out[k[len(prefix):]] = (rows, cols)
    return out


def kohya_lora(linears: dict[str, tuple[int, int]], rank: int = 4, alpha: float = 2.0, seed: int = 0,
               scale: float = 0.05) -> dict[str, torch.Tensor]:
    """A kohya LoRA on every linear: lora_unet_<name with underscores>.{lora_down,lora_up}.weight and .alpha."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key in sorted(linears):
        rows, cols = linears[key]
        name = "lora_unet_" + key[: -len(".weight")].replace(".", "_")
        out[f"{name}.lora_down.weight"] = scale * torch.randn(rank, cols, generator=gen)
        out[f"{name}.lora_up.weight"] = scale * torch.randn(rows, rank, generator=gen)
        out[f"{name}.alpha"] = torch.tensor(alpha)
    return out


def peft_from_kohya(kohya: dict[str, torch.Tensor], linears: dict[str, tuple[int, int]], kmap: LoraKeyMap,
                    prefix: str = "transformer.") -> dict[str, torch.Tensor]:
    """The same LoRA in diffusers' names (`prefix` + module name + .lora_A/.lora_B.weight)."""
    out: dict[str, torch.Tensor] = {}
    for key in sorted(linears):
        name = "lora_unet_" + key[: -len(".weight")].replace(".", "_")
        if f"{name}.lora_up.weight" not in kohya:
            continue
        down, up = kohya[f"{name}.lora_down.weight"], kohya[f"{name}.lora_up.weight"]
        up = up * (float(kohya[f"{name}.alpha"]) / down.shape[0])
        for module_key, part in _convert_rows(kmap, key, up).items():
            stem = prefix + module_key[: -len(".weight")]
            out[f"{stem}.lora_A.weight"] = down.clone()
            out[f"{stem}.lora_B.weight"] = part.contiguous()
    return out


def _convert_rows(kmap: LoraKeyMap, key: str, up: torch.Tensor) -> dict[str, torch.Tensor]:
    """`up` (rows of file weight `key`) under the module's names, split and ordered as the converter does."""
    if kmap.convert is None:
        return {key: up}
    state = {k: torch.empty(s, device="meta") for k, s in kmap.file_shapes.items()}
    state[key] = up
    return {k: v for k, v in kmap.convert(state).items() if v.device.type != "meta"}


def write(path: str | Path, tensors: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(dtype).contiguous() for k, v in tensors.items()}, str(out))
    return out


def dotted(kohya: dict[str, torch.Tensor], linears: dict[str, tuple[int, int]],
           prefix: str = "diffusion_model.") -> dict[str, torch.Tensor]:
    """A kohya LoRA's pairs under `prefix` + the dotted ComfyUI name (ComfyUI's generic form, alpha kept)."""
    out = {}
    for key in linears:
        stem = key[: -len(".weight")]
        name = "lora_unet_" + stem.replace(".", "_")
        for leaf in ("lora_down.weight", "lora_up.weight", "alpha"):
            if f"{name}.{leaf}" in kohya:
                out[f"{prefix}{stem}.{leaf}"] = kohya[f"{name}.{leaf}"]
    return out


# the official templates' LoRA files → (the tiny diffusion model under models/diffusion_models they fit, the key
# form written: kohya, or PEFT pairs / dotted ComfyUI names under a prefix) — the forms real files of the kind use
TEMPLATE_LORAS: dict[str, tuple[str, str]] = {
    "pixel_art_style_z_image_turbo.safetensors": ("z_image_turbo_bf16.safetensors", "peft:diffusion_model."),
    "Wuli-Qwen-Image-2512-Turbo-LoRA-2steps-V1.0-bf16.safetensors": ("qwen_image_2512_fp8_e4m3fn.safetensors",
                                                                       "peft:"),
    "Qwen-Image-2512-Lightning-4steps-V1.0-fp32.safetensors": ("qwen_image_2512_fp8_e4m3fn.safetensors", "peft:"),
    "qwen-360-diffusion-2512-int8-bf16-v2.safetensors": ("qwen_image_2512_fp8_e4m3fn.safetensors",
                                                         "dotted:diffusion_model."),
    "illustration-1.0-qwen-image.safetensors": ("qwen_image_fp8_e4m3fn.safetensors", "kohya"),
    "gummycandy_qwen.safetensors": ("qwen_image_fp8_e4m3fn.safetensors", "peft:transformer."),
    "Qwen-Image-Lightning-4steps-V1.0.safetensors": ("qwen_image_fp8_e4m3fn.safetensors", "peft:"),
    "Qwen-Image-Lightning-8steps-V1.0.safetensors": ("qwen_image_fp8_e4m3fn.safetensors", "peft:"),
    "qwen_image_union_diffsynth_lora.safetensors": ("qwen_image_fp8_e4m3fn.safetensors", "peft:diffusion_model."),
    "Qwen-Image-Edit-Lightning-4steps-V1.0-bf16.safetensors": ("qwen_image_edit_fp8_e4m3fn.safetensors", "peft:"),
    "Qwen-Image-Edit-2509-Lightning-4steps-V1.0-bf16.safetensors": ("qwen_image_edit_2509_fp8_e4m3fn.safetensors",
                                                                      "peft:"),
    "Qwen-Image-Edit-2509-Lightning-8steps-V1.0-bf16.safetensors": ("qwen_image_edit_2509_fp8_e4m3fn.safetensors",
                                                                      "peft:"),
    "Qwen-Image-Edit-2509-Relight.safetensors": ("qwen_image_edit_2509_fp8_e4m3fn.safetensors", "peft:transformer."),
    "Qwen-Edit-2509-Multiple-angles.safetensors": ("qwen_image_edit_2509_fp8_e4m3fn.safetensors", "peft:transformer."),
    "Qwen-Image-Edit-2509-Anything2RealAlpha.safetensors": ("qwen_image_edit_2509_fp8_e4m3fn.safetensors", "kohya"),
    "Qwen-Image-Edit-2509-Light-Migration.safetensors": ("qwen_image_edit_2509_fp8_e4m3fn.safetensors",
                                                         "peft:transformer."),
    "Qwen-Image-Edit-2511-Lightning-4steps-V1.0-bf16.safetensors": ("qwen_image_edit_2511_fp8mixed.safetensors",
                                                                      "peft:"),
    "Qwen_Image_Edit_2511-SYSTMS_INFL8.safetensors": ("qwen_image_edit_2511_bf16.safetensors", "peft:diffusion_model."),
    "QWEN_EDIT_ACTION_V1.safetensors": ("qwen_image_edit_2511_bf16.safetensors", "peft:diffusion_model."),
    "qwen-image-edit-2511-multiple-angles-lora.safetensors": ("qwen_image_edit_2511_bf16.safetensors",
                                                              "peft:transformer."),
    "FireRed-Image-Edit-1.0-Lightning-8steps-v1.0.safetensors": ("FireRed-Image-Edit-1.1-transformer.safetensors",
                                                                   "peft:"),
    "Flux_2-Turbo-LoRA_comfyui.safetensors": ("flux2_dev_fp8mixed.safetensors", "dotted:diffusion_model."),
    "Flux2TurboComfyv2.safetensors": ("flux2_dev_fp8mixed.safetensors", "kohya"),
    "removal_timestep_alpha-2-1740.safetensors": ("flux.1-fill-dev-OneReward-transformer_fp8.safetensors", "kohya"),
    # FLUX.1 USO's DiT LoRA (flux1_dev_uso_reference_image_gen), on the dev checkpoint tiny_uso writes
    "uso-flux1-dit-lora-v1.safetensors": ("flux1-dev.safetensors", "dotted:diffusion_model."),
}


def lora_for(model_file: Path, form: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A tiny LoRA fitting a registered family's diffusion model file, in `form` (see TEMPLATE_LORAS)."""
    from comfymesh.diffusion.families import registry

    src = TensorSource(model_file)
    found = registry.recognise(src)
    if found is None:
        raise ValueError(f"{model_file.name} is no registered family's diffusion model")
    family, layout = found
    kmap = family.build(src, layout, torch.device("cpu"), None).lora_map
    assert kmap is not None, f"{family.name} gives no LoRA key map"
    linears = linear_keys(src, getattr(layout, "prefix", ""))
    kohya = kohya_lora(linears, seed=seed, scale=0.2)
    kind, _, prefix = form.partition(":")
    if kind == "peft":
        return peft_from_kohya(kohya, linears, kmap, prefix)
    if kind == "dotted":
        return dotted(kohya, linears, prefix)
    return kohya


def make_template_loras(models: str | Path, seed: int = 0) -> list[Path]:
    """The templates' LoRA files under models/loras/, for each one whose tiny model is in models/diffusion_models/."""
    root = Path(models)
    written = []
    for k, (name, (model, form)) in enumerate(sorted(TEMPLATE_LORAS.items())):
        model_file = root / "diffusion_models" / model
        if model_file.is_file():
            written.append(write(root / "loras" / name, lora_for(model_file, form, seed + k), torch.bfloat16))
    return written
