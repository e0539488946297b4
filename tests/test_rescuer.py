"""The rescue of a crashed job whose task this process does not know, and the concurrency slots
it held: real storage (an SQLite file, or PostgreSQL where marked), the parts from `build()`
driven one step at a time on a manual clock, one `build()` per process of the story."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from jobserver import Concurrency, task
from jobserver.build import Parts
from jobserver.core.clock import ManualClock
from jobserver.core.config import Settings
from jobserver.core.records import Claim
from jobserver.core.schemas import SubmitBody
from jobserver.core.tasks import Registry, build_taskdef
from jobserver.runner.submission import JobFactory
from tests.inproc import driven_parts, settings_for

KEY = "shelf"


@task(name="shelf.pack", limits=[Concurrency(KEY, 1)], priority=5, max_attempts=3)
def pack() -> str:
    """Shares the key's one slot with `shelf.count`; may run again after a crash."""
    return "packed"


@task(name="shelf.pack", limits=[Concurrency(KEY, 1)], priority=5, max_attempts=3, on_crash="fail")
def pack_at_most_once() -> str:
    """`shelf.pack` as a later deploy declares it: never run again after a crash."""
    return "packed"


@task(name="shelf.count", limits=[Concurrency(KEY, 1)])
def count() -> str:
    """Shares the key's one slot with `shelf.pack`."""
    return "counted"


BOTH = (pack, count)


def process(
    settings: Settings, clock: ManualClock, *tasks: Callable[..., Any]
) -> AbstractContextManager[Parts]:
    """One server process on the shared database, knowing only `tasks`; the test drives each step."""
    return driven_parts(settings, clock, Registry([build_taskdef(t) for t in tasks]))


def submit(p: Parts, name: str) -> str:
    """Submit as POST /jobs does: the task's limits bound to the job."""
    new = JobFactory(p.settings, p.registry).new(SubmitBody(task=name), p.clock.now())
    p.store.enqueue(new, None, lambda: None).result(10)
    return new.id


def claim(p: Parts) -> Claim | None:
    """What one idle worker thread of `p` takes now."""
    return p.dispatcher.next_sync()


def run(p: Parts, c: Claim | None) -> str:
    """Run a claimed attempt to its end, as a worker thread does; the job's status after it."""
    assert c is not None
    p.executor.execute(c)
    p.writer.call(lambda tx: None)  # every op queued before this one has committed
    return p.store.get(c.job_id).status


def key_use(p: Parts) -> tuple[float, int]:
    """The key's (slots held, jobs held back), as GET /limits shows them."""
    use = next(k for k in p.limits.usage(p.clock.now()) if k.key == KEY)
    return use.in_use, use.blocked


def crashed_holding_the_slot(settings: Settings, clock: ManualClock) -> tuple[str, str]:
    """A process that knows both tasks claims a pack job (it takes the key's one slot, and a
    count job submitted after it is held back), then dies without ending it."""
    with process(settings, clock, *BOTH) as gone:
        packed = submit(gone, "shelf.pack")
        counted = submit(gone, "shelf.count")
        held = claim(gone)
        assert held is not None and held.job_id == packed
        assert key_use(gone) == (1, 1)
    return packed, counted


@pytest.mark.parametrize("on_crash", ["retry", "fail"])
def test_a_crashed_job_left_for_a_process_that_knows_its_task_frees_its_slot(
    tmp_path: Path, on_crash: str
) -> None:
    clock = ManualClock()
    settings = settings_for(tmp_path)
    packed, counted = crashed_holding_the_slot(settings, clock)
    with process(settings, clock, count) as other:  # a deploy without shelf.pack
        assert other.rescuer.rescue_once(every_other_owner=True) == []
        assert other.store.get(packed).status == "running"  # left for a process that knows its task
        assert key_use(other) == (0, 0)  # but its slot is free: the count job is due again
        assert other.store.get(counted).status == "pending"
        assert run(other, claim(other)) == "completed"
        assert other.rescuer.rescue_once() == []  # a later pass frees nothing more
        assert key_use(other) == (0, 0)
    later = pack if on_crash == "retry" else pack_at_most_once
    with process(settings, clock, later, count) as knowing:  # the task is deployed again
        (rescued,) = knowing.rescuer.rescue_once(every_other_owner=True)
        assert rescued.id == packed
        if on_crash == "fail":
            assert rescued.status == "failed" and key_use(knowing) == (0, 0)
            return
        assert (rescued.status, rescued.attempts) == ("pending", 1)
        assert key_use(knowing) == (0, 0)  # its rescue gave nothing back a second time
        waits = submit(knowing, "shelf.count")
        again = claim(knowing)  # it runs again and takes the slot again, like any claim
        assert again is not None and again.job_id == packed
        assert key_use(knowing) == (1, 1)
        assert knowing.store.get(waits).status == "blocked"  # the key has no slot to spare
        assert run(knowing, again) == "completed"
        assert key_use(knowing) == (0, 0)
        assert run(knowing, claim(knowing)) == "completed"
        assert knowing.store.get(packed).attempts == 2


