"""JobCommands: what the API asks of jobs (submit, cancel, retry, delete).

Runs on the API's event loop and never blocks it: every write is a writer op
awaited through its future. A submit whose job is due and finds an idle worker
claims it in the same transaction (the dispatcher's hand-off).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import orjson

from jobserver.core.clock import Clock
from jobserver.core.config import Settings
from jobserver.core.errors import DrainingError, IdempotencyInFlightError, InvalidRequestError
from jobserver.core.hub import Hub
from jobserver.core.lifecycle import Status
from jobserver.core.observers import JobObserver
from jobserver.core.records import JobIds, JobRecord, NewJob
from jobserver.core.schemas import SubmitBody
from jobserver.core.tasks import Registry
from jobserver.runner.dispatcher import Dispatcher
from jobserver.runner.executor import Executor
from jobserver.runner.wakeup import Wakeup
from jobserver.storage.store import JobStore, body_hash
from jobserver.webhooks.netguard import check_webhook_url


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
        self.ids = JobIds()
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
        taskdef = self.registry.get(body.task)
        args = taskdef.validate_args(body.args)
        args_json = orjson.dumps(args).decode()
        limit = self.settings.server.max_args_bytes
        if len(args_json) > limit:
            raise InvalidRequestError(
                "args are too large",
                [
                    {
                        "loc": ["body", "args"],
                        "type": "too_large",
                        "msg": f"args take {len(args_json)} bytes, at most {limit}",
                    }
                ],
            )
        if body.webhook_url is not None:
            webhooks = self.settings.webhooks
            await asyncio.to_thread(
                check_webhook_url, body.webhook_url, webhooks.allow_private, webhooks.allow_hosts
            )
        now = self.clock.now()
        run_at = body.run_at.timestamp() if body.run_at is not None else now + (body.delay or 0.0)
        opts = taskdef.options
        new = NewJob(
            self.ids.new(),
            taskdef.name,
            args_json,
            body.priority if body.priority is not None else opts.priority,
            body.max_attempts or opts.max_attempts,
            body.timeout if body.timeout is not None else opts.timeout,
            body.webhook_url,
            idem_key,
            now,
            run_at,
            trace_context,
        )
        # after the commit, unless the submit's own transaction handed the job to an idle worker
        on_commit = self.dispatcher.async_job_added if taskdef.is_async else self.wakeup.notify
        idem = None
        if idem_key is not None:
            idem = (scope, idem_key, body_hash(raw_body))
            if (scope, idem_key) in self._inflight_keys:
                raise IdempotencyInFlightError(idem_key)
            self._inflight_keys.add((scope, idem_key))
        try:
            created, value = await asyncio.wrap_future(
                self.store.enqueue(new, idem, on_commit, self.dispatcher.handoff)
            )
        finally:
            if idem_key is not None:
                self._inflight_keys.discard((scope, idem_key))
        if created:
            assert isinstance(value, JobRecord)
            for observer in self.observers:
                observer.submitted(value)
            return value, False
        record = await asyncio.to_thread(self.store.get, str(value))
        return record, True

    async def cancel(self, job_id: str) -> JobRecord:
        """Cancel a job (pending: at once; running: ask the attempt to stop)."""

        def after(rec: JobRecord) -> None:
            self.hub.publish(job_id)
            if rec.status == Status.RUNNING:
                self.executor.request_stop(
                    job_id, "cancel", claimed_ahead=self.dispatcher.slots.is_ready(job_id)
                )
            else:
                for observer in self.observers:
                    observer.cancelled(rec)

        return await asyncio.wrap_future(self.store.cancel(job_id, self.clock.now(), after))

    async def retry(self, job_id: str) -> JobRecord:
        """Run a failed or cancelled job again with a fresh round of attempts."""

        def after() -> None:
            self.hub.publish(job_id)
            self.wakeup.notify()

        return await asyncio.wrap_future(self.store.retry(job_id, self.clock.now(), after))

    async def delete(self, job_id: str) -> None:
        """Forget a finished job."""
        await asyncio.wrap_future(self.store.delete(job_id))
