"""A flow-matching family's model call on the fast path: graphed then compiled per bucket of its fixed-shape form.

A family gives its call in two parts (`StaticForm`): `inputs` turns the denoiser's arguments (x, t, context, y
and the entry's keyword inputs) into the tensors of one fixed-shape call, and `run` computes the output from
those alone. The bucket key is every tensor's shape, None for an absent one (FLUX's guidance when disabled),
then the dtype: text length, batch after CFG and latent size make buckets of their own. A call whose inputs
the form does not take (reference latents) gets None from `inputs` and runs the family's eager call.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from comfymesh.diffusion.fast.tiers import FastModule

StaticInputs = tuple[torch.Tensor | None, ...]


@dataclass(frozen=True)
class StaticForm:
    """A model call split for capture. `run` must not synchronise with the host, copy from it or branch on
    tensor values (what it does is decided by the inputs' shapes and which are None), since a CUDA graph
    replays one recorded path; `inputs` may (it runs eagerly, outside the graph)."""

    inputs: Callable[..., StaticInputs | None]
    run: Callable[..., torch.Tensor]


def plain_inputs(x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, y: torch.Tensor | None,
                 **extra: Any) -> StaticInputs | None:
    """`StaticForm.inputs` of a call that is already fixed-shape in (x, t, ctx, y): those as they are; any
    keyword input (an entry's reference latents) sends the call to the eager path."""
    return None if extra else (x, t, ctx, y)


class FastDenoiser(FastModule):
    """A family's denoiser call (x, t, ctx, y, **entry inputs) → output, served by the fastest ready tier of
    its static form's bucket, or by `call` (the family's eager call) where the form takes no such call.
    Every call holds the model's lock, as the eager family calls do: a LoRA view swaps weights on the shared
    module, and a compiled or eager run must never read them."""

    def __init__(self, name: str, call: Callable[..., torch.Tensor], form: StaticForm, device: torch.device,
                 lock: threading.RLock, **options: Any) -> None:
        self.call = call
        self.form = form
        self.model_lock = lock
        self.fallbacks = 0  # calls that ran the eager family call (inputs the form does not take)
        super().__init__(name, form.run, form.run, device, lock=lock, **options)

    def _channels_last(self, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return args  # transformers take tokens: no memory-format choice to make

    def __call__(self, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor,  # type: ignore[override]
                 y: torch.Tensor | None = None, **extra: Any) -> torch.Tensor:
        with self.model_lock:
            static = self.form.inputs(x, t, ctx, y, **extra)
            if static is None:
                self.fallbacks += 1
                return self.call(x, t, ctx, y, **extra)
            return super().__call__(*static)
