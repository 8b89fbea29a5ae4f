"""String and text-preview nodes (ComfyUI's `nodes_string` beyond Concatenate/Replace, and PreviewAny): plain
Python string operations, no pixels."""

from __future__ import annotations

import json
import re
from typing import Any

from comfymesh.catalog.schema import Boolean, ComboV3, Int, Link, Output, String
from comfymesh.contracts.errors import NodeInputError
from comfymesh.imaging.nodes import define_v3, nodes
from comfymesh.stage.node import NodeContext

EXTRACT_MODES = ["First Match", "All Matches", "First Group", "All Groups"]


def _text(name: str) -> Any:
    return String(name, multiline=True)


def _define(name: str, display_name: str, inputs: list[Any], outputs: list[Output], **fields: Any) -> Any:
    return define_v3(name, "nodes_string", "utils/string", inputs, outputs, display_name, **fields)


@_define("StringSubstring", "Substring", [_text("string"), Int("start"), Int("end")], [Output("STRING")])
def string_substring(ctx: NodeContext, string: str, start: int, end: int) -> tuple[str]:
    """StringSubstring: string[start:end], Python's slice."""
    return (string[start:end],)


@_define("StringLength", "Length", [_text("string")], [Output("INT", "length")])
def string_length(ctx: NodeContext, string: str) -> tuple[int]:
    """StringLength: the number of characters (code points)."""
    return (len(string),)


@_define("CaseConverter", "Case Converter",
         [_text("string"), ComboV3("mode", ["UPPERCASE", "lowercase", "Capitalize", "Title Case"])],
         [Output("STRING")])
def case_converter(ctx: NodeContext, string: str, mode: str) -> tuple[str]:
    """CaseConverter: Python's upper, lower, capitalize or title."""
    convert = {"UPPERCASE": str.upper, "lowercase": str.lower, "Capitalize": str.capitalize, "Title Case": str.title}
    return (convert.get(mode, str)(string),)


@_define("StringTrim", "Trim", [_text("string"), ComboV3("mode", ["Both", "Left", "Right"])], [Output("STRING")])
def string_trim(ctx: NodeContext, string: str, mode: str) -> tuple[str]:
    """StringTrim: whitespace stripped from both ends, the left or the right."""
    trim = {"Both": str.strip, "Left": str.lstrip, "Right": str.rstrip}
    return (trim.get(mode, str)(string),)


@_define("StringContains", "Contains", [_text("string"), _text("substring"), Boolean("case_sensitive", True)],
         [Output("BOOLEAN", "contains")])
def string_contains(ctx: NodeContext, string: str, substring: str, case_sensitive: bool) -> tuple[bool]:
    """StringContains: whether substring occurs in string (both lowercased unless case-sensitive)."""
    if not case_sensitive:
        string, substring = string.lower(), substring.lower()
    return (substring in string,)


@_define("StringCompare", "Compare", [_text("string_a"), _text("string_b"),
                                      ComboV3("mode", ["Starts With", "Ends With", "Equal"]),
                                      Boolean("case_sensitive", True)], [Output("BOOLEAN")])
def string_compare(ctx: NodeContext, string_a: str, string_b: str, mode: str, case_sensitive: bool) -> tuple[bool]:
    """StringCompare: string_a starts with, ends with or equals string_b."""
    if not case_sensitive:
        string_a, string_b = string_a.lower(), string_b.lower()
    if mode == "Starts With":
        return (string_a.startswith(string_b),)
    if mode == "Ends With":
        return (string_a.endswith(string_b),)
    return (string_a == string_b,)


def _flags(case_insensitive: bool, multiline: bool, dotall: bool) -> int:
    return ((re.IGNORECASE if case_insensitive else 0) | (re.MULTILINE if multiline else 0)
            | (re.DOTALL if dotall else 0))


def _regex_options() -> list[Any]:
    return [Boolean("case_insensitive", True), Boolean("multiline", False), Boolean("dotall", False)]


@_define("RegexMatch", "Regex Match", [_text("string"), _text("regex_pattern"), *_regex_options()],
         [Output("BOOLEAN", "matches")])
