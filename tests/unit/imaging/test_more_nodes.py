"""ResizeImageMaskNode, BatchImagesNode and LoadImageOutput: declarations equal to ComfyUI 0.8.0's, sizes and
pixels against its formulas (written out here), and the V3 dynamic inputs validated as a prompt names them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from comfymesh.catalog import Catalog
from comfymesh.contracts.errors import NodeInputError
from comfymesh.graph.limits import OutputLimits
from comfymesh.graph.planning import plan_prompt
from comfymesh.graph.validation import validate_prompt
from comfymesh.imaging.nodes import nodes
from comfymesh.imaging.resize_nodes import resize_target
from comfymesh.outputs import output_nodes
from comfymesh.stage.node import NodeContext

GOLDEN = Path(__file__).parents[2] / "golden" / "imaging_more_object_info.json"
TOLERANCE = 1 / 255
RNG = np.random.default_rng(7)


@pytest.fixture
def ctx(tmp_path: Path) -> NodeContext:
    return NodeContext(job_id="job", node_id="7", class_type="Test", home=tmp_path)


def run(ctx: NodeContext, name: str, **inputs: Any) -> tuple[Any, ...]:
    return nodes.impls[name](ctx, **inputs)


def block_mean(frames: np.ndarray, factor: int) -> np.ndarray:
    """torch's area (adaptive average pool) for an integer reduction: the mean of each factor x factor block."""
    b, h, w = frames.shape[:3]
    return frames.reshape(b, h // factor, factor, w // factor, factor, *frames.shape[3:]).mean(axis=(2, 4))


def test_object_info_equals_comfyui_080() -> None:
    golden = json.loads(GOLDEN.read_text())
    golden.pop("_about")
    assert {name: nodes.schemas[name].object_info() for name in golden} == golden


@pytest.mark.parametrize(("kind", "values", "landscape", "portrait"), [
    ("scale by multiplier", {"multiplier": 1.5}, (60, 30), (30, 60)),
    ("scale dimensions", {"width": 30, "height": 0}, (30, 15), (30, 60)),
    ("scale dimensions", {"width": 0, "height": 0}, None, None),
    ("scale longer dimension", {"longer_size": 10}, (10, 5), (5, 10)),
    # 0.8.0's branch for a portrait frame is unreachable: it becomes shorter_size square
    ("scale shorter dimension", {"shorter_size": 10}, (20, 10), (10, 10)),
    ("scale width", {"width": 10}, (10, 5), (10, 20)),
    ("scale height", {"height": 10}, (20, 10), (5, 10)),
    # int(0.001·1024²) = 1048 pixels: sqrt(1048/800) = 1.1446 -> 45.78, 22.89
    ("scale total pixels", {"megapixels": 0.001}, (46, 23), (23, 46)),
])
def test_resize_targets_follow_comfyui(kind: str, values: dict[str, Any], landscape: tuple[int, int] | None,
                                       portrait: tuple[int, int] | None) -> None:
    assert resize_target(kind, 40, 20, values) == landscape
    assert resize_target(kind, 20, 40, values) == portrait


def test_resize_scales_images_and_masks_by_comfyuis_formulas(ctx: NodeContext) -> None:
    image = RNG.random((2, 20, 40, 3), dtype=np.float32)
    (half,) = run(ctx, "ResizeImageMaskNode", input=image, resize_type="scale by multiplier", scale_method="area",
                  **{"resize_type.multiplier": 0.5})
    assert half.shape == (2, 10, 20, 3)
    assert np.abs(half - block_mean(image, 2)).max() <= TOLERANCE
    mask = RNG.random((1, 20, 40), dtype=np.float32)
    (small,) = run(ctx, "ResizeImageMaskNode", input=mask, resize_type="scale longer dimension",
                   scale_method="area", **{"resize_type.longer_size": 10})
    assert small.shape == (1, 5, 10)  # a mask stays a mask
    assert np.abs(small - block_mean(mask, 4)).max() <= TOLERANCE
    (twice,) = run(ctx, "ResizeImageMaskNode", input=image[:1], resize_type="scale width",
                   scale_method="nearest-exact", **{"resize_type.width": 80})
    assert np.abs(twice - image[:1].repeat(2, axis=1).repeat(2, axis=2)).max() <= TOLERANCE
    (same,) = run(ctx, "ResizeImageMaskNode", input=image, resize_type="scale dimensions", scale_method="area",
                  **{"resize_type.width": 0, "resize_type.height": 0, "resize_type.crop": "center"})
    assert np.array_equal(same, image)


def test_match_size_crops_the_centre_when_asked(ctx: NodeContext) -> None:
    # thirds of a 30x10 image at 0, 0.5 and 1: a centre crop to the square 10x10 keeps the middle third
    image = np.repeat(np.repeat(np.array([0.0, 0.5, 1.0], np.float32), 10)[None, None, :, None], 10, 1)
    image = np.repeat(image, 3, axis=3)
    match = np.zeros((1, 5, 5), np.float32)
    (cropped,) = run(ctx, "ResizeImageMaskNode", input=image, resize_type="match size", scale_method="area",
                     **{"resize_type.match": match, "resize_type.crop": "center"})
    assert cropped.shape == (1, 5, 5, 3) and np.abs(cropped - 0.5).max() <= TOLERANCE
    (squeezed,) = run(ctx, "ResizeImageMaskNode", input=image, resize_type="match size", scale_method="area",
                      **{"resize_type.match": match, "resize_type.crop": "disabled"})
    assert squeezed.shape == (1, 5, 5, 3)  # squeezed whole: the outer thirds stay at the edges
    assert np.abs(squeezed[0, :, 0] - 0.0).max() <= TOLERANCE and np.abs(squeezed[0, :, -1] - 1.0).max() <= TOLERANCE
    ctx.limits = OutputLimits(max_pixels=100, max_batch=4)
    with pytest.raises(NodeInputError, match="bigger than max"):
        run(ctx, "ResizeImageMaskNode", input=image, resize_type="scale by multiplier", scale_method="area",
            **{"resize_type.multiplier": 2.0})


def test_batch_images_pads_alpha_and_resizes_to_the_first(ctx: NodeContext) -> None:
    first = np.full((1, 4, 4, 3), 0.25, np.float32)
    second = np.full((2, 8, 8, 4), 0.75, np.float32)
    # slots in the prompt's order image0, image1 whatever order they arrive in
    (batch,) = run(ctx, "BatchImagesNode", **{"images.image1": second, "images.image0": first})
    assert batch.shape == (3, 4, 4, 4)
    assert (batch[0, ..., :3] == 0.25).all() and (batch[0, ..., 3] == 1.0).all()  # alpha 1.0 added
    assert np.abs(batch[1:] - 0.75).max() <= TOLERANCE  # bilinear with a centre crop, to 4x4
    (same,) = run(ctx, "BatchImagesNode", **{"images.image0": first, "images.image1": first[:, :, :, :3]})
    assert same.shape == (2, 4, 4, 3) and (same == 0.25).all()


def test_load_image_output_reads_the_output_folder(ctx: NodeContext) -> None:
    (ctx.home / "output").mkdir()
    pixels = RNG.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(ctx.home / "output" / "ComfyUI_00001_.png")
    image, mask = run(ctx, "LoadImageOutput", image="ComfyUI_00001_.png [output]")
    assert image.shape == (1, 6, 5, 3) and np.abs(image[0] - pixels / 255).max() <= TOLERANCE
    assert mask.shape == (1, 64, 64) and not mask.any()
    with pytest.raises(NodeInputError, match="Invalid image file"):
        run(ctx, "LoadImageOutput", image="missing.png [output]")


def test_dynamic_inputs_are_validated_and_planned_as_the_prompt_names_them(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path, nodes.object_info() | output_nodes.object_info())
    base = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}}}

    def check(node: dict[str, Any]) -> dict[str, Any]:
        result = validate_prompt({**base, "2": node}, catalog)
        assert result.ok == (not result.node_errors), result.error
        return result.node_errors

    resize = {"class_type": "ResizeImageMaskNode",
              "inputs": {"input": ["1", 0], "resize_type": "scale dimensions", "scale_method": "area",
                         "resize_type.width": 16, "resize_type.height": 0, "resize_type.crop": "center"}}
    assert check(resize) == {}
    plan = plan_prompt(validate_prompt({**base, "2": resize}, catalog).prompt, ["3"], catalog)
    assert plan.nodes["2"].literals["resize_type.width"] == 16  # the option's inputs reach the stage

    def errors(node: dict[str, Any]) -> list[tuple[str, str]]:
        return [(e["type"], e["extra_info"].get("input_name", "")) for e in check(node)["2"]["errors"]]

    too_big = json.loads(json.dumps(resize))
    too_big["inputs"]["resize_type.width"] = 99999
    assert errors(too_big) == [("value_bigger_than_max", "resize_type.width")]
    bad_crop = json.loads(json.dumps(resize))
    bad_crop["inputs"]["resize_type.crop"] = "sideways"
    assert errors(bad_crop) == [("value_not_in_list", "resize_type.crop")]
    missing = json.loads(json.dumps(resize))
    del missing["inputs"]["resize_type.height"]
    assert errors(missing) == [("required_input_missing", "resize_type.height")]
    unknown = json.loads(json.dumps(resize))
    unknown["inputs"]["resize_type"] = "scale sideways"
    assert errors(unknown) == [("value_not_in_list", "resize_type")]

    batch = {"class_type": "BatchImagesNode", "inputs": {"images.image0": ["1", 0], "images.image1": ["1", 0]}}
    assert check(batch) == {}
    wrong = {"class_type": "BatchImagesNode", "inputs": {"images.image0": ["1", 0], "images.image1": "x.png"}}
    assert errors(wrong) == [("bad_linked_input", "images.image1")]


