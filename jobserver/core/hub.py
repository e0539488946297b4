"""Hub: in-process notifications that a job changed, from any thread to asyncio waiters.

The writer publishes a job id after a commit that changed it; `GET /jobs/{id}?wait`
and the event streams wait on it instead of polling the database. A publish for
a job nobody watches costs a dict lookup.
"""

from __future__ import annotations

import asyncio
import threading


class Hub:
    """job id -> the asyncio events of its watchers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watchers: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}

    def publish(self, job_id: str) -> None:
        """Wake every watcher of this job (safe from any thread)."""
        watchers = self._watchers.get(job_id)
        if not watchers:
            return
        with self._lock:
            targets = list(self._watchers.get(job_id, ()))
        for loop, event in targets:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the loop already closed
                pass

    def publish_all(self) -> None:
        """Wake every watcher (changes may have been missed, e.g. while notifications were down)."""
        with self._lock:
            job_ids = list(self._watchers)
        for job_id in job_ids:
            self.publish(job_id)

    def watch(self, job_id: str) -> _Watch:
        """A context whose value is an event set whenever the job changes; clear it before each
        wait. (A class, not a generator: every `GET ?wait` and event stream enters one.)"""
        return _Watch(self, job_id)

    def _add(self, job_id: str, entry: tuple[asyncio.AbstractEventLoop, asyncio.Event]) -> None:
        with self._lock:
            self._watchers.setdefault(job_id, set()).add(entry)

    def _remove(self, job_id: str, entry: tuple[asyncio.AbstractEventLoop, asyncio.Event]) -> None:
        with self._lock:
            watchers = self._watchers.get(job_id)
            if watchers is not None:
                watchers.discard(entry)
                if not watchers:
                    del self._watchers[job_id]


class _Watch:
    __slots__ = ("_entry", "_hub", "_job_id")

    def __init__(self, hub: Hub, job_id: str) -> None:
        self._hub = hub
        self._job_id = job_id
        self._entry = (asyncio.get_running_loop(), asyncio.Event())

    def __enter__(self) -> asyncio.Event:
        self._hub._add(self._job_id, self._entry)
        return self._entry[1]

    def __exit__(self, *exc_info: object) -> None:
        self._hub._remove(self._job_id, self._entry)
