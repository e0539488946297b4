"""The HTTP/1.1 connection protocol: uvicorn's httptools protocol with the bounds it lacks.

httptools accepts a request head of any size (it keeps appending to a header
value that never ends) and uvicorn waits for a head for ever, so without these
bounds any client can hold memory and connections for as long as it likes:

- a request head (request line and header lines) larger than
  `max_header_bytes`, or with more than `max_header_lines` header lines, gets a
  431 problem and the connection is closed; the bytes past the limit are never
  fed to the parser, and header lines are counted after each read, so memory
  stays bounded by the limits per connection;
- a client must send a whole head within `header_timeout` of connecting or of
  sending the first byte of its next request (slowloris); past it (checked at
  most half a timeout late on kept-alive connections), a 408 problem, and the
  connection is closed;
- and the whole body within `body_timeout` of the end of its head (a body sent a
  byte at a time would hold a connection, counted busy, for ever): past it, a 408
  problem if no answer has begun (the app's read of the body ends as a disconnect),
  and the connection is closed;
- at most `max_connections` connections are open. A connection over the cap
  takes the place of the one that has waited longest for a request head (a slow
  or idle client), so probes such as /healthz still get through a slow-client
  attack; when every connection is busy with a request, the new one gets a 503
  problem and is closed. A WARNING says the cap was hit, at most once per
  `WARN_INTERVAL_S`, with the counts since the last one.

A refused connection stops reading from the client, sends its answer, and
lingers up to `LINGER_S` (and while fewer than `MAX_LINGERING` do) draining what the client still sends before closing,
so the client reads the answer rather than a connection reset.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from jobserver.http.problems import problem

log = logging.getLogger(__name__)
WARN_INTERVAL_S = 10.0
LINGER_S = 2.0
MAX_LINGERING = 16


@dataclass(frozen=True)
class ConnectionLimits:
    """The bounds one server process applies to every connection."""

    max_header_bytes: int
    max_header_lines: int
    header_timeout_s: float
    max_connections: int
    body_timeout_s: float


@dataclass
class CapWarnings:
    """Counts what the connection cap did and says so in WARNINGs at most `interval_s` apart.

    The first hit is reported at once; later ones are counted and reported together
    when the interval has passed, so an attack gives one line every `interval_s`,
    not one per connection. Used on the event loop's thread only."""

    limit: int
    interval_s: float = WARN_INTERVAL_S
    evicted: int = 0
    refused: int = 0
    _last_at: float | None = field(default=None, repr=False)
    _report: asyncio.TimerHandle | None = field(default=None, repr=False)

    def hit(self, evicted: bool) -> None:
        """Count one connection over the cap; warn now, or once the interval has passed."""
        if evicted:
            self.evicted += 1
        else:
            self.refused += 1
        if self._report is not None:
            return
        wait_s = 0.0 if self._last_at is None else self._last_at + self.interval_s - time.monotonic()
        if wait_s <= 0:
            self.report()
        else:
            self._report = asyncio.get_running_loop().call_later(wait_s, self.report)

    def report(self) -> None:
        """Log what the cap did since the last report."""
        self._report = None
        self._last_at = time.monotonic()
        log.warning(
            "connection limit reached (server.max_connections = %d): %d waiting client(s) "
            "closed to make room, %d new connection(s) refused with 503",
            self.limit, self.evicted, self.refused,
            extra={"action": "connection_limit"},
        )  # fmt: skip
        self.evicted = self.refused = 0


