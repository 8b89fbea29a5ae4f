"""Validation of API-format prompts with ComfyUI's error format and types, every error at once."""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from comfymesh.catalog import Catalog, InputSpec, NodeDef
from comfymesh.contracts.comfy_errors import error_detail, error_response
from comfymesh.graph.dynamic import expand
from comfymesh.graph.limits import NodeCheck

Prompt = dict[str, dict[str, Any]]
# A node's check, suspended at each linked input: it yields the source node's id and is sent back whether
# that node (and everything upstream of it) is valid. Walking with an explicit stack of these keeps a chain
# of thousands of nodes clear of Python's recursion limit.
_NodeCheck = Generator[str, bool, bool]
# Inputs whose value a node checks itself (ComfyUI's VALIDATE_INPUTS): name -> check returning an error or None.
CustomCheck = Callable[[Any], str | None]


@dataclass
class ValidationResult:
    """`error` is set when the prompt is rejected; `outputs` are the output nodes that will run."""

    prompt: Prompt = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    error: dict[str, Any] | None = None
    node_errors: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    def response(self) -> dict[str, Any]:
        """The body ComfyUI answers with: `{"error": ..., "node_errors": ...}`."""
        return error_response(self.error, self.node_errors)


def _top_level(type_: str, message: str, details: str) -> ValidationResult:
    return ValidationResult(error=error_detail(type_, message, details), node_errors={})


def _unwrap(value: Any) -> Any:
    # The frontend wraps literal lists as {"__value__": [...]} so they are not taken for links.
    if isinstance(value, dict) and "__value__" in value:
        return value["__value__"]
    return value


def _coerce(spec: InputSpec, value: Any) -> Any:
    if spec.type == "INT":
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{value} is not an integer")
        return int(value)
    if spec.type == "FLOAT":
        number = float(value)
        if not math.isfinite(number):  # "nan" passes every min/max comparison, then breaks JSON replies
            raise ValueError(f"{value!r} is not a finite number")
        return number
    if spec.type == "STRING":
        if not isinstance(value, str | int | float | bool):
            raise ValueError("not a string")
        return str(value)
    if spec.type == "BOOLEAN":
        return bool(value)
    return value


# V3's MatchType: an input or output that takes the type of what it is linked to (the switch's)
MATCH_TYPE = "COMFY_MATCHTYPE_V3"


def _types_match(received: str, expected: str) -> bool:
    if "*" in (received, expected) or MATCH_TYPE in (received, expected):
        return True
    return bool(set(received.split(",")) & set(expected.split(",")))


