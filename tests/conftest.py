"""Shared fixtures: the app in-process (tests/inproc.py) or the server as a subprocess
(tests/e2e.py), each on its own SQLite file."""

from __future__ import annotations

import os
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from jobserver.client import Client
from tests.e2e import STARTED, Server, start_server
from tests.helpers import default_config, free_port
from tests.inproc import RunningApp, ServedApp, running_app, served_app
from tests.receiver import Receiver, running_receiver


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Run `untraced` tests with no trace function in this thread or the ones they start.

    On CPython 3.11 a thread with a trace function (coverage's) spins at every call
    while an interruption waits on a thread blocked in a C call; these tests make
    exactly that (a task stuck in read(2), then given up), and release it before they end."""
    if item.get_closest_marker("untraced") is None:
        yield
        return
    tracer, new_thread_hook = (
        sys.gettrace(),
        threading.gettrace(),
    )  # coverage gives each thread its own tracer
    sys.settrace(None)
    threading.settrace(None)
    try:
        yield
    finally:
        threading.settrace(new_thread_hook)
        sys.settrace(tracer)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[RunningApp]:
    """The real app with its worker threads, in this process, on a fresh SQLite file."""
    with running_app(tmp_path) as running:
        yield running


@pytest.fixture
def client(app: RunningApp) -> Iterator[Client]:
    """The SDK's Client on the in-process app."""
    with Client(http_client=app.client) as c:
        yield c


@pytest.fixture(scope="module")
def shared_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    """One in-process app for a whole test module, for tests that do not interfere with each other."""
    with running_app(tmp_path_factory.mktemp("shared")) as running:
        yield running


@pytest.fixture(scope="module")
def shared_served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedApp]:
    """One in-process app served on a socket of 127.0.0.1 for a whole test module: for clients
    in another process (the CLI's), where the server being a process is not the point."""
    with served_app(tmp_path_factory.mktemp("served")) as served:
        yield served


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver on 127.0.0.1 with scripted answers."""
    with running_receiver() as r:
        yield r


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
    """One server process for a whole test module, for tests that do not interfere with each other
    (built directly: `_stop_servers` stops what `start_server` started after every test)."""
    path = tmp_path_factory.mktemp("shared")
    srv = Server(path, default_config(path, free_port()), None).start()
    try:
        yield srv
    finally:
        srv.stop()


PG = os.environ.get("JOBSERVER_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test (dropped after it, open connections and all)."""
    name = f"jobserver_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"{PG}/{name}"
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
