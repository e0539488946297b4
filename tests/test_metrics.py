"""GET /metrics: Prometheus text that moves with the jobs (the real app in-process, and
the server process across a SIGKILL), and the Metrics object on its own (per-app
registry, the webhook hook)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from jobserver.core.lifecycle import Ending, Park, Status, Transition, WaitKind
from jobserver.core.records import Claim, JobRecord
from jobserver.ops.metrics import Metrics
from tests.e2e import start_server
from tests.helpers import finished, has_line, submit, wait_until
from tests.inproc import RunningApp

ADD = "jobserver.examples.add"
FAIL = "jobserver.examples.fail"
BLOCK = "tests.e2e_tasks.block_until_file"
AT_MOST_ONCE = "tests.e2e_tasks.at_most_once"


def scrape(c: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value."""
    r = c.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_counts_move_with_the_jobs(app: RunningApp, tmp_path: Path) -> None:
    c = app.client
    before = scrape(c)
    assert value(before, "jobserver_jobs_submitted_total", task=ADD) == 0
    ids = [submit(c, ADD, {"a": i, "b": 1}) for i in range(3)]
    failing = submit(c, FAIL, {})
    submit(c, ADD, {"a": 0, "b": 0}, delay=3600)  # stays pending
    to_cancel = submit(c, ADD, {"a": 0, "b": 0}, delay=3600)
    # an idempotent replay is not a new submission
    replayed = {"task": ADD, "args": {"a": 9, "b": 9}}
    assert c.post("/jobs", json=replayed, headers={"Idempotency-Key": "k"}).status_code == 202
    assert c.post("/jobs", json=replayed, headers={"Idempotency-Key": "k"}).status_code == 200
    for job_id in ids:
        assert finished(c, job_id)["status"] == "completed"
    assert finished(c, failing)["status"] == "failed"
    assert c.post(f"/jobs/{to_cancel}/cancel").status_code == 202

    started, release = tmp_path / "started", tmp_path / "release"
    blocked = submit(c, BLOCK, {"started": str(started), "release": str(release)})
    wait_until(lambda: has_line(started), message="the blocking job to start")
    wait_until(lambda: value(scrape(c), "jobserver_jobs_running") == 1, message="running gauge at 1")

    m = scrape(c)
    assert value(m, "jobserver_jobs_submitted_total", task=ADD) == 6
    assert value(m, "jobserver_jobs_submitted_total", task=FAIL) == 1
    assert value(m, "jobserver_jobs_finished_total", task=ADD, status="completed") >= 3
    assert value(m, "jobserver_jobs_finished_total", task=FAIL, status="failed") == 1
    assert value(m, "jobserver_jobs_finished_total", task=ADD, status="cancelled") == 1
    assert value(m, "jobserver_jobs_pending") == 1  # the delayed job
    assert value(m, "jobserver_attempt_duration_seconds_count", task=ADD) >= 3
    assert value(m, "jobserver_attempt_duration_seconds_count", task=FAIL) == 1
    assert value(m, "jobserver_queue_wait_seconds_count", task=ADD) >= 3
    assert value(m, "jobserver_queue_wait_seconds_count", task=BLOCK) == 1
    for outcome in ("delivered", "retrying", "failed"):
        assert ("jobserver_webhook_deliveries_total", (("outcome", outcome),)) in m

    release.touch()
    assert finished(c, blocked)["status"] == "completed"
    m = scrape(c)
    assert value(m, "jobserver_jobs_running") == 0
    assert value(m, "jobserver_jobs_finished_total", task=BLOCK, status="completed") == 1


