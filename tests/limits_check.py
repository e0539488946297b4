"""What the limit tests compute from the spans and starts the tasks record, and a store driven
on a clock that only moves when a test says."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import orjson

from jobserver.core.lifecycle import Outcome
from jobserver.core.limits import HeldLimit
from jobserver.core.records import Claim, JobIds, NewJob
from jobserver.storage.models import read_rows
from jobserver.storage.store import JobStore
from tests.storage import end_attempt

IDS = JobIds()


def spans(path: Path) -> dict[str, list[tuple[float, float]]]:
    """key -> (start, end) of every run, from the lines `held_key` writes."""
    out: dict[str, list[tuple[float, float]]] = defaultdict(list)
    if path.exists():
        for line in path.read_text().splitlines():
            _, key, began, ended = line.split()
            out[key].append((float(began), float(ended)))
    return out


def max_overlap(runs: list[tuple[float, float]]) -> int:
    """The most runs that were under way at one moment (an end before a start at a tie)."""
    edges = sorted([(b, 1) for b, _ in runs] + [(e, -1) for _, e in runs], key=lambda x: (x[0], x[1]))
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def busiest_window(starts: list[tuple[float, float]], per_s: float) -> float:
    """The largest sum of costs of starts within any window of `per_s` seconds: (at, cost)."""
    starts = sorted(starts)
    best = total = 0.0
    lo = 0
    for at, cost in starts:
        total += cost
        while starts[lo][0] <= at - per_s:
            total -= starts[lo][1]
            lo += 1
        best = max(best, total)
    return best


# ------------------------------------------------ a store driven tick by tick
def bound(*limits: HeldLimit) -> str:
    """Limits as a job stores them (bound at submit)."""
    return orjson.dumps([h.to_json() for h in limits]).decode()


def queue(store: JobStore, limits: str, n: int, at: float, task: str = "t") -> list[str]:
    """Queue `n` jobs of `task` due at `at`, in claim order."""
    ids = []
    for _ in range(n):
        job = NewJob(IDS.new(), task, "{}", 0, 1, None, None, None, at, at, limits=limits)
        store.enqueue(job, None, lambda: None).result(10)
        ids.append(job.id)
    return ids


def claim_all(store: JobStore, now: float) -> list[Claim]:
    """One claim by a worker with room for every due job."""
    return store.claim("me", now, 30, lambda tx: (1000, None), lambda tx, c: [i for i, _ in c]).result(10)


def pending(store: JobStore, now: float) -> int:
    return int(
        read_rows(
            store.db, False, "SELECT COUNT(*) FROM jobs WHERE status = 'pending' AND run_at <= ?", (now,)
        )[0][0]
    )


def run_ticks(store: JobStore, ticks: Iterable[float], end: bool = False) -> dict[float, list[Claim]]:
    """What starts at each tick of a clock that only moves here: the maintenance pass's look at
    the keys whose `wake_at` came, then claims while jobs are due (a claim may make more due). With
    `end`, every attempt ends as soon as it started."""
    out: dict[float, list[Claim]] = {}
    for now in ticks:
        due = store.limits.next_wake_at()
        if due is not None and due <= now:
            store.limits.unpark_due(now).result(10)
        for _ in range(100):
            claims = claim_all(store, now)
            out.setdefault(now, []).extend(claims)
            for claim in claims if end else ():
                end_attempt(store, claim, Outcome.completed("1"), now)
            if not claims and not pending(store, now):
                break
    return out


def ticks(start: float, end: float, step: float = 0.1) -> list[float]:
    """start, start + step, ... before end, each exact to the step (no drift from adding)."""
    per = round(1 / step)
    return [k / per for k in range(round(start * per), round(end * per))]
