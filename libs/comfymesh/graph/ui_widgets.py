"""Which widgets the ComfyUI frontend gives a node, from its `/object_info` declaration, and how it serializes them.

A UI workflow stores widget values by position (`widgets_values`), so converting it needs the frontend's widget
list: widget inputs in `input_order` (required, then optional), a "control after generate" companion right after
an INT seed (or any input flagged `control_after_generate`), and an upload button last on nodes whose combo takes
uploads. Companions and buttons hold a position but never reach the prompt.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# input types the frontend draws a widget for (a list of options is a COMBO too)
WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"
SEED_NAMES = frozenset({"seed", "noise_seed"})
UPLOAD_FLAGS = ("image_upload", "video_upload", "audio_upload", "animated_image_upload", "mesh_upload")
_COMMENTS = re.compile(r"/\*[\s\S]*?\*/|//.*")


@dataclass(frozen=True)
class Widget:
    """One widget position: `name` is the prompt input it fills, None for a companion that is never sent."""

    name: str | None
    default: Any = None
    dynamic_prompts: bool = False
    options: tuple[tuple[str, tuple[Widget, ...]], ...] = ()  # a dynamic combo: each key's own widgets


def _type_and_options(spec: Any) -> tuple[str, dict[str, Any]]:
    kind = spec[0] if isinstance(spec, list | tuple) and spec else spec
    options = spec[1] if isinstance(spec, list | tuple) and len(spec) > 1 and isinstance(spec[1], dict) else {}
    if isinstance(kind, list | tuple):
        return "COMBO", {**options, "options": list(kind)}
    return str(kind), options


def _default(kind: str, options: Mapping[str, Any]) -> Any:
    if "default" in options:
        return options["default"]
    if kind == "COMBO":
        choices = options.get("options") or []
        return choices[0] if choices else None
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(kind)


def ordered_inputs(declaration: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(name, spec) of a node's required then optional inputs, in `input_order` where it is given."""
    groups = declaration.get("input") or {}
    order = declaration.get("input_order") or {}
    out: list[tuple[str, Any]] = []
    for group in ("required", "optional"):
        specs = groups.get(group) or {}
        names = [n for n in order.get(group, specs) if n in specs] + [n for n in specs if n not in order.get(group, ())]
        out += [(name, specs[name]) for name in dict.fromkeys(names)]
    return out


def _widgets(inputs: list[tuple[str, Any]], prefix: str, required: set[str]) -> list[Widget]:
    widgets: list[Widget] = []
    upload = False
    for name, spec in inputs:
        kind, options = _type_and_options(spec)
        kind = str(options.get("widgetType") or kind)
        if kind == DYNAMIC_COMBO:  # its chosen option's widgets follow it, named "<combo>.<input>"
            keys = [str(option.get("key")) for option in options.get("options") or []]
            widgets.append(Widget(prefix + name, keys[0] if keys else None, options=tuple(
                (str(option.get("key")), tuple(_widgets(_option_inputs(option), f"{prefix}{name}.", set())))
                for option in options.get("options") or [])))
            continue
        if kind not in WIDGET_TYPES or options.get("forceInput"):
            continue
        widgets.append(Widget(prefix + name, _default(kind, options), bool(options.get("dynamicPrompts"))))
        if options.get("control_after_generate") or (kind == "INT" and name in SEED_NAMES):
            widgets.append(Widget(None))
        upload = upload or (kind == "COMBO" and name in required and any(options.get(f) for f in UPLOAD_FLAGS))
    if upload:
        widgets.append(Widget(None))  # the upload button: the frontend adds it after every input
    return widgets


def _option_inputs(option: Mapping[str, Any]) -> list[tuple[str, Any]]:
    groups = option.get("inputs") or {}
    return [(name, spec) for group in ("required", "optional") for name, spec in (groups.get(group) or {}).items()]


def widgets_of(declaration: Mapping[str, Any]) -> list[Widget]:
    """The node's widget positions, as the frontend lays them out (dynamic combos with no option chosen)."""
    return _widgets(ordered_inputs(declaration), "", set((declaration.get("input") or {}).get("required") or {}))


def widget_values(declaration: Mapping[str, Any], stored: Any) -> dict[str, tuple[Widget, Any]]:
    """Each named widget with the value a workflow node stores for it (the declared default when it stores none).
    A dynamic combo's stored choice decides which widgets come next."""
    values: dict[str, tuple[Widget, Any]] = {}
    pending = list(widgets_of(declaration))
    index = 0
    while pending:
        widget = pending.pop(0)
        if isinstance(stored, dict):
            value = stored.get(widget.name or "", widget.default)
        elif isinstance(stored, list) and index < len(stored) and stored[index] is not None:
            value = stored[index]
        else:
            value = widget.default
        index += 1
        if widget.name is None:
            continue
        values[widget.name] = (widget, value)
        chosen = dict(widget.options).get(value) if widget.options else None
        pending[:0] = list(chosen or ())
    return values


def expand_dynamic_prompt(text: str, rng: random.Random) -> str:
    """The frontend's dynamic prompts: C comments removed, each `{a|b|…}` (nested allowed) replaced by one
    option chosen at random, `\\{`, `\\|`, `\\}` kept as literal characters."""
    text = _COMMENTS.sub("", text)
    out, _ = _expand(text, 0, rng, top=True)
    return re.sub(r"\\([{}|])", r"\1", out)


def _expand(text: str, i: int, rng: random.Random, top: bool) -> tuple[str, int]:
    """Expand from `i` up to the closing brace of the current group (or the end); returns (text, next index)."""
    options: list[str] = []
    current = ""
    while i < len(text):
        char = text[i]
        i += 1
        if char == "\\" and i <= len(text):
            current += "\\" + text[i:i + 1]
            i += 1
        elif char == "{":
            chosen, i = _expand(text, i, rng, top=False)
            current += chosen
        elif char == "}" and not top:
            break
        elif char == "|" and not top:
            options.append(current)
            current = ""
        else:
            current += char
    if top:
        return current, i
    options.append(current)
    return rng.choice(options), i
