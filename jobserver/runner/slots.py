"""Slots: how many jobs this process may start, and the jobs claimed ahead for idle workers.

Owns the per-process capacity: sync slots (`workers.threads`), async slots
(`workers.async_concurrency`) and the measured run time of each sync task.
It also leaves the jobs of paused tasks to wait (which tasks are paused is asked
inside the claim transaction): a claim names the tasks it may take, so the
paused ones are never even read. Claims are planned and accepted on the writer
thread, inside the claim transaction, so two claims can never both take the
last slot; a rolled-back claim gives its reservations back. Limits that hold
across processes (a task's `concurrency` among them) are the store's to check,
in the same transaction.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from jobserver.core.records import Claim
from jobserver.core.tasks import TaskDef
from jobserver.storage.writer import Tx

PREFETCH_MAX = 64  # sync jobs one claim may take beyond one per idle thread
PREFETCH_BUDGET_S = 0.005  # expected run time those extra jobs may add per idle thread
UNKNOWN_RUN_S = 1.0  # a task not yet measured is assumed long (never taken ahead)
ASYNC_PER_CLAIM = 32  # async jobs one claim may take


@dataclass(frozen=True, slots=True)
class Capacity:
    """The capacity a task's jobs run on in this process, as it stands now: `kind` is what
    one unit is called for people ("worker thread" or "async slot"), `free` how many no job holds."""

    kind: str
    size: int
    free: int


class Slots:
    """Capacity bookkeeping of one process (thread-safe)."""

    def __init__(
        self,
        tasks: Iterable[TaskDef],
        threads: int,
        async_concurrency: int,
        async_work: threading.Event,
        paused: Callable[[Tx], frozenset[str]] = lambda tx: frozenset(),
    ) -> None:
        self.async_work = (
            async_work  # set when async jobs may be claimable (the dispatcher's feeder waits on it)
        )
        self._tasks = list(tasks)
        self._by_name = {t.name: t for t in self._tasks}
        self.threads = threads
        self.async_concurrency = async_concurrency
        self._lock = threading.Lock()
        self._sync = 0
        self._async = 0
        self._run_s: dict[str, float] = {}  # moving average of each sync task's run time
        self._ready: deque[Claim] = deque()  # claimed for idle worker threads, not started yet
        # every job claimed for this process and not started yet, from inside its claim's
        # transaction on: a cancel committed after that claim finds it here, wherever it is
        # between the commit and the start, and the start then stops it
        self._claimed: set[str] = set()
        self._unknown_seen = False  # a candidate's task is unknown here: claims name the known tasks
        self._paused = paused  # the paused tasks, as the claim transaction sees them

    def has_async_tasks(self) -> bool:
        return any(t.is_async for t in self._tasks)

    def free_async(self) -> int:
        """Async slots free now."""
        with self._lock:
            return self.async_concurrency - self._async

    def is_async(self, task: str) -> bool:
        td = self._by_name.get(task)
        return td is not None and td.is_async

    def capacity_for(self, task: str) -> Capacity:
        """The capacity that would run a job of `task` here (sync and async tasks draw on
        different pools). A slot is taken from its job's claim on; jobs claimed ahead for busy
        threads count too and can take the count past the threads, hence the floor at 0."""
        with self._lock:
            if self.is_async(task):
                return Capacity(
                    "async slot", self.async_concurrency, max(0, self.async_concurrency - self._async)
                )
            return Capacity("worker thread", self.threads, max(0, self.threads - self._sync))

    def plan(self, tx: Tx) -> tuple[int, list[str] | None]:
        """How many candidates one claim reads, and which tasks it may take now (None: any).

        A claim takes a job for every idle worker thread (they pick the extra ones up
        from the ready queue), short jobs ahead within a run-time budget, and async
        jobs up to the free async slots: under load one transaction feeds every worker."""
        paused = self._paused(tx)
        with self._lock:
            free_sync = self.threads - self._sync
            free_async = self.async_concurrency - self._async
            excluded = [
                t.name
                for t in self._tasks
                if t.name in paused or (t.is_async and free_async <= 0) or (not t.is_async and free_sync <= 0)
            ]
        sync_room = free_sync + PREFETCH_MAX if free_sync > 0 else 0
        limit = sync_room + min(max(0, free_async), ASYNC_PER_CLAIM)
        if not excluded and not self._unknown_seen:
            return limit, None  # any task: the fast path, until a job of an unknown task shows up
        return limit, [t.name for t in self._tasks if t.name not in excluded]

    def accept(self, tx: Tx, candidates: list[tuple[str, str]]) -> list[str]:
        """Reserve slots for the (id, task) candidates that fit, in order; undone on rollback."""
        taken: list[tuple[str, str]] = []
        paused = self._paused(tx)
        with self._lock:
            # beyond one job per idle thread, take short jobs ahead (by measured run time),
            # at most ~PREFETCH_BUDGET_S of work per idle thread: a job taken ahead waits
            # at most about that long for its thread. The jobs the idle threads take count
            # against it: behind a long one (or one not measured yet), none is taken ahead,
            # or it would show as running while it waits for that job to end.
            budget = PREFETCH_BUDGET_S * max(0, self.threads - self._sync)
            extra = 0
            for job_id, task in candidates:
                td = self._by_name.get(task)
                if td is None:  # never claimed here: it stays pending for a process that knows it
                    self._unknown_seen = True
                    continue
                if task in paused:  # a hand-off of a new job, or a claim that began before the pause
                    continue
                is_async = td.is_async
                if is_async and self._async >= self.async_concurrency:
                    continue
                if not is_async:
                    cost = self._run_s.get(task, UNKNOWN_RUN_S)
                    if self._sync >= self.threads:
                        if extra >= PREFETCH_MAX or cost > budget:
                            continue
                        extra += 1
                    budget -= cost
                self._add(task, is_async, +1)
                self._claimed.add(job_id)
                taken.append((job_id, task))
        tx.on_rollback(lambda: self._give_back(taken))
        return [job_id for job_id, _ in taken]

    def _add(self, task: str, is_async: bool, n: int) -> None:
        if is_async:
            self._async += n
        else:
            self._sync += n

    def _give_back(self, taken: list[tuple[str, str]]) -> None:
        with self._lock:
            self._claimed.difference_update(job_id for job_id, _ in taken)
        for _, task in taken:
            self.release(task)

    def give_back(self, tx: Tx, taken: list[tuple[str, str]]) -> None:
        """Return the slots of accepted (id, task) candidates the claim did not take after all
        (a limit held them back); a rollback of the claim reserves them again, for the claim's
        own rollback hook to give back once."""
        with self._lock:
            for job_id, task in taken:
                self._add(task, self.is_async(task), -1)
                self._claimed.discard(job_id)
        tx.on_rollback(lambda: self._reserve_again(taken))

    def _reserve_again(self, taken: list[tuple[str, str]]) -> None:
        with self._lock:  # counts only: the claim's own rollback hook gives them back, ids and all
            for _, task in taken:
                self._add(task, self.is_async(task), +1)

    def is_claimed(self, job_id: str) -> bool:
        """Whether the job is claimed for this process and has not started (nor been put back)."""
        with self._lock:
            return job_id in self._claimed

    def claim_settled(self, job_id: str) -> None:
        """The job claimed here started, or was put back: it no longer waits to start."""
        with self._lock:
            self._claimed.discard(job_id)

    def release(self, task: str) -> None:
        """A job of `task` stopped running (or was never started): free its slot."""
        is_async = self.is_async(task)
        with self._lock:
            self._add(task, is_async, -1)
        if is_async:
            self.async_work.set()  # a pending async job may fit now

    def ran(self, task: str, seconds: float) -> None:
        """Record how long a sync run of `task` took (for taking short jobs ahead)."""
        with self._lock:
            before = self._run_s.get(task)
            self._run_s[task] = seconds if before is None else 0.8 * before + 0.2 * seconds

    # ----------------------------------------------------------- ready queue
    def push_ready(self, claims: list[Claim]) -> None:
        with self._lock:
            self._ready.extend(claims)

    def pop_ready(self) -> Claim | None:
        with self._lock:
            return self._ready.popleft() if self._ready else None

    def take_ready(self) -> list[Claim]:
        """Empty the ready queue (shutdown)."""
        with self._lock:
            ready, self._ready = list(self._ready), deque()
        return ready

    def ready_count(self) -> int:
        return len(self._ready)
