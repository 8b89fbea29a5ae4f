"""Planning and grouping: what runs, in which stage call, with which cache signature."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from comfymesh.graph import plan_groups, plan_prompt, validate_prompt
from tests.catalogs import builtin_catalog
from tests.mesh import SHARED

ACCEPT_FILES = {("LoadImage", "image"): lambda v: None, ("CheckpointLoaderSimple", "ckpt_name"): lambda v: None}


def plan_of(name: str, catalog: Any):  # type: ignore[no-untyped-def]
    prompt = json.loads((SHARED / "workflows" / f"{name}.json").read_text())
    result = validate_prompt(prompt, catalog, custom_checks=ACCEPT_FILES)
    assert result.ok, result.response()
    return plan_prompt(result.prompt, result.outputs, catalog)


def test_txt2img_is_one_diffusion_call(tmp_path: Path) -> None:
    plan = plan_of("txt2img_sd15", builtin_catalog(tmp_path))
    groups = plan_groups(plan, set(plan.nodes))
    assert [(g.stage, sorted(g.node_ids)) for g in groups] == [("diffusion", ["3", "4", "5", "6", "7", "8", "9"])]
    # SaveImage runs in the stage that produced its image
    assert plan.nodes["9"].stage == "diffusion"


def test_hires_fix_splits_by_stage_without_cycles(tmp_path: Path) -> None:
    plan = plan_of("hires_fix_branches_sd15", builtin_catalog(tmp_path))
    groups = {g.group_id: g for g in plan_groups(plan, set(plan.nodes))}
    by_stage = {g.stage: g for g in groups.values()}
    assert sorted(by_stage["imaging"].node_ids) == ["11", "12", "13"]
    assert by_stage["imaging"].depends_on == {by_stage["diffusion"].group_id}
    assert len(groups) == 2


def test_cached_nodes_become_bound_inputs(tmp_path: Path) -> None:
    plan = plan_of("txt2img_sd15", builtin_catalog(tmp_path))
    to_run = {"3", "8", "9"}  # a new seed: loader and text encodes come from cache
    groups = plan_groups(plan, to_run)
    assert [sorted(g.node_ids) for g in groups] == [["3", "8", "9"]]


def test_imaging_fan_out_runs_as_parallel_calls(tmp_path: Path) -> None:
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
        "4": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}},
    }
    catalog = builtin_catalog(tmp_path)
    result = validate_prompt(prompt, catalog)
    plan = plan_prompt(result.prompt, result.outputs, catalog)
    groups = plan_groups(plan, set(plan.nodes))
    branches = [g for g in groups if g.depends_on]
    assert len(branches) == 2 and all(len(g.node_ids) == 2 for g in branches)


def test_signature_changes_with_seed_code_and_files_only_where_they_matter(tmp_path: Path) -> None:
    catalog = builtin_catalog(tmp_path)
    prompt = json.loads((SHARED / "workflows" / "txt2img_sd15.json").read_text())
    first = plan_prompt(validate_prompt(prompt, catalog, custom_checks=ACCEPT_FILES).prompt, ["9"], catalog)
    prompt["3"]["inputs"]["seed"] = 8
    reseeded = plan_prompt(validate_prompt(prompt, catalog, custom_checks=ACCEPT_FILES).prompt, ["9"], catalog)
    assert first.nodes["6"].signature == reseeded.nodes["6"].signature  # text encode reused
    assert first.nodes["3"].signature != reseeded.nodes["3"].signature
    assert first.nodes["9"].signature != reseeded.nodes["9"].signature  # downstream follows
    new_code = plan_prompt(validate_prompt(prompt, catalog, custom_checks=ACCEPT_FILES).prompt, ["9"], catalog,
                           code_versions={"diffusion": "v2"})
    assert new_code.nodes["6"].signature != reseeded.nodes["6"].signature
    other_file = plan_prompt(validate_prompt(prompt, catalog, custom_checks=ACCEPT_FILES).prompt, ["9"], catalog,
                             fingerprint=lambda cls, lit: "digest-b" if cls == "CheckpointLoaderSimple" else "")
    assert other_file.nodes["4"].signature != reseeded.nodes["4"].signature


def test_literals_are_coerced_like_comfyui(tmp_path: Path) -> None:
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": "64", "height": 64.0, "batch_size": 1,
                                                           "color": 0}},
              "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    result = validate_prompt(prompt, builtin_catalog(tmp_path))
    assert result.ok
    assert result.prompt["1"]["inputs"]["width"] == 64 and isinstance(result.prompt["1"]["inputs"]["height"], int)


def test_combo_lists_come_from_the_data_root(tmp_path: Path) -> None:
    catalog = builtin_catalog(tmp_path)
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    (tmp_path / "models" / "checkpoints" / "b.safetensors").write_bytes(b"x")
    (tmp_path / "models" / "checkpoints" / "a.safetensors").write_bytes(b"x")
    (tmp_path / "models" / "checkpoints" / "notes.txt").write_bytes(b"x")
    info = catalog.object_info("CheckpointLoaderSimple")
    assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == ["a.safetensors", "b.safetensors"]
    assert catalog.object_info("Nope") == {}


def chain(length: int) -> dict[str, dict[str, object]]:
    """EmptyImage, then `length` ImageInverts one after another, then SaveImage."""
    prompt: dict[str, dict[str, object]] = {
        "0": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}}
    for index in range(1, length + 1):
        prompt[str(index)] = {"class_type": "ImageInvert", "inputs": {"image": [str(index - 1), 0]}}
    prompt["out"] = {"class_type": "SaveImage", "inputs": {"images": [str(length), 0], "filename_prefix": "chain"}}
    return prompt


def test_a_chain_of_thousands_of_nodes_validates_plans_and_groups(tmp_path: Path) -> None:
    # the walk was recursive: a chain of 494 nodes raised RecursionError
    catalog = builtin_catalog(tmp_path)
    result = validate_prompt(chain(3000), catalog)
    assert result.ok, result.response()
    plan = plan_prompt(result.prompt, result.outputs, catalog)
    assert len(plan.order) == 3002 and plan.order[0] == "0" and plan.order[-1] == "out"
    [group] = plan_groups(plan, set(plan.nodes))
    assert group.node_ids == plan.order


def test_errors_at_the_bottom_of_a_long_chain_reach_its_output(tmp_path: Path) -> None:
    catalog = builtin_catalog(tmp_path)
    broken = chain(3000)
    broken["0"]["inputs"] = {"width": 8, "height": 8, "batch_size": 1, "color": "red"}
    result = validate_prompt(broken, catalog)
    assert result.error is not None and result.error["type"] == "prompt_outputs_failed_validation"
    assert result.node_errors["0"]["errors"][0]["type"] == "invalid_input_type"
    assert result.node_errors["0"]["dependent_outputs"] == ["out"]
    looped = chain(3000)
    looped["1"]["inputs"] = {"image": ["2999", 0]}  # 2999 reads 2998, ..., 2 reads 1, which reads 2999
    result = validate_prompt(looped, catalog)
    assert result.error is not None
    assert [e["type"] for e in result.node_errors["2999"]["errors"]] == ["dependency_cycle"]


def test_the_resident_model_of_a_group_is_its_checkpoint_or_its_split_diffusion_model(tmp_path: Path) -> None:
    from comfymesh.orchestrator.planning import group_checkpoint

    catalog = builtin_catalog(tmp_path)
    plan = plan_of("txt2img_sd15", catalog)
    group = plan_groups(plan, set(plan.nodes))[0]
    ckpt = next(n.literals["ckpt_name"] for n in plan.nodes.values() if n.class_type == "CheckpointLoaderSimple")
    assert group_checkpoint(plan, group, {}, catalog) == ckpt

    split = {"1": {"class_type": "UNETLoader", "inputs": {"unet_name": "z.safetensors", "weight_dtype": "default"}},
             "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
             "3": {"class_type": "KSamplerAdvanced", "inputs": {
                 "model": ["1", 0], "add_noise": "enable", "noise_seed": 1, "steps": 2, "cfg": 1.0,
                 "sampler_name": "euler", "scheduler": "normal", "positive": ["4", 0], "negative": ["4", 0],
                 "latent_image": ["2", 0], "start_at_step": 0, "end_at_step": 2,
                 "return_with_leftover_noise": "disable"}},
             "4": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["5", 0]}},
             "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "x", "clip": ["6", 0]}},
             "6": {"class_type": "CLIPLoader", "inputs": {"clip_name": "c.safetensors", "type": "stable_diffusion"}},
             "7": {"class_type": "LatentUpscaleBy", "inputs": {"samples": ["3", 0], "upscale_method": "nearest-exact",
                                                              "scale_by": 1.0}}}
    plan = plan_prompt(split, ["7"], catalog)
    group = plan_groups(plan, set(plan.nodes))[0]
    assert group_checkpoint(plan, group, {}, catalog) == "z.safetensors"
