"""Request bodies of the operator routes: bulk cancel and retry filters.

A filter matches jobs by every field given (all of them when none is; a field
given as null is refused, not read as left out); `status`
is limited to the statuses the action applies to, so a filter that could never
match anything is refused with a 422 naming the field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from jobserver.core.bounds import ID_PATTERN

MAX_BULK_IDS = 10_000
TASK_NAME_PATTERN = r"^[^\x00-\x1f\x7f]+$"  # no control characters (PostgreSQL text cannot hold NUL)


def _not_nullable(schema: dict[str, Any]) -> None:
    """Each field as its JSON schema, without the null its Python type allows: None stands for
    "left out", which no JSON value does."""
    for name, prop in schema.get("properties", {}).items():
        prop.pop("default", None)
        branches = [b for b in prop.get("anyOf", ()) if b != {"type": "null"}]
        if len(branches) == 1:
            del prop["anyOf"]
            schema["properties"][name] = {**branches[0], **prop}


class BulkFilter(BaseModel):
    """Which jobs a bulk action takes: `task`, `ids`, and (in the subclasses) `status`."""

    # a field left out is None; null itself is refused (below), and the schema does not offer it
    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_not_nullable)

    status: str | None = None
    task: str | None = Field(default=None, min_length=1, max_length=200, pattern=TASK_NAME_PATTERN)
    ids: list[Annotated[str, Field(pattern=ID_PATTERN)]] | None = Field(default=None, max_length=MAX_BULK_IDS)

    @field_validator("status", "task", "ids", mode="before")
    @classmethod
    def _not_null(cls, value: object) -> object:
        """A field left out matches every job; `null` is refused instead of read the same way:
        a client whose selection came out null would act on every job, not on none."""
        if value is None:
            raise PydanticCustomError(
                "null_filter", "null is not a filter: leave the field out to match every job"
            )
        return value


class CancelFilter(BulkFilter):
    """POST /jobs/cancel: pending and waiting jobs are cancelled at once, running ones are asked to stop."""

    status: Literal["pending", "running", "waiting"] | None = None


class DeleteFilter(BulkFilter):
    """POST /jobs/delete: finished jobs are forgotten with their events, steps and deliveries."""

    status: Literal["completed", "failed", "cancelled"] | None = None


class RetryFilter(BulkFilter):
    """POST /jobs/retry: failed and cancelled jobs get a fresh round of attempts."""

    status: Literal["failed", "cancelled"] | None = None
