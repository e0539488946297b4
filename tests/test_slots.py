"""Slots: capacity planning and acceptance of claim candidates."""

from __future__ import annotations

import threading
from collections.abc import Callable

from jobserver import task
from jobserver.core.records import Claim
from jobserver.core.tasks import build_taskdef
from jobserver.runner.slots import UNKNOWN_RUN_S, Capacity, Slots
from jobserver.storage.writer import Tx


@task
def quick() -> None:
    pass


@task(concurrency=1)
def capped() -> None:
    pass


@task
async def waits() -> None:
    pass


class FakeTx(Tx):
    """Only what Slots uses of a transaction: the rollback hook (no cursor: it runs no SQL)."""

    __slots__ = ("undo",)

    def __init__(self) -> None:
        super().__init__(cur=None, pg=False)
        self.undo: list[Callable[[], None]] = []

    def on_rollback(self, hook: Callable[[], None]) -> None:
        self.undo.append(hook)


def slots(threads: int = 2, async_concurrency: int = 2) -> Slots:
    return Slots(
        [build_taskdef(f) for f in (quick, capped, waits)], threads, async_concurrency, threading.Event()
    )


Q, C, W = (f"{__name__}.{n}" for n in ("quick", "capped", "waits"))


def test_one_sync_job_per_idle_thread_until_run_times_are_known() -> None:
    s = slots(threads=2)
    tx = FakeTx()
    assert s.accept(tx, [("a", Q), ("b", Q), ("c", Q)]) == ["a", "b"]
    _limit, allowed = s.plan(tx)
    assert allowed == [W]  # no sync slot left: only the async task may be taken
    assert UNKNOWN_RUN_S > 0


def test_short_jobs_are_taken_ahead_within_the_budget() -> None:
    s = slots(threads=2)
    s.ran(Q, 0.0001)
    ids = s.accept(FakeTx(), [(str(i), Q) for i in range(200)])
    assert 2 < len(ids) <= 2 + 64


def test_no_job_is_taken_ahead_behind_a_long_one_an_idle_thread_takes() -> None:
    """Taken ahead, a quick job would wait (shown running) until the long one ends."""
    s = slots(threads=2)
    s.ran(Q, 0.0001)
    s.ran(C, 30.0)
    tx = FakeTx()
    assert s.accept(tx, [("busy", Q), ("busy2", Q)]) == ["busy", "busy2"]  # both threads busy
    s.release(Q)  # one thread frees: it takes the long job, and nothing ahead of it
    assert s.accept(tx, [("long", C), ("q1", Q), ("q2", Q)]) == ["long"]
    s.release(Q)  # the other thread frees: behind a quick job, quick ones are taken ahead
    assert s.accept(tx, [("q1", Q), ("q2", Q), ("q3", Q)]) == ["q1", "q2", "q3"]


def test_async_slots_and_a_concurrency_cap_left_to_the_claims_limits() -> None:
    s = slots(threads=4, async_concurrency=2)
    # a task's `concurrency` is a limit the store checks across processes, not a slot here
    assert s.accept(FakeTx(), [("c1", C), ("c2", C), ("w1", W), ("w2", W), ("w3", W)]) == [
        "c1",
        "c2",
        "w1",
        "w2",
    ]
    _, allowed = s.plan(FakeTx())
    assert sorted(allowed or []) == sorted([C, Q])  # async slots full: only sync tasks
    s.release(W)
    assert s.plan(FakeTx())[1] is None


def test_give_back_returns_slots_and_a_rollback_does_not_count_them_twice() -> None:
    s = slots(threads=1, async_concurrency=1)
    tx = FakeTx()
    assert s.accept(tx, [("a", Q), ("w", W)]) == ["a", "w"]
    s.give_back(tx, [("a", Q)])  # a limit held it back after all
    assert s.accept(FakeTx(), [("b", Q)]) == ["b"]
    s.release(Q)
    for hook in tx.undo:  # the claim rolled back: "w" is free again, "a" not freed twice
        hook()
    assert s.free_async() == 1
    assert s.accept(FakeTx(), [("c", Q), ("d", Q)]) == ["c"]


def test_rollback_gives_the_slots_back() -> None:
    s = slots(threads=1)
    tx = FakeTx()
    assert s.accept(tx, [("a", Q)]) == ["a"]
    for hook in tx.undo:
        hook()
    assert s.accept(FakeTx(), [("b", Q)]) == ["b"]


def test_ready_queue() -> None:
    s = slots()
    c = Claim("j", Q, "{}", 1, 1, 1, None, 0.0)
    s.push_ready([c])
    assert s.ready_count() == 1
    assert s.pop_ready() is c and s.pop_ready() is None and s.ready_count() == 0


def test_a_job_is_claimed_here_from_its_claim_until_it_starts_or_goes_back() -> None:
    """What a cancel asks: is this job claimed here and not started yet (its start then stops it)?"""
    s = slots(threads=2)
    tx = FakeTx()
    assert s.accept(tx, [("a", Q), ("b", Q)]) == ["a", "b"]
    assert s.is_claimed("a") and s.is_claimed("b") and not s.is_claimed("c")
    s.claim_settled("a")  # started (or put back)
    assert not s.is_claimed("a") and s.is_claimed("b")
    for hook in tx.undo:  # the claim rolled back: nothing of it is claimed
        hook()
    assert not s.is_claimed("b")
    held = FakeTx()
    assert s.accept(held, [("d", Q)]) == ["d"]
    s.give_back(held, [("d", Q)])  # a limit held it back after all
    assert not s.is_claimed("d")
    for hook in held.undo:  # that claim rolled back after all: still not claimed, no slot held
        hook()
    assert not s.is_claimed("d") and s.capacity_for(Q).free == 2


def test_a_freed_async_slot_signals_async_work_and_a_sync_one_does_not() -> None:
    s = slots(threads=1, async_concurrency=1)
    assert s.accept(FakeTx(), [("w1", W), ("q1", Q)]) == ["w1", "q1"]
    s.release(Q)
    assert not s.async_work.is_set()
    s.release(W)
    assert s.async_work.is_set()  # a pending async job may fit now: the feeder looks


def test_capacity_is_told_per_kind_and_never_below_zero_with_jobs_taken_ahead() -> None:
    s = slots(threads=2, async_concurrency=3)
    s.ran(Q, 0.0001)  # short: jobs are taken ahead of the busy threads
    assert len(s.accept(FakeTx(), [(str(i), Q) for i in range(10)])) > 2
    assert s.capacity_for(Q) == Capacity("worker thread", 2, 0)
    assert s.capacity_for(W) == Capacity("async slot", 3, 3)  # the threads' load is not the slots'
    assert s.accept(FakeTx(), [("w1", W)]) == ["w1"]
    assert s.capacity_for(W) == Capacity("async slot", 3, 2)
    s.release(W)
    assert s.capacity_for(W).free == 3
