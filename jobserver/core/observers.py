"""What observers of the job lifecycle (metrics, for one) are told, after each commit.

Observers are passed to the parts that make the changes when they are built;
they must neither raise nor block (they run on the writer thread).
"""

from __future__ import annotations

from typing import Protocol

from jobserver.core.lifecycle import Transition
from jobserver.core.records import Claim, JobRecord


class JobObserver(Protocol):
    """Receives every committed change of a job's lifecycle."""

    def submitted(self, rec: JobRecord) -> None:
        """A new job was accepted (not an idempotent replay)."""

    def claimed(self, claim: Claim) -> None:
        """An attempt started."""

    def transitioned(self, transition: Transition, rec: JobRecord, claim: Claim | None) -> None:
        """A running job changed as `transition` says: its attempt ended (`claim`), or the
        rescue found it cut off (`claim` is None)."""

    def cancelled(self, rec: JobRecord) -> None:
        """A job that was not running was cancelled."""
