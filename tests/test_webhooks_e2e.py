"""Webhooks across a SIGKILL: the real server process delivering to a real receiver on
127.0.0.1, killed and started again on the same file."""

from __future__ import annotations

import base64
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from tests.e2e import start_server
from tests.helpers import REPO, delivery_state, submit, webhook_attempts
from tests.receiver import Receiver, Reply

pytestmark = pytest.mark.e2e

SECRET = "whsec_" + base64.b64encode(os.urandom(24)).decode()


def documented_verifier() -> Callable[..., bytes]:
    """The `verify` function of docs/webhooks.md ("Verifying by hand"), as a receiver copies it."""
    text = (REPO / "docs" / "webhooks.md").read_text()
    code = text.split("### Verifying by hand", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(code, namespace)
    verify: Callable[..., bytes] = namespace["verify"]
    return verify


def test_a_delivery_in_flight_at_sigkill_is_delivered_after_restart(
    tmp_path: Path, receiver: Receiver
) -> None:
    srv = start_server(tmp_path, config={"webhooks": {"secret": SECRET, "timeout": "1s"}})
    gate = threading.Event()
    receiver.script("/hook", Reply(200, gate=gate))
    try:
        c = srv.client()
        job_id = submit(c, "jobserver.examples.add", {"a": 1, "b": 2}, webhook_url=receiver.url("/hook"))
        [first] = receiver.wait_for(1, "/hook")
        srv.kill()  # mid-attempt: the attempt was never recorded
        gate.set()
        srv.restart()
        reqs = receiver.wait_for(2, "/hook")
        assert {r.headers["webhook-id"] for r in reqs} == {first.headers["webhook-id"]}
        Webhook(SECRET).verify(reqs[1].body, reqs[1].headers)
        verify = documented_verifier()
        assert verify(SECRET, reqs[1].body, reqs[1].headers) == reqs[1].body
        with pytest.raises(ValueError, match="no matching signature"):
            verify(SECRET, reqs[1].body + b" ", reqs[1].headers)
        [attempt] = webhook_attempts(srv.client(), job_id, 1)
        assert attempt["status_code"] == 200
    finally:
        gate.set()
        srv.stop()


def test_a_delivery_waiting_to_retry_at_sigkill_is_delivered_after_restart(
    tmp_path: Path, receiver: Receiver
) -> None:
    srv = start_server(tmp_path, config={"webhooks": {"secret": SECRET, "retry_schedule": ["1s", "1s"]}})
    hook = "/hook?token=receiver-secret-123"  # a receiver's own token, which no log line may show
    receiver.script(hook, Reply(503))
    try:
        c = srv.client()
        job_id = submit(c, "jobserver.examples.add", {"a": 1, "b": 2}, webhook_url=receiver.url(hook))
        [attempt] = webhook_attempts(c, job_id, 1)
        assert attempt["status_code"] == 503
        srv.kill()
        assert delivery_state(srv.tmp_path / "jobs.db", job_id) == ("pending", 1)
        srv.restart()
        reqs = receiver.wait_for(2, hook)
        assert len({r.headers["webhook-id"] for r in reqs}) == 1
        listed = webhook_attempts(srv.client(), job_id, 2)
        assert [a["status_code"] for a in listed] == [503, 200]
        assert "delivered (attempt 2, HTTP 200)" in srv.log()
        assert "receiver-secret-123" not in srv.log()
    finally:
        srv.stop()


def test_a_generated_secret_is_kept_across_restarts(tmp_path: Path, receiver: Receiver) -> None:
    srv = start_server(tmp_path)  # no secret configured
    try:
        submit(srv.client(), "jobserver.examples.add", {"a": 1, "b": 2}, webhook_url=receiver.url("/a"))
        [first] = receiver.wait_for(1, "/a")
        assert "generated a webhook signing secret" in srv.log()
        srv.kill()
        srv.restart()
        submit(srv.client(), "jobserver.examples.add", {"a": 1, "b": 2}, webhook_url=receiver.url("/b"))
        [second] = receiver.wait_for(1, "/b")
        with sqlite3.connect(f"file:{tmp_path / 'jobs.db'}?mode=ro", uri=True) as conn:
            [(secret,)] = conn.execute("SELECT value FROM meta WHERE key = 'webhook_secret'").fetchall()
        assert secret not in srv.log()
        Webhook(secret).verify(first.body, first.headers)
        Webhook(secret).verify(second.body, second.headers)
        assert srv.log().count("generated a webhook signing secret") == 1
    finally:
        srv.stop()
