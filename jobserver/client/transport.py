"""What the sync and async clients share about sending: headers, timeouts, which failures
are retried and how long to back off, and when an event stream is resumed.

Only connection failures are retried, and only for requests that cannot do anything twice
(GETs, a submit that carries an Idempotency-Key), a few times with a short doubling pause:
enough to ride out a restart or a dropped keep-alive connection, never long enough to hide
an outage. Every transport failure that is given up on becomes `ServerUnavailableError`.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from jobserver.client.protocol import (
    DEFAULT_RECONNECT_FOR_S,
    Call,
    ClientError,
    Event,
    Request,
    error_for,
    events_request,
    is_terminal,
)
from jobserver.core.errors import DrainingError, InvalidRequestError, ServerUnavailableError

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_RETRIES = 3
FIRST_RETRY_DELAY_S = 0.1
MAX_RETRY_DELAY_S = 1.0
# a server sends a keepalive comment every 15 s on an idle event stream
EVENTS_READ_TIMEOUT_S = 45.0
# Each open event stream or long poll holds a connection, and one client may watch hundreds of
# jobs at once: httpx's default cap of 100 made the next one wait, then fail as "cannot reach".
# The server bounds connections (server.max_connections); the SDK does not.
HTTP_LIMITS = httpx.Limits(max_connections=None, max_keepalive_connections=20)


class Connection:
    """Where the server is, the key, the timeouts and the retry budget of one client."""

    def __init__(self, url: str, api_key: str | None, timeout_s: float, retries: int) -> None:
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL:
            parsed = None
        if (
            parsed is None
            or parsed.scheme not in ("http", "https")
            or not parsed.host
            or not 0 < (parsed.port or 80) < 65536
            or "?" in url  # a query or fragment would come before each call's path
            or "#" in url
        ):
            raise InvalidRequestError(f"the server's URL is http(s)://host[:port][/prefix], not {url!r}")
        self.url = url.rstrip("/")
        # whitespace around a header's value is not part of it (RFC 9110), and HTTP cannot send
        # it: a key read from a file with its trailing space is the key the server compares
        self.api_key = api_key.strip(" \t") if api_key else api_key
        self.timeout_s = float(timeout_s)
        self.retries = max(0, int(retries))
        self.reached = False  # the server has answered this client: a later outage is a restart
        self.headers()  # a key no header can carry is refused now, not at the first call

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """JSON answers, the bearer key when there is one, and the request's own headers."""
        headers = {"Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        # an Idempotency-Key is trimmed by the server (`key ` and `key` are one key); sent as it
        # is, the space would not even leave this process (httpx refuses it as a header's value)
        headers.update({name: value.strip(" \t") for name, value in (extra or {}).items()})
        for name, value in headers.items():  # refused here, not as a failure to reach the server
            if not (value.isascii() and value.isprintable()):
                what = "the API key" if name == "Authorization" else name
                raise InvalidRequestError(
                    f"{what} must be printable ASCII text (an HTTP header carries no other)"
                )
        return headers

    def timeout(self, req: Request) -> Any:
        """The request's timeout: the client's, with a longer read for a long poll."""
        if req.read_timeout_s is None:
            return httpx.USE_CLIENT_DEFAULT
        return httpx.Timeout(self.timeout_s, read=req.read_timeout_s)

    def stream_timeout(self) -> httpx.Timeout:
        """An event stream's timeout: reads outlast the server's keepalive interval."""
        return httpx.Timeout(self.timeout_s, read=max(self.timeout_s, EVENTS_READ_TIMEOUT_S))

    def kwargs(self, req: Request) -> dict[str, Any]:
        """The arguments of httpx's `request` for this request (its URL aside)."""
        headers = self.headers(req.headers)
        if not req.has_body:
            return {"params": req.params, "headers": headers}
        try:  # JSON as the standard has it: no NaN or Infinity, which the server would refuse
            body = json.dumps(req.body, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(f"the request body is not JSON: {exc}") from None
        headers["Content-Type"] = "application/json"
        return {"params": req.params, "headers": headers, "content": body.encode()}

    def checked(self, response: httpx.Response, call: Call) -> httpx.Response:
        """The response of a successful call; the call's exception for any other answer, and a
        ClientError for a success that is not JSON (the URL names some other server)."""
        self.reached = True
        if not response.is_success:
            raise error_for(response, call)
        ctype = response.headers.get("content-type", "")
        if response.status_code != 204 and "json" not in ctype:
            raise ClientError(
                response.status_code,
                {},
                f"the answer is not JSON ({ctype or 'no content type'}): is {self.url} a jobserver?",
            )
        return response

    def in_flight_wait_s(self, req: Request, response: httpx.Response, waited_s: float) -> float | None:
        """The pause before sending a keyed submit again when the first request with its key is
        still being handled (409 `idempotency-key-in-flight`: a double click, or this client's
        own resend after a timeout), so the caller gets that job rather than an error; None to
        give the answer as it is (not that conflict, no key, or `timeout_s` spent waiting)."""
        if response.status_code != 409 or "Idempotency-Key" not in req.headers or waited_s >= self.timeout_s:
            return None
        try:
            code = response.json().get("code")
        except (ValueError, AttributeError):
            return None
        if code != "idempotency-key-in-flight":
            return None
        return min(MAX_RETRY_DELAY_S, max(FIRST_RETRY_DELAY_S / 2, waited_s), self.timeout_s - waited_s)

    def retry_delay_s(
        self, req: Request, failures: int, exc: httpx.TransportError, failing_for_s: float = 0.0
    ) -> float:
        """The pause before sending again after `failures` failures in a row, the first of them
        `failing_for_s` ago; raises when it must not.

        A request is sent again when sending it twice cannot do anything twice, or when it was
        never sent: a connection that could not be made carried nothing. A watch's poll of a
        server that answered this client before is sent again for its `reconnect_for_s` (the
        server restarts); otherwise the client's `retries` bound the resends."""
        refuse_unsendable(exc)
        pause_s = reconnect_pause_s(failures, req.reconnect_for_s, failing_for_s)
        if req.retry_safe and self.reached and pause_s is not None:
            return pause_s
        never_sent = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))
        if not (req.retry_safe or never_sent) or failures > self.retries:
            raise self.unavailable(exc) from exc
        return _backoff_s(failures)

    def unavailable(self, exc: httpx.TransportError) -> ServerUnavailableError:
        """The error for a transport failure, naming the server and what went wrong."""
        reason = str(exc) or type(exc).__name__
        return ServerUnavailableError(self.url, f"{type(exc).__name__}: {reason}")


