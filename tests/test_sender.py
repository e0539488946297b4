"""WebhookSender on a real SQLite file with the real Writer and JobStore, delivering to a
real receiver on 127.0.0.1. Time is a ManualClock; `run_once(now)` is one pass."""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from standardwebhooks.webhooks import Webhook

from jobserver.core.clock import ManualClock
from jobserver.core.config import WebhooksSettings
from jobserver.core.errors import Fail
from jobserver.core.lifecycle import Outcome
from jobserver.core.records import JobIds, NewJob
from jobserver.storage.models import create_schema, open_database
from jobserver.storage.store import JobStore
from jobserver.storage.writer import Writer
from jobserver.webhooks import payload as webhooks
from jobserver.webhooks.netguard import WebhookGuard
from jobserver.webhooks.outbox import Outbox
from jobserver.webhooks.sender import ATTEMPTS_SQL, DUE_SQL, NEXT_DUE_SQL, WebhookSender, load_secret
from tests.helpers import free_port, wait_until
from tests.receiver import Received, Receiver, Reply
from tests.storage import claim_one, crash_decider, end_attempt, limit_store, rescued_records

SECRET = webhooks.generate_secret()
SCHEDULE = (5.0, 60.0, 300.0)


@dataclass
class Env:
    db: Any
    writer: Writer
    store: JobStore
    clock: ManualClock
    receiver: Receiver
    sent: list[str]  # every URL the sender's client requested
    client: httpx.Client
    senders: list[WebhookSender]
    outbox_wake: threading.Event  # set by the store's outbox after a delivery row commits

    def sender(self, **settings: Any) -> WebhookSender:
        options: dict[str, Any] = {"allow_hosts": ("127.0.0.1",), "retry_schedule": SCHEDULE, "timeout": 5.0}
        options.update(settings)
        webhooks_settings = WebhooksSettings(**options)
        s = WebhookSender(
            webhooks_settings,
            self.db,
            self.writer,
            self.clock,
            SECRET,
            False,
            WebhookGuard(webhooks_settings.allow_private, webhooks_settings.allow_hosts),
            client=self.client,
            rng=random.Random(7),
            wake=self.outbox_wake,
        )
        self.senders.append(s)
        return s

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return list(self.db.execute_sql(sql, params).fetchall())

    def delivery(self, job_id: str) -> tuple[Any, ...]:
        rows = self.rows(
            "SELECT id, state, attempts, next_attempt_at, payload FROM webhook_deliveries WHERE job_id = ?",
            (job_id,),
        )
        assert len(rows) == 1, rows
        return rows[0]

    def finish(self, url: str | None, status: str = "completed") -> str:
        """A job with `url` as webhook, taken to `status` through the store."""
        now = self.clock.now()
        job_id = JobIds().new()
        new = NewJob(job_id, "tests.task", "{}", 0, 1, None, url, None, now, now)
        self.store.enqueue(new, None, lambda: None).result()
        if status == "cancelled":
            self.store.cancel(job_id, now, lambda rec: None).result()
            return job_id
        claim = claim_one(self.store, "owner", now, 30.0)
        assert claim is not None and claim.job_id == job_id
        if status == "completed":
            end_attempt(self.store, claim, Outcome.completed("42"), now)
        else:
            end_attempt(self.store, claim, Outcome.raised(Fail("boom")), now)
        return job_id


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    db = open_database("sqlite:///jobs.db", tmp_path / "jobs.db", "normal", 5.0)
    create_schema(db)
    writer = Writer(db, False)
    writer.start()
    outbox_wake = threading.Event()
    store = JobStore(db, writer, False, limit_store(db, writer), Outbox(outbox_wake).record)
    receiver = Receiver().start()
    sent: list[str] = []
    client = httpx.Client(
        trust_env=False,
        follow_redirects=False,
        event_hooks={"request": [lambda request: sent.append(str(request.url))]},
    )
    e = Env(db, writer, store, ManualClock(time.time()), receiver, sent, client, [], outbox_wake)
    yield e
    for s in e.senders:
        s.stop()
    client.close()
    receiver.stop()
    writer.stop()
    db.close()


def signature_ok(req: Received) -> bool:
    h = req.headers
    return h["webhook-signature"] == webhooks.sign(
        SECRET, h["webhook-id"], int(h["webhook-timestamp"]), req.body
    )