def regex_match(ctx: NodeContext, string: str, regex_pattern: str, case_insensitive: bool, multiline: bool,
                dotall: bool) -> tuple[bool]:
    """RegexMatch: whether the pattern is found anywhere (an invalid pattern matches nothing, as in ComfyUI)."""
    try:
        return (re.search(regex_pattern, string, _flags(case_insensitive, multiline, dotall)) is not None,)
    except re.error:
        return (False,)


def regex_extract(string: str, pattern: str, mode: str, flags: int, group_index: int) -> str:
    """RegexExtract's text: the first match, all matches (a pattern with groups gives each match's first
    group), the first match's group, or that group of every match; several joined by newlines."""
    if mode == "First Match":
        match = re.search(pattern, string, flags)
        return match.group(0) if match else ""
    if mode == "All Matches":
        found = re.findall(pattern, string, flags)
        return "\n".join(item[0] if isinstance(item, tuple) else item for item in found)
    if mode == "First Group":
        match = re.search(pattern, string, flags)
        return (match.group(group_index) or "") if match and len(match.groups()) >= group_index else ""
    if mode == "All Groups":
        return "\n".join(match.group(group_index) or "" for match in re.finditer(pattern, string, flags)
                         if match.groups() and len(match.groups()) >= group_index)
    return ""


@_define("RegexExtract", "Regex Extract",
         [_text("string"), _text("regex_pattern"), ComboV3("mode", EXTRACT_MODES), *_regex_options(),
          Int("group_index", 1, min=0, max=100)], [Output("STRING")])
def regex_extract_node(ctx: NodeContext, string: str, regex_pattern: str, mode: str, case_insensitive: bool,
                       multiline: bool, dotall: bool, group_index: int) -> tuple[str]:
    """RegexExtract: see `regex_extract`; an invalid pattern extracts "" as in ComfyUI."""
    try:
        return (regex_extract(string, regex_pattern, mode, _flags(case_insensitive, multiline, dotall), group_index),)
    except re.error:
        return ("",)


@_define("RegexReplace", "Regex Replace",
         [_text("string"), _text("regex_pattern"), _text("replace"),
          Boolean("case_insensitive", True, section="optional"), Boolean("multiline", False, section="optional"),
          Boolean("dotall", False, section="optional",
                  tooltip="When enabled, the dot (.) character will match any character including newline "
                          "characters. When disabled, dots won't match newlines."),
          Int("count", 0, min=0, max=100, section="optional",
              tooltip="Maximum number of replacements to make. Set to 0 to replace all occurrences (default). Set "
                      "to 1 to replace only the first match, 2 for the first two matches, etc.")],
         [Output("STRING")], description="Find and replace text using regex patterns.")
def regex_replace(ctx: NodeContext, string: str, regex_pattern: str, replace: str, case_insensitive: bool = True,
                  multiline: bool = False, dotall: bool = False, count: int = 0) -> tuple[str]:
    """RegexReplace: Python's re.sub with the flags, at most `count` replacements (0: all)."""
    try:
        return (re.sub(regex_pattern, replace, string, count=count,
                       flags=_flags(case_insensitive, multiline, dotall)),)
    except re.error as exc:
        raise NodeInputError(f"Regex Replace: {exc}. Fix regex_pattern or replace.", node_id=ctx.node_id) from None


def preview_text(source: Any) -> str:
    """PreviewAny's text: a string as is, a number or boolean by str(), None as 'None', anything else as
    indented JSON, or str() where it is not JSON."""
    if isinstance(source, str):
        return source
    if isinstance(source, (int, float, bool)):
        return str(source)
    if source is None:
        return "None"
    try:
        return json.dumps(source, indent=4)
    except (TypeError, ValueError):
        return str(source)


# ComfyUI 0.8.0: "Preview as Text" in `utils`, an output node with no outputs (the text goes to the UI only)
@nodes.define("PreviewAny", category="utils", display_name="Preview as Text", output_node=True,
              python_module="comfy_extras.nodes_preview_any", inputs=[Link("source", "*", {})], outputs=[])
def preview_any(ctx: NodeContext, source: Any = None) -> tuple[()]:
    """PreviewAny: the value as text, shown on the node (ui `text`)."""
    ctx.ui = {"text": [preview_text(source)]}
    return ()
