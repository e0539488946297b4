"""The client subcommands as people use them: tables by default, the id printed at once,
a live progress line with the latest log line, Ctrl-C that leaves the job running, `logs`,
`delete`, `webhooks`, `tasks [NAME]`, and exit codes that say how a job ended.

Each runs `python -m jobserver ...` as a subprocess against the real app, served on a socket by
uvicorn on a thread of the test process (tests/inproc.py's `served_app`): the command is the
process under test, not the server.
TTY_COMPATIBLE=1 and TTY_INTERACTIVE=1 make rich draw its live line although stderr is a pipe here.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from jobserver.client.sdk import Client
from tests.e2e import start_server
from tests.helpers import REPO, wait_until
from tests.inproc import ServedApp, served_app
from tests.receiver import Receiver, Reply
from tests.test_cli_client import cli, ok_json, one_line

pytestmark = pytest.mark.e2e
ADD = "jobserver.examples.add"
CHATTY = "tests.e2e_tasks.chatty"
WAIT_S = 30.0
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(scope="module")
def server(shared_served: ServedApp) -> ServedApp:
    """One app for the module's commands."""
    return shared_served


STARTED: list[Running] = []


@pytest.fixture(autouse=True)
def _stop_clis() -> Iterator[None]:
    yield
    while STARTED:
        run = STARTED.pop()
        if run.proc.poll() is None:
            run.proc.kill()
        run.finish()


