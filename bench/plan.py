"""How long and how big each measurement is: the quick (CI smoke) and full plans.

Owns only numbers; imports nothing from the bench or jobserver.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Plan:
    """Sizes and durations of one bench run."""

    name: str
    conns: int = 32  # concurrent connections of the throughput runs
    warmup_s: float = 2.0  # load before each measured window
    duration_s: float = 10.0  # measured window of each throughput run
    rtt_duration_s: float = 3.0  # one-connection round trips on the bare route
    sqlite_duration_s: float = 3.0  # each raw SQLite insert run
    e2e_jobs: int = 2_000  # no-op jobs submitted, then each observed done by GET
    pickup_samples: int = 200  # `now` jobs one at a time, right after one another
    idle_s: float = 30.0  # the server sits idle this long before the after-idle samples
    idle_samples: int = 20  # after-idle samples, each after `idle_gap_s` of quiet
    idle_gap_s: float = 1.0
    read_duration_s: float = 2.0  # one-connection GETs of each read path (list filters, by id)
    async_jobs: int = 1_000  # async jobs that each await `async_sleep_s`
    async_sleep_s: float = 1.0
    sse_streams: int = 200  # event streams held open during a submit run
    scale_finished: int = 1_000_000
    scale_pending: int = 100_000
    drain_jobs: int = 100_000  # due jobs already queued when the server starts
    stats_finished: int = 1_000_000  # --ops: finished jobs under GET /stats
    bulk_jobs: int = 100_000  # --ops: failed jobs one POST /jobs/retry takes
    settle_timeout_s: float = 180.0  # bound on waiting for the queue to empty
    parked_jobs: int = 10_000  # jobs parked at once, waiting for a signal
    signal_samples: int = 200  # of them, signalled one at a time for the resume latency
    fan_out: int = 1_000  # children of one spawn_many, then gathered
    # --curves: the points of each curve, and the size of each point's runs
    curve_conns: tuple[int, ...] = (10, 100, 1_000)
    curve_finished: tuple[int, ...] = (0, 100_000, 1_000_000)
    curve_waiting: tuple[int, ...] = (0, 1_000, 10_000)
    curve_streams: tuple[int, ...] = (100, 300, 900)  # under the default cap of 1,000 connections
    curve_duration_s: float = 5.0  # each submit run of a point
    curve_jobs: int = 2_000  # end-to-end jobs of a point


FULL = Plan(name="full")
QUICK = Plan(
    name="quick",
    warmup_s=0.5,
    duration_s=2.0,
    rtt_duration_s=1.0,
    sqlite_duration_s=1.0,
    pickup_samples=50,
    read_duration_s=0.5,
    idle_s=3.0,
    idle_samples=10,
    idle_gap_s=0.2,
    drain_jobs=20_000,
    stats_finished=200_000,
    bulk_jobs=20_000,
    settle_timeout_s=60.0,
    parked_jobs=2_000,
    signal_samples=50,
    curve_finished=(0, 20_000, 200_000),
    curve_waiting=(0, 200, 2_000),
    curve_streams=(50, 200),
    curve_duration_s=1.0,
    curve_jobs=500,
)


def make_plan(quick: bool, idle_s: float | None) -> Plan:
    """The plan for the options given."""
    plan = QUICK if quick else FULL
    return replace(plan, idle_s=idle_s) if idle_s is not None else plan
