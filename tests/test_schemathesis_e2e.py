"""Schemathesis as its users run it: the `schemathesis run --checks all` command against the
real server process's /openapi.json, every phase (coverage, fuzzing, stateful through the
links it infers from `Location`), deterministic and bounded; no case may fail. (Its warning
that some operations found no data to work on, a schedule to pause or a failed job to retry,
says what it did not reach.)

It can take minutes on a slow machine (every phase, every operation, over a socket; 11 s on a
fast one), so it runs when
JOBSERVER_TEST_SCHEMATHESIS_CLI=1 is set; the suite always runs every check in-process
(test_schemathesis.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e import start_server
from tests.helpers import REPO
from tests.receiver import Receiver

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        os.environ.get("JOBSERVER_TEST_SCHEMATHESIS_CLI") != "1",
        reason="minutes long: set JOBSERVER_TEST_SCHEMATHESIS_CLI=1 (every check runs in-process anyway)",
    ),
]

TASK_MODULES = ["jobserver.examples"]  # not the test tasks: some of them spin forever on purpose


def test_schemathesis_with_every_check_reports_nothing(tmp_path: Path, receiver: Receiver) -> None:
    config = {
        "tasks": {"modules": TASK_MODULES},
        "webhooks": {"allow_hosts": ["127.0.0.1"], "retry_schedule": ["1s"], "timeout": 1},
    }
    srv = start_server(tmp_path, config)
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "run",
        "--checks",
        "all",
        "--max-examples",
        "10",
        "--generation-deterministic",
        "--request-timeout",
        "10",
        # a schedule's cron, timezone and task are checked by the server, not its schema: the
        # in-process test covers this operation with every check but positive_data_acceptance
        "--exclude-operation-id",
        "putSchedule",
        f"{srv.url}/openapi.json",
    ]
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks",
        "SCHEMATHESIS_WEBHOOK_URL": receiver.url("/hook"),
        "NO_COLOR": "1",
    }
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    summary = done.stdout[done.stdout.index("SUMMARY") :]
    for phase in ("Coverage", "Fuzzing", "Stateful"):
        assert f"✅ {phase}" in summary, summary
    # every case passed; a warning that some operations found no data (a schedule to pause, a
    # failed job to retry) says what was not reached, not that anything failed
    assert re.search(r"(\d+) generated, \1 passed", summary), summary
    assert "FAILURES" not in done.stdout and "ERRORS" not in done.stdout, done.stdout[-6000:]
    assert srv.client().get("/readyz").status_code == 200
