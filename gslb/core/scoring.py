"""Region scoring kernel: the compiled ``gslb.core._scoring`` when available, else the twin.

``GSLB_NO_EXTENSIONS=1`` forces the pure-Python twin (``gslb.core._scoring_py``); otherwise the
Cython module is used when it imports and is not stale. Both return bit-identical answers;
``BACKEND`` says which one is in use and ``backends()`` returns every usable one for
cross-checks and benchmarks. The reason codes and their names (``REASONS``) are the twin's:
the compiled module only mirrors the codes, and tests hold it to them.

A stale compiled module is refused, never used. An in-place or editable build (``make build``,
``pip install -e .``) leaves the module beside its ``_scoring.pyx``; pull or edit the ``.pyx``
without rebuilding and the module would go on scoring by the old rules. The build stamps the
module with the SHA-256 of the ``.pyx`` text it came from (``SOURCE_SHA256``, setup.py). When
a ``_scoring.pyx`` lies beside the module and its digest differs, or the module carries no
digest, ``gslb.core.scoring``:

* uses the twin instead, so requests are still scored by the rules in the source, only slower;
* warns once per process (``RuntimeWarning``, on stderr) with the fix, and keeps the message in
  ``REFUSED``; the status document's ``backend`` then reads ``"python"``;
* leaves the module out of ``backends()``, so the test suite, which requires the compiled
  backend unless ``GSLB_NO_EXTENSIONS=1``, fails until it is rebuilt.

Falling back rather than failing keeps a checkout that missed ``make build`` serving
correctly. A content digest rather than file times: a wheel carries the ``.pyx`` too and pip
writes it after the module, and ``git checkout`` sets times without changing the text. An
installed module with no ``.pyx`` beside it is trusted: nothing there can be newer.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import warnings
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from gslb.core import _scoring_py
from gslb.core._scoring_py import (
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
    "REFUSED",
    "SPILL",
    "STANDBY",
    "Kernel",
    "backends",
    "stale",
    "wait_ms",
]

SOURCE = "_scoring.pyx"


def stale(module: ModuleType) -> str | None:
    """Why a compiled kernel must not be used (built from other source text), or ``None``."""
    if module.__file__ is None:
        return None
    built = Path(module.__file__)
    try:
        text = built.with_name(SOURCE).read_bytes()
    except OSError:  # an installed module without its source: nothing to compare with
        return None
    digest = getattr(module, "SOURCE_SHA256", None)
    if digest == hashlib.sha256(text).hexdigest():
        return None
    why = "carries no source digest" if digest is None else f"was built from another {SOURCE}"
    return (
        f"gslb: refusing the compiled scoring kernel {built}: it {why}; scoring with the "
        "pure-Python twin instead (slower). Rebuild it: make build "
        "(or python setup.py build_ext --inplace)"
    )


def _compiled() -> tuple[ModuleType | None, str | None]:
    """The usable compiled module, and why a built one was refused."""
    if os.environ.get("GSLB_NO_EXTENSIONS") == "1":
        return None, None
    try:
        module = importlib.import_module("gslb.core._scoring")
    except ImportError:
        return None, None
    refused = stale(module)
    return (None, refused) if refused else (module, None)


def backends() -> dict[str, ModuleType]:
    """Every usable backend by name: ``"python"`` always, ``"cython"`` when built and current."""
    found = {"python": _scoring_py}
    if _impl is not None:
        found["cython"] = _impl
    return found


_impl, REFUSED = _compiled()
if REFUSED is not None:
    warnings.warn(REFUSED, RuntimeWarning, stacklevel=1)
BACKEND: str = "python" if _impl is None else "cython"

if TYPE_CHECKING or _impl is None:  # the twin's signatures type both backends
    from gslb.core._scoring_py import Kernel, wait_ms
else:
    Kernel = _impl.Kernel
    wait_ms = _impl.wait_ms
