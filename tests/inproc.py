"""The real app in-process: every part of the server (writer, worker threads, maintenance,
webhook sender) on a real SQLite file in a temp dir, driven through Starlette's
`TestClient` instead of a socket.

The only module that builds the app for tests; fixtures and test modules go
through `running_app`.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from starlette.exceptions import StarletteDeprecationWarning

from jobserver.build import Parts, build
from jobserver.core.clock import Clock
from jobserver.core.config import Settings, load_settings
from jobserver.core.tasks import Registry
from jobserver.core.tracing import NO_TRACING, Tracing
from jobserver.runtime import Runtime, bind_listener
from tests.helpers import Config, merged_config, wait_until, write_config

with warnings.catch_warnings():
    # Starlette would rather drive its TestClient with httpx2, but the SDK under test is
    # built on httpx and is handed the TestClient as its `httpx.Client`.
    warnings.filterwarnings("ignore", "Using `httpx` with", StarletteDeprecationWarning)
    from starlette.testclient import TestClient
assert issubclass(TestClient, httpx.Client), "the TestClient must be an httpx.Client (is httpx2 installed?)"

CLIENT_TIMEOUT_S = 30.0
UNUSED_PORT = 8000  # nothing listens in-process; the config only needs a valid port
# Threads a closed runtime must not leave behind. Worker threads may outlive it on purpose
# (a task stuck in a C call is given up, not waited on); the reader pool is shut down without waiting.
SERVICE_THREADS = ("jobserver-writer", "jobserver-maintenance", "jobserver-async", "jobserver-webhooks")


def _start_timer(request: httpx.Request) -> None:
    request.extensions["jobserver.sent_at"] = time.monotonic()


def _check_timeout(response: httpx.Response) -> None:
    request = response.request
    limit = request.extensions["timeout"].get("read")
    took = time.monotonic() - request.extensions["jobserver.sent_at"]
    if limit is not None and took > limit:
        raise httpx.ReadTimeout(
            f"answered after {took:.2f}s, over the {limit}s read timeout", request=request
        )


class TimedClient(TestClient):
    """A TestClient that keeps httpx's timeouts: a call whose answer (its head) took longer
    than the read timeout fails with `httpx.ReadTimeout`, as it would over a socket.

    Without a socket nothing can cut a call short, so the check runs once the answer
    arrives; a call that never answers is caught by pytest-timeout."""

    def __init__(self, app: Any, api_key: str | None, timeout: float) -> None:
        super().__init__(app, headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
        self.timeout = httpx.Timeout(timeout)
        self.event_hooks: dict[str, list[Callable[..., Any]]] = {
            "request": [_start_timer],
            "response": [_check_timeout],
        }

    def request(
        self,
        method: str,
        url: httpx.URL | str,
        *,
        timeout: Any = httpx.USE_CLIENT_DEFAULT,
        extensions: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        # passed on as the request's timeout extension: TestClient warns about the argument
        if timeout is not httpx.USE_CLIENT_DEFAULT:
            extensions = {**(extensions or {}), "timeout": httpx.Timeout(timeout).as_dict()}
        response: httpx.Response = super().request(method, url, extensions=extensions, **kwargs)
        return response


@dataclass
class RunningApp:
    """A running runtime, its settings, and a TestClient on its app."""

    runtime: Runtime
    settings: Settings
    tmp_path: Path
    _stack: ExitStack = field(repr=False)
    client: TimedClient = field(init=False)

    def __post_init__(self) -> None:
        self.client = self.new_client()

    @property
    def asgi_app(self) -> Any:
        """The ASGI app, for clients that bring their own transport (Schemathesis, a plain TestClient)."""
        return self.runtime.app

    @property
    def db_path(self) -> Path:
        path = self.settings.sqlite_path()
        assert path is not None
        return path

    def new_client(self, api_key: str | None = None, timeout: float = CLIENT_TIMEOUT_S) -> TimedClient:
        """Another client on the same app (closed with it), sending `api_key` as a bearer token."""
        return self._stack.enter_context(TimedClient(self.asgi_app, api_key, timeout))


def settings_for(
    tmp_path: Path, config: Config | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """The test config (tests/helpers.py) updated section by section, written to
    `tmp_path/config.toml` and loaded the way the server loads it."""
    path = tmp_path / "config.toml"
    write_config(path, merged_config(tmp_path, UNUSED_PORT, config))
    return load_settings(path, environ=dict(environ or {}), cwd=tmp_path)


@contextmanager
def driven_parts(settings: Settings, clock: Clock, registry: Registry | None = None) -> Iterator[Parts]:
    """Every part of one server built on `settings`, nothing started but its writer and the
    tasks' event loop: the test drives each step (claims, attempts, rescues) itself."""
    parts = build(settings, clock, registry)
    loop_thread = threading.Thread(target=parts.tasks_loop.run_forever, daemon=True)
    loop_thread.start()
    try:
        yield parts
    finally:
        parts.tasks_loop.call_soon_threadsafe(parts.tasks_loop.stop)
        loop_thread.join(5)
        parts.tasks_loop.close()
        parts.readers.shutdown()
        parts.writer.stop()
        parts.db.close()  # the calling thread's connection, which the test's reads used


