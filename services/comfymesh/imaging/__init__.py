"""The imaging stage: ComfyUI's image nodes done by ImageMagick (through Wand)."""
