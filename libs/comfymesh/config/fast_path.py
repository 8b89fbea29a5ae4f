"""The diffusion stage's fast path: which tiers (CUDA graphs, torch.compile) it builds per shape bucket, and when."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


def auto_switch(value: Any) -> Any:
    """`auto` (or empty) for a yes/no switch that defaults by device: None, decided where the device is known."""
    return None if isinstance(value, str) and value.strip().lower() in ("", "auto") else value


class FastPathSettings(BaseModel):
    """The fast path's part of `Settings` (COMFYMESH_FAST_PATH, COMFYMESH_COMPILE, ...); tests make it alone."""

    model_config = ConfigDict(frozen=True)

    fast_path: bool | None = Field(None, description="channels-last fp16 UNet and the families' transformers per "
                                                     "shape bucket, CUDA-graphed, then compiled; VAE decodes "
                                                     "compiled too (auto: on with CUDA)")
    compile: bool | None = Field(None, description="torch.compile the fast path's buckets (auto: on with CUDA; "
                                                   "off: CUDA graphs of the eager UNet only)")
    compile_backend: str = Field("inductor", min_length=1, description="torch.compile backend")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = Field(
        "default", description="torch.compile mode")
    cuda_graphs: bool = Field(True, description="CUDA-graph the fast path's buckets (CUDA devices only)")
    warmup_manifest: str = Field("", description="JSON file of buckets to build at stage start "
                                                 "(see `comfymesh.diffusion.fast.manifest`)")
    compile_idle_s: float = Field(2.0, ge=0, description="a compilation waits until no UNet call ran for this "
                                                         "long (tracing holds the GIL for seconds)")
    compile_max_defer_s: float = Field(300.0, ge=0, description="longest a compilation waits for such a pause")

    _auto = field_validator("fast_path", "compile", mode="before")(auto_switch)

    def fast_enabled(self, device_type: str) -> bool:
        """Whether the fast path is on for a device of this type ("cuda", "cpu", ...)."""
        return self.fast_path if self.fast_path is not None else device_type == "cuda"

    def compile_enabled(self, device_type: str) -> bool:
        """Whether the fast path compiles on a device of this type."""
        return self.fast_enabled(device_type) and (self.compile if self.compile is not None else device_type == "cuda")
