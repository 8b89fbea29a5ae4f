"""The one registry of model folders: which folders exist, what files each accepts, and where they live.

Listing (`/models/<folder>`, COMBO choices), validation and loading all ask this registry, so a file
one of them shows is a file the others accept. Folders follow ComfyUI's names, legacy aliases included
(`clip` is `text_encoders`, `unet` is `diffusion_models`). Besides `<home>/models/<folder>`, folders may
come from a file in ComfyUI's `extra_model_paths.yaml` format, so users point at the models they have.
COMFYMESH_MODELS_URL may name another local folder (file://) or an S3 prefix (s3://, `comfymesh.models`):
then every host lists the bucket and fetches what it loads into its own cache, by digest.

Only safetensors files are accepted: the pickle formats ComfyUI also lists (.ckpt, .pt, .bin, .pth)
can run code when loaded. The exception is `.pth` upscale models (most are published only so), which
their loader reads with `torch.load(weights_only=True)`: tensors only, any other pickled object refused.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from comfymesh.config import Settings
    from comfymesh.models import HostModelCache, RemoteModels

SAFE_SUFFIXES = (".safetensors", ".sft")
# folders whose loader also reads pickles, tensors only (see the module docstring)
TENSOR_PICKLE_SUFFIXES: dict[str, tuple[str, ...]] = {"upscale_models": (".pth",)}
# folder -> the sub-folders of `<home>/models` it reads, first one first (ComfyUI's layout and aliases)
FOLDERS: dict[str, tuple[str, ...]] = {
    "checkpoints": ("checkpoints",),
    "loras": ("loras",),
    "vae": ("vae",),
    "vae_approx": ("vae_approx",),
    "text_encoders": ("text_encoders", "clip"),
    "diffusion_models": ("diffusion_models", "unet"),
    "clip_vision": ("clip_vision",),
    "style_models": ("style_models",),
    "embeddings": ("embeddings",),
    "controlnet": ("controlnet", "t2i_adapter"),
    "gligen": ("gligen",),
    "upscale_models": ("upscale_models",),
    "latent_upscale_models": ("latent_upscale_models",),
    "hypernetworks": ("hypernetworks",),
    "photomaker": ("photomaker",),
    "classifiers": ("classifiers",),
    "model_patches": ("model_patches",),
    "audio_encoders": ("audio_encoders",),
}
ALIASES = {"clip": "text_encoders", "unet": "diffusion_models", "t2i_adapter": "controlnet"}


class ExtraPathsError(ValueError):
    """An extra-model-paths file that cannot be read; the message names the file and the entry."""


def canonical(folder: str) -> str | None:
    """The registry's name for `folder` (aliases resolved), or None for a folder we do not serve."""
    name = ALIASES.get(folder, folder)
    return name if name in FOLDERS else None


