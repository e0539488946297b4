"""Webhook signing, payloads, one delivery attempt, and the retry schedule.

Single attempts go through `httpx.MockTransport`; one test delivers to a real
receiver on 127.0.0.1. Host names are answered by a fake `getaddrinfo`.
"""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import http.server
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
from standardwebhooks.webhooks import Webhook

from jobserver.core.clock import rfc3339
from jobserver.webhooks import payload as webhooks
from jobserver.webhooks.netguard import WebhookGuard
from tests.fakedns import fake_getaddrinfo

NOW = 1_700_000_000.0
HOST = "hooks.example.com"
PUBLIC_V4 = "93.184.216.34"
PUBLIC_V6 = "2606:4700::1111"
SCHEDULE = [5.0, 300.0, 1800.0, 7200.0]


Handler = Callable[[httpx.Request], httpx.Response]
DNS = dict[str, list[str]]  # host name -> addresses the fake resolver answers


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[DNS]:
    """A fake resolver: names map to address lists; numeric hosts resolve for real; others fail."""
    names: DNS = {HOST: [PUBLIC_V4], "v6.example.com": [PUBLIC_V6]}

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo(names, localhost=False))
    yield names


@pytest.fixture
def secret() -> str:
    return webhooks.generate_secret()


class Receiver:
    """A MockTransport that records requests and answers with `handler`."""

    def __init__(self, handler: Handler | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.handler: Handler = handler or (lambda request: httpx.Response(204))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self))


def deliver(
    receiver: Receiver, url: str, secret: str, now: float = NOW, **kwargs: Any
) -> webhooks.AttemptResult:
    """One attempt through `receiver` with default guard settings (`allow_private`, `allow_hosts`,
    the API's `api_host` and `api_port`) and `timeout_s`, overridable by keyword."""
    options: dict[str, Any] = {"allow_private": False, "allow_hosts": ()}
    options.update(kwargs)
    timeout_s = options.pop("timeout_s", 5.0)
    guard = WebhookGuard(**options)
    body = b'{"type":"job.completed"}'
    with receiver.client() as client:
        return webhooks.deliver_once(client, url, "msg_1", body, secret, now, guard, timeout_s)


# --- secrets, signatures, payloads ---------------------------------------------


def test_generated_secret_has_whsec_prefix_and_24_byte_key(secret: str) -> None:
    assert secret.startswith("whsec_")
    assert len(webhooks.secret_key(secret)) == 24
    assert webhooks.generate_secret() != secret


def test_unpadded_secret_is_accepted() -> None:
    assert webhooks.secret_key("whsec_YWJjZA") == b"abcd"


@pytest.mark.parametrize("bad", ["whsec_", "whsec_not base64!", "whsec_####"])
def test_bad_secret_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        webhooks.secret_key(bad)


def test_sign_matches_standard_webhooks_reference(secret: str) -> None:
    body = b'{"a": 1}'
    stamp = dt.datetime.fromtimestamp(1_700_000_123, tz=dt.UTC)
    expected = Webhook(secret).sign("msg_abc", stamp, body.decode())
    assert webhooks.sign(secret, "msg_abc", 1_700_000_123, body) == expected
    assert expected.startswith("v1,") and len(base64.b64decode(expected[3:])) == 32


@pytest.mark.parametrize(
    ("status", "event"),
    [("completed", "job.completed"), ("failed", "job.failed"), ("cancelled", "job.cancelled")],
)
def test_event_type_for_finished_statuses(status: str, event: str) -> None:
    assert webhooks.event_type_for(status) == event


@pytest.mark.parametrize("status", ["pending", "running", "bogus"])
def test_event_type_for_unfinished_status_is_an_error(status: str) -> None:
    with pytest.raises(ValueError):
        webhooks.event_type_for(status)


def test_build_payload_shape() -> None:
    job = {"id": "j1", "status": "failed", "error": {"type": "ValueError", "message": "x"}}
    body = webhooks.build_payload("job.failed", job, NOW)
    assert orjson.loads(body) == {"type": "job.failed", "timestamp": rfc3339(NOW), "data": job}
    assert orjson.loads(body)["timestamp"].endswith("Z")


# --- one delivery attempt -------------------------------------------------------


