"""`decide`: every ending of an attempt against the task options, as a table (no threads, no SQLite)."""

from __future__ import annotations

import traceback

import pytest

from jobserver.core.errors import Fail, Retry, Timeout
from jobserver.core.lifecycle import (
    FINISHED,
    AttemptFacts,
    Ending,
    Outcome,
    Park,
    Status,
    Transition,
    WaitKind,
    backoff_s,
    cancelled_instead,
    decide,
    error_info,
    formatted_traceback,
)
from jobserver.core.tasks import TaskOptions

NOW = 1_000.0
RETRY3 = TaskOptions(max_attempts=3, backoff=(2.0, 10.0))
AT_MOST_ONCE = TaskOptions(max_attempts=3, on_crash="fail")
ONLY_VALUE_ERRORS = TaskOptions(max_attempts=3, backoff=(2.0, 10.0), retry_on=(ValueError,))


def job(attempt: int = 1, max_attempts: int = 3) -> AttemptFacts:
    return AttemptFacts("j1", run_seq=7, attempt=attempt, max_attempts=max_attempts)


# (name, outcome, attempt, max_attempts, options, expected status, expected run_at, counts attempt, error type)
CASES: list[tuple[str, Outcome, int, int, TaskOptions | None, Status, float | None, bool, str | None]] = [
    ("returned", Outcome.completed("42"), 1, 3, RETRY3, Status.COMPLETED, None, True, None),
    (
        "raised, attempts left: backoff",
        Outcome.raised(RuntimeError("x")),
        1,
        3,
        RETRY3,
        Status.PENDING,
        NOW + 1.0,
        True,
        "RuntimeError",
    ),
    (
        "raised, backoff doubles",
        Outcome.raised(RuntimeError("x")),
        2,
        3,
        RETRY3,
        Status.PENDING,
        NOW + 2.0,
        True,
        "RuntimeError",
    ),
    (
        "raised on the last attempt",
        Outcome.raised(RuntimeError("x")),
        3,
        3,
        RETRY3,
        Status.FAILED,
        None,
        True,
        "RuntimeError",
    ),
    (
        "raised, not in retry_on",
        Outcome.raised(KeyError("x")),
        1,
        3,
        ONLY_VALUE_ERRORS,
        Status.FAILED,
        None,
        True,
        "KeyError",
    ),
    (
        "raised, in retry_on",
        Outcome.raised(ValueError("x")),
        1,
        3,
        ONLY_VALUE_ERRORS,
        Status.PENDING,
        NOW + 1.0,
        True,
        "ValueError",
    ),
    (
        "timed out, retry_on takes every exception",
        Outcome.raised(Timeout("late")),
        1,
        3,
        RETRY3,
        Status.PENDING,
        NOW + 1.0,
        True,
        "Timeout",
    ),
    (
        "timed out, retry_on names other types",
        Outcome.raised(Timeout("late")),
        1,
        3,
        ONLY_VALUE_ERRORS,
        Status.FAILED,
        None,
        True,
        "Timeout",
    ),
    (
        "timed out, retry_on names Timeout",
        Outcome.raised(Timeout("late")),
        1,
        3,
        TaskOptions(max_attempts=3, backoff=(2.0, 10.0), retry_on=(ValueError, Timeout)),
        Status.PENDING,
        NOW + 1.0,
        True,
        "Timeout",
    ),
    ("Fail: no retry", Outcome.raised(Fail("no")), 1, 3, RETRY3, Status.FAILED, None, True, "Fail"),
    (
        "Retry(delay) overrides the backoff",
        Outcome.raised(Retry(delay=30)),
        1,
        3,
        RETRY3,
        Status.PENDING,
        NOW + 30,
        True,
        "Retry",
    ),
    (
        "Retry() uses the backoff",
        Outcome.raised(Retry()),
        1,
        3,
        RETRY3,
        Status.PENDING,
        NOW + 1.0,
        True,
        "Retry",
    ),
    (
        "Retry on the last attempt fails",
        Outcome.raised(Retry(delay=30)),
        3,
        3,
        RETRY3,
        Status.FAILED,
        None,
        True,
        "Retry",
    ),
    ("cancelled", Outcome.cancelled(), 1, 3, RETRY3, Status.CANCELLED, None, True, "Cancelled"),
    (
        "crashed: runs again now, counted",
        Outcome.crashed(False),
        1,
        3,
        RETRY3,
        Status.PENDING,
        NOW,
        True,
        "Crashed",
    ),
    (
        "crashed on the last attempt",
        Outcome.crashed(False),
        3,
        3,
        RETRY3,
        Status.FAILED,
        None,
        True,
        "Crashed",
    ),
    (
        "crashed: at least 3 recoveries",
        Outcome.crashed(False),
        2,
        1,
        TaskOptions(),
        Status.PENDING,
        NOW,
        True,
        "Crashed",
    ),
    (
        "crashed 3 times with max_attempts=1",
        Outcome.crashed(False),
        3,
        1,
        TaskOptions(),
        Status.FAILED,
        None,
        True,
        "Crashed",
    ),
    (
        "crashed, on_crash=fail",
        Outcome.crashed(False),
        1,
        3,
        AT_MOST_ONCE,
        Status.FAILED,
        None,
        True,
        "Crashed",
    ),
    (
        "crashed after a cancel was asked",
        Outcome.crashed(True),
        1,
        3,
        AT_MOST_ONCE,
        Status.CANCELLED,
        None,
        True,
        "Cancelled",
    ),
    (
        "crashed, task unknown here: runs again",
        Outcome.crashed(False),
        1,
        3,
        None,
        Status.PENDING,
        NOW,
        True,
        "Crashed",
    ),
    (
        "shutdown cut it off: put back, not counted",
        Outcome.released(True),
        2,
        3,
        RETRY3,
        Status.PENDING,
        NOW,
        False,
        None,
    ),
    (
        "shutdown cut off an at-most-once task",
        Outcome.released(True),
        1,
        3,
        AT_MOST_ONCE,
        Status.FAILED,
        None,
        True,
        "Interrupted",
    ),
    (
        "shutdown before an at-most-once task began",
        Outcome.released(False),
        1,
        3,
        AT_MOST_ONCE,
        Status.PENDING,
        NOW,
        False,
        None,
    ),
    (
        "parked on its last attempt: waiting, not counted",
        Outcome.suspended(Park(WaitKind.SLEEP, "nap", NOW + 60)),
        3,
        3,
        RETRY3,
        Status.WAITING,
        None,
        False,
        None,
    ),
]


