"""The client subcommands (`python -m jobserver submit|get|wait|list|cancel|retry|tasks`).

Each command runs as a subprocess, the way a user types it, against the real app
found through JOBSERVER_URL or --url: served on a socket by uvicorn on a thread of the
test process (tests/inproc.py's `served_app`), since what is tested is the command's
process, not the server's. One app serves the module; the auth test serves its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests import forkserver
from tests.helpers import REPO, free_port, wait_until
from tests.inproc import ServedApp, served_app

pytestmark = pytest.mark.e2e

ADD = "jobserver.examples.add"
FAIL = "jobserver.examples.fail"
NOOP = "jobserver.examples.noop"  # only test_list_filters_and_pages submits it
RUN_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def server(shared_served: ServedApp) -> ServedApp:
    """One app for the module's commands."""
    return shared_served


def cli(*argv: str, url: str | None, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m jobserver ARGV` with JOBSERVER_URL=url and the extra env."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("JOBSERVER_")}
    base["PYTHONPATH"] = str(REPO)
    if url is not None:
        base["JOBSERVER_URL"] = url
    if forkserver.ENABLED:
        return forkserver.run(list(argv), {**base, **env}, RUN_TIMEOUT_S)
    return subprocess.run(
        [sys.executable, "-m", "jobserver", *argv],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


def ok_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_submit_wait_get_and_wait_again(server: ServedApp) -> None:
    done = ok_json(cli("--json", "submit", ADD, "-a", "a=2", "-a", "b=40", "--wait", url=server.url))
    assert (done["status"], done["result"]) == ("completed", 42)

    assert ok_json(cli("--json", "get", done["id"], url=server.url))["result"] == 42
    assert ok_json(cli("--json", "get", done["id"], "--wait", "5", url=server.url))["status"] == "completed"
    assert ok_json(cli("--json", "wait", done["id"], "--timeout", "30", url=server.url))["result"] == 42


def test_failed_job_exits_1_and_can_be_retried(server: ServedApp) -> None:
    submitted = cli(
        "--json", "submit", FAIL, "--args", '{"message": "cli says no"}', "--wait", url=server.url
    )
    assert submitted.returncode == 1
    job = json.loads(submitted.stdout)
    assert job["status"] == "failed"
    assert "failed" in one_line(submitted) and "cli says no" in submitted.stderr

    assert cli("wait", job["id"], url=server.url).returncode == 1
    again = ok_json(cli("--json", "retry", job["id"], url=server.url))
    assert (again["id"], again["status"], again["attempts"]) == (job["id"], "pending", 0)
    assert cli("wait", job["id"], "--timeout", "30", url=server.url).returncode == 1


def test_cancel_a_delayed_job(server: ServedApp) -> None:
    job = ok_json(
        cli(
            "--json",
            "submit",
            ADD,
            "--args",
            '{"a": 1, "b": 2}',
            "--delay",
            "3600",
            "--idempotency-key",
            "cli-cancel",
            url=server.url,
        )
    )
    assert job["status"] == "pending"

    timed_out = cli("wait", job["id"], "--timeout", "0.2", url=server.url)
    assert timed_out.returncode == 4 and "still pending" in one_line(timed_out)
    timed_out = cli("--json", "wait", job["id"], "--timeout", "0.2", url=server.url)
    assert timed_out.returncode == 4 and json.loads(timed_out.stdout)["status"] == "pending"  # as last read
    assert ok_json(cli("--json", "cancel", job["id"], url=server.url))["status"] == "cancelled"
    assert cli("wait", job["id"], url=server.url).returncode == 3

    refused = cli("cancel", job["id"], url=server.url)
    assert refused.returncode == 1 and "already finished" in one_line(refused)
    # the same submit again replays the key's job, which is over: nothing to watch
    replayed = cli(
        "submit", ADD, "--args", '{"a": 1, "b": 2}', "--delay", "3600", "--idempotency-key", "cli-cancel",
        url=server.url,
    )  # fmt: skip
    assert replayed.returncode == 0 and replayed.stdout.strip() == job["id"], replayed
    assert (
        "is cancelled; see it: python -m jobserver get" in replayed.stderr and "watch" not in replayed.stderr
    )


def test_list_filters_and_pages(server: ServedApp) -> None:
    ids = [ok_json(cli("--json", "submit", NOOP, "--delay", "3600", url=server.url))["id"] for _ in range(2)]

    page = ok_json(cli("--json", "list", "--task", NOOP, "--limit", "1", url=server.url))
    assert [j["id"] for j in page["jobs"]] == ids[-1:] and page["next_cursor"]
    pending = ok_json(cli("--json", "list", "--task", NOOP, "--status", "pending", url=server.url))
    assert [j["id"] for j in pending["jobs"]] == ids[::-1]


def test_tasks(server: ServedApp) -> None:
    names = {t["name"] for t in ok_json(cli("--json", "tasks", url=server.url))["tasks"]}
    assert {ADD, FAIL, NOOP} <= names


def test_signal_sends_json_and_lists_waiting_jobs(server: ServedApp, tmp_path: Path) -> None:
    args = json.dumps({"path": str(tmp_path / "marks")})
    job = ok_json(cli("--json", "submit", "tests.e2e_tasks.approval", "--args", args, url=server.url))

    def listed_waiting() -> bool:
        waiting = ok_json(cli("--json", "list", "--status", "waiting", url=server.url))
        return any(j["id"] == job["id"] for j in waiting["jobs"])

    wait_until(listed_waiting, 30, message="the job to be listed as waiting")
    sent = ok_json(cli("--json", "signal", job["id"], "approve", '{"by": "cli"}', url=server.url))
    assert sent["id"] == job["id"]
    done = ok_json(cli("--json", "wait", job["id"], "--timeout", "30", url=server.url))
    assert done["result"] == {"answer": {"by": "cli"}, "attempt": 1}
    again = cli("signal", job["id"], "approve", '{"by": "someone else"}', url=server.url)
    assert again.returncode == 1 and "another body" in one_line(again)
    bad = cli("signal", job["id"], "approve", "{not json", url=server.url)
    assert bad.returncode == 2


def test_bad_input_exits_2_with_one_line(server: ServedApp) -> None:
    bad_args = cli("submit", ADD, "-a", "a=x", url=server.url)
    assert bad_args.returncode == 2 and bad_args.stdout == ""
    line = one_line(bad_args)
    assert "args.a" in line and "args.b" in line

    unknown = cli("submit", "no.such.task", url=server.url)
    assert unknown.returncode == 2 and "no.such.task" in one_line(unknown)

    not_json = cli("submit", ADD, "--args", "{nope", url=server.url)
    assert not_json.returncode == 2 and "--args" in one_line(not_json)

    missing = cli("get", "no-such-job", url=server.url)
    assert missing.returncode == 1 and "no-such-job" in one_line(missing)

    # what cannot be sent is a usage error of one line, never a traceback or "cannot reach"
    for argv, said in [
        (("submit", ADD, "-a", "a=1e999", "-a", "b=1"), "not JSON"),  # JSON, but past a float
        (("submit", ADD, "-a", "a=1", "-a", "b=1", "--idempotency-key", "ключ"), "ASCII"),
        (("get", "x", "--wait", "nan"), "finite"),
        (("wait", "x", "--timeout", "-1"), "finite"),
        (("delete", ""), "cannot be empty"),
        (("schedules", "delete", ""), "cannot be empty"),
        (("list", "--url", "127.0.0.1:8000"), "http(s)://"),
    ]:
        refused = cli(*argv, url=server.url)
        assert refused.returncode == 2 and said in one_line(refused), (argv, refused.stderr)


def test_a_reader_that_stops_reading_ends_nothing_early_and_prints_no_traceback(server: ServedApp) -> None:
    """`... | head`: the reader may close the pipe before the command writes. The exit code
    still says how the command went (a failed job's is 1), and stderr holds no traceback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBSERVER_")}
    env.update(PYTHONPATH=str(REPO), JOBSERVER_URL=server.url)
    runs = {}
    for argv, code in ((("stats",), 0), (("--json", "list"), 0), (("submit", FAIL, "--wait"), 1)):
        p = subprocess.Popen(
            [sys.executable, "-m", "jobserver", *argv],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert p.stdout is not None
        p.stdout.close()  # before the command can write: every write meets a closed pipe
        runs[argv] = (p, code)
    for argv, (p, code) in runs.items():
        err = p.communicate(timeout=RUN_TIMEOUT_S)[1].decode()
        assert p.returncode == code, (argv, err)
        assert "Traceback" not in err and "Broken pipe" not in err, (argv, err)


def test_url_flag_wins_over_the_environment(server: ServedApp) -> None:
    dead = f"http://127.0.0.1:{free_port()}"

    assert ok_json(cli("--json", "tasks", "--url", server.url, url=dead))["tasks"]
    assert ok_json(cli("--json", "--url", server.url, "tasks", url=dead))["tasks"]  # global options first
    assert ok_json(cli(f"--url={server.url}", "--json", "tasks", url=dead))["tasks"]  # --opt=value too
    keyed = ok_json(
        cli("--json", "submit", ADD, "-a", "a=1", "-a", "b=2", "--idempotency-key", "cli-key", url=server.url)
    )
    found = ok_json(cli("--json", "list", "--idempotency-key", "cli-key", url=server.url))
    assert [j["id"] for j in found["jobs"]] == [keyed["id"]]
    unreachable = cli("tasks", url=dead)
    assert unreachable.returncode == 5 and "cannot reach" in one_line(unreachable)


def test_api_key_from_flag_or_environment(tmp_path: Path) -> None:
    with served_app(tmp_path, {"auth": {"api_keys": ["k1"]}}) as srv:
        refused = cli("tasks", url=srv.url)
        assert refused.returncode == 1 and "401" in one_line(refused)
        assert ok_json(cli("--json", "tasks", "--api-key", "k1", url=srv.url))["tasks"]
        assert ok_json(cli("--json", "tasks", url=srv.url, JOBSERVER_API_KEY="k1"))["tasks"]
        wrong = cli("tasks", "--api-key", "wrong", url=srv.url, JOBSERVER_API_KEY="k1")
        assert wrong.returncode == 1  # the flag wins over the environment
