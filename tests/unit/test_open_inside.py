"""Stages open the files nodes name inside their folder at open time: no symlink, FIFO or escape."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from comfymesh.catalog.files import FileRefused, open_inside, split_image_name


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """(input folder with sub/a.png, an outside folder with secret.png)."""
    inside, outside = tmp_path / "home" / "input", tmp_path / "outside"
    (inside / "sub").mkdir(parents=True)
    outside.mkdir()
    (inside / "sub" / "a.png").write_bytes(b"inside")
    (outside / "secret.png").write_bytes(b"outside")
    return inside, outside


def test_reads_a_regular_file_and_a_symlinked_folder_inside(folders: tuple[Path, Path]) -> None:
    inside, _ = folders
    (inside / "alias").symlink_to(inside / "sub")
    for name in ("sub/a.png", "alias/a.png", "sub/../sub/a.png"):
        with open_inside(inside, name) as handle:
            assert handle.read() == b"inside"
    with pytest.raises(FileNotFoundError):
        open_inside(inside, "sub/missing.png")


def test_a_symlink_swapped_in_for_the_file_is_not_followed(folders: tuple[Path, Path]) -> None:
    inside, outside = folders
    (inside / "sub" / "a.png").unlink()
    (inside / "sub" / "a.png").symlink_to(outside / "secret.png")
    with pytest.raises(FileRefused, match="symbolic link"):
        open_inside(inside, "sub/a.png")
    (inside / "c.png").write_bytes(b"inside")
    (inside / "b.png").symlink_to(inside / "c.png")  # even one that stays inside
    with pytest.raises(FileRefused, match="symbolic link"):
        open_inside(inside, "b.png")


def test_a_folder_swapped_for_a_symlink_out_is_refused(folders: tuple[Path, Path]) -> None:
    inside, outside = folders
    (inside / "sub" / "a.png").unlink()
    (inside / "sub").rmdir()
    (inside / "sub").symlink_to(outside)
    (outside / "a.png").write_bytes(b"outside")
    with pytest.raises(FileRefused, match="leaves its folder"):
        open_inside(inside, "sub/a.png")


@pytest.mark.parametrize("name", ["../outside/secret.png", "/etc/hostname", "sub/../../x.png", "", ".", "a\\b"])
def test_names_that_leave_the_folder_are_refused(folders: tuple[Path, Path], name: str) -> None:
    with pytest.raises(FileRefused):
        open_inside(folders[0], name)


def test_a_fifo_or_folder_is_refused_without_waiting(folders: tuple[Path, Path]) -> None:
    inside, _ = folders
    os.mkfifo(inside / "pipe.png")  # opening it for reading would wait for a writer
    for name in ("pipe.png", "sub"):
        with pytest.raises(FileRefused, match="not a regular file"):
            open_inside(inside, name)


def test_image_names_pick_their_folder() -> None:
    assert split_image_name("x.png") == ("input", "x.png")
    assert split_image_name("sub/x.png [output]") == ("output", "sub/x.png")
    assert split_image_name("x [temp] [input]") == ("input", "x [temp]")
