"""ComfyUI API-format prompts: validate against the catalog, plan what to run, group it by stage."""

from comfymesh.graph.grouping import StageGroup, plan_groups
from comfymesh.graph.planning import Plan, PlannedNode, plan_prompt, sign_plan
from comfymesh.graph.validation import ValidationResult, validate_prompt

__all__ = ["Plan", "PlannedNode", "StageGroup", "ValidationResult", "plan_groups", "plan_prompt",
           "sign_plan", "validate_prompt"]
