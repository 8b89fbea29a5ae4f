"""The contracts package is the one home of the rules services share: nothing else spells an event name or a
job state, nothing else builds ComfyUI's error body, and its codecs give back what they were given."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from comfymesh.contracts import wirejson
from comfymesh.contracts.errors import ComfymeshError, ModelError, NodeInputError, StageUnavailableError
from comfymesh.contracts.events import EventType, JobStatus, NodeState
from comfymesh.contracts.failures import (
    MAX_CAUSES,
    exception_from_failure,
    failure_from_dict,
    failure_from_exception,
    failure_record,
    failure_to_dict,
)
from comfymesh.contracts.handles import HandleKind, checkpoint_handle, checkpoint_named, vae_file_handle
from comfymesh.contracts.values import TensorRef, tensor_of, value_from_dict, value_to_dict
from comfymesh.v1 import common_pb2

REPO = Path(__file__).resolve().parents[2]
CONTRACTS = REPO / "libs" / "comfymesh" / "contracts"
# packages still to move onto the contracts (issue 13): empty this list once each is migrated
NOT_YET_MIGRATED: list[str] = []
VOCABULARY = {str(value) for enum in (EventType, JobStatus, NodeState) for value in enum}
# protobuf calls whose string arguments name fields (a `done` or `started` oneof), not states
_FIELD_CALLS = {"HasField", "WhichOneof", "ClearField"}


def _checked_files() -> Iterator[Path]:
    for root in (REPO / "libs" / "comfymesh", REPO / "services" / "comfymesh"):
        for path in sorted(root.rglob("*.py")):
            relative = path.relative_to(REPO)
            if "v1" in relative.parts or path.is_relative_to(CONTRACTS):
                continue
            if any(relative.is_relative_to(folder) for folder in NOT_YET_MIGRATED):
                continue
            yield path


def _names(tree: ast.AST) -> set[int]:
    """String constants that name something rather than state a value: dict keys, subscripts, protobuf
    field names, and the members of an enum (another protocol's vocabulary, declared once)."""
    names: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            names.update(id(key) for key in node.keys if key is not None)
        elif isinstance(node, ast.Subscript):
            names.add(id(node.slice))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _FIELD_CALLS:
            names.update(id(arg) for arg in node.args)
        elif isinstance(node, ast.ClassDef) and any("Enum" in ast.unparse(base) for base in node.bases):
            names.update(id(sub) for sub in ast.walk(node))
    return names


def test_no_event_name_or_job_state_is_spelled_outside_the_contracts() -> None:
    found = []
    for path in _checked_files():
        tree = ast.parse(path.read_text(), str(path))
        names = _names(tree)
        found += [f"{path.relative_to(REPO)}:{node.lineno} {node.value!r}" for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in VOCABULARY
                  and id(node) not in names]
    assert found == [], "use EventType, JobStatus or NodeState from comfymesh.contracts.events"


def test_the_comfyui_error_body_is_built_only_in_contracts() -> None:
    builders = []
    for path in [*_checked_files(), *CONTRACTS.rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            keys = {key.value for key in getattr(node, "keys", []) if isinstance(key, ast.Constant)}
            if isinstance(node, ast.Dict) and {"error", "node_errors"} <= keys:
                builders.append(str(path.relative_to(REPO)))
    assert builders == ["libs/comfymesh/contracts/comfy_errors.py"], \
        "build the body with comfymesh.contracts.comfy_errors (error_body, error_response)"


def test_the_terminal_events_are_the_finished_statuses() -> None:
    from comfymesh.contracts.events import FINISHED_STATUSES, TERMINAL_EVENTS
    assert {str(event) for event in TERMINAL_EVENTS} == {str(status) for status in FINISHED_STATUSES}


def _chained() -> ModelError:
    try:
        try:
            try:
                raise OSError("the disk went away")
            except OSError as exc:
                raise NodeInputError("cannot read sd15.safetensors", node_id="4") from exc
        except NodeInputError as exc:
            raise ModelError("checkpoint sd15.safetensors is unreadable; copy it again", node_id="4",
                             details="load") from exc
    except ModelError as exc:
        return exc


def test_a_failure_crosses_the_wire_with_its_cause_chain() -> None:
    failure = failure_from_exception(_chained(), node_type="CheckpointLoaderSimple")
    back = exception_from_failure(common_pb2.Failure.FromString(failure.SerializeToString()))
    assert isinstance(back, ModelError)
    assert (back.type, back.node_id, back.message, back.details, back.non_retryable) == \
        ("model_error", "4", "checkpoint sd15.safetensors is unreadable; copy it again", "load", True)
    cause = back.__cause__
    assert isinstance(cause, NodeInputError)
    assert (cause.node_id, cause.message) == ("4", "cannot read sd15.safetensors")
    root = cause.__cause__
    assert isinstance(root, ComfymeshError) and root.type == "execution_error"
    assert root.message == "OSError: the disk went away" and root.__cause__ is None


def test_a_failure_record_round_trips_and_reads_older_records() -> None:
    failure = failure_from_exception(_chained(), node_type="CheckpointLoaderSimple")
    record = wirejson.loads(wirejson.dumps(failure_to_dict(failure)))
    assert failure_from_dict(record) == failure
    assert record["cause"]["cause"]["message"] == "OSError: the disk went away"
    assert failure_record(StageUnavailableError("stage call lost")).keys() == \
        {"type", "node_id", "message", "non_retryable", "details", "node_type"}  # no cause: no key
    older = failure_from_dict({"type": "internal_error", "message": "ValueError: x", "node_id": ""})
    assert older.non_retryable and older.type == "internal_error" and not older.HasField("cause")


def test_a_long_cause_chain_is_cut() -> None:
    exc: BaseException = ValueError("root")
    for depth in range(MAX_CAUSES + 5):
        outer = ComfymeshError(f"level {depth}")
        outer.__cause__ = exc
        exc = outer
    failure, depth = failure_from_exception(exc), 0
    while failure.HasField("cause"):
        failure, depth = failure.cause, depth + 1
    assert depth == MAX_CAUSES


def test_a_tensor_ref_round_trips_through_proto_and_the_cache_form() -> None:
    ref = TensorRef(uri="file:///data/tensors/ab/ab.safetensors", dtype="F16", shape=(1, 4, 64, 64),
                    digest="ab" * 32, nbytes=2**40 + 3)
    assert TensorRef.from_proto(ref.to_proto()) == ref
    value = common_pb2.Value(type="LATENT", tensor=ref.to_proto())
    assert tensor_of(value_from_dict(wirejson.loads(wirejson.dumps(value_to_dict(value))))) == ref
    assert tensor_of(common_pb2.Value(type="INT", json="3")) is None


@pytest.mark.parametrize(("value", "checkpoint"), [
    (checkpoint_handle(HandleKind.MODEL, "sd15.safetensors", "d1", loras=[]), "sd15.safetensors"),
    (checkpoint_handle(HandleKind.VAE, "sdxl.safetensors", "d2"), "sdxl.safetensors"),
    (vae_file_handle("vae-ft-mse.safetensors", "d3"), ""),
])
def test_the_checkpoint_a_model_handle_names(value: dict[str, object], checkpoint: str) -> None:
    type_name = {HandleKind.MODEL: "MODEL", HandleKind.VAE: "VAE"}[HandleKind(value["kind"])]
    assert checkpoint_named(common_pb2.Value(type=type_name, json=wirejson.dumps(value))) == checkpoint


def test_a_value_that_only_looks_like_a_handle_names_no_checkpoint() -> None:
    text = wirejson.dumps({"ckpt": "sd15.safetensors"})
    assert checkpoint_named(common_pb2.Value(type="METADATA", json=text)) == ""  # a plugin's own JSON value
    assert checkpoint_named(common_pb2.Value(type="MODEL", json=text)) == ""  # no kind: not a handle
