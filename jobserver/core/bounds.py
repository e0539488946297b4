"""The numbers the API promises: wait and page caps, integer range, nesting depth, id shape.

Their own module so that the client (and its command line) knows them without importing the
server's pydantic models."""

from __future__ import annotations

MAX_WAIT_S = 60
INT_MIN = -(2**63)  # what the JSON encoder and both databases store exactly
INT_MAX = 2**64 - 1
MAX_STORED_DEPTH = 200  # the JSON encoder stops at 255 levels; config caps request bodies below this
ID_PATTERN = "^[0-9A-Za-z_-]{1,64}$"  # job ids: anything else names no job
# a list's cursor is the id of the last job of the page before (the server's own ids, UUIDv7
# layout): any other text would compare with the ids and silently start the listing again
CURSOR_PATTERN = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
# the end of a job's id, as the dashboard shows it (`GET /jobs?id_suffix=`): hex digits and dashes,
# from a few characters to a whole id
ID_SUFFIX_MIN, ID_SUFFIX_MAX = 4, 36
ID_SUFFIX_PATTERN = f"^[0-9A-Fa-f-]{{{ID_SUFFIX_MIN},{ID_SUFFIX_MAX}}}$"
EVENT_ID_MAX = 2**63 - 1  # the largest Last-Event-ID: event ids are 64-bit integers
MAX_LIMIT = 500
# run_at's date as written (before its offset) is from 1970 to 8999: far from datetime's limits in
# any offset, and a rule that a JSON Schema pattern states exactly (RUN_AT_PATTERN)
RUN_AT_YEARS = (1970, 8999)
RUN_AT_PATTERN = "^(19[7-9][0-9]|[2-8][0-9]{3})-"
MAX_BATCH = 1000
IDEMPOTENCY_KEY_MAX = 255  # characters of an idempotency key (printable ASCII)
SCHEDULE_KEY_PREFIX = "schedule:"  # the idempotency keys of schedules' jobs: no client's key starts so
TASK_NAME_MAX = 200  # characters: the column, and what a submit's `task` may be
SIGNAL_NAME_MAX = 200  # characters; a signal's name is a path segment of POST /jobs/{id}/signals/{name}
# characters of the name of a durable call (`ctx.step`, `sleep`, `spawn`, ...): the column
STEP_NAME_MAX = 200
MAX_DELAY_S = 10 * 365 * 86400  # the longest delay, sleep, signal timeout or Retry delay: ten years


def duration_s(seconds: float, what: str) -> float:
    """A duration a task asked for, as stored: at least 0, at most MAX_DELAY_S. NaN, infinity and
    longer are a ValueError in the task's own call (a wake-up time past year 9999 cannot be
    stored or written as RFC 3339)."""
    value = float(seconds)
    if not value <= MAX_DELAY_S:  # also NaN
        raise ValueError(
            f"{what} must be a number of seconds up to {MAX_DELAY_S} (ten years), not {seconds!r}"
        )
    return max(0.0, value)


def _bounded_name(name: str, what: str, most: int) -> str:
    if not isinstance(name, str) or not 1 <= len(name) <= most:
        raise ValueError(f"a {what} name is a string of 1 to {most} characters, not {name!r:.80}")
    return name


def step_name(name: str) -> str:
    """A name a durable call can store its result under: a string (the stored name is one, so an
    int would never be found again and its call would be made again on the next run) of 1 to
    STEP_NAME_MAX characters (what the column holds on every database)."""
    return _bounded_name(name, "step", STEP_NAME_MAX)


def signal_name(name: str) -> str:
    """A name `ctx.wait_for` can wait on: one the signal route can deliver (1 to SIGNAL_NAME_MAX
    characters); anything else is a ValueError in the task's own call, not a wait nobody can end.

    A `.` or `..` between slashes is refused too: many HTTP clients and proxies resolve such
    path segments before sending (`/signals/..` reaches `/jobs/{id}`), so the signal route
    refuses them as well, and a wait for one could never end."""
    _bounded_name(name, "signal", SIGNAL_NAME_MAX)
    if any(part in (".", "..") for part in name.split("/")):
        raise ValueError(
            f"a signal name has no '.' or '..' between slashes (a URL cannot carry it), not {name!r:.80}"
        )
    return name