class OneWritePerResponse:
    """The transport as a request's cycle sees it: uvicorn writes a response's head and its body
    with two `write` calls, two system calls and two TCP segments for every small answer; this
    holds the head back until the body's first write and sends both with one. A head whose body
    does not follow at once (a stream that has nothing to send yet) goes out at the end of the
    event loop's current pass, so no client waits for headers."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        if self._held is None:
            if data.startswith(b"HTTP/"):  # a response head: hold it for its body
                self._held = data
                self._loop.call_soon(self.flush)
                return
            self._transport.write(data)
        else:
            held, self._held = self._held, None
            self._transport.write(held + data)

    def flush(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """One client connection, with bounded request heads, a head deadline and the connection cap."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: ConnectionLimits,
        cap_warnings: CapWarnings,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        self.cap_warnings = cap_warnings
        self._head_bytes: int | None = 0  # bytes of the head being read; None while a request runs
        self._too_many_lines = False  # set by the parser's callbacks; the refusal follows once it returns
        self._head_started_at: float | None = None  # loop time the head being read began; None: no head yet
        self._body_started_at: float | None = (
            None  # loop time the head of a request still reading its body ended
        )
        self._deadline_check: asyncio.TimerHandle | None = None
        self._waiting_since = 0.0  # loop time since when this connection has had no request running
        self._refused = False

    # ------------------------------------------------------------ connection
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._writes = OneWritePerResponse(transport, self.loop)
        self._head_started_at = self._waiting_since = self.loop.time()
        self._deadline_check = self.loop.call_later(self.limits.header_timeout_s, self._check_deadlines)
        if len(self.connections) > self.limits.max_connections:
            self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_deadline_checks()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering: the answer is sent, what the client still sends is dropped
        while data and not self.transport.is_closing():
            if self._head_bytes is None:  # a body, or the end of the head just parsed
                super().data_received(data)
                return
            room = self.limits.max_header_bytes - self._head_bytes
            if room <= 0:
                self._refuse_head_too_large(f"the request head exceeds {self.limits.max_header_bytes} bytes")
                return
            piece, data = data[:room], data[room:]
            self._head_bytes += len(piece)
            super().data_received(piece)
            if self._too_many_lines or (self.headers and len(self.headers) > self.limits.max_header_lines):
                self._refuse_head_too_large(
                    f"the request has more than {self.limits.max_header_lines} header lines"
                )
                return

    # ------------------------------------------------------ parser callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_started_at is None:
            self._head_started_at = self.loop.time()

    def on_headers_complete(self) -> None:
        if len(self.headers) > self.limits.max_header_lines:
            self._too_many_lines = True  # refused once the parser returns; the app never sees it
            return
        self._head_started_at = self._head_bytes = None
        self._body_started_at = self.loop.time()
        self._check_by(self._body_started_at + self.limits.body_timeout_s)
        super().on_headers_complete()
        if self.cycle is not None and self.cycle.transport is self.transport:
            self.cycle.transport = self._writes  # type: ignore[assignment]

    def on_body(self, body: bytes) -> None:
        if not self._too_many_lines:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._too_many_lines:
            return
        self._head_bytes = 0  # what follows is the next request's head
        self._body_started_at = None
        super().on_message_complete()

    def on_response_complete(self) -> None:
        starts_next = bool(self.pipeline)  # the next pipelined request, started by uvicorn
        super().on_response_complete()
        self._waiting_since = self.loop.time()
        if self._refused and not starts_next and not self.transport.is_closing():
            self.transport.close()  # what followed this answer was refused (see _end_body_read)

    # ---------------------------------------------------------------- limits
    def waiting_for_a_request(self) -> bool:
        """True when no request is running here: a fresh, slow, or idle kept-alive client."""
        return (
            not self._refused
            and self._head_bytes is not None
            and (self.cycle is None or self.cycle.response_complete)
            and not self.transport.is_closing()
        )

    def _make_room(self) -> None:
        """Over the cap: close the connection that has waited longest for a request, or refuse this one.

        Refused connections still lingering do not count; past MAX_LINGERING of them, they
        are closed at once, so a flood of refusals cannot use up the open files either."""
        others = [
            c
            for c in self.connections
            if c is not self and isinstance(c, BoundedHttpToolsProtocol) and not c.transport.is_closing()
        ]
        lingering = [c for c in others if c._refused]
        if len(lingering) > MAX_LINGERING:
            for c in lingering:
                c.transport.close()
        if len(others) - len(lingering) < self.limits.max_connections:
            return
        waiting = [c for c in others if c.waiting_for_a_request()]
        if waiting:
            min(waiting, key=lambda c: c._waiting_since).transport.close()
            self.cap_warnings.hit(evicted=True)
            return
        self.cap_warnings.hit(evicted=False)
        self._refuse(
            503,
            "too-many-connections",
            "Too many connections",
            "the server is at its connection limit; retry later",
        )

    def _check_deadlines(self) -> None:
        """Close a client whose head or body is late, else look again when one would be.

        One timer per connection rather than one per request keeps the cost of a request
        to a clock read; a head or body that begins while no check is due is seen at most
        half a timeout late."""
        self._deadline_check = None
        if self.transport.is_closing() or self._refused:
            return
        now, limits = self.loop.time(), self.limits
        head, body = self._head_started_at, self._body_started_at
        if head is not None and now - head >= limits.header_timeout_s:
            self._head_timed_out()
            return
        if body is not None and now - body >= limits.body_timeout_s:
            self._body_timed_out()
            return
        dues = [
            head + limits.header_timeout_s if head is not None else now + limits.header_timeout_s / 2,
            body + limits.body_timeout_s if body is not None else now + limits.body_timeout_s / 2,
        ]
        self._deadline_check = self.loop.call_later(min(dues) - now, self._check_deadlines)

    def _check_by(self, due: float) -> None:
        """Make sure a deadline check runs by loop time `due`."""
        check = self._deadline_check
        if check is not None and check.when() <= due:
            return
        if check is not None:
            check.cancel()
        self._deadline_check = self.loop.call_at(due, self._check_deadlines)

    def _stop_deadline_checks(self) -> None:
        if self._deadline_check is not None:
            self._deadline_check.cancel()
            self._deadline_check = None

    def _head_timed_out(self) -> None:
        log.debug("closed a client that sent no complete request head in %ss", self.limits.header_timeout_s,
                  extra={"action": "header_timeout"})  # fmt: skip
        if self._head_bytes and (self.cycle is None or self.cycle.response_complete):
            detail = f"the request head did not arrive within {self.limits.header_timeout_s:g} s"
            self._refuse(408, "request-timeout", "Request Timeout", detail)
        else:
            self.transport.close()  # nothing sent yet, or mid-response on a pipelined connection

    def _body_timed_out(self) -> None:
        timeout_s = self.limits.body_timeout_s
        log.debug("closed a client that sent no whole request body in %ss", timeout_s,
                  extra={"action": "body_timeout"})  # fmt: skip
        if self.cycle is not None and self.cycle.response_started:
            self.transport.close()  # too late for a problem document: the answer has begun
            return
        detail = f"the request body did not arrive within {timeout_s:g} s"
        self._end_body_read(408, "request-timeout", "Request Timeout", detail)

    def _end_body_read(self, status: int, code: str, title: str, detail: str) -> None:
        """End the request whose body is being read, before any answer to it: its app's wait
        for the rest of the body ends as a disconnect, the client gets the problem document,
        and the connection closes. A request queued behind one still being answered is dropped
        instead, and the connection closes once that answer is sent (nothing may cut into it)."""
        cycle = self.cycle
        queued = [entry for entry in self.pipeline if entry[0] is cycle]
        if queued:
            self.pipeline.remove(queued[0])
            self._refused = True  # see on_response_complete
            self._stop_deadline_checks()
            return
        if cycle is None:
            self.transport.close()
            return
        cycle.disconnected = True
        cycle.message_event.set()
        self._refuse(status, code, title, detail)

    def _refuse_head_too_large(self, detail: str) -> None:
        log.debug("refused a request head: %s", detail, extra={"action": "header_too_large"})
        self._refuse(431, "request-header-fields-too-large", "Request Header Fields Too Large", detail)

    def send_400_response(self, msg: str) -> None:
        """Bytes that are not HTTP: a problem document, as for every other 4xx (uvicorn's is plain
        text). A request whose body is not valid HTTP (a bad chunk) ends as a request whose body
        is late does; a request still being answered on this connection is answered first, then
        the connection closes."""
        cycle = self.cycle
        malformed = ("malformed-request", "Malformed request")
        if cycle is not None and not cycle.response_complete:
            if self._body_started_at is not None and not cycle.response_started:
                self._end_body_read(400, *malformed, "the request body is not valid HTTP/1.1")
                return
            cycle.keep_alive = False
            self._refused = True
            return
        self._refuse(400, *malformed, "the request is not valid HTTP/1.1")

    def _refuse(self, status: int, code: str, title: str, detail: str) -> None:
        """Answer with a problem document, stop reading, and close after a short linger."""
        self._refused = True
        self._stop_deadline_checks()
        response = problem(status, code, title, detail)
        head = [STATUS_LINE[status]]
        for name, value in [
            *self.server_state.default_headers,
            *response.raw_headers,
            (b"connection", b"close"),
        ]:
            head += [name, b": ", value, b"\r\n"]
        self.transport.write(b"".join([*head, b"\r\n", bytes(response.body)]))
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()
