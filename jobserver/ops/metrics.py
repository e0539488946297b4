"""Metrics: the Prometheus counters, gauges and histograms of one server process.

Everything lives in a per-app `CollectorRegistry` owned by a `Metrics` object
(no module globals, so several apps in one process never share counts). It is
an observer of the job lifecycle, and the webhook sender reports each delivery
attempt to it. The pending and running gauges are read from the
database at scrape time, so `render()` must run in a worker thread, never on
the event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from jobserver.core.lifecycle import Ending, Transition
from jobserver.core.records import Claim, JobRecord

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
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


GAUGED = ("pending", "running", "waiting")  # statuses counted per scrape (index ranges)


class _QueueGauges(Collector):
    """`jobserver_jobs_pending`, `_running` and `_waiting`, counted in the database per scrape,
    and `jobserver_database_readable`: without it, gauges left out of a failed scrape would look
    like no data rather than an alert."""

    def __init__(self, counts: StatusCounts) -> None:
        self._counts = counts

    def describe(self) -> Iterable[Metric]:
        return [*(self._family(status) for status in GAUGED), self._readable(0.0)]

    @staticmethod
    def _readable(value: float) -> GaugeMetricFamily:
        family = GaugeMetricFamily(
            "jobserver_database_readable",
            "1 when this scrape counted the jobs in the database, 0 when it could not (the job gauges are left out).",
        )
        family.add_metric([], value)
        return family

    @staticmethod
    def _family(status: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(f"jobserver_jobs_{status}", f"Jobs now {status} (all nodes).")

    def collect(self) -> Iterable[Metric]:
        try:
            counts = self._counts(GAUGED)
        except Exception as exc:  # a scrape must not fail because the database is busy or gone
            log.warning("metrics: cannot count jobs: %s", exc, extra={"action": "metrics_failed"})
            return [self._readable(0.0)]
        families = [self._readable(1.0)]
        for status in GAUGED:
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
        self.submitted_total = Counter(
            "jobserver_jobs_submitted", "Jobs accepted by POST /jobs.", ["task"], registry=r
        )
        self.finished = Counter(
            "jobserver_jobs_finished", "Jobs that reached a final status.", ["task", "status"], registry=r
        )
        self.attempt_duration = Histogram(
            "jobserver_attempt_duration_seconds",
            "Run time of attempts that ended (any outcome) and of runs that parked their job (waiting).",
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
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def _labelled(self, metric: Counter | Histogram, *values: str) -> Any:
        """`metric.labels(*values)`, remembered: prometheus_client checks the values and takes a
        lock on every call, and each job makes four (the tasks and statuses are few)."""
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    # ------------------------------------------------- lifecycle observer
    def submitted(self, rec: JobRecord) -> None:
        """A new job was accepted (not an idempotent replay)."""
        self._labelled(self.submitted_total, rec.task).inc()

    def claimed(self, claim: Claim) -> None:
        """An attempt started: observe how long it waited past its run_at."""
        if claim.run_at is not None:
            self._labelled(self.queue_wait, claim.task).observe(max(0.0, claim.started_at - claim.run_at))

    def transitioned(self, transition: Transition, rec: JobRecord, claim: Claim | None) -> None:
        """An attempt ended (`claim`) or the rescue recovered a job (no claim)."""
        if claim is None:
            self._labelled(self.rescued, rec.task).inc()
        elif transition.counts_attempt or transition.ending == Ending.SUSPENDED:
            # a run that parked (a workflow's sleep, wait or gather) ran too: its time counts, as
            # its start counted in the queue wait; only a run the shutdown cut off is given back
            self._labelled(self.attempt_duration, claim.task).observe(
                max(0.0, transition.at - claim.started_at)
            )
        if transition.finished:
            self._labelled(self.finished, rec.task, rec.status).inc()

    def cancelled(self, rec: JobRecord) -> None:
        """A job that was not running was cancelled."""
        self._labelled(self.finished, rec.task, rec.status).inc()

    # ---------------------------------------------------------- sender hook
    def webhook_delivery(self, outcome: str) -> None:
        """One webhook delivery attempt ended: "delivered", "retrying" or "failed" (given up)."""
        self._labelled(self.webhook_deliveries, outcome).inc()

    # -------------------------------------------------------------- scrape
    def render(self) -> bytes:
        """The Prometheus text exposition (reads the database: call it off the event loop)."""
        return generate_latest(self.registry)
