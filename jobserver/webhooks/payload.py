"""Webhook payloads, Standard Webhooks signatures, and one delivery attempt.

Owns: the `whsec_` secret format, the signature, the event body, sending one
POST through an injected `httpx.Client` (`deliver_once`), classifying its
answer (`AttemptResult`), and the wait before the next attempt (`next_delay`).

Does not own retries over time: the outbox (a table plus a sender thread)
stores each attempt and calls `deliver_once` / `next_delay` again. This module
must not import the database layer (models, store), Starlette or Huey; it
takes `now` as an argument and never reads the wall clock (`duration_ms`
comes from a monotonic timer).

Each attempt re-runs the SSRF check (`jobserver.webhooks.netguard`) and then connects
to the checked IP address itself, sending the original `Host` header (and TLS
SNI name), so a DNS answer that changes between check and connect cannot
steer the request to a private address. Redirects are never followed.
"""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import hashlib
import hmac
import ipaddress
import random
import secrets
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import orjson

from jobserver.core.clock import rfc3339
from jobserver.core.config import webhook_secret_key
from jobserver.core.errors import WebhookURLError
from jobserver.webhooks import netguard

SECRET_PREFIX = "whsec_"
USER_AGENT = "jobserver-webhooks/1"
MAX_RETRY_AFTER_S = 24 * 3600.0
JITTER = 0.2  # each scheduled wait is scaled by a random factor in [1 - JITTER, 1 + JITTER]

_EVENT_TYPES = {
    "completed": "job.completed",
    "failed": "job.failed",
    "cancelled": "job.cancelled",
    "waiting": "job.waiting",  # only while waiting for a signal: an approver can be told
}

Outcome = Literal["delivered", "retry", "gave_up"]


@dataclass(frozen=True)
class AttemptResult:
    """What one delivery attempt got back, and what to do next."""

    status_code: int | None  # None when no HTTP answer arrived
    error: str | None  # None when delivered
    duration_ms: float
    retry_after_s: float | None  # the receiver's Retry-After, in seconds from `now`
    outcome: Outcome  # delivered: 2xx; gave_up: 410; retry: anything else


def generate_secret() -> str:
    """A new signing secret: "whsec_" + base64 of 24 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode("ascii")


def secret_key(secret: str) -> bytes:
    """The HMAC key inside a "whsec_<base64>" secret; ValueError when it is not valid."""
    return webhook_secret_key(secret)


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: "v1," + base64 HMAC-SHA256 of "id.timestamp.body"."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def event_type_for(status: str) -> str:
    """The event type for a finished (or signal-waiting) job's status; ValueError otherwise."""
    try:
        return _EVENT_TYPES[status]
    except KeyError:
        raise ValueError(f"no webhook event for job status {status!r}") from None


def build_payload(event_type: str, job: dict[str, Any], timestamp: float) -> bytes:
    """The JSON body: {"type", "timestamp" (RFC 3339), "data": job}."""
    return orjson.dumps({"type": event_type, "timestamp": rfc3339(timestamp), "data": job})


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait per a Retry-After value (delta-seconds or HTTP-date); None if absent/bad."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000" parses as naive; HTTP-dates are UTC anyway
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, when.timestamp() - now)


