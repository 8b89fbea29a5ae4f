"""`comfymesh watch`: one job per image that appears in a folder, outputs saved, a ledger so restarts skip
what ran; partial files wait until they are whole."""

from __future__ import annotations

import hashlib
import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from tests.mesh import Mesh, sigint_default


def png_bytes(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (96, 64), color).save(buffer, format="PNG")
    return buffer.getvalue()


def ledger(out: Path) -> list[dict[str, object]]:
    path = out / ".comfymesh-watch.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def wait_for_runs(out: Path, count: int, watcher: subprocess.Popen[str]) -> list[dict[str, object]]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        runs = ledger(out)
        if len(runs) >= count:
            return runs
        assert watcher.poll() is None, watcher.communicate()[1]
        time.sleep(0.05)
    raise AssertionError(f"{count} runs expected, the ledger has {ledger(out)}")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "comfymesh.cli.main", *args]


def test_watch_runs_each_new_image_once(imaging_mesh: Mesh, tmp_path: Path) -> None:
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    (inbox / "a.png").write_bytes(png_bytes((200, 30, 30)))
    (inbox / "notes.txt").write_text("not an image: ignored")
    watcher = subprocess.Popen(cli("watch", "comfymesh-imaging", str(inbox), "--out", str(out), "--interval", "0.1",
                                   "--url", imaging_mesh.url), stderr=subprocess.PIPE, text=True, preexec_fn=sigint_default)
    try:
        [first] = wait_for_runs(out, 1, watcher)
        assert first["file"] == "a.png" and first["status"] == "completed"
        (inbox / ".b.png.part").write_bytes(png_bytes((30, 200, 30)))  # a download in progress: hidden, skipped
        whole = png_bytes((30, 30, 200))
        (inbox / "c.png").write_bytes(whole[: len(whole) // 2])  # cut short: waits until it is whole
        (inbox / ".b.png.part").rename(inbox / "b.png")
        runs = wait_for_runs(out, 2, watcher)
        assert [run["file"] for run in runs] == ["a.png", "b.png"]
        with (inbox / "c.png").open("ab") as rest:
            rest.write(whole[len(whole) // 2:])
        runs = wait_for_runs(out, 3, watcher)
        assert [run["file"] for run in runs] == ["a.png", "b.png", "c.png"]
        assert all(run["status"] == "completed" for run in runs)
        assert len({run["job_id"] for run in runs}) == 3
    finally:
        watcher.send_signal(signal.SIGINT)
        _, stderr = watcher.communicate(timeout=30)
    assert watcher.returncode == 130 and "stopped watching" in stderr
    outputs = sorted(out.glob("*.png"))
    assert len(outputs) == 3
    assert len({hashlib.sha256(path.read_bytes()).hexdigest() for path in outputs}) == 3  # one per input image

    again = subprocess.run(cli("watch", "comfymesh-imaging", str(inbox), "--out", str(out), "--once",
                               "--url", imaging_mesh.url), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert len(ledger(out)) == 3 and len(list(out.glob("*.png"))) == 3  # nothing ran twice


def test_watch_refuses_a_missing_folder_and_has_help(imaging_mesh: Mesh, tmp_path: Path) -> None:
    missing = subprocess.run(cli("watch", "comfymesh-imaging", str(tmp_path / "nope"), "--url", imaging_mesh.url),
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "is not a folder" in missing.stderr.replace("\n", "")
    assert subprocess.run(cli("watch", "--help"), capture_output=True, timeout=60).returncode == 0
