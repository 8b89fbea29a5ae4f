"""Node declarations: each node states its inputs, outputs and category beside the function that runs it.

A stage collects its nodes in a `NodeSet`; the stage advertises the set through its Describe RPC, and the
orchestrator's catalog merges what every stage advertises. `/object_info`, validation and routing all
come from these declarations, so a new node (or a plugin's) needs no edit anywhere else.

    nodes = NodeSet("imaging")

    @nodes.define("ImageInvert", category="image", inputs=[Link("image", "IMAGE")], outputs=[Output("IMAGE")])
    def image_invert(ctx: NodeContext, image: Any) -> tuple[Any]: ...

Choices that depend on the data root (model files, input images) are declared as a `Source`, resolved by
the catalog whenever it is asked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
# the marker a dynamic COMBO list carries in a serialised declaration: [{SOURCE_KEY: "models/loras"}]
SOURCE_KEY = "$source"
# ComfyUI's largest width or height a size widget offers (its MAX_RESOLUTION)
MAX_RESOLUTION = 16384
# the stage name of nodes every stage hosts (output nodes run where their image was made)
ANY_STAGE = "any"
# the stage name of nodes the orchestrator evaluates itself (no tensors: the switch)
ORCHESTRATOR_STAGE = "orchestrator"
# the Describe-only field of a node whose result depends on more than its inputs (not in /object_info)
ALWAYS_CHANGED_KEY = "$always_changed"
# the Describe-only field of a node that takes its inputs as whole lists (ComfyUI's INPUT_IS_LIST, which
# 0.8.0's /object_info does not show)
INPUT_IS_LIST_KEY = "$input_is_list"


class DeclarationError(ValueError):
    """A node declaration that cannot be served (bad name, duplicate, inconsistent outputs)."""


@dataclass(frozen=True)
class Source:
    """Choices read at request time: `models/<folder>`, `input/images`, `samplers` or `schedulers`."""

    name: str


@dataclass(frozen=True)
class Input:
    """One input: a link (`IMAGE`, `MODEL`, ...) or a widget (`INT`, `FLOAT`, `STRING`, `BOOLEAN`, `COMBO`).

    `options` are ComfyUI's widget options (`default`, `min`, `max`, `step`, `round`, `multiline`,
    `tooltip`, `lazy`, `image_upload`, ...) in the order `/object_info` shows them; None for an entry
    that has no options element at all (ComfyUI shows both `["IMAGE"]` and `["IMAGE", {}]`)."""

    name: str
    type: str
    options: Mapping[str, Any] | None = None
    choices: Sequence[Any] | Source | None = None
    section: str = "required"  # required | optional | hidden
    # a V3 node's input: a COMBO shows as `["COMBO", {"multiselect": false, "options": [...], ...}]`, a hidden
    # input as `["PROMPT"]` (ComfyUI 0.8.0's V3 schema emits a one-item tuple where V1 nodes give the bare type)
    v3_combo: bool = False
    # a COMBO whose choices the frontend fetches from this route (LoadImageOutput's): `["COMBO", {...}]`
    remote: str | None = None

    def spec(self) -> list[Any] | str:
        """The `/object_info` form: `[type or choices, options]` (a V1 hidden input is its bare type)."""
        if self.section == "hidden":
            return [self.type] if self.v3_combo else self.type
        head: Any = self.type
        if self.remote is not None:
            return [head, dict(self.options or {})]
        if self.v3_combo:  # a file list of a V3 node stays a marker among its options until served
            listed = [{SOURCE_KEY: self.choices.name}] if isinstance(self.choices, Source) else list(self.choices or ())
            return [head, {"multiselect": False, "options": listed, **(self.options or {})}]
        if self.type == "COMBO":
            head = [{SOURCE_KEY: self.choices.name}] if isinstance(self.choices, Source) else list(self.choices or ())
        return [head] if self.options is None else [head, dict(self.options)]


def _options(explicit: Mapping[str, Any] | None, named: dict[str, Any]) -> Mapping[str, Any] | None:
    return {**(explicit or {}), **named} if named else explicit


def _widget(kind: str) -> Callable[..., Input]:
    def make(name: str, default: Any = None, *, section: str = "required", **options: Any) -> Input:
        return Input(name, kind, ({"default": default} if default is not None else {}) | options, section=section)

    make.__doc__ = f"A {kind} widget input (options as ComfyUI names them)."
    return make


Int = _widget("INT")
Float = _widget("FLOAT")
String = _widget("STRING")
Boolean = _widget("BOOLEAN")


def Combo(name: str, choices: Sequence[Any] | Source, opts: Mapping[str, Any] | None = None, *,
          section: str = "required", **options: Any) -> Input:
    """A list-of-choices input, static or read from a `Source` at request time."""
    return Input(name, "COMBO", _options(opts, options), choices=choices, section=section)


def ComboV3(name: str, choices: Sequence[Any] | Source, *, section: str = "required", **options: Any) -> Input:
    """A list-of-choices input as ComfyUI's V3 nodes declare it (`io.Combo.Input`)."""
    return Input(name, "COMBO", options or None, choices=choices, section=section, v3_combo=True)


