"""BulkActions: cancel, retry or delete every job that matches a filter, a batch at a time.

Each batch is its own short writer transaction of at most `BATCH_SIZE` jobs,
read in id order from the (status, id) index, so a million matching jobs never
hold the writer for long: submits and claims queue between the batches. A
batch does to each job what the one-job cancel or retry does (events, webhook,
wake-ups). Jobs that enter a matching status while the action runs may or may
not be included; jobs are never acted on twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from jobserver.core.clock import Clock
from jobserver.core.hub import Hub
from jobserver.core.operations import BulkFilter, CancelFilter, DeleteFilter, RetryFilter
from jobserver.core.records import JobRecord
from jobserver.runner.commands import JobCommands
from jobserver.runner.dispatcher import Dispatcher
from jobserver.runner.wakeup import Wakeup
from jobserver.storage.store import JobStore
from jobserver.storage.writer import WriteFuture

BATCH_SIZE = 100  # ~20-30 ms of writer time each (bench --ops): a submit waits at most about that
IDS_PER_BATCH = 500
Batch = Callable[
    [str, str | None, Sequence[str] | None, str, int, float], WriteFuture[tuple[list[JobRecord], str | None]]
]


class BulkActions:
    """Cancel, retry or delete many jobs without stalling the writer."""

    def __init__(
        self,
        store: JobStore,
        clock: Clock,
        hub: Hub,
        wakeup: Wakeup,
        dispatcher: Dispatcher,
        commands: JobCommands,
    ) -> None:
        self.store = store
        self.clock = clock
        self.hub = hub
        self.wakeup = wakeup
        self.dispatcher = dispatcher
        self.commands = commands  # a cancelled job gets what the one-job cancel gives it

    async def cancel(self, f: CancelFilter) -> int:
        """Cancel matching pending jobs, ask matching running ones to stop; how many."""
        statuses: list[str] = [f.status] if f.status else ["pending", "waiting", "running"]
        return await self._run(self.store.cancel_batch, _stored(statuses), f, self._cancelled)

    async def retry(self, f: RetryFilter) -> int:
        """Give matching failed or cancelled jobs a fresh round of attempts; how many."""
        statuses: list[str] = [f.status] if f.status else ["failed", "cancelled"]
        return await self._run(self.store.retry_batch, statuses, f, self._retried)

    async def delete(self, f: DeleteFilter) -> int:
        """Forget matching finished jobs (unfinished ones are never touched); how many."""
        statuses: list[str] = [f.status] if f.status else ["completed", "failed", "cancelled"]
        return await self._run(self.store.delete_batch, statuses, f, self._deleted)

    async def _run(
        self, batch: Batch, statuses: list[str], f: BulkFilter, after: Callable[[list[JobRecord]], None]
    ) -> int:
        count = 0
        id_chunks: list[list[str] | None] = [None]
        if f.ids is not None:
            ids = sorted(set(f.ids))
            id_chunks = [ids[i : i + IDS_PER_BATCH] for i in range(0, len(ids), IDS_PER_BATCH)]
        for chunk in id_chunks:
            for status in statuses:
                cursor: str | None = ""
                while cursor is not None:
                    future = batch(status, f.task, chunk, cursor, BATCH_SIZE, self.clock.now())
                    records, cursor = await future
                    after(records)
                    count += len(records)
        return count

    def _cancelled(self, records: list[JobRecord]) -> None:
        for rec in records:
            self.commands.cancelled(rec)

    def _deleted(self, records: list[JobRecord]) -> None:
        for rec in records:
            self.hub.publish(rec.id)

    def _retried(self, records: list[JobRecord]) -> None:
        for rec in records:
            self.hub.publish(rec.id)
        if records:
            self.wakeup.notify(len(records))
            self.dispatcher.slots.async_work.set()


def _stored(statuses: list[str]) -> list[str]:
    """The stored statuses behind API ones: a pending job waiting for its run_at is 'scheduled',
    one held back by a limit 'blocked'."""
    return [
        s
        for status in statuses
        for s in (("pending", "scheduled", "blocked") if status == "pending" else (status,))
    ]