def test_delivery_signature_verifies_with_standard_webhooks(dns: DNS, secret: str) -> None:
    receiver = Receiver()
    now = time.time()  # the verifier rejects timestamps more than 5 minutes from its wall clock
    result = deliver(receiver, f"https://{HOST}/hooks", secret, now=now)
    assert result.outcome == "delivered"
    (request,) = receiver.requests
    assert request.method == "POST"
    payload = Webhook(secret).verify(request.content, dict(request.headers))
    assert payload == {"type": "job.completed"}
    assert request.headers["webhook-id"] == "msg_1"
    assert request.headers["webhook-timestamp"] == str(int(now))
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == "jobserver-webhooks/1"


def test_request_goes_to_the_checked_ip_with_original_host(dns: DNS, secret: str) -> None:
    receiver = Receiver()
    deliver(receiver, f"https://{HOST}/hooks?team=a", secret)
    (request,) = receiver.requests
    assert request.url.host == PUBLIC_V4
    assert request.url.port in (None, 443)
    assert request.url.raw_path == b"/hooks?team=a"
    assert request.headers["host"] == HOST
    assert request.extensions["sni_hostname"] == HOST


def test_explicit_port_and_ipv6_target(dns: DNS, secret: str) -> None:
    receiver = Receiver()
    deliver(receiver, "http://v6.example.com:8080/x", secret)
    (request,) = receiver.requests
    assert request.url.host == PUBLIC_V6
    assert str(request.url) == f"http://[{PUBLIC_V6}]:8080/x"
    assert request.headers["host"] == "v6.example.com:8080"
    assert "sni_hostname" not in request.extensions


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        (200, "delivered"),
        (202, "delivered"),
        (204, "delivered"),
        (299, "delivered"),
        (400, "retry"),
        (404, "retry"),
        (429, "retry"),
        (500, "retry"),
        (503, "retry"),
        (410, "gave_up"),
    ],
)
def test_outcome_by_status(dns: DNS, secret: str, code: int, outcome: str) -> None:
    result = deliver(Receiver(lambda request: httpx.Response(code)), f"http://{HOST}/", secret)
    assert (result.status_code, result.outcome) == (code, outcome)
    assert (result.error is None) is (outcome == "delivered")
    assert result.duration_ms >= 0


@pytest.mark.parametrize("code", [301, 302, 307, 308])
def test_redirects_are_failures_and_not_followed(dns: DNS, secret: str, code: int) -> None:
    redirect = {"location": "http://10.0.0.1/"}
    receiver = Receiver(lambda request: httpx.Response(code, headers=redirect))
    result = deliver(receiver, f"http://{HOST}/", secret)
    assert result.outcome == "retry" and result.status_code == code
    assert result.error is not None and "redirect" in result.error
    assert len(receiver.requests) == 1


def test_retry_after_seconds(dns: DNS, secret: str) -> None:
    receiver = Receiver(lambda request: httpx.Response(429, headers={"retry-after": "120"}))
    result = deliver(receiver, f"http://{HOST}/", secret)
    assert (result.outcome, result.retry_after_s) == ("retry", 120.0)


def test_retry_after_http_date(dns: DNS, secret: str) -> None:
    date = email.utils.formatdate(NOW + 90, usegmt=True)
    receiver = Receiver(lambda request: httpx.Response(503, headers={"retry-after": date}))
    result = deliver(receiver, f"http://{HOST}/", secret)
    assert result.retry_after_s == 90.0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        ("0", 0.0),
        (" 30 ", 30.0),
        ("-5", None),
        ("1.5", None),
        ("soon", None),
        (email.utils.formatdate(NOW - 60, usegmt=True), 0.0),
        ("Tue, 14 Nov 2023 22:14:20 -0000", 60.0),
        ("Tue Nov 14 22:14:20 2023", 60.0),
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert webhooks.parse_retry_after(value, NOW) == seconds


def test_timeout_is_a_retry_with_error_text(dns: DNS, secret: str) -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    result = deliver(Receiver(slow), f"http://{HOST}/", secret, timeout_s=2.5)
    assert result.outcome == "retry" and result.status_code is None
    assert result.error is not None and "timeout after 2.5s" in result.error


def test_connection_error_is_a_retry(dns: DNS, secret: str) -> None:
    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    result = deliver(Receiver(refused), f"http://{HOST}/", secret)
    assert result.outcome == "retry" and result.status_code is None
    assert result.error is not None and "Connection refused" in result.error


