"""Operations, against the real server process: JSON logs and /readyz."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e import start_server
from tests.helpers import has_line, wait_until

pytestmark = pytest.mark.e2e


def test_json_logs_are_one_object_per_line_and_job_lines_carry_the_job_id(tmp_path: Path) -> None:
    srv = start_server(tmp_path, config={"server": {"log_format": "json", "log_level": "debug"}})
    c = srv.client()
    ok = c.post("/jobs", json={"task": "jobserver.examples.add", "args": {"a": 1, "b": 2}}).json()["id"]
    bad = c.post("/jobs", json={"task": "jobserver.examples.fail", "args": {}}).json()["id"]
    flaky = c.post("/jobs", json={"task": "jobserver.examples.flaky", "args": {"fail_times": 1}}).json()["id"]
    for job_id in (ok, bad, flaky):
        assert c.get(f"/jobs/{job_id}", params={"wait": 20}).json()["finished_at"]
    srv.terminate()
    assert srv.wait_exit() == 0

    lines = [line for line in srv.log().splitlines() if line.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}")
    assert all(isinstance(r, dict) and {"at", "level", "logger", "message"} <= set(r) for r in records)
    for job_id in (ok, bad, flaky):
        about = [r for r in records if job_id in r["message"]]
        assert about, f"no log line about {job_id}"
        assert all(r.get("job_id") == job_id for r in about), about
    failed = [r for r in records if r.get("job_id") == bad and r["level"] == "error"]
    assert failed and "RuntimeError" in failed[0]["traceback"]
    assert any(r.get("action") == "retry" and r.get("job_id") == flaky for r in records)


def test_json_logs_also_carry_warnings_and_uncaught_exceptions() -> None:
    script = (
        "import logging, threading, warnings\n"
        "from jobserver import logs\n"
        "logs.configure('info', 'json')\n"
        "logging.getLogger('jobserver.runner.executor').info('hello %s', 'x', extra={'job_id': 'j1'})\n"
        "warnings.warn('careful')\n"
        "t = threading.Thread(target=lambda: 1 / 0, name='worker-x'); t.start(); t.join()\n"
        "raise RuntimeError('at the top')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert done.stdout == ""
    records = [json.loads(line) for line in done.stderr.splitlines() if line.strip()]
    assert records[0]["job_id"] == "j1" and records[0]["message"] == "hello x"
    assert "careful" in records[1]["message"]
    assert "worker-x" in records[2]["message"] and "ZeroDivisionError" in records[2]["traceback"]
    assert "RuntimeError: at the top" in records[3]["traceback"]


def test_readyz_is_ready_then_503_while_draining(tmp_path: Path) -> None:
    srv = start_server(tmp_path, config={"workers": {"shutdown_grace_seconds": 30}})
    c = srv.client()
    r = c.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json()["checks"] == {"database": "ok", "workers": "ok"}

    started, release = tmp_path / "started", tmp_path / "release"
    job = c.post(
        "/jobs",
        json={
            "task": "tests.e2e_tasks.block_until_file",
            "args": {"started": str(started), "release": str(release)},
        },
    ).json()
    wait_until(lambda: has_line(started), message="the job to start")
    srv.terminate()  # drains: the running job may finish, no new work is taken
    r = wait_until(
        lambda: (resp := c.get("/readyz")).status_code == 503 and resp, message="/readyz to say 503"
    )
    assert r.json()["draining"] is True and r.json()["status"] == "not ready"
    assert r.headers["content-type"].startswith("application/json")
    assert c.get("/healthz").status_code == 200  # alive, just not ready
    refused = c.post("/jobs", json={"task": "jobserver.examples.add", "args": {"a": 1, "b": 1}})
    assert refused.status_code == 503 and refused.headers["retry-after"]
    release.touch()
    assert srv.wait_exit() == 0
    srv.restart()
    assert srv.client().get(f"/jobs/{job['id']}").json()["status"] == "completed"
