"""Region scoring kernel: the compiled ``gslb._scoring`` when available, else the twin.

``GSLB_NO_EXTENSIONS=1`` forces the pure-Python twin (``gslb._scoring_py``); otherwise the
Cython module is used when it imports. Both return bit-identical answers; ``BACKEND`` says
which one is in use and ``backends()`` returns every available one for cross-checks and
benchmarks.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import TYPE_CHECKING

from gslb import _scoring_py
from gslb._scoring_py import (
    FAILOVER,
    LOCAL,
    LOCAL_QUEUED,
    NO_REGION,
    REASONS,
    SPILL,
    STANDBY,
)

__all__ = [
    "BACKEND",
    "FAILOVER",
    "LOCAL",
    "LOCAL_QUEUED",
    "NO_REGION",
    "REASONS",
    "SPILL",
    "STANDBY",
    "Kernel",
    "backends",
    "wait_ms",
]


def _extensions_disabled() -> bool:
    return os.environ.get("GSLB_NO_EXTENSIONS") == "1"


def _compiled() -> ModuleType | None:
    if _extensions_disabled():
        return None
    try:
        return importlib.import_module("gslb._scoring")
    except ImportError:
        return None


def backends() -> dict[str, ModuleType]:
    """Every available backend by name: ``"python"`` always, ``"cython"`` when built."""
    found = {"python": _scoring_py}
    compiled = _compiled()
    if compiled is not None:
        found["cython"] = compiled
    return found


_impl = _compiled()
BACKEND: str = "python" if _impl is None else "cython"

if TYPE_CHECKING or _impl is None:  # the twin's signatures type both backends
    from gslb._scoring_py import Kernel, wait_ms
else:
    Kernel = _impl.Kernel
    wait_ms = _impl.wait_ms
