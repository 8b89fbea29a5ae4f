"""A plugin whose import fails, as one with a dependency that is not installed does."""

import comfymesh_no_such_dependency  # noqa: F401

nodes = None