def test_a_left_job_cancelled_later_ends_without_freeing_a_slot_again(tmp_path: Path) -> None:
    clock = ManualClock()
    settings = settings_for(tmp_path)
    packed, counted = crashed_holding_the_slot(settings, clock)
    lease = settings.workers.lease_seconds
    with process(settings, clock, count) as other:
        assert other.rescuer.rescue_once(every_other_owner=True) == []
        clock.advance(lease / 2)  # the count job's lease ends after the pack job's
        holder = claim(other)
        assert holder is not None and holder.job_id == counted
        other.store.cancel(packed, clock.now(), lambda rec: None).result(10)
        clock.advance(lease / 2 + 1)  # the crashed job's lease has expired, the count job's has not
        (rescued,) = other.rescuer.rescue_once()
        assert (rescued.id, rescued.status) == (packed, "cancelled")
        waits = submit(other, "shelf.count")
        assert claim(other) is None  # the count job still holds the one slot
        assert key_use(other) == (1, 1)
        assert run(other, holder) == "completed"
        assert run(other, claim(other)) == "completed"
        assert other.store.get(waits).status == "completed" and key_use(other) == (0, 0)


@pytest.mark.postgres
def test_on_postgres_an_expired_lease_of_an_unknown_task_frees_its_slot(tmp_path: Path, pg_url: str) -> None:
    """Three nodes on one database: one dies holding the slot, one without the task rescues."""
    clock = ManualClock()
    settings = settings_for(tmp_path, {"database": {"url": pg_url}})
    lease = settings.workers.lease_seconds
    with (
        process(settings, clock, *BOTH) as gone,
        process(settings, clock, count) as other,
        process(settings, clock, *BOTH) as knowing,
    ):
        packed = submit(gone, "shelf.pack")
        counted = submit(gone, "shelf.count")
        held = claim(gone)
        assert held is not None and held.job_id == packed
        assert claim(other) is None and key_use(other) == (1, 1)
        clock.advance(lease + 1)  # `gone` stopped heartbeating
        assert other.rescuer.rescue_once() == []
        assert other.store.get(packed).status == "running"
        assert key_use(other) == (0, 0)
        # were `gone` alive after all, its heartbeat would stop the attempt, not keep it running
        assert packed not in gone.store.heartbeat(gone.owner, clock.now(), lease).result(10)
        first = claim(other)
        assert first is not None and first.job_id == counted
        (rescued,) = knowing.rescuer.rescue_once()
        assert (rescued.id, rescued.status) == (packed, "pending")
        assert claim(knowing) is None  # the count job holds the slot: the pack job is held back
        assert key_use(knowing) == (1, 1)
        assert run(other, first) == "completed"
        again = claim(knowing)
        assert again is not None and again.job_id == packed
        assert other.rescuer.rescue_once() == [] and key_use(other) == (1, 0)  # its lease is fresh
        waits = submit(other, "shelf.count")
        assert claim(other) is None and key_use(other) == (1, 1)
        assert run(knowing, again) == "completed"
        assert run(other, claim(other)) == "completed"
        assert other.store.get(waits).status == "completed" and key_use(other) == (0, 0)


@pytest.mark.postgres
def test_on_postgres_a_rescue_skips_a_row_another_transaction_holds(tmp_path: Path, pg_url: str) -> None:
    """Nodes rescue at once: none waits for a crashed job's row another node's transaction
    holds (its rescue, a cancel); a later pass finds the job again if it is still to rescue."""
    clock = ManualClock()
    settings = settings_for(tmp_path, {"database": {"url": pg_url}})
    packed, _ = crashed_holding_the_slot(settings, clock)
    clock.advance(settings.workers.lease_seconds + 1)
    with process(settings, clock, *BOTH) as rescuer:
        with psycopg.connect(pg_url) as other_node, other_node.transaction():
            other_node.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE", (packed,))
            outcome: list[list[str]] = []
            rescue = threading.Thread(
                target=lambda: outcome.append([r.id for r in rescuer.rescuer.rescue_once()]), daemon=True
            )
            rescue.start()
            rescue.join(10)
            assert outcome == [[]], "the rescue waited for the row another transaction holds"
        assert [r.id for r in rescuer.rescuer.rescue_once()] == [packed]


@pytest.mark.postgres
def test_a_node_whose_clock_is_far_from_the_databases_says_so_at_start(
    tmp_path: Path, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Leases are stamped and compared by each node's own clock: a node an hour ahead would
    rescue every job running elsewhere. A skew that large is logged when the node starts."""
    settings = settings_for(tmp_path, {"database": {"url": pg_url}})
    with process(settings, ManualClock(time.time() + 3600), count):
        pass
    skewed = [r.getMessage() for r in caplog.records if getattr(r, "action", None) == "clock_skew"]
    assert len(skewed) == 1 and "ahead of the PostgreSQL server's" in skewed[0]
    caplog.clear()
    with process(settings, ManualClock(time.time()), count):
        pass
    assert not [r for r in caplog.records if getattr(r, "action", None) == "clock_skew"]