def _pinned_request_target(url: str, ip: netguard.IPAddress, port: int) -> tuple[str, str, str]:
    """(URL with the host replaced by `ip`, original Host header value, TLS server name)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    bare_ip = str(ip).split("%", 1)[0]
    ip_host = f"[{bare_ip}]" if ip.version == 6 else bare_ip
    path = parts.path or "/"
    query = f"?{parts.query}" if parts.query else ""
    pinned = f"{parts.scheme.lower()}://{ip_host}:{port}{path}{query}"
    try:
        ipaddress.ip_address(host)
        is_literal = True
    except ValueError:
        is_literal = False
    server_name = host if is_literal else host.encode("idna").decode("ascii")
    host_header = f"[{host}]" if ":" in host else server_name
    if parts.port is not None:
        host_header += f":{parts.port}"
    return pinned, host_header, server_name


def _classify(response: httpx.Response) -> tuple[str | None, Outcome]:
    """(error text, outcome) for an HTTP answer: 2xx delivered, 410 gave up, else retry."""
    code = response.status_code
    if 200 <= code < 300:
        return None, "delivered"
    if code == 410:
        return "HTTP 410 Gone: the receiver asked to stop", "gave_up"
    if 300 <= code < 400:
        location = response.headers.get("location", "")
        return f"HTTP {code} redirect to {location!r} (redirects are not followed)", "retry"
    return f"HTTP {code}", "retry"


def deliver_once(
    client: httpx.Client,
    url: str,
    msg_id: str,
    body: bytes,
    secret: str,
    now: float,
    guard: netguard.WebhookGuard,
    timeout_s: float,
    trace_headers: Mapping[str, str] | None = None,
    previous_secrets: Sequence[str] = (),
) -> AttemptResult:
    """POST one signed delivery to `url`; never raises for network or receiver errors.

    Signed with `secret`, and with each of `previous_secrets` too while receivers move to it.

    `trace_headers` (`traceparent`, ...) continue the job's trace at the receiver.

    The URL is checked again by `guard` and the request goes to its first allowed address.
    A refused URL is an attempt with outcome "retry" and no request sent.
    Only a malformed `secret` raises (ValueError): that is a configuration bug.
    """
    started = time.perf_counter()

    def result(
        code: int | None, error: str | None, outcome: Outcome, retry_after_s: float | None = None
    ) -> AttemptResult:
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        return AttemptResult(code, error, elapsed_ms, retry_after_s, outcome)

    try:
        _scheme, _host, port = netguard.split_webhook_url(url)
        addresses = guard.check(url)
        pinned_url, host_header, server_name = _pinned_request_target(url, addresses[0], port)
    except WebhookURLError as exc:
        return result(None, f"refused: {exc.reason}", "retry")
    except UnicodeError as exc:  # a host name that IDNA cannot encode
        return result(None, f"refused: bad host name ({exc})", "retry")
    timestamp = int(now)
    headers = {
        "host": host_header,
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(
            sign(key, msg_id, timestamp, body) for key in (secret, *previous_secrets)
        ),
        # One connection per attempt: the pool is keyed by IP, and a kept-alive
        # TLS connection must not carry a request for another host name.
        "connection": "close",
    }
    headers = {**(trace_headers or {}), **headers}  # never in place of our own
    deadline = _Deadline(timeout_s)
    extensions: dict[str, Any] = {"trace": deadline.trace}
    if pinned_url.startswith("https:"):
        extensions["sni_hostname"] = server_name
    try:
        # stream(): the receiver's body is never read, so it cannot fill memory.
        with client.stream(
            "POST",
            pinned_url,
            content=body,
            headers=headers,
            extensions=extensions,
            follow_redirects=False,
            timeout=httpx.Timeout(timeout_s),
        ) as response:
            error, outcome = _classify(response)
            retry_after_s = parse_retry_after(response.headers.get("retry-after"), now)
            return result(response.status_code, error, outcome, retry_after_s)
    except httpx.TimeoutException as exc:
        return result(None, f"timeout after {timeout_s:g}s ({type(exc).__name__})", "retry")
    except (httpx.HTTPError, httpx.InvalidURL, OSError, ValueError) as exc:
        if deadline.fired:
            return result(None, f"timeout after {timeout_s:g}s (the whole attempt)", "retry")
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return result(None, f"connection failed: {detail}", "retry")
    finally:
        deadline.cancel()


class _Deadline:
    """Bounds a whole attempt, not each read: httpx's timeout restarts with every byte, so a
    receiver that answers one byte a second would hold a delivery thread as long as it liked.
    At the deadline the attempt's socket is shut down, which ends the read blocked on it."""

    def __init__(self, timeout_s: float) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self.fired = False
        self._timer = threading.Timer(timeout_s, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore's trace hook: remember the connection's socket once it is made."""
        if event == "connection.connect_tcp.complete":
            sock = info["return_value"].get_extra_info("socket")
            with self._lock:
                self._sock = sock
                late = self.fired
            if late:
                _shut(sock)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            sock = self._sock
        if sock is not None:
            _shut(sock)

    def cancel(self) -> None:
        self._timer.cancel()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


def next_delay(
    schedule: Sequence[float], attempt: int, retry_after_s: float | None, rng: random.Random
) -> float | None:
    """Seconds to wait after attempt number `attempt` (1-based); None when the schedule is used up.

    The scheduled wait is jittered by ±20%. A Retry-After (capped at 24 h)
    can lengthen the wait but never shorten it.
    """
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    if attempt > len(schedule):
        return None
    delay = schedule[attempt - 1] * rng.uniform(1.0 - JITTER, 1.0 + JITTER)
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, MAX_RETRY_AFTER_S))
    return delay
