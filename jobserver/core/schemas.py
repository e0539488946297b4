"""Request and response bodies: the wire contract shared by the API and the client."""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Sequence
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from jobserver.core.bounds import (
    CURSOR_PATTERN,
    ID_SUFFIX_PATTERN,
    IDEMPOTENCY_KEY_MAX,
    INT_MAX,
    INT_MIN,
    MAX_BATCH,
    MAX_DELAY_S,
    MAX_LIMIT,
    MAX_WAIT_S,
    RUN_AT_YEARS,
    SCHEDULE_KEY_PREFIX,
    TASK_NAME_MAX,
)
from jobserver.core.errors import InvalidRequestError

# RFC 3339's date-time, as JSON Schema's "date-time" format has it: a "T", seconds, an offset
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


class SubmitBody(BaseModel):
    """POST /jobs."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field(min_length=1, max_length=TASK_NAME_MAX)
    args: dict[str, Any] = Field(default_factory=dict)
    priority: int | None = Field(default=None, ge=-1_000_000, le=1_000_000)
    delay: float | None = Field(default=None, ge=0, le=MAX_DELAY_S)
    run_at: dt.datetime | None = None
    max_attempts: int | None = Field(default=None, ge=1, le=1000)
    timeout: float | None = Field(default=None, gt=0, le=30 * 86400)
    webhook_url: str | None = Field(default=None, min_length=1, max_length=2048)

    @field_validator("priority", "delay", "max_attempts", "timeout", mode="before")
    @classmethod
    def _json_number(cls, value: Any) -> Any:
        """A JSON number, as the schema says (pydantic alone would also take "5" and true)."""
        if isinstance(value, bool | str):
            raise ValueError("must be a JSON number")
        return value

    @field_validator("run_at", mode="before")
    @classmethod
    def _rfc3339(cls, value: Any) -> Any:
        """Only an RFC 3339 string (pydantic alone would also take numbers and other spellings)."""
        if value is None or isinstance(value, dt.datetime):
            return value
        if not isinstance(value, str) or not RFC3339.match(value):
            raise ValueError("run_at must be an RFC 3339 date-time with an offset, e.g. 2030-01-01T09:00:00Z")
        return value

    @field_validator("run_at", mode="after")
    @classmethod
    def _storable_date(cls, value: dt.datetime | None) -> dt.datetime | None:
        """An instant the store can keep as epoch seconds (the error names run_at, not the body)."""
        if value is not None and value.tzinfo is None:
            raise ValueError("run_at needs a timezone offset or Z")
        if value is not None and not RUN_AT_YEARS[0] <= value.year <= RUN_AT_YEARS[1]:
            raise ValueError(f"run_at must be a date from {RUN_AT_YEARS[0]} to {RUN_AT_YEARS[1]}")
        return value

    @model_validator(mode="after")
    def _one_schedule(self) -> SubmitBody:
        if self.delay is not None and self.run_at is not None:
            raise ValueError("give either delay or run_at, not both")
        return self


def json_violations(value: Any, max_depth: int, loc: Sequence[str | int]) -> list[dict[str, Any]]:
    """Where a parsed JSON value goes beyond what is stored exactly: nesting deeper than
    `max_depth`, integers outside 64 bits, numbers that are not finite. Iterative, so a
    hostile depth never reaches Python's recursion limit; stops at the first nesting error.
    A `loc` names an array's item by its index (an int) and an object's member by its key, as
    pydantic's errors do."""
    errors: list[dict[str, Any]] = []
    stack: list[tuple[Any, list[str | int], int]] = [(value, list(loc), 0)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth >= max_depth:
                msg = f"nested deeper than {max_depth} levels"
                return [*errors, {"loc": where, "msg": msg, "type": "too_deep"}]
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            stack.extend((v, [*where, k], depth + 1) for k, v in pairs)
        elif isinstance(item, bool):
            continue
        elif isinstance(item, int) and not INT_MIN <= item <= INT_MAX:
            errors.append({"loc": where, "msg": "integer outside the 64-bit range", "type": "int_range"})
        elif isinstance(item, float) and not math.isfinite(item):
            errors.append({"loc": where, "msg": "number is not finite", "type": "finite_number"})
    return errors


# the tokens of JSON text that change where a value sits: a string (a key, or a value to skip),
# a bracket, a comma
_JSON_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},]', re.DOTALL)


