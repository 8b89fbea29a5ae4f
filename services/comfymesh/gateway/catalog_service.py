"""The catalog service: node definitions, model folders and their files, and compute devices.

Model folders are the ones of the registry (`comfymesh.catalog.model_folders`); their files come from the
orchestrator, which lists them as validation accepts them, so no listed file is refused when used.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from comfymesh.catalog.model_folders import FOLDERS, ModelFolders, canonical
from comfymesh.gateway.engine import Device, Engine, ModelFile


class CatalogService:
    def __init__(self, engine: Engine, folders: ModelFolders) -> None:
        self.engine = engine
        self.folders = folders

    async def object_info(self) -> dict[str, Any]:
        return await self.engine.object_info()

    async def node_info(self, class_type: str) -> dict[str, Any]:
        """`{class_type: definition}`, or {} for a node no stage runs."""
        info = await self.engine.object_info()
        return {class_type: info[class_type]} if class_type in info else {}

    @staticmethod
    def folder_names() -> list[str]:
        return list(FOLDERS)

    @staticmethod
    def is_folder(name: str) -> bool:
        """A folder of the registry, by its name or a legacy alias (`unet`, `clip`)."""
        return canonical(name) is not None

    def folder_paths(self) -> dict[str, list[str]]:
        """Every folder and the directories its files come from, in lookup order."""
        return {name: [str(root) for root in self.folders.roots(name)] for name in FOLDERS}

    async def model_files(self, folder: str) -> list[ModelFile]:
        """The files of a registry folder (check `is_folder` first), with sizes and times; no digests."""
        return await self.engine.model_files(folder)

    async def embeddings(self) -> list[str]:
        """Embedding names as prompts use them: relative paths without their suffix."""
        return [str(PurePosixPath(f.name).with_suffix("")) for f in await self.engine.model_files("embeddings")]

    async def checkpoints(self) -> list[ModelFile]:
        """Checkpoint files with their sha256 (remembered; a new multi-GB file takes seconds to hash)."""
        return await self.engine.model_files("checkpoints", digests=True)

    async def devices(self) -> list[Device]:
        return await self.engine.devices()

    async def free(self, unload_models: bool = True, free_memory: bool = False) -> list[str]:
        return await self.engine.free(unload_models, free_memory)