# --- one attempt per outcome ------------------------------------------------------------


def test_2xx_is_delivered_once_with_a_standard_webhooks_signature(env: Env) -> None:
    sender = env.sender()
    job_id = env.finish(env.receiver.url("/hook"))
    assert sender.run_once(env.clock.now()) == 1
    [req] = env.receiver.received("/hook")
    delivery_id, state, attempts, next_at, payload = env.delivery(job_id)
    assert (state, attempts, next_at) == ("delivered", 1, None)
    assert req.headers["webhook-id"] == delivery_id
    assert req.body == payload.encode()  # the stored bytes, as they are
    Webhook(SECRET).verify(req.body, req.headers)
    body = orjson.loads(req.body)
    assert body["type"] == "job.completed" and body["data"]["id"] == job_id
    assert body["data"]["result"] == 42
    assert sender.run_once(env.clock.now() + 10_000) == 0


@pytest.mark.parametrize(("status", "event"), [("failed", "job.failed"), ("cancelled", "job.cancelled")])
def test_failed_and_cancelled_jobs_send_their_event(env: Env, status: str, event: str) -> None:
    sender = env.sender()
    job_id = env.finish(env.receiver.url("/hook"), status)
    assert sender.run_once(env.clock.now()) == 1
    [req] = env.receiver.received("/hook")
    assert orjson.loads(req.body)["type"] == event
    assert orjson.loads(req.body)["data"]["status"] == status
    assert env.delivery(job_id)[1] == "delivered"


def test_during_a_secret_rotation_each_delivery_verifies_with_either_secret(env: Env) -> None:
    """Standard Webhooks' list of signatures: receivers still on the old secret and those
    already on the new one both accept, so the two can be moved one at a time."""
    old = webhooks.generate_secret()
    sender = env.sender(previous_secrets=(old,))
    env.finish(env.receiver.url("/hook"))
    assert sender.run_once(env.clock.now()) == 1
    [req] = env.receiver.received("/hook")
    assert len(req.headers["webhook-signature"].split(" ")) == 2
    for secret in (SECRET, old):
        assert Webhook(secret).verify(req.body, dict(req.headers))["type"] == "job.completed"
    with pytest.raises(Exception, match="signature"):
        Webhook(webhooks.generate_secret()).verify(req.body, dict(req.headers))


def test_job_without_webhook_url_has_no_delivery(env: Env) -> None:
    sender = env.sender()
    job_id = env.finish(None)
    assert env.rows("SELECT * FROM webhook_deliveries WHERE job_id = ?", (job_id,)) == []
    assert sender.run_once(env.clock.now()) == 0


def test_retries_keep_the_webhook_id_and_body_and_sign_afresh(env: Env) -> None:
    sender = env.sender()
    env.receiver.script("/hook", Reply(500), Reply(503))
    job_id = env.finish(env.receiver.url("/hook"))
    t0 = env.clock.now()
    assert sender.run_once(t0) == 1
    delivery_id, state, attempts, next_at, payload = env.delivery(job_id)
    assert (state, attempts) == ("pending", 1)
    assert t0 + SCHEDULE[0] * 0.8 <= next_at <= t0 + SCHEDULE[0] * 1.2
    assert sender.run_once(t0 + 1) == 0  # not due yet
    env.clock.advance(next_at - t0)
    assert sender.run_once(env.clock.now()) == 1
    next_at = env.delivery(job_id)[3]
    assert next_at >= env.clock.now() + SCHEDULE[1] * 0.8
    env.clock.advance(next_at - env.clock.now())
    assert sender.run_once(env.clock.now()) == 1
    assert env.delivery(job_id)[1:4] == ("delivered", 3, None)

    reqs = env.receiver.received("/hook")
    assert len(reqs) == 3
    assert {r.headers["webhook-id"] for r in reqs} == {delivery_id}
    assert {r.body for r in reqs} == {payload.encode()}
    stamps = [int(r.headers["webhook-timestamp"]) for r in reqs]
    assert stamps == sorted(stamps) and len(set(stamps)) == 3
    assert all(signature_ok(r) for r in reqs)

    listed = sender.attempts(job_id)
    assert [(a["attempt"], a["status_code"]) for a in listed] == [(1, 500), (2, 503), (3, 200)]
    assert [a["error"] is None for a in listed] == [False, False, True]
    assert all(a["id"] == delivery_id and a["duration_ms"] >= 0 and a["at"].endswith("Z") for a in listed)
    assert {a["type"] for a in listed} == {"job.completed"}


