"""Each saved workflow's own entry in the OpenAPI document: `POST /v1/workflows/<name>/run` with a request
schema generated from its declared inputs, and an example body; made on each request for the document, so a
workflow saved a moment ago is in it."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from comfymesh.gateway.workflows.declaration import PublicInput, model_name, run_model

_REF = "#/components/schemas/"
GENERIC_RUN = "/v1/workflows/{name}/run"


def with_saved_workflows(doc: dict[str, Any], records: list[dict[str, Any]],
                         example: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    """A copy of `doc` with one run operation per saved workflow (`records`)."""
    doc = copy.deepcopy(doc)
    generic = doc.get("paths", {}).get(GENERIC_RUN, {}).get("post")
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    if generic is None or "RunRequest" not in schemas:
        return doc
    for record in records:
        name = record["name"]
        inputs = [PublicInput.from_json(item) for item in record.get("inputs", [])]
        schema = run_model(name, inputs).model_json_schema(ref_template=_REF + "{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model_name(name)] = schema
        body = copy.deepcopy(schemas["RunRequest"])
        body["title"] = f"Run_{model_name(name).removeprefix('RunInputs_')}"
        body["properties"]["inputs"] = {"$ref": _REF + model_name(name)}
        schemas[body["title"]] = body
        operation = {key: copy.deepcopy(value) for key, value in generic.items() if key != "parameters"}
        operation.update(operationId=f"run_saved_workflow_{name.replace('-', '_')}", summary=f"Run {name!r}",
                         description=record.get("description") or f"Run the saved workflow {name!r}.",
                         tags=["saved workflows: runs"])
        operation["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": {"$ref": _REF + body["title"]}, "examples": {"defaults": {"summary": "Every input at its "
                                                                              "default", "value": example(record)}}}}}
        doc["paths"][f"/v1/workflows/{name}/run"] = {"post": operation}
    return doc