@pytest.mark.e2e
def test_rescued_jobs_are_counted_after_a_crash(tmp_path: Path) -> None:
    srv = start_server(tmp_path)
    c = srv.client()
    started, release = tmp_path / "started", tmp_path / "release"
    retried = submit(c, BLOCK, {"started": str(started), "release": str(release)})
    once_started = tmp_path / "once"
    crashed = submit(c, AT_MOST_ONCE, {"started": str(once_started), "release": str(release)})
    wait_until(lambda: has_line(started) and has_line(once_started), message="both jobs to start")
    srv.kill()
    release.touch()
    srv.restart()
    c = srv.client()
    assert finished(c, retried)["status"] == "completed"
    assert finished(c, crashed)["error"]["type"] == "Crashed"
    m = scrape(c)
    assert value(m, "jobserver_jobs_rescued_total", task=BLOCK) == 1
    assert value(m, "jobserver_jobs_rescued_total", task=AT_MOST_ONCE) == 1
    assert value(m, "jobserver_jobs_finished_total", task=AT_MOST_ONCE, status="failed") == 1
    assert value(m, "jobserver_jobs_finished_total", task=BLOCK, status="completed") == 1


def _record(task: str, status: str, started_at: float, finished_at: float | None) -> JobRecord:
    return JobRecord(
        "j1",
        task,
        "{}",
        status,
        0,
        1,
        3,
        None,
        1,
        None,
        None,
        0,
        0,
        None,
        None,
        None,
        None,
        None,
        0.0,
        0.0,
        started_at,
        finished_at,
        None,
        None,
        None,
        0,
    )


def test_each_app_has_its_own_registry_and_the_webhook_hook_counts() -> None:
    a = Metrics(lambda statuses: {"pending": 2}, lambda: 100.0)
    b = Metrics(lambda statuses: {}, lambda: 100.0)
    claim = Claim("j1", "t", "{}", 1, 3, 1, None, started_at=10.0, run_at=4.0)
    a.claimed(claim)
    done = Transition("j1", 1, Ending.COMPLETED, Status.COMPLETED, at=12.5, result_json="1")
    a.transitioned(done, _record("t", "completed", 10.0, 12.5), claim)
    a.webhook_delivery("delivered")
    a.webhook_delivery("retrying")
    # a run that parked its job ran for 1.5 s; a run the shutdown put back is not an attempt
    parked_claim = Claim("j2", "w", "{}", 1, 3, 1, None, started_at=20.0, run_at=20.0)
    a.claimed(parked_claim)
    park = Park(WaitKind.SIGNAL, "go")
    parked = Transition("j2", 1, Ending.SUSPENDED, Status.WAITING, at=21.5, park=park, counts_attempt=False)
    a.transitioned(parked, _record("w", "waiting", 20.0, None), parked_claim)
    released = Transition("j2", 2, Ending.RELEASED, Status.PENDING, at=30.0, counts_attempt=False)
    a.transitioned(released, _record("w", "pending", 29.0, None), parked_claim)
    text_a, text_b = a.render().decode(), b.render().decode()
    assert 'jobserver_webhook_deliveries_total{outcome="delivered"} 1.0' in text_a
    assert 'jobserver_webhook_deliveries_total{outcome="delivered"} 0.0' in text_b
    assert 'jobserver_queue_wait_seconds_sum{task="t"} 6.0' in text_a
    assert 'jobserver_attempt_duration_seconds_sum{task="t"} 2.5' in text_a
    assert 'jobserver_attempt_duration_seconds_count{task="w"} 1.0' in text_a
    assert 'jobserver_attempt_duration_seconds_sum{task="w"} 1.5' in text_a
    assert 'jobserver_jobs_finished_total{status="completed",task="t"} 1.0' in text_a
    assert "jobserver_jobs_pending 2.0" in text_a and "jobserver_jobs_pending 0.0" in text_b
    assert 'jobserver_queue_wait_seconds_count{task="t"}' not in text_b


def test_a_scrape_survives_an_unreachable_database() -> None:
    def broken(statuses: object) -> dict[str, int]:
        raise OSError("database is gone")

    text = Metrics(broken, lambda: 0.0).render().decode()
    assert "jobserver_jobs_pending " not in text  # left out, not a failed scrape
    assert "\njobserver_database_readable 0.0\n" in text  # and a series to alert on says why
    fine = Metrics(lambda statuses: {"pending": 1}, lambda: 0.0).render().decode()
    assert "\njobserver_database_readable 1.0\n" in fine and "\njobserver_jobs_pending 1.0\n" in fine
    assert "jobserver_webhook_deliveries_total" in text