def RemoteCombo(name: str, route: str, **options: Any) -> Input:
    """A COMBO whose choices the frontend reads from `route` (ComfyUI's `remote` option); the value is
    checked by the server, not against a list."""
    remote = {"route": route, **options.pop("remote", {})}
    return Input(name, "COMBO", {**options, "remote": remote}, remote=route)


def DynamicCombo(name: str, options: Mapping[str, Sequence[Input]]) -> Input:
    """ComfyUI's V3 DynamicCombo: choosing a key adds that option's inputs, named `name.input` in a prompt."""
    return Input(name, "COMFY_DYNAMICCOMBO_V3", {"options": [
        {"key": key, "inputs": {"required": {item.name: item.spec() for item in inputs}}}
        for key, inputs in options.items()]})


def Autogrow(name: str, template: Input, prefix: str, least: int, most: int) -> Input:
    """ComfyUI's V3 Autogrow: `template` repeated as `name.<prefix>0`, `name.<prefix>1`, ... in a prompt,
    at least `least` (required) and at most `most`."""
    return Input(name, "COMFY_AUTOGROW_V3", {"template": {
        "input": {"required": {template.name: template.spec()}}, "prefix": prefix, "min": least, "max": most}})


def Link(name: str, type: str, opts: Mapping[str, Any] | None = None, *,
         section: str = "required", **options: Any) -> Input:
    """An input fed by another node's output of `type`."""
    return Input(name, type, _options(opts, options), section=section)


def Hidden(name: str, type: str, *, v3: bool = False) -> Input:
    """An input the server fills in (PROMPT, EXTRA_PNGINFO, UNIQUE_ID); `v3` for a V3 node's."""
    return Input(name, type, section="hidden", v3_combo=v3)


@dataclass(frozen=True)
class Output:
    type: str
    name: str = ""
    is_list: bool = False


@dataclass(frozen=True)
class NodeSchema:
    """Everything `/object_info`, validation and routing need to know about one node class."""

    name: str
    stage: str
    inputs: tuple[Input, ...]
    outputs: tuple[Output, ...] = ()
    category: str = ""
    display_name: str | None = ""  # "": the node's name; None is shown as null, as ComfyUI does for some
    description: str = ""
    output_node: bool = False
    python_module: str = "nodes"
    # further `/object_info` fields shown verbatim (deprecated, experimental, output_tooltips, ...)
    extra: Mapping[str, Any] = field(default_factory=dict)
    # ComfyUI's IS_CHANGED answering NaN: the node runs every time (random sources, live reads)
    always_changed: bool = False
    # ComfyUI's INPUT_IS_LIST: the node runs once on whole lists instead of once per list item
    input_is_list: bool = False

    def object_info(self) -> dict[str, Any]:
        """This node's `/object_info` entry, dynamic choices still as `{SOURCE_KEY: ...}` markers."""
        sections: dict[str, dict[str, Any]] = {}
        for item in self.inputs:
            sections.setdefault(item.section, {})[item.name] = item.spec()
        # "required" is always there, if empty (a node without inputs), as in ComfyUI
        ordered = {section: sections.get(section, {}) for section in ("required", "optional", "hidden")
                   if section in sections or section == "required"}
        return {"input": ordered, "input_order": {section: list(names) for section, names in ordered.items()},
                "output": [o.type for o in self.outputs], "output_is_list": [o.is_list for o in self.outputs],
                "output_name": [o.name or o.type for o in self.outputs], "name": self.name,
                "display_name": self.name if self.display_name == "" else self.display_name, "description": self.description,
                "python_module": self.python_module, "category": self.category, "output_node": self.output_node,
                **self.extra}


