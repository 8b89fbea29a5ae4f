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
    host_memory_bytes: int | None = Field(None, ge=0, description="host-memory budget of a GPU stage's model cache: "
                                                                  "streamed blocks' pinned weights, text encoders moved "
                                                                  "off the GPU, a streamed model's load (unset: 80% of "
                                                                  "RAM less what is in use at start; ignored on a CPU "
                                                                  "stage, whose model budget is host memory)")
    fp8_matmul: bool = Field(False, description="fp8 weights multiply in fp8 (torch._scaled_mm, per-tensor scales) "
                                                "on GPUs of compute capability 8.9 or more (Ada, Hopper) instead of "
                                                "upcasting to bf16; elsewhere logged once and ignored")
    block_offload: bool = Field(True, description="a diffusion transformer larger than the GPU budget keeps what "
                                                  "fits resident and streams its other blocks from pinned host "
                                                  "memory, one block ahead (off: such a model is refused)")
    diffusion_split_devices: str = Field("", pattern=r"^(\s*(cpu|cuda(:\d+)?)\s*(,|$))*$",
                                         description="devices one replica splits a registered family's diffusion "
                                                     "transformer across, its blocks in contiguous ranges, when it "
                                                     "does not fit the budget of its own device, the first listed "
                                                     "(e.g. cuda:0,cuda:1; cpu,cpu in tests; empty: off)")
    tokenizer_dir: str = Field("", description="CLIP tokenizer files built by `make setup` (empty: "
                                               "<venv>/share/comfymesh/clip_tokenizer)")
