"""The executor, dispatcher and rescuer in-process: real SQLite, the parts from
`build()`, and a manual clock for time limits, stuck threads and expired leases.
Nothing here starts the worker threads: each test drives one step at a time."""

from __future__ import annotations

import inspect
import os
import sys
import threading
from contextlib import AbstractContextManager
from pathlib import Path

import orjson
import pytest

from jobserver.build import Parts
from jobserver.core.clock import ManualClock
from jobserver.core.records import Claim, JobIds, NewJob
from jobserver.runner.dispatcher import Dispatcher
from jobserver.runner.executor import STUCK_GRACE_S
from tests.helpers import blocked_in_read, has_line, wait_until
from tests.inproc import driven_parts, settings_for


def built(tmp_path: Path, clock: ManualClock) -> AbstractContextManager[Parts]:
    return driven_parts(settings_for(tmp_path), clock)


def enqueue(
    p: Parts, task: str, args: dict[str, object], max_attempts: int = 1, timeout_s: float | None = None
) -> str:
    now = p.clock.now()
    job_id = JobIds().new()
    new = NewJob(job_id, task, orjson.dumps(args).decode(), 0, max_attempts, timeout_s, None, None, now, now)
    p.store.enqueue(new, None, lambda: None).result(10)
    return job_id


def claim_sync(p: Parts) -> Claim:
    claim = p.dispatcher.next_sync()
    assert claim is not None
    return claim


def run_on_thread(p: Parts, claim: Claim) -> tuple[threading.Thread, list[bool]]:
    """Run the attempt on a thread of its own, as a worker thread would."""
    returned: list[bool] = []
    thread = threading.Thread(target=lambda: returned.append(p.executor.execute(claim)), daemon=True)
    thread.start()
    return thread, returned


def settled(p: Parts, job_id: str, status: str) -> bool:
    p.writer.call(lambda tx: None)  # every op queued before this one has committed
    return bool(p.store.get(job_id).to_api()["status"] == status)


def test_a_time_limit_is_enforced_on_the_manual_clock(tmp_path: Path) -> None:
    clock = ManualClock()
    started = tmp_path / "started"
    with built(tmp_path, clock) as p:
        job_id = enqueue(p, "tests.e2e_tasks.spins_past_timeout", {"started": str(started)}, 2, 0.5)
        thread, _ = run_on_thread(p, claim_sync(p))
        wait_until(lambda: has_line(started), 10, message="the task to start")
        p.executor.watchdog_once()
        assert p.executor.running_count() == 1  # no time has passed on the clock
        clock.advance(0.5)
        p.executor.watchdog_once()
        thread.join(10)
        wait_until(lambda: settled(p, job_id, "pending"), 10, message="the retry")
        job = p.store.get(job_id).to_api()
        assert (job["attempts"], job["error"]["type"]) == (1, "Timeout")
        assert "time limit of 0.5s" in job["error"]["message"]
        assert p.executor.running_count() == 0


