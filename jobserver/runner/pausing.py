"""TaskControl: pause and resume a task's queue.

A paused task's pending jobs stay pending (the claim leaves them; running ones
finish) until it is resumed; the pause is stored, so it survives restarts and
holds on every node. A resume wakes the workers, since its jobs may be due.
"""

from __future__ import annotations

from jobserver.core.clock import Clock
from jobserver.core.tasks import Registry
from jobserver.runner.slots import Slots
from jobserver.runner.wakeup import Wakeup
from jobserver.storage.pauses import TaskPauses


class TaskControl:
    """Pause and resume registered tasks."""

    def __init__(
        self, pauses: TaskPauses, registry: Registry, clock: Clock, wakeup: Wakeup, slots: Slots
    ) -> None:
        self.pauses = pauses
        self.registry = registry
        self.clock = clock
        self.wakeup = wakeup
        self.slots = slots

    async def set_paused(self, task: str, paused: bool) -> bool:
        """Pause or resume `task` (TaskNotFoundError when no such task); True when it changed."""
        name = self.registry.get(task).name
        changed = await self.pauses.set_paused(name, paused, self.clock.now())
        if changed and not paused:
            self.wakeup.notify(self.slots.threads)
            self.slots.async_work.set()
        return changed