def test_rebinding_to_private_address_is_refused_without_a_request(dns: DNS, secret: str) -> None:
    dns[HOST] = ["10.0.0.5"]  # the name pointed at a public address when the job was submitted
    receiver = Receiver()
    result = deliver(receiver, f"https://{HOST}/hooks", secret)
    assert result.outcome == "retry" and result.status_code is None
    assert result.error is not None and result.error.startswith("refused:")
    assert (
        HOST in result.error and "10.0.0.5" not in result.error
    )  # the delivery log does not map internal DNS
    assert receiver.requests == []


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1/", "http://[::ffff:169.254.169.254]/", "ftp://93.184.216.34/"]
)
def test_forbidden_url_is_refused_without_a_request(secret: str, url: str) -> None:
    receiver = Receiver()
    result = deliver(receiver, url, secret)
    assert result.outcome == "retry"
    assert result.error is not None and result.error.startswith("refused:")
    assert receiver.requests == []


def test_allow_hosts_lets_a_loopback_delivery_through(secret: str) -> None:
    receiver = Receiver()
    result = deliver(receiver, "http://127.0.0.1:9/x", secret, allow_hosts=("127.0.0.1",))
    assert result.outcome == "delivered"
    assert receiver.requests[0].headers["host"] == "127.0.0.1:9"


# --- retry schedule -------------------------------------------------------------


def test_next_delay_follows_schedule_within_jitter() -> None:
    for seed in range(200):
        rng = random.Random(seed)
        for attempt, base in enumerate(SCHEDULE, start=1):
            delay = webhooks.next_delay(SCHEDULE, attempt, None, rng)
            assert delay is not None and 0.8 * base <= delay <= 1.2 * base


def test_next_delay_is_jittered() -> None:
    rng = random.Random(7)
    delays = {webhooks.next_delay(SCHEDULE, 1, None, rng) for _ in range(20)}
    assert len(delays) > 10


def test_next_delay_exhausts_after_schedule() -> None:
    rng = random.Random(1)
    assert webhooks.next_delay(SCHEDULE, len(SCHEDULE), None, rng) is not None
    assert webhooks.next_delay(SCHEDULE, len(SCHEDULE) + 1, None, rng) is None
    assert webhooks.next_delay([], 1, None, rng) is None
    with pytest.raises(ValueError):
        webhooks.next_delay(SCHEDULE, 0, None, rng)


def test_next_delay_honours_retry_after() -> None:
    rng = random.Random(3)
    assert webhooks.next_delay(SCHEDULE, 1, 600.0, rng) == 600.0  # longer than the schedule: wins
    shorter = webhooks.next_delay(SCHEDULE, 2, 1.0, rng)  # shorter: the schedule still applies
    assert shorter is not None and 240.0 <= shorter <= 360.0
    assert webhooks.next_delay(SCHEDULE, 1, 10 * 86400.0, rng) == 86400.0  # capped at 24 h
    assert webhooks.next_delay(SCHEDULE, len(SCHEDULE) + 1, 60.0, rng) is None


# --- a real receiver ------------------------------------------------------------


def test_delivery_to_a_real_receiver(secret: str) -> None:
    got: dict[str, Any] = {}
    arrived = threading.Event()

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["content-length"])
            got["body"] = self.rfile.read(length)
            got["headers"] = dict(self.headers.items())
            got["path"] = self.path
            got["host"] = self.headers["host"]
            self.send_response(204)
            self.end_headers()
            arrived.set()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    # polled every 50 ms: shutdown() waits for the next poll (0.5 s by default)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        job = {"id": "j1", "status": "completed"}
        body = webhooks.build_payload("job.completed", job, time.time())
        with httpx.Client(trust_env=False) as client:
            result = webhooks.deliver_once(
                client,
                f"http://127.0.0.1:{port}/hook?x=1",
                "msg_real",
                body,
                secret,
                time.time(),
                WebhookGuard(allow_private=False, allow_hosts=("127.0.0.1",)),
                timeout_s=5.0,
            )
        assert arrived.wait(timeout=5)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert result.outcome == "delivered" and result.status_code == 204
    assert got["path"] == "/hook?x=1"
    assert got["body"] == body
    payload = Webhook(secret).verify(got["body"], got["headers"])
    assert payload["type"] == "job.completed" and payload["data"]["id"] == "j1"
    assert got["host"] == f"127.0.0.1:{port}"