@pytest.mark.untraced
def test_a_stuck_thread_is_given_up_after_the_grace_period(tmp_path: Path) -> None:
    clock = ManualClock()
    started = tmp_path / "started"
    with built(tmp_path, clock) as p:
        fifo = tmp_path / "fifo"
        os.mkfifo(fifo)
        job_id = enqueue(p, "tests.e2e_tasks.read_fifo", {"started": str(started), "fifo": str(fifo)})
        claim = claim_sync(p)
        thread, returned = run_on_thread(p, claim)
        wait_until(lambda: has_line(started), 10, message="the task to start")
        native_id = int(started.read_text().split()[0])
        wait_until(lambda: blocked_in_read(native_id), 10, message="the task to block in read(2)")
        p.executor.request_stop(job_id, "cancel")
        assert p.executor.watchdog_once() == 0  # inside the grace period
        clock.advance(STUCK_GRACE_S)
        assert p.executor.watchdog_once() == 1  # given up: its worker thread is to be replaced
        wait_until(lambda: settled(p, job_id, "cancelled"), 10, message="the cancel to be recorded")
        fifo.write_bytes(b"x")  # the blocking call returns at last
        thread.join(10)
        assert returned == [False]  # the stuck thread, once back, retires instead of recording again
        assert p.store.get(job_id).status == "cancelled"


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_an_async_task_that_swallows_its_timeout_is_given_up_after_the_grace_period(tmp_path: Path) -> None:
    clock = ManualClock()
    started, release = tmp_path / "started", tmp_path / "release"
    with built(tmp_path, clock) as p:
        args: dict[str, object] = {"started": str(started), "release": str(release)}
        job_id = enqueue(p, "tests.e2e_tasks.async_swallows_stops", args, 1, 0.5)
        assert p.dispatcher.claim_once() == 1
        wait_until(lambda: "started" in lines(started), 10, message="the task to start")
        clock.advance(0.5)
        assert p.executor.watchdog_once() == 0
        wait_until(lambda: "cancelled" in lines(started), 10, message="the cancellation to reach it")
        assert p.executor.running_count() == 1  # inside the grace period it may still stop
        clock.advance(STUCK_GRACE_S)
        assert p.executor.watchdog_once() == 0  # no worker thread to replace: it ran on the event loop
        wait_until(lambda: settled(p, job_id, "failed"), 10, message="the attempt given up")
        assert p.store.get(job_id).to_api()["error"]["type"] == "Timeout"
        wait_until(lambda: p.executor.running_count() == 0, 10, message="its slot freed")
        release.touch()
        wait_until(lambda: "returned" in lines(started), 10, message="the task to return at last")
        job = p.store.get(job_id).to_api()
        assert (job["status"], job["result"]) == ("failed", None)  # its late return changed nothing


@pytest.mark.parametrize(
    "reason, status, error", [("cancel", "cancelled", "Cancelled"), ("timeout", "failed", "Timeout")]
)
def test_an_async_task_that_returns_after_its_stop_ends_as_the_stop_says(
    tmp_path: Path, reason: str, status: str, error: str
) -> None:
    clock = ManualClock()
    started = tmp_path / "started"
    with built(tmp_path, clock) as p:
        args: dict[str, object] = {
            "started": str(started),
            "release": str(tmp_path / "never"),
            "then": "return",
        }
        job_id = enqueue(p, "tests.e2e_tasks.async_swallows_stops", args, 1, 0.5)
        assert p.dispatcher.claim_once() == 1
        wait_until(lambda: "started" in lines(started), 10, message="the task to start")
        if reason == "cancel":
            p.executor.request_stop(job_id, "cancel")
        else:
            clock.advance(0.5)
            p.executor.watchdog_once()
        wait_until(lambda: settled(p, job_id, status), 10, message=f"the job {status}")
        job = p.store.get(job_id).to_api()
        assert job["result"] is None and job["error"]["type"] == error
        assert "returned" in lines(started)


def test_a_sync_task_that_returns_after_its_timeout_fails_with_timeout(tmp_path: Path) -> None:
    clock = ManualClock()
    started = tmp_path / "started"
    with built(tmp_path, clock) as p:
        job_id = enqueue(p, "tests.e2e_tasks.catches_its_stop", {"started": str(started)}, 1, 0.5)
        thread, returned = run_on_thread(p, claim_sync(p))
        wait_until(lambda: "started" in lines(started), 10, message="the task to start")
        clock.advance(0.5)
        p.executor.watchdog_once()
        thread.join(10)
        assert returned == [True]
        wait_until(lambda: settled(p, job_id, "failed"), 10, message="the attempt's end recorded")
        job = p.store.get(job_id).to_api()
        assert (job["result"], job["error"]["type"]) == (None, "Timeout")


