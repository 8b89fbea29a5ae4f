"""A saved workflow's public inputs: each names a node's literal input, typed from that node's `/object_info`
declaration (type, default, range, choices), and becomes a field of the workflow's own request model."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

INPUT_NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_]{0,63}$"
_INPUT_NAME = re.compile(INPUT_NAME_PATTERN)
KINDS = ("integer", "number", "string", "boolean", "choice", "image")
_SCALARS = {"INT": "integer", "FLOAT": "number", "STRING": "string", "BOOLEAN": "boolean"}


class DeclarationError(ValueError):
    """A declared input that cannot be public; the message names it and says what to change."""


class ImageInput(BaseModel):
    """An input image: exactly one of an uploaded file's name, the image's bytes in base64, or an http(s) URL
    the gateway downloads (through the outbound-request policy, within size and time limits)."""

    model_config = ConfigDict(extra="forbid")

    upload: str | None = Field(None, max_length=512, description="a file in the input folder (POST /upload/image)")
    base64: str | None = Field(None, description="the image file's bytes, base64 (a data: URL prefix is allowed)")
    url: str | None = Field(None, max_length=2048, description="http(s) URL of the image")

    @model_validator(mode="after")
    def _exactly_one(self) -> ImageInput:
        given = [name for name in ("upload", "base64", "url") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of upload, base64 or url")
        return self


@dataclass(frozen=True)
class PublicInput:
    """One public input: `name` in the run request, the node input it sets, and its type from the node."""

    name: str
    node_id: str
    input: str
    kind: str
    class_type: str
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: list[Any] = field(default_factory=list)
    description: str = ""

    def to_json(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value not in (None, [], "")}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> PublicInput:
        return cls(**{key: raw[key] for key in cls.__dataclass_fields__ if key in raw})

    def field(self) -> tuple[Any, Any]:
        """The pydantic field of this input: optional (the workflow's value is the default)."""
        extra: dict[str, Any] = {"x-node": f"{self.node_id}.{self.input}", "x-class-type": self.class_type}
        description = self.description or f"{self.class_type} {self.input!r} of node {self.node_id}"
        if self.kind == "image":
            return (str | ImageInput | None, Field(None, alias=self.name, json_schema_extra=extra,
                                                   description=description + " (an upload's name, or "
                                                                             "{upload|base64|url})"))
        if self.choices:
            extra["examples"] = self.choices[:20]
        python_type: Any = {"integer": int, "number": float, "boolean": bool}.get(self.kind, str)
        return (python_type if self.default is not None else python_type | None,
                Field(self.default, alias=self.name, ge=self.minimum, le=self.maximum, description=description,
                      json_schema_extra=extra))


def _declaration(object_info: dict[str, Any], class_type: str, name: str) -> tuple[Any, dict[str, Any]] | None:
    """(type, options) of a node input as `/object_info` declares it, or None."""
    inputs = (object_info.get(class_type) or {}).get("input") or {}
    for section in ("required", "optional"):
        spec = (inputs.get(section) or {}).get(name)
        if isinstance(spec, list) and spec:
            return spec[0], spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return None


def public_input(prompt: dict[str, Any], object_info: dict[str, Any], requested: dict[str, Any]) -> PublicInput:
    """The public input that `requested` ({node_id, input, name?, default?, description?}) declares."""
    node_id, input_name = str(requested.get("node_id", "")), str(requested.get("input", ""))
    name = str(requested.get("name") or input_name)
    if not _INPUT_NAME.fullmatch(name):
        raise DeclarationError(f"input name {name!r} must be 1 to 64 of A-Z a-z 0-9 _, starting with a letter")
    node = prompt.get(node_id)
    if not isinstance(node, dict):
        raise DeclarationError(f"input {name!r}: the workflow has no node {node_id!r}")
    class_type = str(node.get("class_type", ""))
    declared = _declaration(object_info, class_type, input_name)
    if declared is None:
        raise DeclarationError(f"input {name!r}: node {node_id} ({class_type}) declares no input {input_name!r}")
    kind_of, options = declared
    current = (node.get("inputs") or {}).get(input_name)
    if isinstance(current, list):
        raise DeclarationError(f"input {name!r}: {input_name!r} of node {node_id} is linked to another node; "
                               "declare the literal input of the node it comes from")
    if isinstance(kind_of, list) or kind_of == "COMBO":
        choices = kind_of if isinstance(kind_of, list) else list(options.get("options") or [])
        kind = "image" if options.get("image_upload") else "choice"
    elif kind_of in _SCALARS:
        choices, kind = [], _SCALARS[kind_of]
    else:
        raise DeclarationError(f"input {name!r}: {input_name!r} of node {node_id} takes a {kind_of} link, not a "
                               "value; declare a loader's input instead (e.g. LoadImage's image)")
    default = requested.get("default", current if current is not None else options.get("default"))
    number = kind in ("integer", "number")
    return PublicInput(name=name, node_id=node_id, input=input_name, kind=kind, class_type=class_type,
                       default=default if kind != "image" else None,
                       minimum=options.get("min") if number else None, maximum=options.get("max") if number else None,
                       step=options.get("step") if number else None, choices=list(choices)[:1000] if kind == "choice"
                       else [], description=str(requested.get("description") or options.get("tooltip") or ""))


def declare_inputs(prompt: dict[str, Any], object_info: dict[str, Any],
                   requested: list[dict[str, Any]]) -> list[PublicInput]:
    """Every requested public input, typed; names must be unique and defaults inside their ranges."""
    inputs = [public_input(prompt, object_info, item) for item in requested]
    seen: set[str] = set()
    for item in inputs:
        if item.name in seen:
            raise DeclarationError(f"input name {item.name!r} is declared twice")
        seen.add(item.name)
    run_model("check", inputs).model_validate({})  # a default out of its range is refused now, not at each run
    return inputs


def model_name(workflow: str) -> str:
    return "RunInputs_" + re.sub(r"[^A-Za-z0-9_]", "_", workflow)


def run_model(workflow: str, inputs: list[PublicInput]) -> type[BaseModel]:
    """The pydantic model of this workflow's `inputs` object: its JSON schema is the endpoint's, and it
    checks a run's values (unknown names refused)."""
    # fields under neutral names, each input's name its alias: a name such as `json` or `model_x` cannot
    # collide with pydantic's own attributes
    fields: dict[str, Any] = {f"input_{index}": item.field() for index, item in enumerate(inputs)}
    return create_model(model_name(workflow), __config__=ConfigDict(extra="forbid", validate_default=True), **fields)
