"""Shim for the gateway until it imports `comfymesh.contracts.wirejson` (issue 13): delete it then."""

from comfymesh.contracts.wirejson import dumps, loads

__all__ = ["dumps", "loads"]
