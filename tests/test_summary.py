"""The periodic summary line that replaces per-job INFO lines."""

from __future__ import annotations

import logging

import pytest

from jobserver.core.lifecycle import Ending, Status, Transition
from jobserver.core.records import Claim, NewJob
from jobserver.ops.summary import Summary


def test_one_line_counts_what_happened_then_starts_again(caplog: pytest.LogCaptureFixture) -> None:
    summary = Summary()
    rec = NewJob("j", "t", "{}", 0, 3, None, None, None, 1.0, 1.0).record()
    claim = Claim("j", "t", "{}", 1, 3, 1, None, 1.0)
    for _ in range(3):
        summary.submitted(rec)
        summary.claimed(claim)
    summary.transitioned(Transition("j", 1, Ending.COMPLETED, Status.COMPLETED, 2.0), rec, claim)
    summary.transitioned(Transition("j", 1, Ending.FAILED, Status.PENDING, 2.0, run_at=3.0), rec, claim)
    summary.transitioned(Transition("j", 1, Ending.CRASHED, Status.FAILED, 2.0), rec, None)
    with caplog.at_level(logging.INFO, logger="jobserver.ops.summary"):
        summary.log_once()
        summary.log_once()  # nothing happened since: no line
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "jobs in the last 60s: 1 completed, 1 failed, 1 rescued, 1 retrying, 3 started, 3 submitted"
    ]
