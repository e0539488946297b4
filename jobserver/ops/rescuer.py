"""Rescuer: recovers running jobs whose owner is gone.

A lease that expired means the owning process stopped heartbeating (killed,
frozen, cut off). At an SQLite start every running row is rescued at once: the
file lock proves the previous owner is dead. Each one ends as the lifecycle
decides for a crash (run again counted, or failed `Crashed`, or cancelled when a
cancel was asked). A job of a task this process does not know is left running
until a process that knows it rescues it: only its task says whether it may run
again (`on_crash="fail"`), and a cancel asked of it ends it here. Its concurrency
slots are freed at once, though: a key it shares with deployed tasks is not kept a
slot short meanwhile (its next claim, if it runs again, takes them again).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Collection, Sequence

from jobserver.core.clock import Clock
from jobserver.core.hub import Hub
from jobserver.core.lifecycle import AttemptFacts, Outcome, Transition, decide
from jobserver.core.observers import JobObserver
from jobserver.core.records import JobRecord
from jobserver.core.tasks import Registry
from jobserver.runner.wakeup import Wakeup
from jobserver.storage.store import JobStore

log = logging.getLogger(__name__)
SHOWN_IDS = 10  # of the jobs a rescue puts back, the ids its log line names


class Rescuer:
    """One pass at a time; the maintenance thread repeats it."""

    def __init__(
        self,
        store: JobStore,
        registry: Registry,
        clock: Clock,
        hub: Hub,
        wakeup: Wakeup,
        observers: Sequence[JobObserver],
        owner: str,
        alive: Callable[[], Collection[str]],
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.clock = clock
        self.hub = hub
        self.wakeup = wakeup
        self.observers = observers
        self.owner = owner
        self.alive = alive  # the jobs this process runs now: never rescued from under itself
        self.rng = rng or random.Random()

    def _decider(self, note: str) -> Callable[[AttemptFacts, str, bool, float], Transition | None]:
        def decide_crash(
            job: AttemptFacts, task: str, cancel_requested: bool, now: float
        ) -> Transition | None:
            outcome = Outcome.crashed(cancel_requested, note)
            return decide(outcome, job, self.registry.options(task), now, self.rng.random())

        return decide_crash

    def _freed(self, ids: list[str]) -> None:
        for job_id in ids:
            log.warning(
                "%s crashed: its concurrency slots are freed; it stays running for a process that knows its task",
                job_id,
                extra={"job_id": job_id, "action": "rescue_slots"},
            )

    def rescue_once(self, every_other_owner: bool = False) -> list[JobRecord]:
        """Recover running jobs with an expired lease (or, with `every_other_owner`,
        every running job not leased to this process)."""
        # at an SQLite start the file lock, not a lease, says the process that ran them is gone
        note = "the server running it stopped" if every_other_owner else "its worker stopped heartbeating"
        rescued = self.store.rescue(
            self.clock.now(),
            self.owner,
            every_other_owner,
            self._decider(note),
            self.wakeup.notify,
            self.alive(),
            # whether a crashed job may run again is its task's to say (`on_crash="fail"`: never):
            # a job of a task this process does not know is left for one that does, unless a
            # cancel was asked of it, which ends it whatever its task
            known={t.name for t in self.registry.all()},
            on_freed=self._freed,
        ).result()
        others: dict[str, list[str]] = {}
        for transition, rec in rescued:
            if rec.status == "failed":  # given up (`Crashed`): logged as any job given up is, at ERROR
                log.error("rescued %s: now failed", rec.id, extra={"job_id": rec.id, "action": "rescue"})
            else:
                others.setdefault(rec.status, []).append(rec.id)
            for observer in self.observers:
                observer.transitioned(transition, rec, None)
            self.hub.publish(rec.id)
        for status, ids in others.items():  # one line, not one per job: a restart may rescue thousands
            shown = ", ".join(ids[:SHOWN_IDS]) + (
                f" and {len(ids) - SHOWN_IDS} more" if len(ids) > SHOWN_IDS else ""
            )
            log.warning(
                "rescued %d job%s (%s), now %s: %s", len(ids), "" if len(ids) == 1 else "s", note, status, shown,
                extra={"action": "rescue"},
            )  # fmt: skip
        return [rec for _, rec in rescued]
