"""The request for one stage call: a group's nodes still to run, their literals and links, and the stored
outputs of other groups they read (bound inputs)."""

from __future__ import annotations

from comfymesh.contracts import wirejson
from comfymesh.graph import Plan, StageGroup
from comfymesh.jobs import JobRecord
from comfymesh.orchestrator.node_cache import Outputs
from comfymesh.orchestrator.planning import exports
from comfymesh.v1 import stage_pb2


def stage_request(job: JobRecord, plan: Plan, group: StageGroup, values: Outputs, attempt: int, *,
                  previews: bool, user: str) -> stage_pb2.StageRequest:
    """The group's request; nodes whose outputs are already stored (an earlier attempt's) are left out."""
    remaining = [n for n in group.node_ids if n not in values]
    request = stage_pb2.StageRequest(
        job_id=job.id, group_id=group.group_id, attempt=attempt,
        prompt_json=wirejson.dumps(job.submitted),
        extra_pnginfo_json=wirejson.dumps(job.extra_data.get("extra_pnginfo") or {}),
        export_node_ids=exports(plan, group, remaining), previews=previews, user=user)
    for node_id in remaining:
        node = plan.nodes[node_id]
        call = request.nodes.add(node_id=node_id, class_type=node.class_type,
                                 literal_inputs_json=wirejson.dumps(node.literals), is_output=node.is_output)
        for name, (source, slot) in node.links.items():
            call.links[name].node_id = source
            call.links[name].slot = slot
            if source not in remaining:
                request.bound_inputs[f"{source}:{slot}"].CopyFrom(values[source][slot])
    return request
