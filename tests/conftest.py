"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import ModuleType

import aiohttp
import pytest

from gslb.core import scoring


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain client session for tests that talk to servers they started."""
    async with aiohttp.ClientSession() as s:
        yield s


# Every usable scoring backend: the twin always, the compiled kernel when built and current.
# A missing or refused compiled kernel fails tests/core/test_scoring.py (unless
# GSLB_NO_EXTENSIONS=1 says so), so running on the twin alone cannot pass unnoticed.
@pytest.fixture(params=sorted(scoring.backends()))
def backend(request: pytest.FixtureRequest) -> ModuleType:
    """A scoring backend module (``gslb.core._scoring`` or ``gslb.core._scoring_py``);
    tests run once per backend, named by the test id."""
    module: ModuleType = scoring.backends()[request.param]
    return module
