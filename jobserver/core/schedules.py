"""Schedules: what a periodic job is (`ScheduleSpec`), when it ticks, and its checks.

Owns the schedule's fields and defaults, the five-field cron in an IANA time
zone (parsed and iterated by cronsim, which follows Debian cron across DST
changes: a time skipped by a spring-forward runs right after the jump, a time
repeated by a fall-back runs once), and the check of a schedule against the
task registry (task known, args valid). Knows nothing of storage or HTTP.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from jobserver.core.bounds import SCHEDULE_KEY_PREFIX, TASK_NAME_MAX
from jobserver.core.clock import rfc3339
from jobserver.core.errors import ConfigError, InvalidRequestError, TaskNotFoundError
from jobserver.core.schemas import json_within
from jobserver.core.tasks import Registry

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"  # safe in a URL path and an idempotency key
KEY_PREFIX = SCHEDULE_KEY_PREFIX
IDEMPOTENCY_SCOPE = "schedules"  # schedule keys never meet a client's Idempotency-Key
_KEY_RE = re.compile(r"^schedule:([A-Za-z0-9][A-Za-z0-9._-]{0,99}):\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def check_cron(cron: str) -> str:
    """The expression when cronsim takes it as five fields; ValueError otherwise."""
    if len(cron.split()) != 5:
        raise ValueError("a cron expression has five fields: minute hour day-of-month month day-of-week")
    try:
        CronSim(cron, datetime.now(UTC))
    except CronSimError as exc:
        raise ValueError(f"invalid cron expression {cron!r}: {exc}") from None
    return cron


HOST_ZONE_FILES = frozenset({"localtime", "posixrules"})  # in the zoneinfo folder, not IANA zones


def check_timezone(name: str) -> str:
    """The name when it is an IANA time zone; ValueError otherwise ('localtime' is a file of the
    host's, not a zone: the same schedule would tick at other hours on another node). A folder of
    the zone data ('Europe') is no zone either: the `tzdata` package answers it with an OSError."""
    try:
        if name in HOST_ZONE_FILES:
            raise ValueError(name)
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown time zone {name!r}: use an IANA name like 'Europe/Berlin'") from None
    return name


class ScheduleBody(BaseModel):
    """A schedule's fields as PUT /schedules/{name} takes them (a field left out takes its default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str = Field(min_length=1, max_length=TASK_NAME_MAX)
    cron: str
    timezone: str = "UTC"
    args: dict[str, Any] = Field(default_factory=dict)
    catch_up: StrictBool = True  # run the latest tick missed while no server ran, at start

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        return check_cron(value)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        return check_timezone(value)


class ScheduleSpec(ScheduleBody):
    """One `[[schedules]]` table of config.toml: the fields and a unique name."""

    name: str = Field(pattern=NAME_PATTERN)


@dataclass(frozen=True, slots=True)
class Schedule:
    """A checked schedule: its args validated by the task's model, defaults filled in."""

    name: str
    task: str
    cron: str
    timezone: str
    args_json: str
    catch_up: bool

    def next_tick(self, after: float) -> float:
        """The first tick strictly after `after`."""
        return next_tick(self.cron, self.timezone, after)


# Cron walks wall-clock times and ignores `fold`: a start in the second pass of an hour a
# fall-back repeats is read as the first pass, up to this much earlier than it is. From there the
# walks skip the ticks on the wrong side of the instant (at most one per minute of the slack).
FOLD_SLACK_S = 2 * 3600


def next_tick(cron: str, timezone: str, after: float) -> float:
    """The first time the cron matches in `timezone`, strictly after epoch second `after` (a time
    a fall-back repeats matches once, at its first pass: a start in the second pass skips it)."""
    ticks = CronSim(cron, datetime.fromtimestamp(int(after), ZoneInfo(timezone)))
    for _ in range(FOLD_SLACK_S + 1):
        tick = next(ticks).timestamp()
        if tick > after:
            return tick
    raise ValueError(f"no tick of {cron!r} in {timezone} after {after}")


def latest_tick(cron: str, timezone: str, at: float) -> float:
    """The last time the cron matches in `timezone` at or before epoch second `at`."""
    zone = ZoneInfo(timezone)
    start = datetime.fromtimestamp(int(at) + 1, zone)
    if start.fold:  # in a repeated hour's second pass: start past it, walk back to `at`
        start = datetime.fromtimestamp(int(at) + 1 + FOLD_SLACK_S, zone)
    ticks = CronSim(cron, start, reverse=True)
    for _ in range(FOLD_SLACK_S + 1):
        tick = next(ticks).timestamp()
        if tick <= at:
            return tick
    raise ValueError(f"no tick of {cron!r} in {timezone} at or before {at}")


def idempotency_key(name: str, tick: float) -> str:
    """The key of the job a tick submits: one job per tick, whoever submits it."""
    return f"{KEY_PREFIX}{name}:{rfc3339(tick)}"


def schedule_of(key: str | None) -> str | None:
    """The schedule that submitted a job, read back from its idempotency key."""
    if key is None or not key.startswith(KEY_PREFIX):
        return None
    match = _KEY_RE.match(key)
    return match.group(1) if match else None


def check_schedule(name: str, body: ScheduleBody, registry: Registry, max_args_bytes: int) -> Schedule:
    """Check the task and its args as a submit does: valid, within `server.max_args_bytes`, and
    such that the task's limits apply to them (TaskNotFoundError / InvalidRequestError, 422).
    A tick's job is then refused nothing that a submit of it would be."""
    taskdef = registry.get(body.task)
    args = taskdef.validate_args(body.args)
    args_json = json_within(args, max_args_bytes, ["body", "args"], "args")
    taskdef.bind_limits(args)
    return Schedule(name, taskdef.name, body.cron, body.timezone, args_json, body.catch_up)


def check_configured(
    specs: tuple[ScheduleSpec, ...], registry: Registry, max_args_bytes: int
) -> list[Schedule]:
    """The `[[schedules]]` of config.toml checked against the registry; ConfigError names the bad one."""
    checked = []
    for spec in specs:
        try:
            checked.append(check_schedule(spec.name, spec, registry, max_args_bytes))
        except TaskNotFoundError as exc:
            raise ConfigError(f"schedules.{spec.name}.task", str(exc)) from exc
        except InvalidRequestError as exc:
            fields = "; ".join(
                ": ".join([*([".".join(str(p) for p in e["loc"][2:])] if e["loc"][2:] else []), e["msg"]])
                for e in exc.errors
            )
            raise ConfigError(f"schedules.{spec.name}.args", fields or str(exc)) from exc
    return checked
