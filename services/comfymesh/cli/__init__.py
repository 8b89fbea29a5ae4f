"""The `comfymesh` command: start the mesh locally, run a workflow from the terminal."""
