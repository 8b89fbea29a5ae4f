"""A registered workflow in API format: as given, or converted from the UI format the frontend saves."""

from __future__ import annotations

from typing import Any


class ConversionError(ValueError):
    """A workflow in neither format, or a UI workflow that cannot be converted; the message says why."""


def is_ui_format(workflow: dict[str, Any]) -> bool:
    return isinstance(workflow.get("nodes"), list) and isinstance(workflow.get("links"), list)


def api_format(workflow: dict[str, Any], object_info: dict[str, Any]) -> dict[str, Any]:
    if not is_ui_format(workflow):
        if not workflow or not all(isinstance(node, dict) and "class_type" in node for node in workflow.values()):
            raise ConversionError("not an API-format workflow ({node_id: {class_type, inputs}}) nor the UI format "
                                  "({nodes, links})")
        return workflow
    raise ConversionError("UI-format workflows are not converted yet: export the API format")