@pytest.mark.parametrize(
    ("outcome", "attempt", "max_attempts", "options", "status", "run_at", "counts", "error_type"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_decide(
    outcome: Outcome,
    attempt: int,
    max_attempts: int,
    options: TaskOptions | None,
    status: Status,
    run_at: float | None,
    counts: bool,
    error_type: str | None,
) -> None:
    t = decide(outcome, job(attempt, max_attempts), options, NOW, jitter=0.5)
    assert isinstance(t, Transition)
    assert (t.job_id, t.run_seq, t.ending, t.at) == ("j1", 7, outcome.ending, NOW)
    assert t.status == status
    assert t.run_at == run_at
    assert t.counts_attempt is counts
    assert (t.error or {}).get("type") == error_type
    assert t.finished is (status in FINISHED)
    if status == Status.COMPLETED:
        assert t.result_json == "42" and t.error is None


def test_a_stale_attempt_writes_nothing() -> None:
    assert decide(Outcome.stale(), job(), RETRY3, NOW, 0.5) is None


def test_every_ending_is_decided() -> None:
    covered = {case[1].ending for case in CASES} | {Ending.STALE}
    assert covered == set(Ending)


def test_backoff_is_full_jitter_up_to_the_cap() -> None:
    opts = TaskOptions(backoff=(1.0, 300.0))
    assert backoff_s(opts, 1, 0.0) == 0.0
    assert backoff_s(opts, 1, 0.999) == pytest.approx(0.999)
    assert backoff_s(opts, 4, 0.5) == 4.0  # half of 1 * 2**3
    assert backoff_s(opts, 20, 0.5) == 150.0  # half of the cap


def test_errors_carry_what_happened() -> None:
    crash = decide(Outcome.crashed(False), job(2), RETRY3, NOW, 0.5)
    assert crash is not None and crash.error is not None
    assert "attempt 2 was cut off" in crash.error["message"]
    cut = decide(Outcome.released(True, " (grace period 2s)"), job(1), AT_MOST_ONCE, NOW, 0.5)
    assert cut is not None and cut.error is not None
    assert "shut down" in cut.error["message"] and "grace period 2s" in cut.error["message"]
    failed = decide(Outcome.raised(ValueError("bad input")), job(3), RETRY3, NOW, 0.5)
    assert failed is not None and failed.error is not None
    assert failed.error["message"] == "bad input" and "ValueError" in failed.error["traceback"]
    spent = decide(Outcome.raised(Retry(delay=5)), job(3), RETRY3, NOW, 0.5)
    assert spent is not None and spent.error is not None and spent.status is Status.FAILED
    assert spent.error["message"] == "retry requested; no attempt is left (attempt 3 of max_attempts 3)"
    asked = decide(Outcome.raised(Retry(delay=5)), job(1), RETRY3, NOW, 0.5)
    assert asked is not None and asked.error is not None and asked.error["message"] == "retry requested"


def test_status_is_the_contract_vocabulary() -> None:
    assert [s.value for s in Status] == ["pending", "running", "waiting", "completed", "failed", "cancelled"]
    assert {"completed", "failed", "cancelled"} == FINISHED


def test_a_park_carries_what_the_job_waits_for() -> None:
    park = Park(WaitKind.CHILDREN, "all", None, ("c1", "c2"))
    t = decide(Outcome.suspended(park), job(1), None, NOW, 0.5)  # an unknown task parks too
    assert t is not None and t.park == park and t.status == Status.WAITING and not t.finished
    assert park.waiting_for() == {"kind": "children", "name": "all", "until": None}
    cancelled = cancelled_instead(t)
    assert (cancelled.status, cancelled.run_seq, (cancelled.error or {}).get("type")) == (
        Status.CANCELLED,
        7,
        "Cancelled",
    )


def test_a_traceback_the_interpreter_cannot_mark_is_printed_without_its_column_marks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def raise_it() -> None:
        raise ValueError("boom")

    try:
        raise_it()
    except ValueError as exc:
        caught = exc
    whole = formatted_traceback(caught)
    assert "raise_it()" in whole and whole.endswith("ValueError: boom\n")

    def ast_race(*args: object, **kwargs: object) -> list[str]:
        raise SystemError("AST constructor recursion depth mismatch (before=240, after=51)")

    monkeypatch.setattr(traceback, "format_exception", ast_race)  # CPython 3.11, threads parsing at once
    info = error_info(caught)
    text = info["traceback"]
    assert text is not None and text.startswith("Traceback (most recent call last):\n")
    assert 'in raise_it\n    raise ValueError("boom")\n' in text and text.endswith("ValueError: boom\n")
    assert "^" not in text  # no column marks
