"""A registered workflow in API format: as given, or converted from the UI format the frontend saves (the
conversion the frontend's Run button makes, `comfymesh.graph.ui_workflow`); node ids stay the UI's."""

from __future__ import annotations

from typing import Any

from comfymesh.graph.ui_workflow import UIWorkflowError, is_ui_workflow, ui_to_api


class ConversionError(ValueError):
    """A workflow in neither format, or a UI workflow that cannot be converted; the message says why."""


def api_format(workflow: dict[str, Any], object_info: dict[str, Any]) -> dict[str, Any]:
    if is_ui_workflow(workflow):
        try:
            return ui_to_api(workflow, object_info)
        except UIWorkflowError as exc:
            raise ConversionError(f"the UI workflow cannot be converted: {exc}") from None
    if not workflow or not all(isinstance(node, dict) and isinstance(node.get("class_type"), str)
                               and isinstance(node.get("inputs", {}), dict) for node in workflow.values()):
        raise ConversionError("neither an API-format workflow ({node_id: {class_type, inputs}}) nor the UI "
                              "format ({nodes, links})")
    return workflow
