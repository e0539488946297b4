"""Dispatcher: the one place where jobs are claimed for this process.

Two kinds of capacity are fed from the same claim path: sync worker threads
(Huey's) and async slots (`workers.async_concurrency`). A claim transaction
takes what fits either kind (the plan and the reservations come from `Slots`,
on the writer thread): async claims start on the tasks' event loop at once,
sync ones wait in the ready queue for an idle worker thread. Worker threads
claim when they are idle; a feeder thread claims for async slots, so an async
job never waits for a sync thread: idle worker threads claim for async slots
too, and the feeder claims when async work may be waiting (a new async job
that no idle worker thread heard of, or a freed async slot), so sync work never
costs it a claim transaction. The claim-time rules of this process (free capacity,
and only tasks this process knows: a job of an unknown task stays pending for
another node or the next deploy) are the slots' to decide, in one place; the
limits that hold across processes are checked by the store in the same claim.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from jobserver.core.clock import Clock
from jobserver.core.errors import StorageError
from jobserver.core.observers import JobObserver
from jobserver.core.records import Claim, HandOff
from jobserver.runner.executor import Executor
from jobserver.runner.slots import Slots
from jobserver.runner.wakeup import Wakeup
from jobserver.storage.store import JobStore
from jobserver.storage.writer import Tx

log = logging.getLogger(__name__)
BACKOFF_MIN_S = 0.05


class Dispatcher:
    """Claims jobs for both kinds of capacity and hands them to the executor."""

    def __init__(
        self,
        store: JobStore,
        slots: Slots,
        executor: Executor,
        clock: Clock,
        wakeup: Wakeup,
        observers: Sequence[JobObserver],
        owner: str,
        lease_s: float,
        poll_interval_s: float,
    ) -> None:
        self.store = store
        self.slots = slots
        self.executor = executor
        self.clock = clock
        self.wakeup = wakeup
        self.observers = observers
        self.owner = owner
        self.lease_s = lease_s
        self.poll_interval_s = poll_interval_s
        self.draining = False  # set once by the shutdown: no claim after it
        self._drain_lock = threading.Lock()  # a claim that commits as the shutdown begins is put back
        self.handoff = HandOff(owner, lease_s, self._handoff_accept, self._handoff_deliver)
        self._stop = threading.Event()
        self._backoff_lock = threading.Lock()
        self._backoff_s = 0.0
        self._retry_at = 0.0
        self.backoff_max_s = max(poll_interval_s, BACKOFF_MIN_S)
        self._claiming = threading.Lock()  # one worker thread's claim at a time (next_sync)
        self._claims_made = 0
        self._feeder = threading.Thread(target=self._feed, name="jobserver-async-feeder", daemon=True)

    # ----------------------------------------------------------------- claim
    def claim_once(self) -> int:
        """One claim transaction for whatever capacity is free; returns how many jobs it took."""
        if self.draining:
            return 0
        claims = self.store.claim(
            self.owner,
            self.clock.now(),
            self.lease_s,
            self.slots.plan,
            self.slots.accept,
            self.slots.give_back,
        ).result()
        self._dispatch(claims)
        return len(claims)

    def _dispatch(self, claims: Sequence[Claim]) -> None:
        with self._drain_lock:
            if self.draining:  # its transaction was under way when the shutdown began
                self.executor.release_unstarted(claims)
                return
            self._start_or_queue(claims)

    def _start_or_queue(self, claims: Sequence[Claim]) -> None:
        queued = []
        for claim in claims:
            log.debug(
                "claimed %s attempt %d",
                claim.job_id,
                claim.attempt,
                extra={"job_id": claim.job_id, "action": "claim"},
            )
            for observer in self.observers:
                observer.claimed(claim)
            if self.slots.is_async(claim.task):
                self.executor.execute(claim)  # schedules it on the event loop; does not block
            else:
                queued.append(claim)
        if queued:
            self.slots.push_ready(queued)
            self.wakeup.notify(len(queued))

    def next_sync(self) -> Claim | None:
        """The next sync job for an idle worker thread: one claimed earlier, or a fresh claim.
        While the database fails, claims back off (the caller's next call waits).

        One worker thread claims at a time. A claim takes for every idle thread (the slots'
        plan), so a thread that waited while another claimed takes from what that claim
        queued instead of making a claim of its own, which would most often find nothing:
        under load, six in seven such claims found nothing."""
        ready = self.slots.pop_ready()
        if ready is not None or self.draining:
            return ready
        seen = self._claims_made
        with self._claiming:
            if self._claims_made != seen:  # a claim ended while this thread waited for its turn
                return self.slots.pop_ready()
            taken = self._guarded_claim()
            self._claims_made += 1
        if taken is None:
            return None
        return self.slots.pop_ready()

    def _guarded_claim(self) -> int | None:
        """One claim (how many jobs it took), or None after waiting out a database failure:
        doubling waits from BACKOFF_MIN_S up to the poll interval, shared by every thread
        that claims, in real time (a failing disk does not follow a test's manual clock).
        While the database fails, one thread at a time probes it; the others wait."""
        with self._backoff_lock:
            delay = self._retry_at - time.monotonic()
            if delay <= 0 and self._backoff_s > 0:
                self._retry_at = time.monotonic() + self._backoff_s  # this thread probes
        if delay > 0:
            self._stop.wait(delay)
            return None
        try:
            taken = self.claim_once()
        except StorageError as exc:
            with self._backoff_lock:
                self._backoff_s = min(max(BACKOFF_MIN_S, self._backoff_s * 2), self.backoff_max_s)
                self._retry_at = time.monotonic() + self._backoff_s
            log.debug("claim failed: %s", exc, extra={"action": "claim_failed"})
            return None
        with self._backoff_lock:
            self._backoff_s, self._retry_at = 0.0, 0.0
        return taken

    def _handoff_accept(self, tx: Tx, job_id: str, task: str) -> bool:
        """May a new due job go straight to an idle worker? (writer thread)"""
        if self.draining:
            return False
        if not self.slots.is_async(task) and self.slots.ready_count() >= self.wakeup.waiting:
            return False  # every idle worker already has a job waiting for it
        return bool(self.slots.accept(tx, [(job_id, task)]))

    def _handoff_deliver(self, claim: Claim) -> None:
        self._dispatch([claim])

    # -------------------------------------------------------------- idling
    def _idle_timeout(self) -> float:
        """At most a poll interval, and no later than the next delayed job is due."""
        timeout = self.poll_interval_s
        try:
            due = self.store.next_run_at()
        except StorageError:
            return timeout
        if due is not None:
            timeout = min(timeout, max(0.0, due - self.clock.now()))
        return timeout

    def idle_wait(self) -> None:
        """An idle worker thread waits for a wake-up, a delayed job's time, or a poll interval."""
        if self._stop.is_set():
            return
        timeout = self._idle_timeout()
        if timeout > 0:
            self.wakeup.wait(timeout)

    def async_job_added(self) -> None:
        """A new due async job committed: an idle worker thread claims it, else the feeder does."""
        self.wakeup.notify()
        if self.wakeup.waiting == 0:
            self.slots.async_work.set()

    def job_added(self, task: str) -> None:
        """A new due job of `task` committed without a hand-off (e.g. a schedule's tick): wake a claimer."""
        if self.slots.is_async(task):
            self.async_job_added()
        else:
            self.wakeup.notify()

    def _feed(self) -> None:
        """Claim for free async slots whenever async work may be waiting.

        With every slot taken there is nothing to claim for until one frees (which sets
        `async_work`): a delayed job's time passing is not a reason to look again, and doing
        so while it stays overdue spun this thread at full speed."""
        while not self._stop.is_set():
            self.slots.async_work.clear()
            try:
                if self.slots.free_async() == 0:
                    timeout = self.poll_interval_s
                elif self._guarded_claim():
                    continue
                else:
                    timeout = self._idle_timeout()
            except Exception:
                log.exception("claiming for async tasks failed", extra={"action": "claim_failed"})
                timeout = self.poll_interval_s  # back off; the next pass tries again
            if timeout > 0:
                self.slots.async_work.wait(timeout)

    def start(self) -> None:
        """Start the async feeder (only when some task is async)."""
        if self.slots.has_async_tasks():
            self._feeder.start()

    # ------------------------------------------------------------- shutdown
    def stop_claiming(self) -> list[Claim]:
        """No claim after this; returns the sync jobs claimed but not started (to put back)."""
        with self._drain_lock:
            self.draining = True
            unstarted = self.slots.take_ready()
        self._stop.set()
        self.wakeup.stop()
        self.slots.async_work.set()  # the feeder sees the stop
        if self._feeder.is_alive():
            self._feeder.join(timeout=5)
        return unstarted
