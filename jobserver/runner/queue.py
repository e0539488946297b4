"""The Huey side: Huey runs the sync worker threads; our job table is the queue.

Huey's stock SQL storage deletes a queue row when a worker takes it, so a crash
between that delete and the job being marked running strands the job. Here
there is no second queue: a worker's `dequeue` asks the dispatcher for a claim
(a conditional UPDATE of the job row), so nothing can be stranded and a
duplicate wake-up does nothing. The storage is "blocking": an idle worker
waits on the in-process `Wakeup` (a commit wakes it in microseconds) or, at
the latest, the poll interval. A claim reaches its worker as the Python object
itself: the task Huey runs is handed over as it is (no message is built, encoded
or decoded), and its id is the attempt's, so no random id is drawn per job.
"""

from __future__ import annotations

import threading
from typing import Any

from huey import Huey
from huey.api import Task
from huey.constants import EmptyData
from huey.consumer import Worker
from huey.storage import BlackHoleStorage

from jobserver.core.records import Claim
from jobserver.runner.dispatcher import Dispatcher
from jobserver.runner.executor import Executor

DRAINING_IDLE_S = 1.0


class InProcessHuey(Huey):
    """Huey whose tasks never leave the process: a dequeued task is the object the pool made."""

    def serialize_task(self, task: Task) -> Any:
        return task

    def deserialize_task(self, data: Any) -> Any:
        return data


class JobTableStorage(BlackHoleStorage):
    """A Huey storage whose `dequeue` is a claim from the dispatcher."""

    blocking = True
    priority = True

    def __init__(self, name: str, pool: WorkerPool, **kwargs: Any) -> None:
        super().__init__(name)
        self.pool = pool

    def enqueue(self, data: Any, priority: float | None = None) -> None:
        """Jobs are inserted by the store in the submit transaction; nothing to do here."""

    def dequeue(self) -> Any:
        return self.pool.next_message()

    def peek_data(self, key: str) -> Any:
        return EmptyData


class WorkerPool:
    """`threads` Huey worker threads; a stuck thread is replaced, never waited on."""

    def __init__(self, dispatcher: Dispatcher, executor: Executor, threads: int) -> None:
        self.dispatcher = dispatcher
        self.executor = executor
        self.stop_flag = threading.Event()
        self.huey = InProcessHuey(
            "jobserver",
            results=False,
            utc=True,
            storage_class=JobTableStorage,
            pool=self,
        )
        self._local = threading.local()
        self._execute = self.huey.task(name="jobserver.execute")(self._run_claim)
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._count = threads
        self._seq = 0

    def _run_claim(self, claim: Claim) -> None:
        if not self.executor.execute(claim):
            self._local.retire = True

    def next_message(self) -> Any:
        """A Huey message carrying the next claim for this worker thread, or None after an idle wait."""
        claim = self.dispatcher.next_sync()
        if claim is None:
            if self.dispatcher.draining:
                # nothing is claimed again: wait for the stop (the drain may wait out a grace
                # period for running jobs, and an idle thread looping meanwhile takes their CPU)
                self.stop_flag.wait(DRAINING_IDLE_S)
            elif not self.stop_flag.is_set():
                self.dispatcher.idle_wait()
            return None
        # the attempt's own id: Huey would draw a random one for every task
        return self._execute.task_class((claim,), id=f"{claim.job_id}:{claim.run_seq}")

    def start(self) -> None:
        """Start the worker threads."""
        for _ in range(self._count):
            self._spawn()

    def replace(self, abandoned: int) -> None:
        """Start a new thread for each one given up as stuck."""
        for _ in range(abandoned):
            self._spawn()

    def _spawn(self) -> None:
        with self._lock:
            self._seq += 1
            thread = threading.Thread(target=self._loop, name=f"jobserver-worker-{self._seq}", daemon=True)
            self._threads.append(thread)
        thread.start()

    def _loop(self) -> None:
        worker = Worker(self.huey, self.stop_flag, 0.1, 1.0, 1.15)
        while not self.stop_flag.is_set() and not getattr(self._local, "retire", False):
            worker.loop()

    def alive(self) -> int:
        """How many worker threads are running."""
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            return len(self._threads)

    def stop(self, timeout_s: float) -> None:
        """Stop taking jobs and wait up to `timeout_s` for the threads to leave."""
        self.stop_flag.set()
        for thread in list(self._threads):
            thread.join(timeout=timeout_s)
