"""Metrics: the Prometheus counters, gauges and histograms of one server process.

Everything lives in a per-app `CollectorRegistry` owned by a `Metrics` object
(no module globals, so several apps in one process never share counts). The
engine calls the event methods through its hooks (`on_submitted`, `on_claimed`,
`on_finished`, `on_cancelled`, `on_rescued`); the webhook sender calls
`webhook_delivery(outcome)`. The pending and running gauges are read from the
database at scrape time, so `render()` must run in a worker thread, never on
the event loop.

Imports records and store constants only; never Starlette, Huey or Peewee.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from jobserver.core.records import Claim, JobRecord

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
FINISHED = frozenset({"completed", "failed", "cancelled"})
DURATION_BUCKETS_S = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
    600,
    1800,
    3600,
)
WAIT_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
WEBHOOK_OUTCOMES = ("delivered", "retrying", "failed")

StatusCounts = Callable[[Sequence[str]], Mapping[str, int]]


class _QueueGauges(Collector):
    """`jobserver_jobs_pending` and `jobserver_jobs_running`, counted in the database per scrape."""

    def __init__(self, counts: StatusCounts) -> None:
        self._counts = counts

    def describe(self) -> Iterable[Metric]:
        return [self._family("pending"), self._family("running")]

    @staticmethod
    def _family(status: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(f"jobserver_jobs_{status}", f"Jobs now {status} (all nodes).")

    def collect(self) -> Iterable[Metric]:
        try:
            counts = self._counts(("pending", "running"))
        except Exception as exc:  # a scrape must not fail because the database is busy or gone
            log.warning("metrics: cannot count jobs: %s", exc, extra={"action": "metrics_failed"})
            return []
        families = []
        for status in ("pending", "running"):
            family = self._family(status)
            family.add_metric([], float(counts.get(status, 0)))
            families.append(family)
        return families


class Metrics:
    """The server's Prometheus metrics; one instance per app."""

    def __init__(self, status_counts: StatusCounts, now: Callable[[], float]) -> None:
        self.now = now
        self.registry = CollectorRegistry()
        r = self.registry
        self.submitted = Counter(
            "jobserver_jobs_submitted", "Jobs accepted by POST /jobs.", ["task"], registry=r
        )
        self.finished = Counter(
            "jobserver_jobs_finished", "Jobs that reached a final status.", ["task", "status"], registry=r
        )
        self.attempt_duration = Histogram(
            "jobserver_attempt_duration_seconds",
            "Run time of attempts that ended (any outcome).",
            ["task"],
            buckets=DURATION_BUCKETS_S,
            registry=r,
        )
        self.queue_wait = Histogram(
            "jobserver_queue_wait_seconds",
            "Time from when an attempt was due (run_at) to when it started.",
            ["task"],
            buckets=WAIT_BUCKETS_S,
            registry=r,
        )
        self.rescued = Counter(
            "jobserver_jobs_rescued",
            "Running jobs recovered after their owner stopped.",
            ["task"],
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "jobserver_webhook_deliveries", "Webhook delivery attempts by outcome.", ["outcome"], registry=r
        )
        for outcome in WEBHOOK_OUTCOMES:
            self.webhook_deliveries.labels(outcome)
        r.register(_QueueGauges(status_counts))

    # ----------------------------------------------------------- engine hooks
    def job_submitted(self, rec: JobRecord) -> None:
        """A new job was accepted (not an idempotent replay)."""
        self.submitted.labels(rec.task).inc()

    def attempt_started(self, claim: Claim) -> None:
        """A worker claimed a job: observe how long it waited past its run_at."""
        if claim.run_at is not None:
            self.queue_wait.labels(claim.task).observe(max(0.0, claim.started_at - claim.run_at))

    def attempt_ended(self, rec: JobRecord, claim: Claim) -> None:
        """An attempt's outcome was recorded (completed, failed, retry scheduled or put back)."""
        put_back = rec.status == "pending" and rec.attempts < claim.attempt  # a drain released it
        if not put_back:
            end = rec.finished_at if rec.finished_at is not None else self.now()
            self.attempt_duration.labels(claim.task).observe(max(0.0, end - claim.started_at))
        self.job_finished(rec)

    def job_finished(self, rec: JobRecord) -> None:
        """Count the job when `rec` shows it in a final status."""
        if rec.status in FINISHED:
            self.finished.labels(rec.task, rec.status).inc()

    def jobs_rescued(self, records: Sequence[JobRecord]) -> None:
        """Jobs recovered by the rescuer; the ones it ended (Crashed, cancelled) count as finished."""
        for rec in records:
            self.rescued.labels(rec.task).inc()
            self.job_finished(rec)

    # ---------------------------------------------------------- sender hook
    def webhook_delivery(self, outcome: str) -> None:
        """One webhook delivery attempt ended: "delivered", "retrying" or "failed" (given up)."""
        self.webhook_deliveries.labels(outcome).inc()

    # -------------------------------------------------------------- scrape
    def render(self) -> bytes:
        """The Prometheus text exposition (reads the database: call it off the event loop)."""
        return generate_latest(self.registry)
