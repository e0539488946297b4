"""A real webhook receiver on 127.0.0.1 for the tests: an HTTP server thread with scripted answers.

Each path has a queue of replies (status, headers, and optionally a gate the
reply waits on until the test opens it); when the queue is empty the path
answers 200. Every request is recorded before it is answered, so a test can
wait for a request that is still being held at a gate.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

GATE_LIMIT_S = 30.0  # a held reply is released after this even if the test forgot to


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    gate: threading.Event | None = None


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes


class Receiver:
    """Records POSTs and answers them as scripted."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._plan: dict[str, list[Reply]] = {}
        self.requests: list[Received] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                reply = receiver._arrived(
                    Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                )
                if reply.gate is not None:
                    reply.gate.wait(GATE_LIMIT_S)
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("content-length", "0")
                    self.end_headers()
                except OSError:  # the sender gave up (timeout, killed) while we were held
                    pass

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def script(self, path: str, *replies: Reply) -> None:
        """Queue replies for `path` (then 200 for ever)."""
        with self._cond:
            self._plan.setdefault(path, []).extend(replies)

    def _arrived(self, req: Received) -> Reply:
        with self._cond:
            self.requests.append(req)
            queue = self._plan.get(req.path)
            reply = queue.pop(0) if queue else Reply()
            self._cond.notify_all()
            return reply

    def received(self, path: str | None = None) -> list[Received]:
        with self._cond:
            return [r for r in self.requests if path is None or r.path == path]

    def wait_for(self, n: int, path: str | None = None, timeout: float = 20.0) -> list[Received]:
        """Wait until `path` (or any path) got at least `n` requests; return them."""
        with self._cond:
            ok = self._cond.wait_for(
                lambda: len([r for r in self.requests if path is None or r.path == path]) >= n, timeout
            )
            got = [r for r in self.requests if path is None or r.path == path]
        assert ok, f"receiver got {len(got)} of {n} requests on {path or 'any path'} in {timeout}s"
        return got

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def running_receiver() -> Iterator[Receiver]:
    receiver = Receiver().start()
    try:
        yield receiver
    finally:
        receiver.stop()