def test_retry_after_lengthens_the_wait(env: Env) -> None:
    sender = env.sender()
    env.receiver.script("/hook", Reply(503, {"Retry-After": "3600"}))
    job_id = env.finish(env.receiver.url("/hook"))
    t0 = env.clock.now()
    sender.run_once(t0)
    assert env.delivery(job_id)[3] == pytest.approx(t0 + 3600)
    assert sender.run_once(t0 + 3599) == 0
    assert sender.run_once(t0 + 3600) == 1


def test_the_wait_before_a_retry_counts_from_the_end_of_the_failed_attempt(env: Env) -> None:
    """An attempt that used its whole timeout is not followed by the next one at once."""
    sender = env.sender()
    gate = threading.Event()
    env.receiver.script("/hook", Reply(500, gate=gate))
    job_id = env.finish(env.receiver.url("/hook"))
    t0 = env.clock.now()
    attempt = threading.Thread(target=sender.run_once, args=(t0,))
    attempt.start()
    wait_until(lambda: env.receiver.received("/hook"), 5, message="the attempt to reach the receiver")
    env.clock.advance(40.0)  # the receiver takes 40 s to answer
    gate.set()
    attempt.join(10)
    next_at = env.delivery(job_id)[3]
    assert t0 + 40 + SCHEDULE[0] * 0.8 <= next_at <= t0 + 40 + SCHEDULE[0] * 1.2


