"""Text encoders leave the GPU once their prompt is encoded when memory is short: moved to host memory (the cache's
CPU tier), never dropped and reloaded from disk, and moved back for the next prompt."""

from __future__ import annotations


def encoders_leave_device(budget: int, encoder_bytes: int, model_bytes: int, other_bytes: int) -> bool:
    """Whether encoders of `encoder_bytes` should leave the device after encoding: the budget cannot hold them beside
    the diffusion model (`model_bytes`: the largest resident, or the last one loaded) and the other entries."""
    return encoder_bytes + model_bytes + other_bytes > budget