def test_idle_workers_that_look_for_work_together_make_one_claim(tmp_path: Path) -> None:
    """The first claim takes for every idle thread; the others take from what it queued."""
    clock = ManualClock()
    source, first = inspect.getsourcelines(Dispatcher.next_sync)
    # where a thread waits for its turn while another claims
    turn_line = next((n for n, line in enumerate(source, first) if "with self._claiming" in line), None)

    def waiting(thread: threading.Thread) -> bool:
        frame = sys._current_frames().get(thread.ident or 0)
        return frame is not None and (
            frame.f_code.co_name == "_wait"  # its claim waits for the writer
            or (frame.f_code.co_name == "next_sync" and frame.f_lineno == turn_line)
        )

    with built(tmp_path, clock) as p:
        for i in range(8):
            enqueue(p, "tests.e2e_tasks.record", {"path": str(tmp_path / str(i)), "value": "v"})
        gate = threading.Event()
        p.writer.submit(lambda tx: gate.wait(10))  # the writer is busy: claims wait behind it
        ops = p.writer.ops
        claims: list[Claim | None] = []
        threads = [threading.Thread(target=lambda: claims.append(p.dispatcher.next_sync())) for _ in range(4)]
        for thread in threads:
            thread.start()
        wait_until(lambda: all(waiting(t) for t in threads), 10, message="every thread waiting")
        gate.set()
        for thread in threads:
            thread.join(10)
        assert len({c.job_id for c in claims if c is not None}) == 4
        assert p.writer.ops - ops == 2  # the op that held the writer, and one claim


def test_the_rescuer_leaves_a_job_of_a_task_it_does_not_know_to_a_process_that_does(tmp_path: Path) -> None:
    """Whether a crashed job may run again is its task's to say (`on_crash="fail"`: never)."""
    clock = ManualClock()
    with built(tmp_path, clock) as p:
        unknown = enqueue(p, "other.deploy.charge_card", {}, 3)
        cancelled = enqueue(p, "other.deploy.charge_card", {}, 3)
        lease = p.settings.workers.lease_seconds
        p.store.claim(
            "gone", clock.now(), lease, lambda tx: (10, None), lambda tx, c: [i for i, _ in c]
        ).result(10)
        p.store.cancel(cancelled, clock.now(), lambda rec: None).result(10)  # asked while it ran
        clock.advance(lease + 1)
        assert [rec.id for rec in p.rescuer.rescue_once()] == [cancelled]  # a cancel ends it anyway
        assert p.store.get(cancelled).status == "cancelled"
        assert p.store.get(unknown).status == "running"  # left for a process that knows its task
        assert [rec.id for rec in p.rescuer.rescue_once(every_other_owner=True)] == []


def test_jobs_the_rescuer_leaves_do_not_keep_it_from_the_others(tmp_path: Path) -> None:
    """A rescue reads a page of running jobs: those of tasks it does not know are not in it."""
    clock = ManualClock()
    with built(tmp_path, clock) as p:
        now = clock.now()
        ids = JobIds()
        unknown = [
            NewJob(ids.new(), "other.deploy.task", "{}", 0, 3, None, None, None, now, now)
            for _ in range(1001)
        ]
        p.store.enqueue_many([(new, None) for new in unknown], lambda: None).result(30)
        known = enqueue(p, "tests.e2e_tasks.record", {"path": str(tmp_path / "x"), "value": "v"}, 3)
        lease = p.settings.workers.lease_seconds
        p.store.claim(
            "gone", clock.now(), lease, lambda tx: (2000, None), lambda tx, c: [i for i, _ in c]
        ).result(30)
        clock.advance(lease + 1)
        assert [rec.id for rec in p.rescuer.rescue_once()] == [known]


