"""A deploy that changes a task's limits while jobs are queued: the running code's declaration
of a key is what claims and looks at parked jobs read. The restart is a second store on the same
SQLite file with another declaration; the clock moves only when a test says."""

from __future__ import annotations

from pathlib import Path

from jobserver.core.lifecycle import Outcome
from jobserver.core.limits import HeldLimit
from jobserver.storage.models import read_rows
from tests.limits_check import bound, busiest_window, claim_all, queue, run_ticks, ticks
from tests.storage import end_attempt, open_store

TWO_SLOTS = ("concurrency", 2.0, None)
THREE_PER_S = ("rate", 3.0, 1.0)


def test_a_concurrency_key_made_a_rate_key_starts_its_parked_jobs_before_any_claim(tmp_path: Path) -> None:
    """The key's row still says two slots, both held by runs the restart left behind (their
    leases are not rescued here): the look at the parked jobs reads the rate they are under now."""
    with open_store(tmp_path, declared={"d": TWO_SLOTS}) as store:
        queue(store, bound(HeldLimit("d", "concurrency", 2, template="d")), 6, 99.0)
        assert len(claim_all(store, 100.0)) == 2  # four are parked on the slots
    with open_store(tmp_path, declared={"d": THREE_PER_S}) as store:
        assert store.limits.unpark_due(101.0).result(10) == 3  # the held slots are no charges
        started = run_ticks(store, ticks(101.0, 103.0))
        assert [(at, len(claims)) for at, claims in started.items() if claims] == [(101.0, 3), (102.0, 1)]


def test_a_concurrency_key_made_a_rate_key_starts_the_jobs_parked_on_it(tmp_path: Path) -> None:
    """Claims of the key under its new kind come first here (the jobs due when the old code
    stopped); the look at the jobs still parked under the old kind failed on it every pass."""
    with open_store(tmp_path, declared={"d": TWO_SLOTS}) as store:
        queue(store, bound(HeldLimit("d", "concurrency", 2, template="d")), 6, 99.0)
        running = claim_all(store, 100.0)  # two run, four are parked on the slots
        for claim in running:  # each end makes one parked job due: two stay parked
            end_attempt(store, claim, Outcome.completed("1"), 100.2)
    with open_store(tmp_path, declared={"d": THREE_PER_S}) as store:
        started = run_ticks(store, ticks(100.5, 103.0))
        starts = [(at, 1.0) for at, claims in started.items() for _ in claims]
        assert len(starts) == 4  # the two due, and the two parked under the old kind
        assert busiest_window(starts, 1.0) <= 3
        [key] = store.limits.usage(103.0)
        assert (key.kind, key.limit, key.per_s, key.blocked) == ("rate", 3.0, 1.0, 0)


def test_a_rate_key_made_a_concurrency_key_frees_its_slot_when_a_job_ends(tmp_path: Path) -> None:
    with open_store(tmp_path, declared={"d": THREE_PER_S}) as store:
        queue(store, bound(HeldLimit("d", "rate", 3, 1.0, 1.0, "d")), 4, 99.0)
    with open_store(tmp_path, declared={"d": ("concurrency", 1.0, None)}) as store:
        started = run_ticks(store, ticks(100.0, 100.4), end=True)  # each run ends at once
        assert [len(claims) for claims in started.values()] == [4, 0, 0, 0]  # one after another
        [key] = store.limits.usage(100.4)
        assert (key.kind, key.in_use, key.blocked) == ("concurrency", 0.0, 0)
        assert read_rows(store.db, False, "SELECT * FROM limit_holds") == []


def test_a_rate_lowered_below_a_parked_jobs_cost_starts_it_with_the_whole_window(tmp_path: Path) -> None:
    costly = bound(HeldLimit("tk", "rate", 100, 1.0, 80.0, "tk"))
    with open_store(tmp_path, declared={"tk": ("rate", 100.0, 1.0)}) as store:
        queue(store, costly, 3, 99.0)
    with open_store(tmp_path, declared={"tk": ("rate", 50.0, 1.0)}) as store:
        started = run_ticks(store, ticks(100.0, 103.0))
        assert [at for at, claims in started.items() for _ in claims] == [100.0, 101.0, 102.0]
