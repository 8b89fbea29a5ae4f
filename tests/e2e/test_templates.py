"""Official ComfyUI templates, end to end: each one as the pinned `comfyui-workflow-templates-json` package ships
it, turned into an API prompt by the official frontend itself (`app.loadGraphData`, then `app.graphToPrompt`, in
headless chromium: subgraphs, primitive widgets and links resolved exactly as the Run button does), shrunk to a
CPU-friendly size, queued through `/prompt` and run by a real mesh with tiny random-weight checkpoints under the
file names the template asks for.

A template is listed here once every node type it uses is served and runs; `bench/template_coverage.py` counts
the rest. Models of an architecture we have no tiny form of yet stand in with the nearest one (the SDXL refiner
file is a tiny SDXL base), as `comfymesh.diffusion.models.tiny_templates` says.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from importlib import resources
from typing import Any

import pytest

from comfymesh.diffusion.models.tiny_templates import write_template_models
from tests.e2e.chromium import TO_PROMPT, chromium_page, open_app
from tests.mesh import SHARED, Mesh

TEMPLATES = "comfyui_workflow_templates_json"

# the images templates load from the input folder → the test photo copied under that name
INPUTS = {"example.png": "astronaut.png", "pray.png": "coffee.png", "angle_1.png": "astronaut.png",
          "angle_2.png": "coffee.png", "angle_3.png": "astronaut.png", "angle_4.png": "coffee.png",
          "sdxl_revision_text_prompts_ref_image1.png": "astronaut.png",
          "sdxl_revision_text_prompts_ref_image2.png": "coffee.png",
          "flux_kontext_dev_basic_input_image.jpg": "astronaut.png",
          "image_qwen_image_edit_input_image.png": "astronaut.png",
          "image_qwen_image_union_control_lora_input_image.png": "astronaut.png",
          "image_qwen_image_controlnet_patch_input_image.png": "astronaut.png",
          "image_z_image_turbo_fun_union_controlnet_input_image.png": "astronaut.png",
          "sd3.5_large_blur_input_image.png": "astronaut.png",
          "sd3.5_large_canny_controlnet_example_input_image.png": "coffee.png",
          "hidream_e1_full_input_image.jpg": "astronaut.png", "hidream_e1_1_input_image.jpg": "coffee.png",
          "robed_women.png": "astronaut.png", "pink_tone_chair.png": "coffee.png", "comfy_logo_blue.png": "coffee.png",
          "handbag_white.png": "astronaut.png", "car_interior_white.jpeg": "coffee.png",
          "bold_outfit_woman.jpeg": "astronaut.png", "image_flux2_input_image.png": "coffee.png",
          "image_flux2_input_Illustration.png": "astronaut.png", "image_flux2_input_ref_image.png": "coffee.png",
          "flux_fill_inpaint_example_input_image.png": "astronaut.png",
          "flux_fill_outpaint_example_input_image.png": "coffee.png",
          "image_flux.1_fill_dev_OneReward_input_image.png": "astronaut.png",
          # Qwen-Image Edit 2509/2511 and FireRed templates' photos
          "leather_sofa.png": "coffee.png", "texture_fur.png": "astronaut.png",
          "inflation_lora_input.png": "astronaut.png", "western_rider.png": "astronaut.png",
          "warm_living_room.png": "coffee.png", "future_portrait.png": "astronaut.png",
          "character_input.png": "astronaut.png", "comfy_billboard.png": "coffee.png",
          "robot_office_worker_in_space.png": "astronaut.png", "woman_with_sunbeam.jpg": "astronaut.png",
          "women_with_blue_orb.jpg": "coffee.png", "input_1-relight.png": "astronaut.png",
          "input_2-relight.png": "coffee.png",
          "coastal_smiling_woman.png": "astronaut.png",
          "flux_canny_model_example_input_image.png": "coffee.png",
          "flux_redux_model_example_reference_image_1.png": "astronaut.png",
          "flux_redux_model_example_reference_image_2.png": "coffee.png",
          "raccoon_rocker.png": "astronaut.png", "low_angle_shot.png": "coffee.png",
          "image_qwen_image_instantx_inpainting_controlnet_input_image.png": "astronaut.png",
          "flux1_dev_uso_reference_image_gen_input_image.png": "coffee.png"}
# template → the output nodes' class types we expect images from
RUNNABLE = {
    "image_sdxl_simple": {"SaveImage"},
    "sdxl_simple_example": {"SaveImage"},
    "sdxl_refiner_prompt_example": {"SaveImage"},
    "sdxlturbo_example": {"SaveImage"},
    "basic_mask_operations_and_compositing": {"PreviewImage"},
    "sdxl_revision_text_prompts": {"SaveImage"},
    "flux_dev_checkpoint_example": {"SaveImage"},
    "flux_dev_full_text_to_image": {"SaveImage"},
    "flux1_krea_dev": {"SaveImage"},
    "flux_schnell": {"SaveImage"},
    "flux_schnell_full_text_to_image": {"SaveImage"},
    "flux_kontext_dev_basic": {"SaveImage"},
    # FLUX.1 Fill (InpaintModelConditioning, DifferentialDiffusion; OneReward's removal LoRA, its outpaint part
    # bypassed) and Canny (InstructPixToPixConditioning; PreviewImage shows the edges)
    "flux_fill_inpaint_example": {"SaveImage"},
    "flux_fill_outpaint_example": {"SaveImage"},
    "image_flux.1_fill_dev_OneReward": {"PreviewImage"},
    "flux_canny_model_example": {"SaveImage", "PreviewImage"},
    # Redux: two reference images through the SigLIP tower and the style model, their tokens after T5's
    "flux_redux_model_example": {"SaveImage"},
    # USO: the dev fp8 checkpoint with the USO LoRA, a Kontext-style subject reference (uxo/uno); its two
    # USOStyleReference subgraphs ship bypassed (tests/integration/test_uso_mesh.py runs them)
    "flux1_dev_uso_reference_image_gen": {"SaveImage"},
    "image_chroma_text_to_image": {"SaveImage"},
    "sd3.5_simple_example": {"SaveImage"},
    # SD3.5 Large's blur and canny ControlNets (Stability's format, hint VAE-encoded); PreviewImage shows the edges
    "sd3.5_large_blur": {"SaveImage"},
    "sd3.5_large_canny_controlnet_example": {"SaveImage", "PreviewImage"},
    # Chroma Radiance: pixel space (EmptyChromaRadianceLatentImage, VAELoader's pixel_space), the x0 variant
    "image_chroma1_radiance_text_to_image": {"SaveImage"},
    "image_qwen_image": {"SaveImage"},
    "image_qwen_Image_2512": {"SaveImage"},
    "image_qwen_image_edit": {"SaveImage"},
    # the canny DiffSynth patch (ModelPatchLoader, QwenImageDiffsynthControlnet); PreviewImage shows the edges
    "image_qwen_image_controlnet_patch": {"SaveImage", "PreviewImage"},
    "image_z_image_turbo": {"SaveImage"},
    # the Z-Image Fun union ControlNet (ModelPatchLoader, QwenImageDiffsynthControlnet); PreviewImage shows the edges
    "image_z_image_turbo_fun_union_controlnet": {"SaveImage", "PreviewImage"},
    # HiDream I1 full/dev/fast and E1 (one tiny architecture under the five files' names)
    "hidream_i1_full": {"SaveImage"},
    "hidream_i1_dev": {"SaveImage"},
    "hidream_i1_fast": {"SaveImage"},
    "hidream_e1_full": {"SaveImage"},
    "hidream_e1_1": {"SaveImage"},
    # FLUX.2 Dev (Mistral 3 Small encoder with its own tokenizer) and Klein (4B and 9B, base and distilled; the 9B
    # files are the tiny 4B form under their names)
    "image_flux2": {"SaveImage"},
    "image_flux2_fp8": {"SaveImage"},
    "image_flux2_text_to_image": {"SaveImage"},
    "image_flux2_klein_text_to_image": {"SaveImage"},
    "image_flux2_text_to_image_9b": {"SaveImage"},
    "image_flux2_klein_image_edit_4b_base": {"SaveImage"},
    "image_flux2_klein_image_edit_4b_distilled": {"SaveImage"},
    "image_flux2_klein_image_edit_9b_base": {"SaveImage"},
    "image_flux2_klein_image_edit_9b_distilled": {"SaveImage"},
    # LoRA templates (tiny LoRAs under their names, tiny_lora.TEMPLATE_LORAS)
    "basic_switch_node": {"SaveImage"},
    "image_qwen_image_2512_with_2steps_lora": {"SaveImage"},
    "template_qwen_Image_2512_360_lora": {"SaveImage"},
    "template_qwen_image_illustration_lora": {"SaveImage"},
    "template_sugar_coated_gummy_style_qwen": {"SaveImage"},
    "image_qwen_image_union_control_lora": {"SaveImage"},
    # Qwen-Image Edit 2509/2511 (and FireRed, an Edit fine-tune) with their LoRAs, TextEncodeQwenImageEditPlus's
    # ~1 MP reference latents: about a minute each on CPU. The two 1_click multiple-angles templates run too but
    # sample 6-8 views (about 200 s each), so they stay out of this list.
    "image_qwen_image_edit_2511": {"SaveImage"},
    "image-qwen_image_edit_2511_lora_inflation": {"SaveImage"},
    "template_qwen_image_edit_2511_systms_action": {"SaveImage"},
    "image_qwen_image_edit_2509_relight": {"SaveImage"},
    "image_firered_image_edit1_1": {"SaveImage"},
    "templates-image_to_real": {"SaveImage"},
    "templates-portrait_light_migration": {"SaveImage"},
    "templates_rob_portrait_light_migration.app": {"SaveImage"},
    # Layered: the RGBA VAE, the image's latent as frame 0 of the layers' latent, LatentCutToBatch
    "image_qwen_image_layered": {"SaveImage"},
    "image_qwen_image_layered_control": {"SaveImage"},
    # the InstantX inpainting ControlNet (ControlNetInpaintingAliMamaApply; SetLatentNoiseMask on the 5-D latent)
    "image_qwen_image_instantx_inpainting_controlnet": {"SaveImage"},
    "utility_image_stitch": {"SaveImage"},
}

SIZE_INPUTS = {"width": 64, "height": 64, "batch_size": 1}
STEP_INPUTS = {"steps": 2, "end_at_step": 2}

def template(name: str) -> dict[str, Any]:
    return json.loads(resources.files(TEMPLATES).joinpath("templates", f"{name}.json").read_text())


def shrink(prompt: dict[str, Any]) -> dict[str, Any]:
    """What a user on a CPU does in the widgets: 64×64 latents, one image, two steps (denoise kept), input images
    scaled to at most 0.05 MP where the template scales them to a pixel count (FLUX.2's 1 MP references)."""
    for node in prompt.values():
        inputs = node["inputs"]
        for name, value in list(inputs.items()):
            if isinstance(value, list):
                continue  # a link
            if name in SIZE_INPUTS and node["class_type"].endswith("LatentImage"):
                inputs[name] = SIZE_INPUTS[name]
            elif name in STEP_INPUTS and isinstance(value, int):
                # KSamplerAdvanced pairs (start, end) keep their order within the two steps
                inputs[name] = min(value, STEP_INPUTS[name]) if name == "end_at_step" else STEP_INPUTS[name]
            elif name == "start_at_step" and isinstance(value, int):
                inputs[name] = min(value, 1)
            elif name == "megapixels" and isinstance(value, (int, float)):
                inputs[name] = min(value, 0.05)
    return prompt


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    home = tmp_path_factory.mktemp("templates-home")
    mesh = Mesh(home, stages=("imaging", "diffusion"))
    for name, photo in INPUTS.items():
        shutil.copy(SHARED / "data" / photo, home / "input" / name)
    write_template_models(home / "models", seed=3)  # what `comfymesh demo` writes: every file under its name
    try:
        yield mesh.start()
    finally:
        mesh.stop()


@pytest.fixture(scope="module")
def prompts(mesh: Mesh, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Every runnable template as the frontend turns it into an API prompt."""
    with chromium_page(tmp_path_factory.mktemp("profile")) as (page, errors):
        open_app(page, mesh)
        converted = {name: page.evaluate(TO_PROMPT, template(name)) for name in RUNNABLE}
    assert not errors, errors
    return converted


@pytest.mark.browser
@pytest.mark.parametrize("name", sorted(RUNNABLE))
def test_official_template_runs_end_to_end(name: str, mesh: Mesh, prompts: dict[str, dict[str, Any]]) -> None:
    prompt = shrink(prompts[name])
    info = mesh.http.get("/object_info").json()
    unknown = {node["class_type"] for node in prompt.values()} - set(info)
    assert not unknown, f"{name} uses node types we do not serve: {unknown}"

    reply = mesh.http.post("/prompt", json={"prompt": prompt, "client_id": "templates"})
    assert reply.status_code == 200, reply.text
    assert not reply.json().get("node_errors"), reply.json()
    job = mesh.wait(reply.json()["prompt_id"], timeout=300)
    assert job["status"] == "completed", job["error"]

    history = mesh.http.get(f"/history/{reply.json()['prompt_id']}").json()[reply.json()["prompt_id"]]
    assert history["status"]["status_str"] == "success"
    outputs = history["outputs"]
    expected = {node_id for node_id, node in prompt.items() if node["class_type"] in RUNNABLE[name]}
    assert expected and expected <= set(outputs), (expected, outputs)
    for node_id in expected:
        images = outputs[node_id]["images"]
        assert images, f"{name}: output node {node_id} made no image"
        for image in images:
            served = mesh.http.get("/view", params={"filename": image["filename"], "subfolder": image["subfolder"],
                                                    "type": image["type"]})
            assert served.status_code == 200 and served.content.startswith(b"\x89PNG"), (image, served.status_code)
