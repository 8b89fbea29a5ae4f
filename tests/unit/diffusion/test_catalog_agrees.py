"""The catalog (what validation and /object_info offer) lists exactly what the diffusion stage runs."""

from __future__ import annotations

from comfymesh.catalog import Catalog
from comfymesh.catalog.legacy_lists import SAMPLERS, SCHEDULERS
from comfymesh.diffusion.nodes import NODES
from comfymesh.diffusion.sampling.samplers import IMPLEMENTED_SAMPLERS, SAMPLER_NAMES
from comfymesh.diffusion.sampling.schedulers import SCHEDULER_NAMES


def test_offered_samplers_are_implemented_in_comfyui_order() -> None:
    assert set(SAMPLERS) == set(IMPLEMENTED_SAMPLERS)
    assert [name for name in SAMPLER_NAMES if name in SAMPLERS] == SAMPLERS
    assert list(SCHEDULER_NAMES) == SCHEDULERS


def test_every_diffusion_node_in_the_catalog_has_an_implementation(tmp_path) -> None:  # type: ignore[no-untyped-def]
    catalog = Catalog(tmp_path)
    declared = {name for name, node in catalog.nodes.items() if node.stage == "diffusion"}
    assert declared == set(NODES)
