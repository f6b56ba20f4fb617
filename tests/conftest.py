"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain client session for tests that talk to servers they started."""
    async with aiohttp.ClientSession() as s:
        yield s
