"""A periodic INFO line of what happened, instead of INFO lines per job.

Per-job transitions are logged at DEBUG: at thousands of jobs a second, two
INFO lines per job cost a fifth of the submit throughput. This observer counts
instead, and a maintenance pass writes one line when anything happened; the stop writes the
last one, so what ran in the minute before a stop is in the log too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

from jobserver.core.lifecycle import Transition
from jobserver.core.records import Claim, JobRecord

log = logging.getLogger(__name__)
INTERVAL_S = 60.0


class Summary:
    """Counts submits, attempts and endings between two summary lines."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._monotonic = monotonic
        self._since = monotonic()

    def _add(self, key: str) -> None:
        with self._lock:
            self._counts[key] += 1

    def submitted(self, rec: JobRecord) -> None:
        self._add("submitted")

    def claimed(self, claim: Claim) -> None:
        self._add("started")

    def transitioned(self, transition: Transition, rec: JobRecord, claim: Claim | None) -> None:
        if claim is None:  # a crashed attempt found: "rescued" says it, not "retrying" as well
            self._add("rescued")
        if transition.finished:
            self._add(str(transition.status))
        elif transition.counts_attempt and claim is not None:
            self._add("retrying")

    def cancelled(self, rec: JobRecord) -> None:
        self._add("cancelled")

    def log_once(self) -> None:
        """Log the counts since the last line (nothing when idle) and start again; the line says
        how long that was (the first and the last line of a run cover less than a minute)."""
        now = self._monotonic()
        with self._lock:
            counts, self._counts = self._counts, Counter()
            since, self._since = self._since, now
        if counts:
            text = ", ".join(f"{n} {key}" for key, n in sorted(counts.items()))
            log.info("jobs in the last %.0fs: %s", now - since, text, extra={"action": "summary"})
