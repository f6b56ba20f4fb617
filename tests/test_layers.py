"""The layer contract: the core decides and does no I/O; a module's path says which side it is on.

A core module (``gslb/core``) may not import asyncio, aiohttp, socket, ssl or any part of the
shell (``gslb.edge``, ``gslb.ops``, ``gslb.sim``, ``gslb.cli``), nor read a clock. The checker
is tested on bad sources too, so this test can fail.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "gslb" / "core"
MODEL = ROOT / "gslb" / "model"  # pure too: the simulator's and the planner's models
FORBIDDEN_MODULES = frozenset(
    {"asyncio", "aiohttp", "socket", "ssl", "selectors", "uvloop", "subprocess", "threading"}
)
SHELL = ("gslb.edge", "gslb.ops", "gslb.sim", "gslb.cli")
# Reading a clock: the time module at all, and "now" on datetime/date.
CLOCK_MODULES = frozenset({"time"})
CLOCK_CALLS = frozenset({"now", "utcnow", "today"})


def violations(source: str, name: str = "<module>") -> list[str]:
    """Every breach of the contract in one module's source."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source, name)):
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for module in modules:
            top = module.split(".")[0]
            if top in FORBIDDEN_MODULES:
                found.append(f"{name}:{node.lineno} imports {module}")
            elif top in CLOCK_MODULES:
                found.append(f"{name}:{node.lineno} imports {module} (a clock)")
            elif any(module == s or module.startswith(s + ".") for s in SHELL):
                found.append(f"{name}:{node.lineno} imports the shell ({module})")
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in CLOCK_CALLS
            and _last_name(node.func.value) in ("datetime", "date")
        ):
            found.append(f"{name}:{node.lineno} reads the clock (.{node.func.attr}())")
    return sorted(set(found))


def _last_name(node: ast.expr) -> str | None:
    """``datetime`` for ``datetime`` and for ``x.datetime``."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def core_modules() -> list[Path]:
    return sorted(CORE.glob("*.py"))


def test_model_modules_do_no_io_and_read_no_clock() -> None:
    modules = sorted(MODEL.glob("*.py"))
    assert modules  # the package is really there
    breaches = [v for path in modules for v in violations(path.read_text(), path.name)]
    assert breaches == []


def test_core_modules_do_no_io_and_read_no_clock() -> None:
    modules = core_modules()
    assert len(modules) > 15  # the core is really there
    breaches = [v for path in modules for v in violations(path.read_text(), path.name)]
    assert breaches == []


@pytest.mark.parametrize(
    "source",
    [
        "import asyncio",
        "import socket as s",
        "from ssl import SSLContext",
        "from aiohttp import web",
        "import time",
        "from time import monotonic",
        "from gslb.edge import proxy",
        "from gslb.ops.metrics import Metrics",
        "import gslb.sim.demo",
        "def f():\n    from gslb.cli import main",
        "from datetime import datetime\nx = datetime.now()",
        "import datetime\nx = datetime.date.today()",
    ],
)
def test_the_checker_catches_each_kind_of_breach(source: str) -> None:
    assert violations(source)


def test_the_checker_allows_what_the_core_uses() -> None:
    ok = "from gslb.core import scoring\nimport math\nfrom multidict import CIMultiDict\n"
    assert violations(ok) == []


def test_every_module_lives_in_a_layer() -> None:
    # Only the entry points stay at the top; the rest says by its path which side it is on.
    top = {p.name for p in (ROOT / "gslb").glob("*.py")}
    assert top == {"__init__.py", "__main__.py", "cli.py"}
    for layer in ("core", "edge", "model", "ops", "sim"):
        init = ROOT / "gslb" / layer / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and "May import" in doc, f"gslb/{layer} needs a docstring of what it may import"