class Running:
    """A CLI subprocess whose stdout and stderr are read as they come."""

    def __init__(self, url: str, *argv: str) -> None:
        if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
            # A suite started in the background (`./test.sh &`) ignores SIGINT, and so would
            # the CLI it starts, whose Ctrl-C is what a test sends: give it the default back.
            signal.signal(signal.SIGINT, signal.SIG_DFL)
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOBSERVER_")}
        env.update(
            PYTHONPATH=str(REPO),
            JOBSERVER_URL=url,
            TTY_COMPATIBLE="1",
            TTY_INTERACTIVE="1",
            PYTHONUNBUFFERED="1",
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jobserver", *argv],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [self._reader(self.proc.stdout, self.out), self._reader(self.proc.stderr, self.err)]
        STARTED.append(self)

    @staticmethod
    def _reader(stream: IO[str], into: list[str]) -> threading.Thread:
        def read() -> None:
            for chunk in iter(lambda: stream.read(1), ""):
                into.append(chunk)

        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        return thread

    def stdout(self) -> str:
        return "".join(self.out)

    def stderr(self) -> str:
        """What it wrote to stderr, without the terminal's colour and cursor codes."""
        return ANSI.sub("", "".join(self.err))

    def finish(self) -> int:
        code = self.proc.wait(timeout=WAIT_S)
        for reader in self._readers:
            reader.join(WAIT_S)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return code


def chatty_args(tmp_path: Path, name: str) -> tuple[str, Path]:
    release = tmp_path / name
    return json.dumps({"updates": 3, "logs": 2, "release": str(release)}), release


def test_submit_prints_the_id_at_once_then_a_live_line_with_progress_and_the_latest_log(
    server: ServedApp, tmp_path: Path
) -> None:
    args, release = chatty_args(tmp_path, "release-follow")
    run = Running(server.url, "submit", CHATTY, "--args", args, "--follow")
    wait_until(lambda: "\n" in run.stdout(), WAIT_S, message="the id on stdout")
    job_id = run.stdout().splitlines()[0]
    with Client(server.url) as c:
        assert c.get(job_id)["task"] == CHATTY  # printed while the job still runs
    wait_until(lambda: "line 1" in run.stderr(), WAIT_S, message="the log lines")
    wait_until(lambda: "3/3 update 3" in run.stderr(), WAIT_S, message="the progress line")
    release.touch()
    assert run.finish() == 0, run.stderr()
    assert "completed" in run.stdout() and "result" in run.stdout()  # the finished job, as a table
    assert "| line 1" in run.stderr()  # the live line carries the latest log line


def test_ctrl_c_leaves_the_job_running_and_says_how_to_watch_it_again(
    server: ServedApp, tmp_path: Path
) -> None:
    args, release = chatty_args(tmp_path, "release-interrupt")
    run = Running(server.url, f"--url={server.url}", "submit", CHATTY, "--args", args, "--follow")
    wait_until(lambda: "\n" in run.stdout(), WAIT_S, message="the id on stdout")
    job_id = run.stdout().splitlines()[0]
    with Client(server.url) as c:
        wait_until(lambda: c.get(job_id)["status"] == "running", WAIT_S, message="the job to run")
        wait_until(lambda: "running" in run.stderr(), WAIT_S, message="the live line")
        run.proc.send_signal(signal.SIGINT)
        assert run.finish() == 130
        assert f"python -m jobserver follow {job_id} --url {server.url}" in run.stderr()  # as it was given
        assert c.get(job_id)["status"] == "running"
        release.touch()
        assert c.wait(job_id, timeout=WAIT_S)["status"] == "completed"


def test_cancel_of_a_running_job_says_the_cancel_is_requested_and_how_to_watch_it(
    server: ServedApp, tmp_path: Path
) -> None:
    """The cancel's answer is the job still running: "job X is running" alone read as if the
    cancel had done nothing."""
    args, _ = chatty_args(tmp_path, "release-cancel")
    with Client(server.url) as c:
        job_id = c.submit(CHATTY, json.loads(args))["id"]
        wait_until(lambda: c.get(job_id)["status"] == "running", WAIT_S, message="the job to run")
        cancelled = cli("cancel", job_id, url=server.url)
        assert cancelled.returncode == 0, cancelled.stderr
        said = cancelled.stdout.strip()
        assert said.startswith("cancel requested; ") and f"python -m jobserver wait {job_id}" in said, said
        assert c.wait(job_id, timeout=WAIT_S)["status"] == "cancelled"


def test_logs_delete_and_exit_codes(server: ServedApp, tmp_path: Path) -> None:
    args, release = chatty_args(tmp_path, "release-logs")
    job_id = ok_json(cli("--json", "submit", CHATTY, "--args", args, url=server.url))["id"]
    follow = Running(server.url, "logs", job_id, "--follow")
    wait_until(lambda: "line 1" in follow.stdout(), WAIT_S, message="logs --follow to print the lines")
    assert follow.proc.poll() is None  # still following a running job
    release.touch()
    assert follow.finish() == 0

    # with --json, a follow prints each line as it comes, one JSON object a line
    args, release = chatty_args(tmp_path, "release-logs-json")
    json_job = ok_json(cli("--json", "submit", CHATTY, "--args", args, url=server.url))["id"]
    follow = Running(server.url, "--json", "logs", json_job, "--follow")
    wait_until(lambda: follow.stdout().count("\n") == 2, WAIT_S, message="two JSON lines before the job ends")
    assert [json.loads(line)["message"] for line in follow.stdout().splitlines()] == ["line 0", "line 1"]
    release.touch()
    assert follow.finish() == 0

    printed = cli("logs", job_id, url=server.url)
    assert printed.returncode == 0
    assert [line.split("  ", 1)[1] for line in printed.stdout.splitlines()] == ["line 0", "line 1"]
    logs = ok_json(cli("--json", "logs", job_id, url=server.url))["logs"]
    assert [entry["message"] for entry in logs] == ["line 0", "line 1"]

    assert cli("wait", job_id, url=server.url).returncode == 0
    deleted = cli("delete", job_id, url=server.url)
    assert deleted.returncode == 0 and job_id in deleted.stdout
    gone = cli("get", job_id, url=server.url)
    assert gone.returncode == 1 and "no job" in one_line(gone)

    pending = ok_json(
        cli("--json", "submit", ADD, "-a", "a=1", "-a", "b=1", "--delay", "3600", url=server.url)
    )
    refused = cli("delete", pending["id"], url=server.url)
    assert refused.returncode == 1 and "finished" in one_line(refused)
    assert cli("wait", pending["id"], "--timeout", "0.1", url=server.url).returncode == 4
    assert cli("cancel", pending["id"], url=server.url).returncode == 0
    assert cli("wait", pending["id"], url=server.url).returncode == 3
    assert ok_json(
        cli("--json", "delete", "--status", "cancelled", "--id", pending["id"], url=server.url)
    ) == {"count": 1}
    failed = cli("submit", "jobserver.examples.fail", "--wait", url=server.url)
    assert failed.returncode == 1 and "failed" in failed.stderr


def test_tables_one_line_per_task_and_a_task_schema(server: ServedApp) -> None:
    job_id = ok_json(cli("--json", "submit", ADD, "-a", "a=2", "-a", "b=3", "--wait", url=server.url))["id"]
    listed = cli("list", "--task", ADD, url=server.url)
    assert listed.returncode == 0
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["ID", "TASK", "STATUS", "ATTEMPTS", "PROGRESS", "CREATED", "DURATION"]
    assert any(row.startswith(job_id) and "completed" in row for row in rows)
    shown = cli("get", job_id, url=server.url)
    assert any(line.split() == ["result", "5"] for line in shown.stdout.splitlines())

    with Client(server.url) as c:
        names = [t["name"] for t in c.tasks()]
    lines = cli("tasks", url=server.url).stdout.splitlines()
    assert len(lines) == len(names) + 1 and lines[0].split()[:3] == ["TASK", "STATE", "KIND"]
    assert {line.split()[0] for line in lines[1:]} == set(names)
    schema = ok_json(cli("tasks", ADD, url=server.url))
    assert set(schema["args_schema"]["properties"]) == {"a", "b"}
    unknown = cli("tasks", "no.such.task", url=server.url)
    assert unknown.returncode == 2 and "no.such.task" in one_line(unknown)


def test_webhooks_of_a_job(server: ServedApp, receiver: Receiver) -> None:
    receiver.script("/hook", Reply(200))
    job = ok_json(
        cli(
            "--json",
            "submit",
            ADD,
            "-a",
            "a=1",
            "-a",
            "b=1",
            "--webhook-url",
            receiver.url("/hook"),
            url=server.url,
        )
    )
    receiver.wait_for(1, "/hook")
    with Client(server.url) as c:
        wait_until(lambda: c.webhooks(job["id"]), WAIT_S, message="the delivery to be recorded")
    table = cli("webhooks", job["id"], url=server.url)
    assert table.returncode == 0
    header, line = table.stdout.splitlines()[:2]
    assert header.split() == ["TYPE", "ATTEMPT", "AT", "STATUS", "ERROR", "MS", "DELIVERY"]
    deliveries = ok_json(cli("--json", "webhooks", job["id"], url=server.url))["deliveries"]
    assert [d["status_code"] for d in deliveries] == [200]
    # which event each attempt was for, and the delivery (the webhook-id header the receiver saw)
    assert line.split()[:2] == ["job.completed", "1"] and " 200 " in line
    assert line.split()[-1] == deliveries[0]["id"] == receiver.received("/hook")[0].headers["webhook-id"]


def test_a_missing_key_and_a_wrong_key_say_different_things(tmp_path: Path) -> None:
    with served_app(tmp_path, {"auth": {"api_keys": ["k1"]}}) as srv:
        missing = cli("tasks", url=srv.url)
        wrong = cli("tasks", "--api-key", "nope", url=srv.url)
        assert missing.returncode == wrong.returncode == 1
        assert "needs an API key" in one_line(missing) and "refused the API key" in one_line(wrong)


def test_wait_and_logs_follow_ride_over_a_server_restart(tmp_path: Path) -> None:
    """A watch in a terminal must not end with "cannot reach" because the server restarted
    under it (a deploy): it waits for the server to be back and goes on."""
    srv = start_server(tmp_path)
    with Client(srv.url) as c:
        job_id = c.submit("tests.e2e_tasks.logs_then_waits", {"name": "go"})["id"]
        wait_until(lambda: c.get(job_id)["status"] == "waiting", WAIT_S, message="the job to wait")
    waiting = Running(srv.url, "wait", job_id)
    following = Running(srv.url, "logs", job_id, "--follow")
    # both watches are under way: the live line is drawn, the job's log line printed
    wait_until(lambda: "waiting" in waiting.stderr(), WAIT_S, message="the live line")
    wait_until(lambda: "waiting for go" in following.stdout(), WAIT_S, message="the log line")
    srv.terminate()
    assert srv.wait_exit(WAIT_S) == 0
    srv.restart()
    with Client(srv.url) as c:
        c.signal(job_id, "go", {"ok": True})
    assert waiting.finish() == 0, waiting.stderr()
    assert "completed" in waiting.stdout(), waiting.stdout()
    assert following.finish() == 0, following.stderr()
    lines = following.stdout().splitlines()  # the run before the signal and the resumed run each log once
    assert len(lines) == len(set(lines)) == 2, lines  # resumed after the last line seen: none printed twice
