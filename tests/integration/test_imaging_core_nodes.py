"""Core primitive, string and mask nodes through the imaging mesh: primitives linked into widget inputs
(as ComfyUI's frontend links them), a mask chain ending in SaveImage, and MaskPreview's temp image."""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image

from tests.mesh import REPO, Mesh

GOLDEN = REPO / "tests" / "golden" / "imaging_core_object_info.json"


def test_object_info_serves_comfyui_080_entries(imaging_mesh: Mesh) -> None:
    golden = json.loads(GOLDEN.read_text())
    golden.pop("_about")
    golden["LoadImageMask"]["input"]["required"]["image"][0] = ["coffee.png", "example.png"]
    served = imaging_mesh.http.get("/object_info").json()
    assert {name: served[name] for name in golden} == golden


def test_primitives_feed_widgets_and_a_mask_chain_is_saved(imaging_mesh: Mesh) -> None:
    prompt = {
        "1": {"class_type": "PrimitiveInt", "inputs": {"value": 24}},
        "2": {"class_type": "PrimitiveString", "inputs": {"value": "mask"}},
        "3": {"class_type": "StringConcatenate", "inputs": {"string_a": ["2", 0], "string_b": "chain",
                                                             "delimiter": "_"}},
        # the widget inputs width (INT) and filename_prefix (STRING) are links here
        "4": {"class_type": "EmptyImage", "inputs": {"width": ["1", 0], "height": 16, "batch_size": 1,
                                                      "color": 0xFFFFFF}},
        "5": {"class_type": "ImageToMask", "inputs": {"image": ["4", 0], "channel": "red"}},
        "6": {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 8, "height": 16}},
        "7": {"class_type": "MaskComposite", "inputs": {"destination": ["5", 0], "source": ["6", 0], "x": 0, "y": 0,
                                                         "operation": "multiply"}},
        "8": {"class_type": "GrowMask", "inputs": {"mask": ["7", 0], "expand": -2, "tapered_corners": True}},
        "9": {"class_type": "InvertMask", "inputs": {"mask": ["8", 0]}},
        "10": {"class_type": "MaskToImage", "inputs": {"mask": ["9", 0]}},
        "11": {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": ["3", 0]}},
        "12": {"class_type": "MaskPreview", "inputs": {"mask": ["8", 0]}},
    }
    reply = imaging_mesh.http.post("/prompt", json={"prompt": prompt})
    assert reply.status_code == 200, reply.text
    prompt_id = reply.json()["prompt_id"]
    job = imaging_mesh.wait(prompt_id)
    assert job["status"] == "completed", job["error"]

    history = imaging_mesh.http.get(f"/history/{prompt_id}").json()[prompt_id]["outputs"]
    (saved,) = history["11"]["images"]
    assert saved["filename"].startswith("mask_chain_") and saved["type"] == "output"
    (preview,) = history["12"]["images"]
    assert preview["type"] == "temp"

    png = imaging_mesh.http.get("/view", params={"filename": saved["filename"], "type": "output"}).content
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    # 24 wide from the primitive; the left 8 columns masked off, then eroded 2 more (edges reflect)
    assert pixels.shape == (16, 24)
    assert (pixels[:, :10] == 255).all() and (pixels[:, 10:] == 0).all()


def test_utility_nodes_size_stitch_canny_and_preview_text(imaging_mesh: Mesh) -> None:
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "coffee.png"}},  # 600x400
        "2": {"class_type": "ImageScaleToTotalPixels", "inputs": {"image": ["1", 0], "upscale_method": "area",
                                                                   "megapixels": 0.06, "resolution_steps": 8}},
        "3": {"class_type": "Canny", "inputs": {"image": ["2", 0], "low_threshold": 0.4, "high_threshold": 0.8}},
        "4": {"class_type": "ImageStitch", "inputs": {"image1": ["2", 0], "image2": ["3", 0], "direction": "right",
                                                       "match_image_size": True, "spacing_width": 0,
                                                       "spacing_color": "white"}},
        "5": {"class_type": "GetImageSize", "inputs": {"image": ["4", 0]}},
        "6": {"class_type": "StringLength", "inputs": {"string": "a cat"}},
        "7": {"class_type": "PreviewAny", "inputs": {"source": ["5", 0]}},
        "8": {"class_type": "RegexReplace", "inputs": {"string": "size WxH", "regex_pattern": "W",
                                                        "replace": "wide", "case_insensitive": False}},
        "9": {"class_type": "PreviewAny", "inputs": {"source": ["8", 0]}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "stitched"}},
    }
    reply = imaging_mesh.http.post("/prompt", json={"prompt": prompt})
    assert reply.status_code == 200, reply.text
    prompt_id = reply.json()["prompt_id"]
    job = imaging_mesh.wait(prompt_id)
    assert job["status"] == "completed", job["error"]

    outputs = imaging_mesh.http.get(f"/history/{prompt_id}").json()[prompt_id]["outputs"]
    # sqrt(0.06·1024² / 240000) = 0.5131: 307.9 -> 304, 205.2 -> 208 in steps of 8; stitched twice as wide
    assert outputs["7"]["text"] == ["608"]
    assert outputs["9"]["text"] == ["size widexH"]
    (saved,) = outputs["10"]["images"]
    png = imaging_mesh.http.get("/view", params={"filename": saved["filename"], "type": "output"}).content
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert pixels.shape == (208, 608, 3)
    edges = pixels[:, 304:]
    assert set(np.unique(edges)) == {0, 255} and 500 < (edges[..., 0] == 255).sum() < 0.25 * edges[..., 0].size