def test_a_v3_combo_of_files_is_served_and_checked_in_comfyuis_v3_form(tmp_path: Path) -> None:
    from comfymesh.catalog.schema import ComboV3, NodeSet, Source

    extra = NodeSet("imaging")

    @extra.define("TestV3Loader", category="testing", inputs=[ComboV3("name", Source("models/upscale_models"))],
                  output_node=True)
    def loader(ctx: Any, name: str) -> tuple[()]:
        return ()

    (tmp_path / "models" / "upscale_models").mkdir(parents=True)
    (tmp_path / "models" / "upscale_models" / "x2.pth").write_bytes(b"x")
    catalog = Catalog(tmp_path, extra.object_info())
    served = catalog.object_info("TestV3Loader")["TestV3Loader"]["input"]["required"]["name"]
    assert served == ["COMBO", {"multiselect": False, "options": ["x2.pth"]}]
    assert catalog.choices("TestV3Loader", "name") == ["x2.pth"]
    assert validate_prompt({"1": {"class_type": "TestV3Loader", "inputs": {"name": "x2.pth"}}}, catalog).ok
    refused = validate_prompt({"1": {"class_type": "TestV3Loader", "inputs": {"name": "x4.pth"}}}, catalog)
    (error,) = refused.node_errors["1"]["errors"]
    assert error["type"] == "value_not_in_list"
    assert error["extra_info"]["input_config"] == [["x2.pth"], {"multiselect": False, "options": ["x2.pth"]}]
