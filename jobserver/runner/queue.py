"""The Huey side: a Huey storage whose queue IS the job table, and its worker threads.

Huey's stock SQL storage deletes a queue row when a worker takes it, so a crash
between that delete and the job being marked running strands the job. Here
there is no second queue: `dequeue` is the claim (a conditional UPDATE of the
job row), so nothing can be stranded and a duplicate wake-up does nothing. The
storage is "blocking": an idle worker waits on the in-process `Wakeup` (a
submit's commit wakes it in microseconds) or, at the latest, `poll_interval`
(for delayed jobs, retries and other nodes). Messages are JSON, never pickle.

Imports engine, records, wakeup; Huey.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import orjson
from huey import Huey
from huey.api import Task
from huey.constants import EmptyData
from huey.consumer import Worker
from huey.registry import Message
from huey.serializer import Serializer
from huey.storage import BlackHoleStorage

from jobserver.core.records import Claim
from jobserver.runner.engine import Engine
from jobserver.runner.wakeup import Wakeup

log = logging.getLogger(__name__)


class JSONSerializer(Serializer):
    """Huey messages as JSON (a message carries only a claim)."""

    def _serialize(self, data: Any) -> bytes:
        return orjson.dumps(list(data))

    def _deserialize(self, data: bytes) -> Any:
        return Message(*orjson.loads(data))


class JobTableStorage(BlackHoleStorage):
    """A Huey storage backed by our job table: dequeue claims a job."""

    blocking = True
    priority = True

    def __init__(self, name: str = "jobserver", **kwargs: Any) -> None:
        super().__init__(name)
        self.claim: Callable[[], bytes | None] = lambda: None
        self.idle_wait: Callable[[], None] = lambda: None
        self.wake: Callable[[], None] = lambda: None

    def enqueue(self, data: bytes, priority: float | None = None) -> None:
        """Jobs are inserted by the store in the submit transaction; this only wakes a worker."""
        self.wake()

    def dequeue(self) -> bytes | None:
        data = self.claim()
        if data is None:
            self.idle_wait()
        return data

    def peek_data(self, key: str) -> Any:
        return EmptyData


class WorkerPool:
    """`threads` Huey worker threads; a stuck thread is replaced, never waited on."""

    def __init__(self, engine: Engine, wakeup: Wakeup, threads: int, poll_interval_s: float) -> None:
        self.engine = engine
        self.wakeup = wakeup
        self.poll_interval_s = poll_interval_s
        self.stop_flag = threading.Event()
        self.huey = Huey(
            "jobserver", results=False, utc=True, serializer=JSONSerializer(), storage_class=JobTableStorage
        )
        self._local = threading.local()
        self._execute = self.huey.task(name="jobserver.execute")(self._run_claim)
        storage: JobTableStorage = self.huey.storage
        storage.claim = self._claim_message
        storage.idle_wait = self._idle_wait
        storage.wake = wakeup.notify
        self._threads: list[threading.Thread] = []
        self._count = threads
        self._seq = 0
        engine.on_thread_abandoned = self._spawn

    def _run_claim(self, claim: dict[str, Any]) -> None:
        if not self.engine.execute(Claim(**claim)):
            self._local.retire = True

    def _claim_message(self) -> bytes | None:
        claim = self.engine.claim_next()
        if claim is None:
            return None
        task: Task = self._execute.s(asdict(claim))
        data: bytes = self.huey.serializer.serialize(self.huey._registry.create_message(task))
        return data

    def _idle_wait(self) -> None:
        if self.stop_flag.is_set():
            return
        timeout = self.poll_interval_s
        due = self.engine.next_due_in()
        if due is not None:
            timeout = min(timeout, due)
        if timeout > 0:
            self.wakeup.wait(timeout)

    def start(self) -> None:
        """Start the worker threads."""
        for _ in range(self._count):
            self._spawn()

    def _spawn(self) -> None:
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
        self._threads = [t for t in self._threads if t.is_alive()]
        return len(self._threads)

    def stop(self, timeout_s: float) -> None:
        """Stop taking jobs and wait up to `timeout_s` for the threads to leave."""
        self.stop_flag.set()
        self.wakeup.stop()
        for thread in list(self._threads):
            thread.join(timeout=timeout_s)
