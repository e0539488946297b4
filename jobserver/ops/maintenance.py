"""Maintenance: one thread that runs the periodic passes (watchdog, progress flush,
heartbeat, rescue, retention). `run_once(now)` is one tick; tests call it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from jobserver.core.clock import Clock
from jobserver.core.errors import StorageError

log = logging.getLogger(__name__)
Pass = tuple[float, Callable[[], object]]  # (interval in seconds, the pass)


class Maintenance:
    """Runs each pass at its interval, on monotonic time."""

    TICK_S = 0.05

    def __init__(self, clock: Clock, passes: Sequence[Pass]) -> None:
        self.clock = clock
        self.passes = list(passes)
        self._next = [0.0] * len(self.passes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="jobserver-maintenance", daemon=True)

    def run_once(self, now: float) -> None:
        """Run every pass that is due at monotonic time `now`; a failing pass is logged, not fatal."""
        for i, (interval, fn) in enumerate(self.passes):
            if now >= self._next[i]:
                self._next[i] = now + interval
                try:
                    fn()
                except StorageError as exc:  # the writer logs the outage once, not every pass
                    log.debug("maintenance pass %s failed: %s", getattr(fn, "__name__", fn), exc)
                except Exception:
                    log.exception(
                        "maintenance pass %s failed",
                        getattr(fn, "__name__", fn),
                        extra={"action": "maintenance_failed"},
                    )

    def _loop(self) -> None:
        while not self._stop.wait(self.TICK_S):
            self.run_once(self.clock.monotonic())

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