@dataclass(frozen=True)
class ModelFolders:
    """Where each model folder's files are: `<home>/models/...` first, then any extra paths, in order."""

    home: Path
    extra: Mapping[str, tuple[Path, ...]]
    models_root: Path | None = None  # a file:// COMFYMESH_MODELS_URL; None: <home>/models
    remote: RemoteModels | None = None  # an s3:// COMFYMESH_MODELS_URL: listed and fetched instead
    cache: HostModelCache | None = None  # where this host keeps what it fetched from `remote`

    @classmethod
    def load(cls, home: Path, extra_paths_file: Path | None = None, models_root: Path | None = None,
             remote: RemoteModels | None = None, cache: HostModelCache | None = None) -> ModelFolders:
        """The registry for `home`, with `extra_paths_file` (ComfyUI's YAML format) when it exists."""
        extra = read_extra_paths(extra_paths_file) if extra_paths_file and extra_paths_file.is_file() else {}
        return cls(home, extra, models_root, remote, cache)

    def roots(self, folder: str) -> list[Path]:
        """Every directory that holds `folder`'s files, in lookup order (may not all exist)."""
        name = canonical(folder)
        if name is None:
            return []
        own = [(self.models_root or self.home / "models") / sub for sub in FOLDERS[name]]
        return own + [path for path in self.extra.get(name, ()) if path not in own]

    @staticmethod
    def suffixes(folder: str | None = None) -> tuple[str, ...]:
        """The file suffixes `folder` loads (any folder's when None)."""
        return SAFE_SUFFIXES + TENSOR_PICKLE_SUFFIXES.get(canonical(folder or "") or "", ())

    def accepts(self, filename: str, folder: str | None = None) -> bool:
        return filename.lower().endswith(self.suffixes(folder))

    def resolve(self, folder: str, name: str) -> Path | None:
        """The file `name` of `folder` (first root that has it), never outside its root; None if absent."""
        from comfymesh.catalog.files import resolve_inside

        if not self.accepts(name, folder):
            return None
        if self.remote is not None:
            return self.fetch(folder, name)
        for root in self.roots(folder):
            path = resolve_inside(root, name)
            if path is not None and path.is_file():
                return path
        return None

    def fetch(self, folder: str, name: str, digest: str | None = None) -> Path | None:
        """A local file for `name` of `folder`: the file itself, or this host's copy of the remote one (checked
        against `digest` when given: ModelDigestMismatch names both digests); None if absent."""
        if self.remote is None or self.cache is None:
            return self.resolve(folder, name)
        key = self.remote.key_of(folder, name) if self.accepts(name, folder) else None
        if key is None:
            return None
        try:
            return self.cache.fetch(self.remote, key, digest)
        except FileNotFoundError:  # deleted between the check and the read
            return None

    def version(self, folder: str, name: str) -> str | None:
        """A remote file's version token (its ETag), None for local folders or a missing file."""
        key = self.remote.key_of(folder, name) if self.remote is not None and self.accepts(name, folder) else None
        return self.remote.version(key) if self.remote is not None and key is not None else None

    def sizes(self, folder: str) -> list[tuple[str, int]]:
        """(name, bytes) of every accepted file of `folder`, first root winning a name, without fetching one."""
        if self.remote is not None:
            return [(entry.name, entry.size) for entry in self.remote.entries(folder, self.accepts)]
        found: dict[str, int] = {}
        for directory, names in self.walk(folder):
            for name in names:
                try:
                    found.setdefault(name, os.path.getsize(os.path.join(directory, name.rsplit("/", 1)[-1])))
                except OSError:
                    continue  # removed since it was listed
        return sorted(found.items())

    def walk(self, folder: str) -> Iterable[tuple[str, list[str]]]:
        """Every directory under `folder`'s roots, with the accepted files in it as names relative to
        their root ('/' separators); empty directories too, so a listing can watch them for changes.
        A remote store is one listing under its URL."""
        if self.remote is not None:
            yield f"{self.remote.url}/{folder}", [e.name for e in self.remote.entries(folder, self.accepts)]
            return
        for root in self.roots(folder):
            for directory, _, names in os.walk(root, followlinks=True):
                relative = os.path.relpath(directory, root).replace(os.sep, "/")
                yield directory, [name if relative == "." else f"{relative}/{name}" for name in names
                                  if self.accepts(name, folder) and os.path.isfile(os.path.join(directory, name))]


def model_folders(settings: Settings) -> ModelFolders:
    """The registry the settings describe: COMFYMESH_MODELS_URL (default `<home>/models`), plus
    COMFYMESH_EXTRA_MODEL_PATHS (by default `<home>/extra_model_paths.yaml`, when it exists)."""
    from comfymesh.config.files import files_folder

    if not settings.models.lower().startswith("s3://"):
        return ModelFolders.load(settings.home, settings.extra_model_paths_file, files_folder(settings.models))
    from comfymesh.models import HostModelCache, RemoteModels

    remote = RemoteModels(settings.models, settings.models_options(settings.files_options()))
    cache = HostModelCache(settings.home / "cache" / "models", settings.models_cache_bytes)
    return ModelFolders.load(settings.home, settings.extra_model_paths_file, remote=remote, cache=cache)


def read_extra_paths(path: Path) -> dict[str, tuple[Path, ...]]:
    """Folders from an `extra_model_paths.yaml`: sections with an optional `base_path` (relative to the
    file) and folder names mapped to one path or several (one per line), relative to `base_path`."""
    import yaml

    try:
        document = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ExtraPathsError(f"cannot read extra model paths file {path}: {exc}") from None
    if not isinstance(document, dict):
        raise ExtraPathsError(f"{path}: expected sections of folder paths, got {type(document).__name__}")
    found: dict[str, list[Path]] = {}
    for section_name, section in document.items():
        if not isinstance(section, dict):
            raise ExtraPathsError(f"{path}: section {section_name!r} must map folder names to paths")
        base = _base_path(path, section.get("base_path"))
        for key, value in section.items():
            if key in ("base_path", "is_default"):
                continue
            folder = canonical(str(key))
            if folder is None:
                continue  # folders of nodes we do not run (custom_nodes, configs, ...)
            for entry in _entries(path, section_name, key, value):
                candidate = Path(entry).expanduser()
                found.setdefault(folder, []).append(candidate if candidate.is_absolute() else base / candidate)
    return {folder: tuple(paths) for folder, paths in found.items()}


def _base_path(path: Path, value: Any) -> Path:
    if value is None:
        return path.parent
    base = Path(str(value)).expanduser()
    return base if base.is_absolute() else path.parent / base


def _entries(path: Path, section: str, key: str, value: Any) -> list[str]:
    if not isinstance(value, str):
        raise ExtraPathsError(f"{path}: {section}.{key} must be a path or paths, one per line")
    return [line.strip() for line in value.splitlines() if line.strip()]


__all__ = ["ALIASES", "FOLDERS", "SAFE_SUFFIXES", "ExtraPathsError", "ModelFolders", "canonical", "model_folders",
           "read_extra_paths"]
