"""JobCommands: what the API asks of jobs (submit, cancel, retry, delete).

Runs on the API's event loop and never blocks it: every write is a writer op
awaited through its future. A submit whose job is due and finds an idle worker
claims it in the same transaction (the dispatcher's hand-off).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from jobserver.core.clock import Clock
from jobserver.core.config import Settings
from jobserver.core.errors import (
    DrainingError,
    IdempotencyInFlightError,
    IdempotencyMismatchError,
    InvalidRequestError,
    JobServerError,
    TaskNotFoundError,
    WebhookURLError,
)
from jobserver.core.hub import Hub
from jobserver.core.lifecycle import Status
from jobserver.core.observers import JobObserver
from jobserver.core.records import JobRecord
from jobserver.core.schemas import SubmitBody, json_within
from jobserver.core.tasks import Registry
from jobserver.runner.dispatcher import Dispatcher
from jobserver.runner.executor import Executor
from jobserver.runner.submission import JobFactory
from jobserver.runner.wakeup import Wakeup
from jobserver.storage.readers import ReadPool
from jobserver.storage.store import JobStore, body_hash
from jobserver.webhooks.netguard import WebhookGuard

# what a submit's checks refuse (422): a resend with an idempotency key still gets its job
REFUSALS = (InvalidRequestError, TaskNotFoundError, WebhookURLError)


class JobCommands:
    """Submit, cancel, retry and delete jobs."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        registry: Registry,
        clock: Clock,
        hub: Hub,
        wakeup: Wakeup,
        dispatcher: Dispatcher,
        executor: Executor,
        observers: Sequence[JobObserver],
        factory: JobFactory,
        readers: ReadPool,
        webhook_guard: WebhookGuard,
    ) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self.clock = clock
        self.hub = hub
        self.wakeup = wakeup
        self.dispatcher = dispatcher
        self.executor = executor
        self.observers = observers
        self.factory = factory
        self.readers = readers  # reads for the event loop: a replayed key's job
        self.webhook_guard = webhook_guard
        self._inflight_keys: set[tuple[str, str]] = set()

    @property
    def draining(self) -> bool:
        """True once the shutdown began: submits are refused."""
        return self.dispatcher.draining

    async def submit(
        self,
        body: SubmitBody,
        idem_key: str | None,
        scope: str,
        raw_body: Any,
        trace_context: str | None = None,
    ) -> tuple[JobRecord, bool]:
        """Validate and insert a job; (record, replayed). `trace_context` is the submit's, kept on
        the job so that its attempts join that trace."""
        if self.draining:
            raise DrainingError()
        try:
            new = self.factory.new(body, self.clock.now(), idem_key, trace_context=trace_context)
            if body.webhook_url is not None:
                await self._check_webhook(body.webhook_url)
        except REFUSALS:
            # a resend gets its job, though its checks refuse it now (a webhook host no longer
            # allowed, a task's args changed by a deploy); a new key's submit is not read twice
            first = None
            if idem_key is not None:
                first = await self.readers.run(self.store.replay, scope, idem_key, body_hash(raw_body))
            if first is None:
                raise
            return first, True
        taskdef = self.registry.get(new.task)
        # after the commit, unless the submit's own transaction handed the job to an idle worker
        on_commit = self.dispatcher.async_job_added if taskdef.is_async else self.wakeup.notify
        idem = None
        if idem_key is not None:
            idem = (scope, idem_key, body_hash(raw_body))
            if (scope, idem_key) in self._inflight_keys:
                raise IdempotencyInFlightError(idem_key)
            self._inflight_keys.add((scope, idem_key))
        try:
            created, value = await self.store.enqueue(new, idem, on_commit, self.dispatcher.handoff)
        finally:
            if idem_key is not None:
                self._inflight_keys.discard((scope, idem_key))
        if created:
            assert isinstance(value, JobRecord)
            for observer in self.observers:
                observer.submitted(value)
            return value, False
        record = await self.readers.run(self.store.get, str(value))
        return record, True

    async def _check_webhook(self, url: str) -> None:
        await asyncio.to_thread(self.webhook_guard.check, url)

    async def submit_many(
        self, items: Sequence[tuple[SubmitBody, str | None]], scope: str, raw_items: Sequence[Any]
    ) -> list[tuple[JobRecord, bool]]:
        """Validate and insert many jobs in one transaction, all or none; (record, replayed)
        per item, in order. A bad item is a 422 whose fields are named `jobs.<index>....`."""
        if self.draining:
            raise DrainingError()
        now = self.clock.now()
        news = []
        for i, (body, key) in enumerate(items):
            try:
                news.append(self.factory.new(body, now, key))
                if body.webhook_url is not None:
                    await self._check_webhook(body.webhook_url)
            except REFUSALS as exc:
                replays = await self._replays(items, scope, raw_items)
                if replays is not None:  # a batch resent whole: every item accepted before
                    return [(rec, True) for rec in replays]
                raise _at_index(exc, i) from None
        idems = [
            None if key is None else (scope, key, body_hash(raw))
            for (_, key), raw in zip(items, raw_items, strict=True)
        ]
        any_async = any(self.registry.get(n.task).is_async for n in news)
        on_commit = self.dispatcher.async_job_added if any_async else self.wakeup.notify
        results = await self.store.enqueue_many(list(zip(news, idems, strict=True)), on_commit)
        out = []
        for created, rec in results:
            if created:
                for observer in self.observers:
                    observer.submitted(rec)
            out.append((rec, not created))
        return out

    async def _replays(
        self, items: Sequence[tuple[SubmitBody, str | None]], scope: str, raw_items: Sequence[Any]
    ) -> list[JobRecord] | None:
        """A resent batch whose every item has a key already used with its body: the first jobs,
        in order, though the items' checks refuse them now. None when any item is new."""
        if not items or any(key is None for _, key in items):
            return None

        def read() -> list[JobRecord] | None:
            found = []
            for (_, key), raw in zip(items, raw_items, strict=True):
                assert key is not None
                rec = self.store.replay(scope, key, body_hash(raw))
                if rec is None:
                    return None
                found.append(rec)
            return found

        try:
            return await self.readers.run(read)
        except IdempotencyMismatchError:
            return None  # the insert names the item whose body differs

    async def signal(self, job_id: str, name: str, payload: Any) -> tuple[JobRecord, bool]:
        """Deliver a signal to a job; (record, repeated). A job waiting for it runs again."""
        payload_json = json_within(
            payload, self.settings.server.max_args_bytes, ["body"], "the signal's payload"
        )
        created, rec = await self.store.signal(
            job_id, name, payload_json, body_hash(payload), self.clock.now(), self.dispatcher.handoff
        )
        self.hub.publish(job_id)
        return rec, not created

    async def cancel(self, job_id: str) -> JobRecord:
        """Cancel a job and its unfinished descendants (pending or waiting: at once; running:
        ask the attempt to stop)."""
        return await self.store.cancel(job_id, self.clock.now(), self.cancelled)

    def cancelled(self, rec: JobRecord) -> None:
        """What follows a committed cancel, whether of one job, of a descendant, or of a bulk
        action's batch: watchers told; a running attempt asked to stop (it ends itself, so its
        end is reported once); any other job's end told to the observers now."""
        self.hub.publish(rec.id)
        if rec.status == Status.RUNNING:
            self.executor.request_stop(rec.id, "cancel")
        else:
            for observer in self.observers:
                observer.cancelled(rec)

    async def retry(
        self, job_id: str, idem_key: str | None = None, scope: str = ""
    ) -> tuple[JobRecord, bool]:
        """Run a failed or cancelled job again with a fresh round of attempts; (record, replayed).
        With an idempotency key, a resend of this retry gives the job as it is now and never
        starts another round (the job may have failed again in between)."""

        def after(rec: JobRecord) -> None:
            self.hub.publish(rec.id)
            self.dispatcher.job_added(rec.task)  # an async job is claimed by the feeder, not a thread

        idem = None if idem_key is None else (scope, idem_key, body_hash({"retry": job_id}))
        retried, rec = await self.store.retry(job_id, self.clock.now(), after, idem)
        return rec, not retried

    async def delete(self, job_id: str) -> None:
        """Forget a finished job."""
        await self.store.delete(job_id)


def _at_index(exc: JobServerError, index: int) -> InvalidRequestError:
    """The error of one batch item, its fields named under `jobs.<index>`."""
    if isinstance(exc, InvalidRequestError):
        errors = exc.errors
    elif isinstance(exc, TaskNotFoundError):
        errors = [{"loc": ["body", "task"], "msg": str(exc), "type": "unknown_task"}]
    elif isinstance(exc, WebhookURLError):
        errors = [{"loc": ["body", "webhook_url"], "msg": exc.reason, "type": "refused"}]
    else:
        errors = []
    moved = [{**e, "loc": ["body", "jobs", index, *e["loc"][1:]]} for e in errors]
    return InvalidRequestError(f"jobs.{index}: {exc}", moved)
