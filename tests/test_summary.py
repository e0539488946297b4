"""The periodic summary line that replaces per-job INFO lines."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from jobserver.core.lifecycle import Ending, Status, Transition
from jobserver.core.records import Claim, NewJob
from jobserver.ops.summary import Summary
from tests.helpers import finished, submit, wait_until
from tests.inproc import running_app


def test_one_line_counts_what_happened_then_starts_again(caplog: pytest.LogCaptureFixture) -> None:
    monotonic = iter([100.0, 160.0, 170.0, 185.0])
    summary = Summary(lambda: next(monotonic))
    rec = NewJob("j", "t", "{}", 0, 3, None, None, None, 1.0, 1.0).record()
    claim = Claim("j", "t", "{}", 1, 3, 1, None, 1.0)
    for _ in range(3):
        summary.submitted(rec)
        summary.claimed(claim)
    summary.transitioned(Transition("j", 1, Ending.COMPLETED, Status.COMPLETED, 2.0), rec, claim)
    summary.transitioned(Transition("j", 1, Ending.FAILED, Status.PENDING, 2.0, run_at=3.0), rec, claim)
    summary.transitioned(Transition("j", 1, Ending.CRASHED, Status.FAILED, 2.0), rec, None)
    # a crashed attempt put back is "rescued", not "retrying" as well
    summary.transitioned(Transition("j", 1, Ending.CRASHED, Status.PENDING, 2.0, run_at=3.0), rec, None)
    with caplog.at_level(logging.INFO, logger="jobserver.ops.summary"):
        summary.log_once()
        summary.log_once()  # nothing happened since: no line, and the next one counts from here
        summary.submitted(rec)
        summary.log_once()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "jobs in the last 60s: 1 completed, 1 failed, 2 rescued, 1 retrying, 3 started, 3 submitted",
        "jobs in the last 15s: 1 submitted",
    ]


def test_the_stop_logs_what_ran_since_the_last_summary_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="jobserver.ops.summary"), running_app(tmp_path) as app:
        # every maintenance pass ran once (the summary's at start: nothing to say); the next
        # comes in a minute, after this test
        passes = app.runtime.parts.maintenance._next
        wait_until(lambda: all(passes), message="the first maintenance passes")
        assert finished(app.client, submit(app.client, "jobserver.examples.add", {"a": 1, "b": 2}))
    lines = [(r.threadName, r.getMessage()) for r in caplog.records if r.name == "jobserver.ops.summary"]
    assert [thread for thread, _ in lines] == ["MainThread"], lines
    assert re.fullmatch(r"jobs in the last \d+s: 1 completed, 1 started, 1 submitted", lines[0][1])