def test_a_receiver_that_answers_a_byte_at_a_time_is_given_up_at_the_timeout(env: Env) -> None:
    """The timeout bounds the whole attempt: a receiver that keeps each read alive cannot hold
    a delivery thread (and with a few of them, every delivery) for longer."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def drip() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nX-Drip: ")
            for _ in range(300):  # one header byte every 0.1 s, for 30 s unless cut off
                if stop.wait(0.1):
                    return
                try:
                    conn.sendall(b"x")
                except OSError:
                    return

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
    sender = env.sender(timeout=1.0)
    job_id = env.finish(url)
    t0 = time.monotonic()
    assert sender.run_once(env.clock.now()) == 1
    elapsed = time.monotonic() - t0
    stop.set()
    dripper.join(5)
    listener.close()
    assert elapsed < 10, elapsed  # the drip alone would have taken 30 s
    assert env.delivery(job_id)[1:3] == ("pending", 1)
    [attempt] = sender.attempts(job_id)
    assert attempt["error"] == "timeout after 1s (the whole attempt)", attempt


def test_410_stops_for_good(env: Env) -> None:
    sender = env.sender()
    env.receiver.script("/hook", Reply(410))
    job_id = env.finish(env.receiver.url("/hook"))
    assert sender.run_once(env.clock.now()) == 1
    assert env.delivery(job_id)[1:4] == ("failed", 1, None)
    assert sender.run_once(env.clock.now() + 10 * 86400) == 0
    assert len(env.receiver.received()) == 1
    [attempt] = sender.attempts(job_id)
    assert attempt["status_code"] == 410 and "410" in attempt["error"]


def test_schedule_exhaustion_fails_the_delivery(env: Env) -> None:
    sender = env.sender()
    env.receiver.script("/hook", *[Reply(500)] * 10)
    job_id = env.finish(env.receiver.url("/hook"))
    for _ in range(len(SCHEDULE) + 1):
        assert sender.run_once(env.clock.now()) == 1
        env.clock.advance(1000)
    assert env.delivery(job_id)[1:4] == ("failed", len(SCHEDULE) + 1, None)
    assert sender.run_once(env.clock.now() + 10 * 86400) == 0
    assert len(env.receiver.received()) == len(SCHEDULE) + 1


def test_redirect_is_a_failure_and_is_not_followed(env: Env) -> None:
    sender = env.sender()
    env.receiver.script("/hook", Reply(301, {"Location": env.receiver.url("/landing")}))
    job_id = env.finish(env.receiver.url("/hook"))
    sender.run_once(env.clock.now())
    assert env.delivery(job_id)[1:3] == ("pending", 1)
    [attempt] = sender.attempts(job_id)
    assert attempt["status_code"] == 301 and "redirect" in attempt["error"]
    assert env.receiver.received("/landing") == []
    assert env.sent == [env.receiver.url("/hook")]


def test_redirect_to_a_forbidden_address_is_not_attempted(env: Env) -> None:
    sender = env.sender()
    env.receiver.script("/hook", Reply(302, {"Location": "http://169.254.169.254/latest/meta-data/"}))
    job_id = env.finish(env.receiver.url("/hook"))
    sender.run_once(env.clock.now())
    [attempt] = sender.attempts(job_id)
    assert attempt["status_code"] == 302 and "169.254.169.254" in attempt["error"]
    assert not any("169.254.169.254" in url for url in env.sent)
    assert env.sent == [env.receiver.url("/hook")]


def test_connection_refused_is_recorded_and_retried(env: Env) -> None:
    sender = env.sender()
    job_id = env.finish(f"http://127.0.0.1:{free_port()}/hook")
    sender.run_once(env.clock.now())
    [attempt] = sender.attempts(job_id)
    assert attempt["status_code"] is None and attempt["error"].startswith("connection failed")
    assert env.delivery(job_id)[1:3] == ("pending", 1)


def test_url_no_longer_allowed_is_refused_without_a_request(env: Env) -> None:
    job_id = env.finish(env.receiver.url("/hook"))
    sender = env.sender(allow_hosts=())  # the operator tightened the policy after the submit
    sender.run_once(env.clock.now())
    [attempt] = sender.attempts(job_id)
    assert attempt["status_code"] is None and attempt["error"].startswith("refused")
    assert env.sent == [] and env.receiver.received() == []


# --- waking, threads, leases ------------------------------------------------------------


def test_every_final_status_commit_wakes_the_sender(env: Env) -> None:
    woken = env.outbox_wake
    url = env.receiver.url("/hook")
    for status in ("completed", "failed", "cancelled"):
        woken.clear()
        env.finish(url, status)
        assert woken.is_set(), status  # after-commit hooks run before the future resolves
    woken.clear()
    env.finish(None)
    assert not woken.is_set()
    # a rescue that gives a job up (Crashed) also writes a delivery
    now = env.clock.now()
    job_id = JobIds().new()
    env.store.enqueue(
        NewJob(job_id, "tests.task", "{}", 0, 1, None, url, None, now, now), None, lambda: None
    ).result()
    claim_one(env.store, "dead-owner", now, 1.0)
    rescued = env.store.rescue(
        now + 5, "me", False, crash_decider(lambda task: "fail"), lambda: None
    ).result()
    assert [r.status for r in rescued_records(rescued)] == ["failed"]
    assert woken.is_set()


def test_the_thread_delivers_promptly_and_a_slow_receiver_holds_up_only_itself(env: Env) -> None:
    sender = env.sender()
    sender.start()
    gate = threading.Event()
    env.receiver.script("/slow", Reply(200, gate=gate))
    try:
        slow_job = env.finish(env.receiver.url("/slow"))
        env.receiver.wait_for(1, "/slow", timeout=5)
        fast_job = env.finish(env.receiver.url("/fast"))
        env.receiver.wait_for(1, "/fast", timeout=5)
        wait_until(lambda: env.delivery(fast_job)[1] == "delivered", 5, message="the fast delivery recorded")
        assert env.delivery(slow_job)[1:3] == ("pending", 0)
    finally:
        gate.set()
    wait_until(lambda: env.delivery(slow_job)[1] == "delivered", 5, message="the slow delivery recorded")


def test_a_dead_receiver_with_many_deliveries_leaves_slots_for_other_hosts(env: Env) -> None:
    """Many jobs pointing at a receiver that never answers must not take every sending slot:
    a delivery to another host goes out at once, not after that receiver's timeout. The
    deliveries held back stay pending and go out, once each, when their host has room."""
    sender = env.sender(timeout=10.0)
    gate = threading.Event()
    env.receiver.script("/dead", *[Reply(200, gate=gate)] * 12)
    healthy = Receiver().start()  # another port, so another host
    try:
        dead_jobs = [env.finish(env.receiver.url("/dead")) for _ in range(12)]
        sender.start()
        env.receiver.wait_for(6, "/dead", timeout=5)
        env.clock.advance(1.0)  # the healthy delivery is the newest due row
        healthy_job = env.finish(healthy.url("/hook"))
        started = time.monotonic()
        healthy.wait_for(1, "/hook", timeout=1.0)  # 10 s (the dead receiver's timeout) before the fix
        wait_until(lambda: env.delivery(healthy_job)[1] == "delivered", 1.0, message="the healthy delivery")
        assert time.monotonic() - started < 1.0
        assert len(env.receiver.received("/dead")) == 6  # the rest wait for their own host's slots
        assert all(env.delivery(job)[1:3] == ("pending", 0) for job in dead_jobs)
    finally:
        gate.set()
        healthy.stop()
    wait_until(
        lambda: all(env.delivery(job)[1] == "delivered" for job in dead_jobs),
        5,
        message="the held-back deliveries to go out once the receiver answers",
    )
    sent_ids = [r.headers["webhook-id"] for r in env.receiver.received("/dead")]
    assert sorted(sent_ids) == sorted(env.delivery(job)[0] for job in dead_jobs)  # each exactly once
    assert all(env.delivery(job)[2] == 1 for job in dead_jobs)


def test_a_delivery_in_flight_is_leased_against_other_senders(env: Env) -> None:
    first, second = env.sender(), env.sender()
    gate = threading.Event()
    env.receiver.script("/hook", Reply(200, gate=gate))
    job_id = env.finish(env.receiver.url("/hook"))
    now = env.clock.now()
    runner = threading.Thread(target=first.run_once, args=(now,))
    runner.start()
    try:
        env.receiver.wait_for(1, "/hook", timeout=5)
        assert second.run_once(now) == 0  # leased
        # If the first sender died, the row is due again once the lease runs out: same webhook-id.
        assert second.run_once(now + first.lease_s + 1) == 1
    finally:
        gate.set()
        runner.join(10)
    ids = {r.headers["webhook-id"] for r in env.receiver.received("/hook")}
    assert ids == {env.delivery(job_id)[0]}
    assert env.delivery(job_id)[1:3] == ("delivered", 1)


def test_a_job_deleted_during_an_attempt_leaves_no_attempt_row(env: Env) -> None:
    sender = env.sender()
    gate = threading.Event()
    env.receiver.script("/hook", Reply(200, gate=gate))
    job_id = env.finish(env.receiver.url("/hook"))
    runner = threading.Thread(target=sender.run_once, args=(env.clock.now(),))
    runner.start()
    try:
        env.receiver.wait_for(1, "/hook", timeout=5)
        env.store.delete(job_id).result()
    finally:
        gate.set()
        runner.join(10)
    assert env.rows("SELECT * FROM webhook_attempts") == []
    assert env.rows("SELECT * FROM webhook_deliveries") == []


# --- secret and query plans -----------------------------------------------------------


def test_configured_secret_wins_and_nothing_is_stored(env: Env) -> None:
    assert load_secret(WebhooksSettings(secret=SECRET), env.db, env.writer, False) == SECRET
    assert env.rows("SELECT * FROM meta WHERE key = 'webhook_secret'") == []


def test_generated_secret_is_kept_and_reused(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="jobserver.webhooks.sender"):
        first = load_secret(WebhooksSettings(), env.db, env.writer, False)
        second = load_secret(WebhooksSettings(), env.db, env.writer, False)
    assert first == second and len(webhooks.secret_key(first)) == 24
    assert env.rows("SELECT value FROM meta WHERE key = 'webhook_secret'") == [(first,)]
    generated = [r for r in caplog.records if "generated a webhook signing secret" in r.getMessage()]
    assert len(generated) == 1 and first not in caplog.text  # the secret itself is never logged


@pytest.mark.parametrize("sql", [DUE_SQL, NEXT_DUE_SQL, ATTEMPTS_SQL])
def test_sender_queries_use_indexes(env: Env, sql: str) -> None:
    params = tuple(0 for _ in range(sql.count("?")))
    plan = " | ".join(str(row[-1]) for row in env.rows("EXPLAIN QUERY PLAN " + sql, params))
    assert "SCAN" not in plan.replace("SCAN CONSTANT ROW", ""), plan
    assert "TEMP B-TREE" not in plan, plan
