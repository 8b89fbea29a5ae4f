"""SaveImage/PreviewImage: ComfyUI's names, counter, pixels, metadata; idempotent and safe to share."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import zlib
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfymesh.contracts.errors import NodeInputError
from comfymesh.outputs import (
    OutputIdentity,
    frames_uint8,
    next_counter,
    preview_image,
    save_image,
    to_uint8,
    write_pngs,
)
from comfymesh.stage.node import NodeContext

REPO = Path(__file__).resolve().parents[2]
PROMPT = {"3": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}}}
WORKFLOW = {"nodes": [{"id": 3, "title": "Sauvegarde é"}], "links": []}


def _ctx(home: Path, node_id: str = "9", attempt_key: str = "a1") -> NodeContext:
    return NodeContext(job_id="job-1", node_id=node_id, class_type="SaveImage", home=home, prompt=PROMPT,
                       extra_pnginfo={"workflow": WORKFLOW, "extra": [1, 2]}, attempt_key=attempt_key)


def _image(batch: int = 1, height: int = 4, width: int = 6) -> np.ndarray:
    rng = np.random.default_rng(batch * 100 + height)
    return rng.random((batch, height, width, 3), dtype=np.float32)


def _chunks(path: Path) -> list[tuple[bytes, bytes]]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset:offset + 4])
        chunks.append((data[offset + 4:offset + 8], data[offset + 8:offset + 8 + length]))
        offset += 12 + length
    return chunks


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_save_image_names_and_ui(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    assert save_image(ctx, _image(batch=2)) == ()
    assert ctx.ui == {"images": [
        {"filename": "ComfyUI_00001_.png", "subfolder": "", "type": "output"},
        {"filename": "ComfyUI_00002_.png", "subfolder": "", "type": "output"},
    ]}
    assert _files(tmp_path / "output") == ["ComfyUI_00001_.png", "ComfyUI_00002_.png"]


def test_counter_follows_highest_existing_for_that_prefix_only(tmp_path: Path) -> None:
    folder = tmp_path / "output"
    folder.mkdir()
    for name in ["ComfyUI_00007_.png", "ComfyUI_00003_.png", "ComfyUI_foo_00099_.png",
                 "comfyui_00050_.png", "ComfyUI_00060.png", "ComfyUIx_00070_.png", "other_00080_.png"]:
        (folder / name).write_bytes(b"")
    assert next_counter(folder, "ComfyUI") == 8
    assert next_counter(folder, "ComfyUI_foo") == 100
    assert next_counter(folder, "fresh") == 1
    saved = write_pngs(_image(), tmp_path, "ComfyUI")
    assert [s.filename for s in saved] == ["ComfyUI_00008_.png"]


def test_subfolder_and_tokens(tmp_path: Path) -> None:
    now = datetime(2026, 3, 4, 5, 6, 7)
    prefix = "runs/%year%/%month%-%day%_%hour%%minute%%second%_%width%x%height%_b%batch_num%"
    saved = write_pngs(_image(batch=2, height=4, width=6), tmp_path, prefix, now=now)
    assert [(s.subfolder, s.filename) for s in saved] == [
        ("runs/2026", "03-04_050607_6x4_b0_00001_.png"),
        ("runs/2026", "03-04_050607_6x4_b1_00002_.png"),
    ]
    assert (tmp_path / "output/runs/2026/03-04_050607_6x4_b1_00002_.png").is_file()
    # Unlike ComfyUI (which restarts at 1 and overwrites), a %batch_num% prefix keeps counting.
    again = write_pngs(_image(), tmp_path, "runs/%year%/x_b%batch_num%", now=now)
    assert again[0].filename == "x_b0_00001_.png"
    again = write_pngs(_image(), tmp_path, "runs/%year%/x_b%batch_num%", now=now)
    assert again[0].filename == "x_b0_00002_.png"


@pytest.mark.parametrize("prefix", ["../evil", "/tmp/evil", "a/../../evil", "a/b/../../../evil", "", "."])
def test_prefix_leaving_the_output_folder_is_refused(tmp_path: Path, prefix: str) -> None:
    ctx = _ctx(tmp_path)
    with pytest.raises(NodeInputError) as err:
        save_image(ctx, _image(), filename_prefix=prefix)
    assert err.value.node_id == "9"
    assert not list(tmp_path.parent.glob("evil_*")) and not Path("/tmp/evil_00001_.png").exists()
    assert not (tmp_path / "output").exists() or _files(tmp_path / "output") == []


def test_prefix_that_climbs_but_stays_inside_is_allowed(tmp_path: Path) -> None:
    saved = write_pngs(_image(), tmp_path, "a/../b/x")
    assert (saved[0].subfolder, saved[0].filename) == ("b", "x_00001_.png")


def test_pixels_are_truncated_not_rounded(tmp_path: Path) -> None:
    values = np.array([0.0, 0.5, 0.999, 1.0, 1.5, -0.2, 0.0039, 100 / 255], dtype=np.float32)
    image = np.repeat(values[None, :, None], 3, axis=2)[None]
    saved = write_pngs(image, tmp_path, "t")
    pixels = np.asarray(Image.open(tmp_path / "output" / saved[0].filename))
    # 127.5 -> 127, 254.745 -> 254, 0.99 -> 0; 100/255 in float32 times 255 lands just under or at 100.
    expected = np.clip(np.float32(255.0) * values, 0, 255).astype(np.uint8)
    assert pixels[0, :, 0].tolist() == expected.tolist()
    assert expected[:7].tolist() == [0, 127, 254, 255, 255, 0, 0]


def test_torch_images_convert_on_their_device_to_the_same_bytes() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    batch = rng.normal(0.5, 0.6, (2, 33, 17, 3)).astype(np.float32)  # out of range on both sides
    batch[0, 0, :4, 0] = [np.nan, np.inf, -np.inf, 100 / 255]
    expected = [to_uint8(frame) for frame in batch]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for images in (torch.from_numpy(batch).to(device), torch.from_numpy(batch[1]).to(device)):
            frames = frames_uint8(images)
            wanted = expected if images.ndim == 4 else expected[1:]
            assert [f.dtype for f in frames] == [np.uint8] * len(wanted)
            assert all(np.array_equal(f, e) for f, e in zip(frames, wanted, strict=True)), device
    assert frames_uint8(batch[:0]) == []


def test_text_chunks_prompt_then_extra_pnginfo_in_order(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    save_image(ctx, _image())
    chunks = _chunks(tmp_path / "output" / "ComfyUI_00001_.png")
    texts = [body.split(b"\0", 1) for kind, body in chunks if kind == b"tEXt"]
    assert [key for key, _ in texts] == [b"prompt", b"workflow", b"extra"]
    assert texts[0][1].decode("latin-1") == json.dumps(PROMPT)
    assert texts[1][1] == b'{"nodes": [{"id": 3, "title": "Sauvegarde \\u00e9"}], "links": []}'
    assert texts[2][1] == b"[1, 2]"
    kinds = [kind for kind, _ in chunks]
    assert kinds.index(b"tEXt") < kinds.index(b"IDAT")  # tools read metadata before the pixels


def _zlib_level_flag(path: Path) -> int:
    idat = b"".join(body for kind, body in _chunks(path) if kind == b"IDAT")
    zlib.decompress(idat)
    return idat[1] >> 6  # FLEVEL: 0 for level 1, 1 for levels 2-5, 2 for 6, 3 for 7-9


def test_compress_levels_and_preview_naming(tmp_path: Path) -> None:
    save_ctx, preview_ctx = _ctx(tmp_path, "1"), _ctx(tmp_path, "2")
    save_image(save_ctx, _image())
    preview_image(preview_ctx, _image(batch=2))
    assert _zlib_level_flag(tmp_path / "output" / "ComfyUI_00001_.png") == 1
    assert preview_ctx.ui is not None
    first, second = preview_ctx.ui["images"]
    assert re.fullmatch(r"ComfyUI_temp_[a-vx-z]{5}_00001_\.png", first["filename"])
    assert second["filename"] == first["filename"].replace("00001", "00002")
    assert (first["subfolder"], first["type"]) == ("", "temp")
    assert _zlib_level_flag(tmp_path / "temp" / first["filename"]) == 0
    texts = [body.split(b"\0")[0] for kind, body in _chunks(tmp_path / "temp" / first["filename"])
             if kind == b"tEXt"]
    assert texts == [b"prompt", b"workflow", b"extra"]


def test_no_metadata_without_prompt(tmp_path: Path) -> None:
    saved = write_pngs(_image(), tmp_path, "plain")
    assert not [kind for kind, _ in _chunks(tmp_path / "output" / saved[0].filename) if kind == b"tEXt"]


def test_retry_of_the_same_job_and_node_writes_nothing_new(tmp_path: Path) -> None:
    first = _ctx(tmp_path, attempt_key="attempt-1")
    save_image(first, _image(batch=2))
    retry = _ctx(tmp_path, attempt_key="attempt-2")
    save_image(retry, _image(batch=2, height=5))  # a retry may even bring different pixels
    assert retry.ui == first.ui
    assert _files(tmp_path / "output") == ["ComfyUI_00001_.png", "ComfyUI_00002_.png"]

    other_node = _ctx(tmp_path, node_id="10")
    save_image(other_node, _image())
    assert other_node.ui is not None
    assert other_node.ui["images"] == [{"filename": "ComfyUI_00003_.png", "subfolder": "", "type": "output"}]

    preview, preview_retry = _ctx(tmp_path, "11", "x"), _ctx(tmp_path, "11", "y")
    preview_image(preview, _image())
    preview_image(preview_retry, _image())
    assert preview_retry.ui == preview.ui
    assert len(_files(tmp_path / "temp")) == 1


def test_retry_rewrites_when_recorded_files_are_gone(tmp_path: Path) -> None:
    save_image(_ctx(tmp_path), _image())
    (tmp_path / "output" / "ComfyUI_00001_.png").unlink()
    retry = _ctx(tmp_path, attempt_key="a2")
    save_image(retry, _image())
    assert retry.ui == {"images": [{"filename": "ComfyUI_00001_.png", "subfolder": "", "type": "output"}]}
    assert _files(tmp_path / "output") == ["ComfyUI_00001_.png"]


def test_accepts_torch_tensors_and_single_frames(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    saved = write_pngs(torch.from_numpy(_image(batch=2)), tmp_path, "torch")
    assert len(saved) == 2
    saved = write_pngs(_image()[0], tmp_path, "single")
    assert Image.open(tmp_path / "output" / saved[0].filename).size == (6, 4)


_WRITER = """
import sys
from pathlib import Path
import numpy as np
from comfymesh.outputs import write_pngs
home, rounds = Path(sys.argv[1]), int(sys.argv[2])
for _ in range(rounds):
    write_pngs(np.zeros((2, 8, 8, 3), np.float32), home, "shared/run")
