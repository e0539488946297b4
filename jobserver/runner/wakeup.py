"""Wakeup: lets a commit wake an idle worker at once instead of waiting for a poll."""

from __future__ import annotations

import threading


class Wakeup:
    """A counter of "there may be work" signals that idle workers wait on."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._signals = 0
        self._stopped = False
        self.waiting = 0  # threads inside wait() now (read without the lock: a hint)

    def notify(self, n: int = 1) -> None:
        """Say there may be work (safe from any thread)."""
        with self._cond:
            self._signals = min(self._signals + n, 64)  # more than the workers can take is noise
            self._cond.notify(n)

    def wait(self, timeout: float) -> bool:
        """Wait for a signal or the timeout; True if a signal was taken."""
        with self._cond:
            if self._signals == 0 and not self._stopped:
                self.waiting += 1
                try:
                    self._cond.wait(timeout)
                finally:
                    self.waiting -= 1
            if self._signals > 0:
                self._signals -= 1
                return True
            return False

    def sleeping(self) -> int:
        """Threads waiting now that no signal already given will wake: each looks for work
        again only at its timeout or the next notify (exact, unlike the `waiting` hint)."""
        with self._cond:
            return max(0, self.waiting - self._signals)

    def stop(self) -> None:
        """Release every waiter for good (shutdown)."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    @property
    def stopped(self) -> bool:
        return self._stopped
