"""What of a job's plan runs, and where: file digests in the cache signatures, the nodes left to run after
the cache, the outputs worth storing, and the checkpoint a stage group needs (for replica affinity)."""

from __future__ import annotations

import secrets
from typing import Any

from comfymesh.catalog import INPUT_IMAGES, INPUT_LATENTS, MODELS_PREFIX, Catalog
from comfymesh.catalog.files import file_digest, known_digest, split_image_name
from comfymesh.contracts.handles import checkpoint_named
from comfymesh.files import BadKey, FilesStore, safe_key
from comfymesh.graph import Plan, StageGroup
from comfymesh.graph.planning import ExternalFingerprint
from comfymesh.v1 import common_pb2

CHECKPOINTS = f"{MODELS_PREFIX}checkpoints"
# the folders whose files a replica keeps resident: a whole checkpoint, or the diffusion model of split files
RESIDENT_MODELS = (CHECKPOINTS, f"{MODELS_PREFIX}diffusion_models")


def _stored_version(files: FilesStore, value: str) -> str | None:
    """An input image or latent in a shared files store: its object's version, None when there is none."""
    folder, name = split_image_name(value)
    try:
        return files.version(safe_key(folder, "", name))
    except (BadKey, FileNotFoundError):
        return None


class DigestPending(Exception):
    """A file the plan reads has not been hashed yet (a model seen the first time): sign off the event loop."""


def fingerprint_files(catalog: Catalog, files: FilesStore | None = None, *,
                      hash_files: bool = True) -> ExternalFingerprint:
    """Cache signatures include the digest of every file a node reads (checkpoint, LoRA, input image): ComfyUI's
    IS_CHANGED of its file loaders. A node declared always changed (IS_CHANGED answering NaN, which equals
    nothing) gets a fresh token, so neither it nor anything downstream of it is ever served from cache.
    Without `hash_files`, a file not hashed before raises DigestPending instead of being read whole."""
    def fingerprint(class_type: str, literals: dict[str, Any]) -> str:
        definition = catalog.nodes.get(class_type)
        if definition is not None and definition.always_changed:
            return f"changed:{secrets.token_hex(16)}"
        parts = []
        for name, value in sorted(literals.items()):
            spec = definition.inputs.get(name) if definition is not None else None
            if files is not None and not files.local and spec is not None \
                    and spec.source in (INPUT_IMAGES, INPUT_LATENTS) and isinstance(value, str):
                version = _stored_version(files, value)  # uploads live in the store, not in <home>/input
                if version is not None:
                    parts.append(f"{name}=object:{version}")
                continue
            version = catalog.model_version(class_type, name, value)  # a model in s3://: its ETag
            if version is not None:
                parts.append(f"{name}=model:{version}")
                continue
            path = catalog.file_of(class_type, name, value)
            if path is not None:
                digest = file_digest(path) if hash_files else known_digest(path)
                if digest is None:
                    raise DigestPending(str(path))
                parts.append(f"{name}={digest}")
        return ";".join(parts)
    return fingerprint


def nodes_to_run(plan: Plan, cached: set[str]) -> set[str]:
    """Walk up from the outputs not served from cache, stopping at cached nodes."""
    to_run: set[str] = set()
    stack = [node_id for node_id in plan.outputs if node_id not in cached]
    while stack:
        node_id = stack.pop()
        if node_id in to_run or node_id in cached:
            continue
        to_run.add(node_id)
        stack.extend(source for source, _ in plan.nodes[node_id].links.values())
    return to_run


def exports(plan: Plan, group: StageGroup, remaining: list[str]) -> list[str]:
    """Outputs worth storing: what other groups read, and everything but images (small, costly to
    recompute: conditioning, latents, model handles). Images inside a group stay in the stage's memory."""
    stored = []
    for node_id in remaining:
        node = plan.nodes[node_id]
        leaves_group = any(c not in group.node_ids for c in plan.consumers[node_id])
        if leaves_group or not set(node.outputs) & {"IMAGE", "MASK"}:
            stored.append(node_id)
    return stored


def group_checkpoint(plan: Plan, group: StageGroup, values: dict[str, list[common_pb2.Value]],
                     catalog: Catalog) -> str:
    """The checkpoint (or split diffusion-model file) a group uses: named by a loader's file input, or by a
    model handle one of its nodes is given; "" when none."""
    for node_id in group.node_ids:
        node = plan.nodes[node_id]
        definition = catalog.nodes.get(node.class_type)
        for name, value in node.literals.items():
            spec = definition.inputs.get(name) if definition else None
            if spec is not None and spec.source in RESIDENT_MODELS:
                return str(value)
        for source, slot in node.links.values():
            value = values.get(source, [])[slot:slot + 1]
            if value and (checkpoint := checkpoint_named(value[0])):
                return checkpoint
    return ""
