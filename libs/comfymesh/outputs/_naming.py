"""ComfyUI's SaveImage naming: prefix tokens, subfolder, counter, `<prefix>_<counter:05>_.png`."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

BATCH_TOKEN = "%batch_num%"


class BadFilenamePrefix(ValueError):
    """The filename prefix names no file, or a file outside the folder it must be saved in."""


def expand_tokens(prefix: str, *, width: int, height: int, now: datetime) -> str:
    """Replace the server-side tokens; `%batch_num%` stays for `batch_filename` to fill per image."""
    if "%" not in prefix:
        return prefix
    values = {
        "%width%": str(width),
        "%height%": str(height),
        "%year%": str(now.year),
        "%month%": f"{now.month:02d}",
        "%day%": f"{now.day:02d}",
        "%hour%": f"{now.hour:02d}",
        "%minute%": f"{now.minute:02d}",
        "%second%": f"{now.second:02d}",
    }
    for token, value in values.items():
        prefix = prefix.replace(token, value)
    return prefix


@dataclass(frozen=True)
class SaveTarget:
    """Where a batch goes: `folder` on disk, `subfolder` as the UI names it, and the file prefix."""

    folder: Path
    subfolder: str
    file_prefix: str


def resolve_target(base: Path, prefix: str) -> SaveTarget:
    """Split an expanded prefix into subfolder and file prefix, refusing any that leaves `base`."""
    normalized = os.path.normpath(prefix)
    subfolder, file_prefix = os.path.split(normalized)
    if file_prefix in ("", "."):
        raise BadFilenamePrefix(f"filename_prefix {prefix!r} names no file")
    base_abs = os.path.abspath(base)
    # Absolute prefixes replace the base in os.path.join and `..` climbs out of it: both are caught here.
    folder = os.path.abspath(os.path.join(base_abs, subfolder))
    if os.path.commonpath((base_abs, folder)) != base_abs:
        raise BadFilenamePrefix(f"Saving image outside the {base.name} folder is not allowed "
                                f"(filename_prefix {prefix!r})")
    return SaveTarget(folder=Path(folder), subfolder=subfolder, file_prefix=file_prefix)


def _counter_pattern(file_prefix: str) -> re.Pattern[str]:
    # ComfyUI matches `<prefix>_<digits>` literally, so a `%batch_num%` prefix never finds its own files
    # and restarts at 1, overwriting them; matching any batch index instead keeps the counter rising.
    prefix_pattern = r"\d+".join(re.escape(part) for part in file_prefix.split(BATCH_TOKEN))
    return re.compile(prefix_pattern + r"_(\d+)(?:_|$)")


def highest_counter(names: list[str], file_prefix: str) -> int:
    """The highest counter among `<prefix>_<digits>_…` names (case-sensitive), or 0."""
    pattern = _counter_pattern(file_prefix)
    highest = 0
    for name in names:
        match = pattern.match(name)
        if match:
            highest = max(highest, int(match.group(1)))
    return highest


def next_counter(folder: Path, file_prefix: str) -> int:
    """1 + the highest counter among `<prefix>_<digits>_…` files in `folder` (case-sensitive), or 1."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return 1
    return highest_counter(names, file_prefix) + 1


def batch_filename(file_prefix: str, batch_index: int, counter: int, extension: str = "png") -> str:
    """The file name of one image of the batch (SaveLatent's one file: extension "latent")."""
    return f"{file_prefix.replace(BATCH_TOKEN, str(batch_index))}_{counter:05}_.{extension}"
