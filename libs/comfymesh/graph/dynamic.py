"""ComfyUI's V3 dynamic inputs (Autogrow, DynamicCombo) as the concrete inputs a prompt carries.

`/object_info` declares one input (`images`, `resize_type`) with a template; a prompt names what the user
added with dotted paths: `images.image0`, `images.image1` for an Autogrow, the chosen key under
`resize_type` and that option's inputs as `resize_type.width` for a DynamicCombo. ComfyUI 0.8.0 validates and
runs exactly the expanded set: an Autogrow slot counts only where the prompt has it (required below the
template's `min`), a DynamicCombo adds only the chosen option's inputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from comfymesh.catalog import InputSpec

AUTOGROW = "COMFY_AUTOGROW_V3"
DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"
DYNAMIC_TYPES = frozenset({AUTOGROW, DYNAMIC_COMBO})


def is_dynamic_path(name: str, specs: Mapping[str, InputSpec]) -> bool:
    """Whether `name` is a dotted path under one of the node's dynamic inputs (`images.image0`)."""
    root = name.split(".", 1)[0]
    return "." in name and root in specs and specs[root].type in DYNAMIC_TYPES


def expand(specs: Mapping[str, InputSpec], live: Mapping[str, Any]) -> dict[str, InputSpec]:
    """The node's inputs with each dynamic one replaced by what `live` (the prompt's inputs) selects."""
    out: dict[str, InputSpec] = {}
    for name, spec in specs.items():
        if spec.type == AUTOGROW:
            out |= _autogrow(name, spec, live)
        elif spec.type == DYNAMIC_COMBO:
            out |= _dynamic_combo(name, spec, live)
        else:
            out[name] = spec
    return out


def _spec(name: str, declared: Any, required: bool) -> InputSpec:
    head, options = declared[0], (dict(declared[1]) if len(declared) > 1 else {})
    return InputSpec(name, "COMBO" if isinstance(head, list) else str(head), options, required)


def _autogrow(name: str, spec: InputSpec, live: Mapping[str, Any]) -> dict[str, InputSpec]:
    template = spec.options.get("template", {})
    if "names" in template:
        names, least = list(template["names"]), int(template.get("min", 1))
    else:
        names = [f"{template.get('prefix', '')}{i}" for i in range(int(template.get("max", 10)))]
        least = int(template.get("min", 1))
    # the template holds one input; its own name is replaced by each slot's
    declared = next((item for section in template.get("input", {}).values() for item in section.values()), None)
    if declared is None:
        return {}
    return {f"{name}.{slot}": _spec(f"{name}.{slot}", declared, i < least)
            for i, slot in enumerate(names) if f"{name}.{slot}" in live}


def _dynamic_combo(name: str, spec: InputSpec, live: Mapping[str, Any]) -> dict[str, InputSpec]:
    options = spec.options.get("options", [])
    out = {name: InputSpec(name, "COMBO", {"options": [option["key"] for option in options]}, spec.required)}
    chosen = next((option for option in options if option["key"] == live.get(name)), None)
    for section, inputs in (chosen or {}).get("inputs", {}).items():
        for inner, declared in inputs.items():
            out[f"{name}.{inner}"] = _spec(f"{name}.{inner}", declared, section == "required")
    return out


__all__ = ["AUTOGROW", "DYNAMIC_COMBO", "DYNAMIC_TYPES", "expand", "is_dynamic_path"]
