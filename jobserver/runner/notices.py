"""Notices: what another node's commit means to this process.

The notes come from the PostgreSQL listener: a job became due (an idle worker
claims it, or the async feeder does), a job changed (its `?wait` and event
stream watchers read it again), a cancel was asked (the attempt, if it runs
here, stops now instead of at its next heartbeat).
"""

from __future__ import annotations

from jobserver.core.hub import Hub
from jobserver.runner.dispatcher import Dispatcher
from jobserver.runner.executor import Executor


class Notices:
    """Routes the other nodes' notes to this process's parts."""

    def __init__(self, dispatcher: Dispatcher, executor: Executor, hub: Hub) -> None:
        self.dispatcher = dispatcher
        self.executor = executor
        self.hub = hub

    def deliver(self, notes: list[str]) -> None:
        """Act on one payload's notes ("d", "c<job id>", "x<job id>")."""
        due = False
        for note in notes:
            kind, job_id = note[:1], note[1:]
            if kind == "d":
                due = True
            elif kind == "c":
                self.hub.publish(job_id)
            elif kind == "x":
                self.executor.request_stop(job_id, "cancel")
        if due:
            self.job_due()

    def job_due(self) -> None:
        """Some job may be claimable: wake an idle worker thread, and the async feeder."""
        self.dispatcher.wakeup.notify()
        if self.dispatcher.slots.has_async_tasks():
            self.dispatcher.slots.async_work.set()

    def resync(self) -> None:
        """Notes may have been missed: every idle part and watcher looks again."""
        self.job_due()
        self.hub.publish_all()
