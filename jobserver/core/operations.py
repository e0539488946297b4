"""Request bodies of the operator routes: bulk cancel and retry filters.

A filter matches jobs by every field given (all of them when none is); `status`
is limited to the statuses the action applies to, so a filter that could never
match anything is refused with a 422 naming the field.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from jobserver.core.bounds import ID_PATTERN

MAX_BULK_IDS = 10_000
TASK_NAME_PATTERN = r"^[^\x00-\x1f\x7f]+$"  # no control characters (PostgreSQL text cannot hold NUL)


class BulkFilter(BaseModel):
    """Which jobs a bulk action takes: `task`, `ids`, and (in the subclasses) `status`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: str | None = None
    task: str | None = Field(default=None, min_length=1, max_length=200, pattern=TASK_NAME_PATTERN)
    ids: list[Annotated[str, Field(pattern=ID_PATTERN)]] | None = Field(default=None, max_length=MAX_BULK_IDS)


class CancelFilter(BulkFilter):
    """POST /jobs/cancel: pending and waiting jobs are cancelled at once, running ones are asked to stop."""

    status: Literal["pending", "running", "waiting"] | None = None


class DeleteFilter(BulkFilter):
    """POST /jobs/delete: finished jobs are forgotten with their events, steps and deliveries."""

    status: Literal["completed", "failed", "cancelled"] | None = None


class RetryFilter(BulkFilter):
    """POST /jobs/retry: failed and cancelled jobs get a fresh round of attempts."""

    status: Literal["failed", "cancelled"] | None = None