def test_the_rescuer_recovers_expired_leases_on_the_manual_clock(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    with built(tmp_path, clock) as p:
        retried = enqueue(p, "tests.e2e_tasks.record", {"path": str(tmp_path / "x"), "value": "v"}, 3)
        once = enqueue(p, "tests.e2e_tasks.at_most_once", {"started": "s", "release": "r"})
        lease = p.settings.workers.lease_seconds
        p.store.claim(
            "gone", clock.now(), lease, lambda tx: (10, None), lambda tx, c: [i for i, _ in c]
        ).result(10)
        assert p.rescuer.rescue_once() == []  # the lease has not expired yet
        clock.advance(lease + 1)
        rescued = {rec.id: rec for rec in p.rescuer.rescue_once()}
        assert rescued[retried].status == "pending" and rescued[retried].attempts == 1
        assert rescued[once].status == "failed"  # on_crash="fail"
        assert "Crashed" in (rescued[once].error or "")
        levels = {r.getMessage(): r.levelname for r in caplog.records if r.name == "jobserver.ops.rescuer"}
        assert levels == {
            f"rescued 1 job (its worker stopped heartbeating), now pending: {retried}": "WARNING",
            f"rescued {once}: now failed": "ERROR",
        }
        metrics = p.metrics.render().decode()
        assert 'jobserver_jobs_rescued_total{task="tests.e2e_tasks.at_most_once"} 1.0' in metrics
        assert (
            'jobserver_jobs_finished_total{status="failed",task="tests.e2e_tasks.at_most_once"} 1.0'
            in metrics
        )


def test_a_rescue_of_many_jobs_is_one_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A restart after a crash may rescue thousands of jobs: one line says so, not one each."""
    clock = ManualClock()
    with built(tmp_path, clock) as p:
        ids = [
            enqueue(p, "tests.e2e_tasks.record", {"path": str(tmp_path / "x"), "value": "v"}, 3)
            for _ in range(12)
        ]
        lease = p.settings.workers.lease_seconds
        p.store.claim(
            "gone", clock.now(), lease, lambda tx: (20, None), lambda tx, c: [i for i, _ in c]
        ).result(10)
        clock.advance(lease + 1)
        assert len(p.rescuer.rescue_once()) == 12
        lines = [r.getMessage() for r in caplog.records if r.name == "jobserver.ops.rescuer"]
        assert len(lines) == 1 and lines[0].startswith(
            "rescued 12 jobs (its worker stopped heartbeating), now pending: "
        )
        assert lines[0].endswith(" and 2 more") and sum(job_id in lines[0] for job_id in ids) == 10


def test_the_shutdown_puts_back_claims_that_never_started(tmp_path: Path) -> None:
    clock = ManualClock()
    with built(tmp_path, clock) as p:
        ids = [enqueue(p, "jobserver.examples.add", {"a": i, "b": 1}) for i in range(3)]
        assert p.dispatcher.claim_once() == 3
        assert {p.store.get(i).status for i in ids} == {"running"}
        unstarted = p.dispatcher.stop_claiming()
        assert sorted(c.job_id for c in unstarted) == sorted(ids)
        for future in p.executor.release_unstarted(unstarted):
            future.result(10)
        assert [(p.store.get(i).status, p.store.get(i).attempts) for i in ids] == [("pending", 0)] * 3
        assert p.dispatcher.claim_once() == 0  # nothing is claimed once the shutdown began


def test_a_claim_that_commits_as_the_shutdown_begins_is_put_back(tmp_path: Path) -> None:
    clock = ManualClock()
    with built(tmp_path, clock) as p:
        job_id = enqueue(p, "jobserver.examples.add", {"a": 1, "b": 2})
        lease = p.settings.workers.lease_seconds
        # a claim transaction under way (here: a submit's hand-off to an idle worker) ...
        (claim,) = p.store.claim(
            p.owner, clock.now(), lease, lambda tx: (1, None), lambda tx, c: [i for i, _ in c]
        ).result(10)
        assert p.dispatcher.stop_claiming() == []
        p.dispatcher.handoff.deliver(claim)  # ... delivers after the shutdown began
        wait_until(lambda: settled(p, job_id, "pending"), 10, message="the put-back")
        assert p.store.get(job_id).attempts == 0
        assert p.slots.pop_ready() is None  # nothing left for a worker that will never take it


def _threads_cpu_s(prefix: str) -> float:
    """CPU seconds used so far by this process's threads whose name starts with `prefix`."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    total = 0
    for tid, name in names.items():
        if name.startswith(prefix):
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def test_idle_worker_threads_rest_while_the_shutdown_drains(tmp_path: Path) -> None:
    """Between the drain's start and the pool's stop (up to the grace period) an idle worker
    thread has nothing to claim: it waits for the stop instead of asking again at once."""
    clock = ManualClock()
    with built(tmp_path, clock) as p:
        p.pool.start()
        wait_until(lambda: p.pool.alive() == p.settings.workers.threads, 10, message="the workers")
        p.dispatcher.stop_claiming()
        before = _threads_cpu_s("jobserver-worker")
        threading.Event().wait(0.5)  # a measured window, not a synchronization
        used = _threads_cpu_s("jobserver-worker") - before
        p.pool.stop(timeout_s=5)
        assert used < 0.1, f"idle workers used {used:.2f} s of CPU in 0.5 s of draining"
        assert p.pool.alive() == 0
