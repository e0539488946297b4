"""Hub: in-process notifications that a job changed, from any thread to asyncio waiters.

The writer publishes a job id after a commit that changed it; `GET /jobs/{id}?wait`
and the event streams wait on it instead of polling the database. A publish for
a job nobody watches costs a dict lookup.
"""

from __future__ import annotations

import asyncio
import threading


class Hub:
    """job id -> the watches of its watchers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watchers: dict[str, set[Watch]] = {}
        self.closed = False  # the server is about to stop: waits end now, with what there is

    def close(self) -> None:
        """End every wait, now and from now on (safe from any thread): the server is stopping,
        and a `GET ?wait` or an event stream still open would be cut off with an error."""
        self.closed = True
        self.publish_all()

    def publish(self, job_id: str) -> None:
        """Wake every watcher of this job (safe from any thread)."""
        watchers = self._watchers.get(job_id)
        if not watchers:
            return
        with self._lock:
            targets = list(self._watchers.get(job_id, ()))
        for watch in targets:
            try:
                watch.loop.call_soon_threadsafe(watch.changed)
            except RuntimeError:  # the loop already closed
                pass

    def publish_all(self) -> None:
        """Wake every watcher (changes may have been missed, e.g. while notifications were down)."""
        with self._lock:
            job_ids = list(self._watchers)
        for job_id in job_ids:
            self.publish(job_id)

    def watching(self, job_id: str) -> int:
        """How many watch the job now (long-polls and event streams of it)."""
        with self._lock:
            return len(self._watchers.get(job_id, ()))

    def watch(self, job_id: str) -> Watch:
        """A watch of the job, registered while its `with` block runs."""
        return Watch(self, job_id)

    def _add(self, job_id: str, watch: Watch) -> None:
        with self._lock:
            self._watchers.setdefault(job_id, set()).add(watch)

    def _remove(self, job_id: str, watch: Watch) -> None:
        with self._lock:
            watchers = self._watchers.get(job_id)
            if watchers is not None:
                watchers.discard(watch)
                if not watchers:
                    del self._watchers[job_id]


def _time_up(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


class Watch:
    """One watcher of one job, on the event loop that created it: `clear()`, read the job, then
    `wait()` for a change. (A future and a timer, not an `asyncio.Event` under `wait_for`, which
    made a task per wait: every `GET ?wait` and event stream waits this way.)"""

    __slots__ = ("_changed", "_hub", "_job_id", "_waiter", "loop")

    def __init__(self, hub: Hub, job_id: str) -> None:
        self._hub = hub
        self._job_id = job_id
        self.loop = asyncio.get_running_loop()
        self._changed = False
        self._waiter: asyncio.Future[bool] | None = None

    def __enter__(self) -> Watch:
        self._hub._add(self._job_id, self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._hub._remove(self._job_id, self)

    def changed(self) -> None:
        """The job changed (on the watch's loop)."""
        self._changed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(True)

    def clear(self) -> None:
        """Forget the changes seen so far: call before reading the job."""
        self._changed = False

    async def wait(self, timeout_s: float) -> bool:
        """Until the job changes (True; at once if it changed since `clear`), or `timeout_s` (False)."""
        if self._changed or self._hub.closed:
            return True
        waiter: asyncio.Future[bool] = self.loop.create_future()
        self._waiter = waiter
        timer = self.loop.call_later(max(timeout_s, 0.0), _time_up, waiter)
        try:
            return await waiter
        finally:
            timer.cancel()
            self._waiter = None
