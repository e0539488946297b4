"""The server command (`jobserver.cli.main`): a start that cannot work ends with one
`jobserver: ...` line and exit code 2; the start-up log says whether auth is on."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from jobserver.cli import database_for_log, main
from tests.helpers import free_port, wait_until

SCRIPT = Path(sys.executable).with_name("jobserver")
STOP = "no_such_tasks_module"  # a task module that is nowhere: the start ends before it opens anything


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Run main() in tmp_path; what it changes for the whole process is put back afterwards."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.upper().startswith("JOBSERVER_"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(sys, "path", list(sys.path))
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    level = root.level
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    before = set(sys.modules)
    try:
        yield tmp_path
    finally:
        root.setLevel(level)
        logging.captureWarnings(False)
        for name in set(sys.modules) - before:
            if str(tmp_path) in str(getattr(sys.modules[name], "__file__", "")):
                del sys.modules[name]


def write_config(directory: Path, modules: list[str], extra: str = "") -> None:
    listed = ", ".join(f'"{m}"' for m in modules)
    text = f'[database]\nurl = "sqlite:///jobs.db"\n[tasks]\nmodules = [{listed}]\n{extra}'
    (directory / "config.toml").write_text(text, encoding="utf-8")


def error_lines(err: str) -> list[str]:
    """The lines that are not log records (log lines carry a level name)."""
    return [line for line in err.splitlines() if not any(f" {lv} " in line for lv in ("INFO", "DEBUG"))]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def test_help_still_works(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "--config" in capsys.readouterr().out


def test_version_is_the_installed_distributions(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"jobserver {importlib.metadata.version('jobserver')}\n"


def test_unknown_task_module_is_one_line_and_exit_2(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_config(cwd, ["jobserver.examples", STOP])
    code, err = run(capsys)
    assert code == 2
    assert error_lines(err) == [
        "jobserver: config tasks.modules: cannot import 'no_such_tasks_module': "
        "ModuleNotFoundError: No module named 'no_such_tasks_module'"
    ]


def test_task_module_that_raises_on_import_is_one_line_and_exit_2(
    cwd: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (cwd / "raising_tasks.py").write_text("import os\nraise RuntimeError('set MY_TOKEN first')\n")
    write_config(cwd, ["raising_tasks"])
    code, err = run(capsys)
    assert code == 2
    [line] = error_lines(err)
    assert line.startswith("jobserver: config tasks.modules: cannot import 'raising_tasks': ")
    assert "RuntimeError: set MY_TOKEN first" in line
    assert "raising_tasks.py:2" in line


def test_task_definition_error_is_one_line_and_exit_2(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = """
        import threading

        from jobserver import task


        @task
        def guarded(n: int, lock: threading.Lock) -> int:
            return n
    """
    (cwd / "lock_tasks.py").write_text(textwrap.dedent(source))
    write_config(cwd, ["lock_tasks"])
    code, err = run(capsys)
    assert code == 2
    [line] = error_lines(err)
    assert line.startswith("jobserver: task lock_tasks.guarded: parameter lock: ")


def test_bad_schedule_is_one_line_and_exit_2_before_the_database_is_touched(
    cwd: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    schedule = '[[schedules]]\nname = "nightly"\ntask = "jobserver.examples.add"\ncron = "0 3 * * *"\n'
    write_config(cwd, ["jobserver.examples"], schedule + "args = {a = 1}\n")
    code, err = run(capsys)
    assert code == 2
    assert error_lines(err) == ["jobserver: config schedules.nightly.args: b: Field required"]
    assert not (cwd / "jobs.db").exists()


def test_mistyped_environment_variable_is_one_line_and_exit_2(
    cwd: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(cwd, [STOP])  # should the variable be ignored, the start still ends here
    monkeypatch.setenv("JOBSERVER_WORKERS_THREDS", "2")
    code, err = run(capsys)
    assert code == 2
    [line] = err.splitlines()
    assert line.startswith("jobserver: config JOBSERVER_WORKERS_THREDS: ")
    assert "JOBSERVER_WORKERS_THREADS" in line  # the suggestion


@pytest.mark.parametrize("value", ["", " ", ",", "[]"])
def test_empty_api_key_list_in_environment_refuses_to_start(
    cwd: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    write_config(cwd, [STOP])
    monkeypatch.setenv("JOBSERVER_AUTH_API_KEYS", value)
    code, err = run(capsys)
    assert code == 2
    [line] = err.splitlines()
    assert line.startswith("jobserver: config auth.api_keys: ")
    assert "JOBSERVER_AUTH_API_KEYS" in line


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (None, "auth off"),
        ("key-one-secret", "auth on: 1 API key"),
        ("k-1-secret,k-2-secret", "auth on: 2 API keys"),
    ],
)
def test_start_logs_whether_auth_is_on_and_never_the_keys(
    cwd: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    keys: str | None,
    expected: str,
) -> None:
    write_config(cwd, [STOP])  # after the start-up lines are logged
    if keys is not None:
        monkeypatch.setenv("JOBSERVER_AUTH_API_KEYS", keys)
    code, err = run(capsys)
    assert code == 2
    info = [line for line in err.splitlines() if " INFO " in line]
    assert any(expected in line for line in info), err
    assert "secret" not in err


def test_with_json_logs_a_failed_start_says_why_in_a_json_line(
    cwd: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_config(cwd, [STOP], '[server]\nlog_format = "json"\n')
    code, err = run(capsys)
    assert code == 2
    lines = [json.loads(line) for line in err.splitlines()]  # every line, the reason's too
    [failed] = [line for line in lines if line.get("action") == "start_failed"]
    assert failed["level"] == "error"
    assert STOP in failed["message"]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("sqlite:///data/jobs.db", "sqlite:///data/jobs.db"),
        ("postgresql://jobs:pw-secret@db:5432/jobs", "postgresql://db:5432/jobs"),
        (
            "postgresql://db/jobs?sslmode=require&password=pw-secret&Ssl%50assword=pw-secret",
            "postgresql://db/jobs?sslmode=require&password=REDACTED&Ssl%50assword=REDACTED",
        ),
    ],
)
def test_the_start_line_names_the_database_without_its_password(url: str, shown: str) -> None:
    assert database_for_log(url) == shown


@pytest.mark.e2e
def test_console_script_imports_task_modules_from_the_working_directory(tmp_path: Path) -> None:
    """`jobserver` (the installed command) finds ./my_tasks.py as `python -m jobserver` does."""
    if not SCRIPT.exists():
        pytest.skip(f"the console script is not installed next to {sys.executable}")
    (tmp_path / "my_local_tasks.py").write_text(
        "from jobserver import task\n\n\n@task\ndef hello(name: str) -> str:\n    return f'hello {name}'\n"
    )
    port = free_port()
    write_config(tmp_path, ["my_local_tasks"], f"[server]\nport = {port}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOBSERVER_", "PYTHON"))}
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([str(SCRIPT)], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:

        def tasks() -> list[str] | None:
            if proc.poll() is not None:
                raise AssertionError(f"exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/tasks", timeout=1)
            except httpx.HTTPError:
                return None
            return [t["name"] for t in answer.json()["tasks"]]

        assert wait_until(tasks, 30, 0.05, "the server to list its tasks") == ["my_local_tasks.hello"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_secret_prints_the_generated_signing_secret(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_config(cwd, ["jobserver.examples"])
    assert main(["secret"]) == 1  # no database yet: nothing is created to answer
    assert "no database at" in capsys.readouterr().err
    assert not (cwd / "jobs.db").exists()
    (cwd / "jobs.db").touch()  # a database no server has started on: no tables yet
    assert main(["secret"]) == 1
    assert "the secret is made on the first start" in capsys.readouterr().err
    from tests.inproc import running_app

    (cwd / "srv").mkdir()
    with running_app(cwd / "srv") as app:  # a first start generates the secret
        db = app.db_path
    (cwd / "config.toml").write_text(f'[database]\nurl = "sqlite:///{db}"\n')
    assert main(["secret"]) == 0
    printed = capsys.readouterr().out.strip()
    import sqlite3

    with sqlite3.connect(db) as conn:
        stored = conn.execute("SELECT value FROM meta WHERE key = 'webhook_secret'").fetchone()[0]
    assert printed == stored and printed.startswith("whsec_")
    (cwd / "config.toml").write_text(
        f'[database]\nurl = "sqlite:///{db}"\n[webhooks]\nsecret = "whsec_AAAA"\n'
    )
    assert main(["secret"]) == 0
    assert capsys.readouterr().out.strip() == "whsec_AAAA"  # a configured secret wins
