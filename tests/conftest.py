"""Shared fixtures: a running server per test, on its own SQLite file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import STARTED, Server, start_server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = start_server(tmp_path)
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def _stop_servers() -> Iterator[None]:
    """Whatever happens in a test, no server process outlives it."""
    yield
    while STARTED:
        STARTED.pop().stop()