NodeFn = TypeVar("NodeFn", bound=Callable[..., Any])


class NodeSet:
    """The nodes one stage (or one plugin) hosts: each declaration with the function that runs it."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.schemas: dict[str, NodeSchema] = {}
        self.impls: dict[str, Callable[..., Any]] = {}

    def define(self, name: str, *, inputs: Iterable[Input], outputs: Iterable[Output] = (), category: str = "",
               display_name: str | None = "", description: str = "", output_node: bool = False,
               python_module: str = "nodes", stage: str | None = None, always_changed: bool = False,
               input_is_list: bool = False, **extra: Any) -> Callable[[NodeFn], NodeFn]:
        """Declare node `name` and register the decorated function as its implementation."""
        schema = NodeSchema(name, stage or self.stage, tuple(inputs), tuple(outputs), category, display_name,
                            description, output_node, python_module, extra, always_changed, input_is_list)

        def register(fn: NodeFn) -> NodeFn:
            self.add(schema, fn)
            return fn

        return register

    def add(self, schema: NodeSchema, fn: Callable[..., Any]) -> None:
        check_schema(schema)
        if schema.name in self.schemas:
            raise DeclarationError(f"node {schema.name!r} is declared twice")
        self.schemas[schema.name] = schema
        self.impls[schema.name] = fn

    def extend(self, other: NodeSet) -> None:
        for name, schema in other.schemas.items():
            self.add(schema, other.impls[name])

    def object_info(self) -> dict[str, dict[str, Any]]:
        """Every node's `/object_info` entry with its `stage` (what the Describe RPC sends)."""
        return {name: {**schema.object_info(), "stage": schema.stage,
                       **({ALWAYS_CHANGED_KEY: True} if schema.always_changed else {}),
                       **({INPUT_IS_LIST_KEY: True} if schema.input_is_list else {})}
                for name, schema in self.schemas.items()}


def check_schema(schema: NodeSchema) -> None:
    """Refuse a declaration the catalog could not serve, naming the node and what is wrong."""
    if not schema.name or not schema.name.replace("_", "").replace(" ", "").isalnum():
        raise DeclarationError(f"node name {schema.name!r} must be letters, digits, '_' or spaces")
    seen: set[str] = set()
    for item in schema.inputs:
        if item.name in seen:
            raise DeclarationError(f"node {schema.name!r} declares input {item.name!r} twice")
        seen.add(item.name)
        if item.section not in ("required", "optional", "hidden"):
            raise DeclarationError(f"node {schema.name!r} input {item.name!r}: unknown section {item.section!r}")
        # "*" alone is ComfyUI's any-type socket (PreviewAny's source)
        if item.type != "*" and not item.type.replace("_", "").replace("*", "").isalnum():
            raise DeclarationError(f"node {schema.name!r} input {item.name!r}: bad type {item.type!r}")
        if item.type == "COMBO" and item.choices is None and item.remote is None:
            raise DeclarationError(f"node {schema.name!r} input {item.name!r}: a COMBO needs choices")
    if not schema.outputs and not schema.output_node:
        raise DeclarationError(f"node {schema.name!r} has no outputs and is not an output node")


__all__ = ["ALWAYS_CHANGED_KEY", "ANY_STAGE", "INPUT_IS_LIST_KEY", "MAX_RESOLUTION", "ORCHESTRATOR_STAGE", "SOURCE_KEY", "WIDGET_TYPES", "Autogrow", "Boolean", "Combo", "ComboV3", "DeclarationError", "DynamicCombo", "Float", "Hidden",
           "Input", "Int", "Link", "NodeSchema", "NodeSet", "Output", "RemoteCombo", "Source", "String", "check_schema"]
