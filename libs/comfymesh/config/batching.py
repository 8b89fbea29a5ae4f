"""Cross-job batching in the diffusion stage: compatible KSampler calls of different jobs share one loop."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class BatchingSettings(BaseModel):
    """Batching's part of `Settings` (COMFYMESH_BATCH_*); tests make it alone.

    Off by default: on an H100 a cold burst of 16 jobs ran slower batched (each new batch size needs its
    own CUDA graph), see bench/README.md."""

    model_config = ConfigDict(frozen=True)

    batch_window_ms: float = Field(0.0, ge=0, description="how long a KSampler call waits for others to batch "
                                                          "with (0: no batching)")
    batch_max: int = Field(8, ge=1, le=64, description="most jobs in one batched sampling loop")
    batch_pad: bool = Field(True, description="pad UNet batches to powers of two (fewer CUDA-graph buckets)")
    batch_idle_start: bool = Field(True, description="a call on an idle GPU starts at once instead of waiting "
                                                     "the window")

    @property
    def batching_enabled(self) -> bool:
        return self.batch_window_ms > 0 and self.batch_max > 1

    @property
    def batch_window_s(self) -> float:
        return self.batch_window_ms / 1000.0