class _Validator:
    def __init__(self, prompt: Prompt, catalog: Catalog, custom_checks: dict[tuple[str, str], CustomCheck],
                 node_check: NodeCheck | None = None):
        self.prompt = prompt
        self.catalog = catalog
        self.custom_checks = custom_checks
        self.node_check = node_check
        self._choices: dict[tuple[str, str], list[Any]] = {}
        self.valid: dict[str, bool] = {}
        self.errors: dict[str, list[dict[str, Any]]] = {}
        self.visiting: set[str] = set()

    def node(self, node_id: str) -> bool:
        """Whether a node and everything upstream of it are valid (depth first, in ComfyUI's order)."""
        known = self._known(node_id)
        if known is not None:
            return known
        stack = [self._check(node_id)]
        answer: bool | None = None  # what the check on top of the stack is sent next (None: its start)
        while stack:
            try:
                source = stack[-1].send(answer)  # type: ignore[arg-type]  # None starts a fresh check
            except StopIteration as finished:
                stack.pop()
                answer = finished.value
                continue
            answer = self._known(source)
            if answer is None:
                stack.append(self._check(source))
        assert answer is not None
        return answer

    def _known(self, node_id: str) -> bool | None:
        """A node's result when it is already known, False (and a cycle error) when it is being checked
        further down the stack, None when it still has to be checked."""
        if node_id in self.valid:
            return self.valid[node_id]
        if node_id in self.visiting:
            self.errors.setdefault(node_id, []).append(
                error_detail("dependency_cycle", "Dependency cycle detected",
                             f"Node '{node_id}' depends on itself through its links"))
            return False
        return None

    def _check(self, node_id: str) -> _NodeCheck:
        self.visiting.add(node_id)
        node = self.prompt[node_id]
        definition = self.catalog.get(node["class_type"])
        assert definition is not None  # unknown classes were rejected before
        inputs = node.setdefault("inputs", {})
        errors: list[dict[str, Any]] = []
        upstream_ok = True
        declared = expand(definition.inputs, inputs)  # V3 dynamic inputs as the prompt has them
        for name in [n for n, v in inputs.items() if n not in declared and isinstance(v, list)]:
            del inputs[name]  # a link into no declared input is never read: it must not be planned or followed
        for name, spec in declared.items():
            if name not in inputs:
                if spec.required:
                    errors.append(error_detail("required_input_missing", "Required input is missing", name,
                                               {"input_name": name}))
                continue
            value = inputs[name]
            if isinstance(value, list):
                upstream_ok &= yield from self._link(node_id, name, spec, value, errors)
            else:
                self._literal(node, definition, name, spec, _unwrap(value), errors)
        self.visiting.discard(node_id)
        if self.node_check is not None and not errors:
            errors.extend(self.node_check(definition.name, inputs))
        if errors:
            self.errors.setdefault(node_id, []).extend(errors)
        self.valid[node_id] = not errors and upstream_ok and node_id not in self.errors
        return self.valid[node_id]

    def _input_config(self, node_def: NodeDef, spec: InputSpec) -> list[Any]:
        if spec.type == "COMBO":
            # live lists come from folder listings: read each once per validation, not once per node
            key = (node_def.name, spec.name)
            if key not in self._choices:  # a dynamic input's choices are its own (`resize_type.crop`)
                self._choices[key] = (self.catalog.choices(node_def.name, spec.name)
                                      if node_def.inputs.get(spec.name) is spec else list(spec.options["options"]))
            # a V3 COMBO's list is among its options: shown resolved there too, never as a file-list marker
            options = {**spec.options, "options": self._choices[key]} if "options" in spec.options else spec.options
            return [self._choices[key], options]
        return [spec.type, spec.options]

    def _link(self, node_id: str, name: str, spec: InputSpec, value: list[Any],
              errors: list[dict[str, Any]]) -> _NodeCheck:
        node_def = self.catalog.get(self.prompt[node_id]["class_type"])
        assert node_def is not None
        config = self._input_config(node_def, spec)
        if len(value) != 2 or not isinstance(value[0], str | int) or isinstance(value[1], bool) \
                or not isinstance(value[1], int):
            errors.append(error_detail("bad_linked_input",
                                       "Bad linked input, must be a length-2 list of [node_id, slot_index]", name,
                                       {"input_name": name, "input_config": config, "received_value": value}))
            return False
        source_id, slot = str(value[0]), value[1]
        source = self.prompt.get(source_id)
        source_def = self.catalog.get(source["class_type"]) if source else None
        if source_def is None or not 0 <= slot < len(source_def.outputs):
            reason = (f"node '{source_id}' does not exist" if source_def is None
                      else f"node '{source_id}' ({source_def.name}) has no output {slot}")
            errors.append(error_detail("exception_during_inner_validation", "Exception when validating inner node",
                                       f"{name}: {reason}",
                                       {"input_name": name, "input_config": config, "exception_message": reason,
                                        "exception_type": "KeyError", "traceback": [],
                                        "linked_node": [source_id, slot]}))
            return False
        received = source_def.outputs[slot]
        if not _types_match(received, spec.type if spec.type != "COMBO" else "COMBO"):
            errors.append(error_detail("return_type_mismatch", "Return type mismatch between linked nodes",
                                       f"{name}, received_type({received}) mismatch input_type({spec.type})",
                                       {"input_name": name, "input_config": config, "received_type": received,
                                        "linked_node": [source_id, slot]}))
            return False
        return (yield source_id)

    def _literal(self, node: dict[str, Any], node_def: NodeDef, name: str, spec: InputSpec, value: Any,
                 errors: list[dict[str, Any]]) -> None:
        config = self._input_config(node_def, spec)
        if not spec.is_widget:
            errors.append(error_detail("bad_linked_input",
                                       "Bad linked input, must be a length-2 list of [node_id, slot_index]", name,
                                       {"input_name": name, "input_config": config, "received_value": value}))
            return
        try:
            value = _coerce(spec, value)
        except (TypeError, ValueError, OverflowError) as exc:
            errors.append(error_detail("invalid_input_type",
                                       f"Failed to convert an input value to a {spec.type} value",
                                       f"{name}, {value}, {exc}",
                                       {"input_name": name, "input_config": config, "received_value": value,
                                        "exception_message": str(exc)}))
            return
        node["inputs"][name] = value
        check = self.custom_checks.get((node_def.name, name))
        if check is not None:
            problem = check(value)
            if problem:
                errors.append(error_detail("custom_validation_failed", "Custom validation failed for node",
                                           f"{name} - {problem}", {"input_name": name}))
            return
        if spec.type in ("INT", "FLOAT"):
            if "min" in spec.options and value < spec.options["min"]:
                errors.append(error_detail("value_smaller_than_min",
                                           f"Value {value} smaller than min of {spec.options['min']}", name,
                                           {"input_name": name, "input_config": config, "received_value": value}))
            if "max" in spec.options and value > spec.options["max"]:
                errors.append(error_detail("value_bigger_than_max",
                                           f"Value {value} bigger than max of {spec.options['max']}", name,
                                           {"input_name": name, "input_config": config, "received_value": value}))
        elif spec.type == "COMBO":
            choices = config[0]
            if value not in choices:
                listed = choices if len(choices) <= 20 else f"(list of length {len(choices)})"
                errors.append(error_detail("value_not_in_list", "Value not in list",
                                           f"{name}: '{value}' not in {listed}",
                                           {"input_name": name, "input_config": config if len(choices) <= 20 else None,
                                            "received_value": value}))


