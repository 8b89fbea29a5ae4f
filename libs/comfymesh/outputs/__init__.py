"""SaveImage/PreviewImage for every stage: PNGs named, numbered and tagged as ComfyUI writes them.

Files go to `<home>/output` or `<home>/temp`; `<home>/.outputs` holds the lock that serialises
counter allocation across stage processes and the receipts that make a retried node write nothing new.
"""

from comfymesh.outputs._naming import SaveTarget, batch_filename, expand_tokens, next_counter, resolve_target
from comfymesh.outputs._nodes import output_nodes, preview_image, save_image
from comfymesh.outputs._pixels import as_image_batch, frames_uint8, to_uint8
from comfymesh.outputs._png import encode_png, png_metadata
from comfymesh.outputs._receipts import LEDGER_DIR, OutputIdentity, SavedImage
from comfymesh.outputs._writer import FolderType, write_files, write_pngs

__all__ = [
    "LEDGER_DIR",
    "FolderType",
    "OutputIdentity",
    "SaveTarget",
    "SavedImage",
    "as_image_batch",
    "batch_filename",
    "encode_png",
    "expand_tokens",
    "frames_uint8",
    "next_counter",
    "output_nodes",
    "png_metadata",
    "preview_image",
    "resolve_target",
    "save_image",
    "to_uint8",
    "write_files",
    "write_pngs",
]
