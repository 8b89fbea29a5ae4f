"""Where the diffusion stage runs and what it keeps: torch device, resident-weights budget, tokenizer files."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class DiffusionSettings(BaseModel):
    """The diffusion stage's part of `Settings` (COMFYMESH_DEVICE, ...); tests make it alone."""

    model_config = ConfigDict(frozen=True)

    device: str = Field("", pattern=r"^([a-z]+(:\d+)?)?$",
                        description="torch device of the diffusion stage, e.g. cuda:1 (empty: cuda when "
                                    "available, else cpu)")
    model_cache_bytes: int | None = Field(None, ge=0, description="budget of resident model weights (unset: "
                                                                  "80% of GPU memory, 16 GiB on CPU)")
    tokenizer_dir: str = Field("", description="CLIP tokenizer files built by `make setup` (empty: "
                                               "<venv>/share/comfymesh/clip_tokenizer)")