def _dependents(prompt: Prompt, output_id: str) -> set[str]:
    """Every node an output node depends on, itself included."""
    seen: set[str] = set()
    stack = [output_id]
    while stack:
        node_id = stack.pop()
        if node_id in seen or node_id not in prompt:
            continue
        seen.add(node_id)
        for value in prompt[node_id].get("inputs", {}).values():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str | int):
                stack.append(str(value[0]))
    return seen


def validate_prompt(prompt: Any, catalog: Catalog, *, targets: list[str] | None = None,
                    custom_checks: dict[tuple[str, str], CustomCheck] | None = None,
                    node_check: NodeCheck | None = None) -> ValidationResult:
    """Check a prompt as ComfyUI does; the result carries the coerced prompt and the outputs to run."""
    if not isinstance(prompt, dict) or not prompt:
        return _top_level("no_prompt", "No prompt provided", "No prompt provided")
    normalized: Prompt = {}
    for raw_id, node in prompt.items():
        node_id = str(raw_id)
        if not isinstance(node, dict) or "class_type" not in node:
            return _top_level("invalid_prompt",
                              "Cannot execute because a node is missing the class_type property.",
                              f"Node ID '#{node_id}'")
        if not isinstance(node["class_type"], str) or catalog.get(node["class_type"]) is None:
            return _top_level("invalid_prompt", f"Cannot execute because node {node['class_type']} does not exist.",
                              f"Node ID '#{node_id}'")
        inputs = node.get("inputs", {})
        if not isinstance(inputs, dict):
            return _top_level("invalid_prompt", "Cannot execute because a node has inputs that are not an object.",
                              f"Node ID '#{node_id}'")
        normalized[node_id] = {"class_type": node["class_type"], "inputs": dict(inputs)}
    outputs = [node_id for node_id, node in normalized.items()
               if catalog.nodes[node["class_type"]].output_node]
    if targets is not None:
        outputs = [node_id for node_id in outputs if node_id in {str(t) for t in targets}]
    if not outputs:
        return _top_level("prompt_no_outputs", "Prompt has no outputs", "")

    validator = _Validator(normalized, catalog, custom_checks or {}, node_check)
    good = [output_id for output_id in outputs if validator.node(output_id)]
    node_errors: dict[str, Any] = {}
    upstream = {output_id: _dependents(normalized, output_id) for output_id in outputs} if validator.errors else {}
    for node_id, errors in validator.errors.items():
        dependent = [o for o in outputs if node_id in upstream[o]]
        node_errors[node_id] = {"errors": errors, "dependent_outputs": dependent,
                                "class_type": normalized[node_id]["class_type"]}
    if good:
        return ValidationResult(prompt=normalized, outputs=good, node_errors=node_errors)
    details = "\n".join(f"{e['message']}: {e['details']}" for o in outputs for e in validator.errors.get(o, []))
    return ValidationResult(
        error=error_detail("prompt_outputs_failed_validation", "Prompt outputs failed validation", details),
        node_errors=node_errors)
