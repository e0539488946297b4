"""ReadPool: the threads that run database reads for the event loop, which never blocks on one.

Each thread keeps its own read connection (the database object holds one per
thread). `ThreadPoolExecutor` with `run_in_executor` did this job, at a price paid
on every read: a `concurrent.futures.Future` with its Condition, chained to an
asyncio future through callbacks and a second hop into the loop. Here a read is
queued with the loop's own future, and the thread that ran it sets that future
with one `call_soon_threadsafe`; `GET /jobs/{id}?wait=` makes two such reads per job.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
_STOP = None


def _answer(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.cancelled():  # the caller gave up (a closed connection): the answer is dropped
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


class ReadPool:
    """Up to `threads` reader threads, each started when a read finds none idle: a thread holds
    a database connection, and on PostgreSQL every node's connections count against the
    server's limit."""

    def __init__(self, threads: int, name: str) -> None:
        self._size = threads
        self._name = name
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._idle = 0  # threads free for a read that no queued read has counted on yet
        self._stopped = False

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on a reader thread; its value or its exception."""
        if self._stopped:
            raise RuntimeError("the reader threads have stopped")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            if self._idle > 0:
                self._idle -= 1  # a free thread takes it
            elif len(self._threads) < self._size:
                self._spawn()
            # else every thread is busy: the first one free takes it
        self._queue.put((loop, future, fn, args))
        return await future

    def _spawn(self) -> None:
        thread = threading.Thread(target=self._serve, name=f"{self._name}_{len(self._threads)}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _serve(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            loop, future, fn, args = item
            try:
                value, ok = fn(*args), True
            except BaseException as exc:  # the caller's to handle, as run_in_executor would
                value, ok = exc, False
            with self._lock:
                self._idle += 1  # free before the answer lands: the caller's next read finds it so
            try:
                loop.call_soon_threadsafe(_answer, future, ok, value)
            except RuntimeError:  # that loop has closed: nobody waits for the answer
                pass
            del item, loop, future, fn, args, value  # hold nothing of a finished read while idle

    def shutdown(self) -> None:
        """Let each thread finish the read it runs, then leave (without waiting for it)."""
        with self._lock:
            self._stopped = True
            for _ in self._threads:
                self._queue.put(_STOP)
