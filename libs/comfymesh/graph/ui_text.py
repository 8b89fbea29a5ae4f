"""The frontend's text replacement in save nodes' `filename_prefix`, done when a UI workflow becomes a prompt:
`%date:yyyy-MM-dd%` (local time; tokens yyyy, yy, M/MM, d/dd, h/hh, m/mm, s/ss) and `%Node.widget%` (the widget's
value on the first node whose "Node name for S&R" property, else title, is `Node`; path characters become `_`).
Other `%…%` patterns are left for the server (`%width%`, `%year%`, ...)."""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable
from typing import Any

# the nodes whose filename_prefix the frontend rewrites (1.58.1's list)
SAVE_NODES = frozenset({
    "SaveImage", "SaveImageAdvanced", "SaveSVGNode", "SaveVideo", "SaveAnimatedWEBP", "SaveWEBM", "SaveAudio",
    "SaveAudioMP3", "SaveAudioOpus", "SaveAudioAdvanced", "SaveGLB", "Save3DAdvanced", "SaveGaussianSplat",
    "SavePointCloud", "SaveAnimatedPNG", "CLIPSave", "VAESave", "ModelSave", "LoraSave", "SaveLatent"})
_PATTERN = re.compile(r"%([^%]+)%")
_DATE_TOKEN = re.compile(r"yyy?y?|dd?|MM?|hh?|mm?|ss?")
_UNSAFE = re.compile(r'[/?<>\\:*|"\x00-\x1f\x7f]')
_PARTS: dict[str, Callable[[datetime.datetime], int]] = {
    "d": lambda t: t.day, "M": lambda t: t.month, "h": lambda t: t.hour, "m": lambda t: t.minute,
    "s": lambda t: t.second}

WidgetLookup = Callable[[str, str], tuple[bool, Any]]  # (node name, widget) → (found, value)


def format_date(pattern: str, now: datetime.datetime) -> str:
    def token(match: re.Match[str]) -> str:
        text = match.group(0)
        if text == "yy":
            return str(now.year)[2:]
        if text == "yyyy":
            return str(now.year)
        part = _PARTS.get(text[0])
        return str(part(now)).zfill(len(text)) if part else text

    return _DATE_TOKEN.sub(token, pattern)


def replace_text(value: str, lookup: WidgetLookup, now: datetime.datetime | None = None) -> str:
    """`value` with its date and node-widget patterns replaced."""
    moment = now or datetime.datetime.now()

    def one(match: re.Match[str]) -> str:
        parts = match.group(1).split(".")
        if len(parts) != 2:
            return format_date(parts[0][5:], moment) if parts[0].startswith("date:") else match.group(0)
        found, widget_value = lookup(parts[0], parts[1])
        if not found:
            return match.group(0)
        text = "" if widget_value is None else _js_string(widget_value)
        return _UNSAFE.sub("_", text)

    return _PATTERN.sub(one, value)


def _js_string(value: Any) -> str:
    """How JavaScript writes a widget value into a string (true, 1.5, 512)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