def json_text_too_deep(raw: bytes, max_depth: int, loc: Sequence[str | int]) -> list[dict[str, Any]]:
    """`json_violations`' nesting error for JSON text nested too deep for a parser to read: the
    first array or object, in the text's order, nested deeper than `max_depth`; [] when none is.
    Reads tokens without building values, so a hostile depth costs neither recursion nor memory."""
    path: list[str | int] = []  # the key or index of the value being read, in each open array or object
    in_object: list[bool] = []
    expect_key = False
    for match in _JSON_TOKEN.finditer(raw):
        token = match.group()
        if token in (b"[", b"{"):
            if len(path) >= max_depth:
                msg = f"nested deeper than {max_depth} levels"
                return [{"loc": [*loc, *path], "msg": msg, "type": "too_deep"}]
            in_object.append(token == b"{")
            path.append("" if token == b"{" else 0)
            expect_key = token == b"{"
        elif token in (b"]", b"}"):
            if path:
                path.pop()
                in_object.pop()
            expect_key = False
        elif token == b",":
            if in_object and in_object[-1]:
                expect_key = True
            elif path:
                path[-1] = int(path[-1]) + 1
        elif expect_key:  # a string where an object's key goes
            try:
                path[-1] = str(json.loads(token))
            except ValueError:  # not a JSON string after all: its text as it is
                path[-1] = token[1:-1].decode("utf-8", "replace")
            expect_key = False
    return []


IDEMPOTENCY_KEY_RULE = (
    f"1 to {IDEMPOTENCY_KEY_MAX} printable ASCII characters, not starting with {SCHEDULE_KEY_PREFIX!r}"
    " (the keys of schedules' jobs)"
)


def idempotency_key(value: str) -> str:
    """An idempotency key as kept: the `Idempotency-Key` header's and a batch item's
    `idempotency_key` share one key space, so one rule for both. The spaces and tabs around it
    are not part of it (as around any header's value, RFC 9110), and what is left has
    IDEMPOTENCY_KEY_RULE (a header's bytes past ASCII have no agreed text); else ValueError."""
    key = value.strip(" \t")
    if not (1 <= len(key) <= IDEMPOTENCY_KEY_MAX and key.isascii() and key.isprintable()) or key.startswith(
        SCHEDULE_KEY_PREFIX
    ):
        raise ValueError(f"an idempotency key has {IDEMPOTENCY_KEY_RULE}")
    return key


class BatchItem(SubmitBody):
    """One job of POST /jobs/batch: a submit body with its own idempotency key."""

    idempotency_key: str | None = None

    @field_validator("idempotency_key")
    @classmethod
    def _idempotency_key(cls, value: str | None) -> str | None:
        return None if value is None else idempotency_key(value)


class BatchBody(BaseModel):
    """POST /jobs/batch: up to 1,000 submits, queued all together or not at all."""

    model_config = ConfigDict(extra="forbid")

    jobs: list[BatchItem] = Field(min_length=1, max_length=MAX_BATCH)


# a number in a query string as people write one: Python's own parsing would also read `1_0`
# as 10, and " 5" or "infinity" as numbers
QUERY_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?")


def plain_query_number(value: Any) -> Any:
    if isinstance(value, str) and not QUERY_NUMBER.fullmatch(value):
        raise ValueError("must be a decimal number")
    return value


class ListQuery(BaseModel):
    """GET /jobs query string."""

    model_config = ConfigDict(extra="forbid")

    status: str | None = Field(default=None, pattern="^(pending|running|waiting|completed|failed|cancelled)$")
    task: str | None = Field(default=None, max_length=TASK_NAME_MAX)
    parent: str | None = Field(default=None, max_length=64)
    limit: int = Field(default=50, ge=1, le=MAX_LIMIT)
    cursor: str | None = Field(default=None, pattern=CURSOR_PATTERN)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=255)
    # the jobs whose id ends with this (the short id a list shows): hex digits and dashes
    id_suffix: str | None = Field(default=None, pattern=ID_SUFFIX_PATTERN)
    # "summary": each job without `args`, `result` and its error's `traceback` (a list view's rows)
    fields: str = Field(default="full", pattern="^(full|summary)$")

    _plain_limit = field_validator("limit", mode="before")(plain_query_number)


class StatsQuery(BaseModel):
    """GET /stats query string."""

    model_config = ConfigDict(extra="forbid")

    # the last hour (its totals and minutes) of this task's jobs only
    task: str | None = Field(default=None, min_length=1, max_length=TASK_NAME_MAX)


class EventsQuery(BaseModel):
    """GET /jobs/{id}/events query string (`last_event_id` is read with the Last-Event-ID header)."""

    model_config = ConfigDict(extra="forbid")

    follow: bool = True
    last_event_id: str | None = None


class GetQuery(BaseModel):
    """GET /jobs/{id} query string."""

    model_config = ConfigDict(extra="forbid")

    wait: float = Field(default=0, ge=0, le=MAX_WAIT_S)

    _plain_wait = field_validator("wait", mode="before")(plain_query_number)


def json_within(value: Any, limit: int, loc: list[str], what: str) -> str:
    """`value` as stored JSON, refused with a 422 naming `loc` when it takes more than `limit`
    bytes: the limit counts UTF-8 bytes, not characters (client data: args, a signal's payload)."""
    encoded = orjson.dumps(value)
    if len(encoded) > limit:
        raise InvalidRequestError(
            f"too large: {what}",
            [{"loc": loc, "type": "too_large", "msg": f"{len(encoded)} bytes, at most {limit}"}],
        )
    return encoded.decode()