def refuse_unsendable(exc: httpx.TransportError | DrainingError) -> None:
    """A request httpx would not put on the wire (a header it cannot carry) is the caller's
    error, raised at once: no server was tried, so it is not a failure to reach one."""
    if isinstance(exc, httpx.LocalProtocolError):
        raise InvalidRequestError(f"the request cannot be sent as HTTP: {exc}") from exc


def reconnect_pause_s(failures: int, window_s: float, failing_for_s: float) -> float | None:
    """The pause before the next try of a watch that rides a restart, `failures` failures in a
    row and `failing_for_s` seconds into its reconnect window; None once the window is spent."""
    left_s = window_s - failing_for_s
    return min(_backoff_s(failures), left_s) if left_s > 0 else None


def _backoff_s(failures: int) -> float:
    """The pause before the next try after `failures` failures in a row: short and doubling."""
    return float(min(FIRST_RETRY_DELAY_S * 2.0 ** (failures - 1), MAX_RETRY_DELAY_S))


class EventResumer:
    """The state of one `events()` iteration across reconnections.

    After a dropped connection it asks again with `Last-Event-ID` set to the last event
    seen. A stream that ends cleanly is over when its last event was a terminal status,
    or when two connections in a row brought nothing new (the job is already over). One
    empty connection is not enough: a stopping server ends its streams with nothing, and
    the next connection then learns that it drains (503) or is gone.
    """

    def __init__(
        self,
        connection: Connection,
        job_id: str,
        last_event_id: str | int | None,
        follow: bool,
        reconnect_for: float = DEFAULT_RECONNECT_FOR_S,
    ):
        self._connection = connection
        self._job_id = job_id
        self._follow = follow
        self._reconnect_for = max(0.0, float(reconnect_for))
        self.last_event_id = None if last_event_id is None else str(last_event_id)
        self._failures = 0
        self._first_failure_at = 0.0
        self._got_any = False
        self._empty_in_a_row = 0
        self._ended = False

    def request(self) -> Request:
        """The next connection's request."""
        self._got_any = False
        return events_request(self._job_id, self.last_event_id, self._follow)

    def seen(self, event: Event) -> None:
        """Remember an event handed to the caller."""
        self._failures = 0
        self._got_any = True
        if event.id is not None:
            self.last_event_id = event.id
        self._ended = is_terminal(event)

    def dropped(self, req: Request, exc: httpx.TransportError | DrainingError) -> float:
        """The pause before reconnecting after a dropped connection or a draining server's 503
        (its streams end, then it refuses new ones until it stops). A watch that has had
        events outlives a restart: it keeps trying for `reconnect_for` seconds from the first
        failure in a row, then as many times as the client's `retries`, and then raises
        ServerUnavailableError, as at once for a server that was never reached."""
        refuse_unsendable(exc)
        self._failures += 1
        now = time.monotonic()
        if self._failures == 1:
            self._first_failure_at = now
        pause_s = reconnect_pause_s(self._failures, self._reconnect_for, now - self._first_failure_at)
        if pause_s is not None and self.last_event_id is not None:
            return pause_s
        if not isinstance(exc, DrainingError):
            return self._connection.retry_delay_s(req, self._failures, exc)
        if self._failures > self._connection.retries:
            raise ServerUnavailableError(
                self._connection.url, "it is shutting down (503 draining); watch again once it is back"
            ) from exc
        return _backoff_s(self._failures)

    def over(self) -> bool:
        """After a clean end of stream: True when there is nothing more to wait for."""
        if self._ended or not self._follow:
            return True
        self._empty_in_a_row = 0 if self._got_any else self._empty_in_a_row + 1
        return self._empty_in_a_row >= 2
