"""Shared fixtures: a running server per test, on its own SQLite file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import STARTED, Server, default_config, free_port, start_server


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


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for a whole test module, for tests that do not interfere with each other
    (built directly: `_stop_servers` stops what `start_server` started after every test)."""
    path = tmp_path_factory.mktemp("shared")
    srv = Server(path, default_config(path, free_port()), None).start()
    try:
        yield srv
    finally:
        srv.stop()