@contextmanager
def running_app(
    tmp_path: Path,
    config: Config | None = None,
    environ: Mapping[str, str] | None = None,
    clock: Clock | None = None,
    tracing: Tracing = NO_TRACING,
) -> Iterator[RunningApp]:
    """Open a runtime on `tmp_path/jobs.db`; close it (and its clients) however the block ends.
    Tracing is off unless `tracing` is given (the test process's OTEL_* variables play no part)."""
    settings = settings_for(tmp_path, config, environ)
    before = set(threading.enumerate())
    runtime = Runtime(settings, clock, tracing=tracing)
    runtime.open()
    try:
        with ExitStack() as stack:
            yield RunningApp(runtime, settings, tmp_path, stack)
    finally:
        runtime.close()
    left = [t.name for t in set(threading.enumerate()) - before if t.name.startswith(SERVICE_THREADS)]
    assert not left, f"threads still running after close: {left}"


@dataclass
class ServedApp:
    """A running app served over HTTP on 127.0.0.1 by uvicorn on a thread of this process:
    for a browser, which needs a socket, where a server process is not the point."""

    app: RunningApp
    url: str
    _clients: list[httpx.Client] = field(default_factory=list, repr=False)

    def client(self, api_key: str | None = None, timeout: float = CLIENT_TIMEOUT_S) -> httpx.Client:
        """A client over the socket, sending `api_key` as a bearer token (closed with the app)."""
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        c = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        self._clients.append(c)
        return c


@contextmanager
def served_app(
    tmp_path: Path, config: Config | None = None, clock: Clock | None = None
) -> Iterator[ServedApp]:
    """`running_app`, served on a free port of 127.0.0.1 as `python -m jobserver` serves it
    (the same uvicorn settings and connection limits), until the block ends. `clock`: the
    server's clocks, as for `running_app` (a served app runs by itself: they must move)."""
    with running_app(tmp_path, config, clock=clock) as app:
        sock = bind_listener("127.0.0.1", 0)
        server = app.runtime.http_server(app.settings.server.max_connections)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="test-http", daemon=True
        )
        thread.start()
        served = ServedApp(app, f"http://127.0.0.1:{sock.getsockname()[1]}")
        try:
            wait_until(lambda: server.started or not thread.is_alive(), message="uvicorn to start")
            assert thread.is_alive(), "uvicorn stopped at start"
            yield served
        finally:
            for c in served._clients:
                c.close()
            app.runtime.parts.hub.close()  # open waits and streams answer now, as in a drain
            server.should_exit = True
            thread.join(timeout=10)
            sock.close()
