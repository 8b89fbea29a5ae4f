"""The process environment beyond our settings: third-party libraries' own variables, and what
`comfymesh up` hands the services it starts.

Some libraries read their configuration only from environment variables, some also in worker processes
they start themselves (inductor's compile workers), so no API call could stand in. This is the only
module that writes os.environ (a test holds the rest of libs/ and services/ to that), and it writes
only the variables listed here, never over a value the user set.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

# variable -> why it can only be set through the environment
LIBRARY_VARIABLES = {
    "TORCHINDUCTOR_CACHE_DIR": "inductor reads its cache folder only from here, also in its compile workers",
    "TRITON_CACHE_DIR": "Triton reads its kernel cache folder from here, also in inductor's compile workers",
}


def default_library_variable(name: str, value: str) -> None:
    """Set a third-party library's variable unless the user already did."""
    if name not in LIBRARY_VARIABLES:
        raise ValueError(f"{name} is not a library variable comfymesh sets; list it in LIBRARY_VARIABLES with why")
    os.environ.setdefault(name, value)


def child_environment(overrides: Mapping[str, str]) -> dict[str, str]:
    """This process's environment with `overrides`: what a service started by `comfymesh up` inherits."""
    return {**os.environ, **overrides}
