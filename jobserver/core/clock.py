"""Clock: the only reader of wall time, so tests can move time by hand.

Times inside jobserver are float seconds since the epoch (UTC); they are turned
into RFC 3339 strings only at the edges (`rfc3339`).
"""

from __future__ import annotations

import functools
import time
from typing import Protocol


class Clock(Protocol):
    """Where `now` (wall time, stored on rows) and `monotonic` (deadlines) come from."""

    def now(self) -> float:
        """Seconds since the epoch, UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back; only differences mean anything."""
        ...


class SystemClock:
    """The real clocks."""

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock:
    """Clocks that move only when told, both by the same amount; for tests."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._monotonic = 1_000.0

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._monotonic

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self._now += seconds
        self._monotonic += seconds


_MILLIS = tuple(f".{ms:03d}Z" for ms in range(1000))  # the ends of the strings, made once


@functools.lru_cache(maxsize=4096)
def _second(whole: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))


def rfc3339(ts: float | None) -> str | None:
    """Format epoch seconds as an RFC 3339 UTC string with millisecond precision.

    Hot (every job object and event carries four timestamps): the whole-second part
    is cached, since most timestamps formatted together fall in the same second."""
    if ts is None:
        return None
    whole, frac = divmod(round(ts * 1000), 1000)
    return _second(whole) + _MILLIS[frac]