"""


def test_concurrent_writers_never_share_a_name(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "libs"), str(REPO / "services")])}
    command = [sys.executable, "-c", _WRITER, str(tmp_path), "6"]
    writers = [subprocess.Popen(command, env=env) for _ in range(4)]
    assert all(writer.wait(timeout=60) == 0 for writer in writers)
    names = _files(tmp_path / "output" / "shared")
    assert names == [f"run_{n:05}_.png" for n in range(1, 4 * 6 * 2 + 1)]


def test_identity_without_job_id_is_not_tracked(tmp_path: Path) -> None:
    anonymous = OutputIdentity(job_id="", node_id="3")
    write_pngs(_image(), tmp_path, "x", identity=anonymous)
    write_pngs(_image(), tmp_path, "x", identity=anonymous)
    assert _files(tmp_path / "output") == ["x_00001_.png", "x_00002_.png"]


def test_attempt_killed_between_files_is_finished_under_the_same_names(tmp_path: Path) -> None:
    identity = OutputIdentity("job-crash", "9")
    first = write_pngs(_image(batch=3), tmp_path, "crash", identity=identity)
    # as if the process died after the receipt and the first file: the other two never landed
    for image in first[1:]:
        (tmp_path / "output" / image.filename).unlink()
    retried = write_pngs(_image(batch=3), tmp_path, "crash", identity=identity)
    assert retried == first
    assert _files(tmp_path / "output") == sorted(image.filename for image in first)


def test_remembered_counter_never_overwrites_a_file_written_meanwhile(tmp_path: Path) -> None:
    first = write_pngs(_image(), tmp_path, "busy")
    assert first[0].filename == "busy_00001_.png"
    # another stage replica (or a user) takes the next names behind this process's back
    for n in (2, 3):
        (tmp_path / "output" / f"busy_{n:05}_.png").write_bytes(b"theirs")
    second = write_pngs(_image(), tmp_path, "busy")
    assert second[0].filename == "busy_00004_.png"
    assert (tmp_path / "output" / "busy_00002_.png").read_bytes() == b"theirs"
