"""The diffusion stage's declarations offer exactly the samplers and schedulers it implements: all of ComfyUI's."""

from __future__ import annotations

from comfymesh.catalog.schema import Input
from comfymesh.diffusion.nodes import nodes
from comfymesh.diffusion.sampling.samplers import SAMPLER_NAMES, SAMPLERS
from comfymesh.diffusion.sampling.schedulers import SCHEDULER_NAMES


def _choices(node: str, name: str) -> list[str]:
    spec: Input = next(i for i in nodes.schemas[node].inputs if i.name == name)
    return list(spec.choices or ())  # type: ignore[arg-type]


def test_offered_samplers_are_implemented_in_comfyui_order() -> None:
    for node in ("KSampler", "KSamplerAdvanced"):
        offered = _choices(node, "sampler_name")
        assert offered == list(SAMPLERS) == list(SAMPLER_NAMES) and len(offered) == 44
        assert _choices(node, "scheduler") == list(SCHEDULER_NAMES)


def test_every_declared_diffusion_node_runs_on_the_diffusion_stage() -> None:
    assert nodes.schemas and all(schema.stage == "diffusion" for schema in nodes.schemas.values())
    assert set(nodes.impls) == set(nodes.schemas)
