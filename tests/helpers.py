"""Helpers shared by every layer of the test suite: bounded waits, the test config,
and small HTTP helpers that work with any `httpx.Client` (a real one talking to a
server process, or Starlette's `TestClient` talking to the app in-process).
"""

from __future__ import annotations

import socket
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson

REPO = Path(__file__).resolve().parent.parent
FINISHED = ("completed", "failed", "cancelled")
Config = dict[str, Any]  # section -> {key: value}, or "schedules" -> a list of [[schedules]] tables


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.02, message: str = "condition"
) -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)  # ok: the poll interval of a bounded wait


def has_line(path: Path) -> bool:
    """A task's marker file holds at least one whole line (created is not enough: a kill can
    land between the file's creation and its first write)."""
    try:
        return path.read_text().endswith("\n")
    except FileNotFoundError:
        return False


# ------------------------------------------------------------------- config
def blocked_in_read(native_id: int) -> bool:
    """The thread sleeps inside read(2) (syscall 0 on x86-64, 63 on arm64), per /proc."""
    try:
        syscall = Path(f"/proc/self/task/{native_id}/syscall").read_text().split()
    except OSError:
        return False
    return bool(syscall) and syscall[0] in ("0", "63")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def write_config(path: Path, config: Config) -> None:
    lines = []
    for section, values in config.items():
        tables = values if isinstance(values, list) else [values]
        for table in tables:
            lines.append(f"[[{section}]]" if isinstance(values, list) else f"[{section}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")


def default_config(tmp_path: Path, port: int) -> Config:
    """The test config: a fresh SQLite file in `tmp_path`, the test tasks, a short lease,
    webhooks allowed to 127.0.0.1 with a fast retry schedule."""
    return {
        # the in-process apps' test client sends `Host: testserver`
        "server": {"host": "127.0.0.1", "port": port, "log_level": "info", "allowed_hosts": ["testserver"]},
        "database": {"url": f"sqlite:///{tmp_path / 'jobs.db'}"},
        "workers": {"threads": 4, "lease_seconds": 5, "shutdown_grace_seconds": 5},
        "tasks": {"modules": ["jobserver.examples", "tests.e2e_tasks"]},
        "webhooks": {
            "allow_hosts": ["127.0.0.1", "localhost"],
            "retry_schedule": ["200ms", "400ms", "800ms"],
        },
    }


def merged_config(tmp_path: Path, port: int, config: Config | None) -> Config:
    """The default test config updated section by section."""
    merged = default_config(tmp_path, port)
    for section, values in (config or {}).items():
        if isinstance(values, list):
            merged[section] = values
        else:
            merged.setdefault(section, {}).update(values)
    return merged


# --------------------------------------------------------------------- HTTP
def submit(c: httpx.Client, task: str, args: dict[str, Any] | None = None, **extra: Any) -> str:
    """POST a job; its id."""
    r = c.post("/jobs", json={"task": task, "args": args or {}, **extra})
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def finished(c: httpx.Client, job_id: str, timeout: float = 20) -> dict[str, Any]:
    """The job once finished (`GET /jobs/{id}?wait=`); fails if it is not finished in time."""
    job: dict[str, Any] = c.get(f"/jobs/{job_id}", params={"wait": timeout}).json()
    assert job["status"] in FINISHED, job
    return job


def read_events(
    c: httpx.Client, job_id: str, last_event_id: str | None = None, timeout: float = 30
) -> list[tuple[str, str, dict[str, Any]]]:
    """Read a job's SSE stream to its end: (id, event, data). Fails if the stream is still
    open after `timeout` seconds (checked at every line, keepalive comments included)."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    out: list[tuple[str, str, dict[str, Any]]] = []
    deadline = time.monotonic() + timeout
    with c.stream("GET", f"/jobs/{job_id}/events", headers=headers, timeout=timeout) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        for line in r.iter_lines():
            assert time.monotonic() < deadline, f"the event stream of {job_id} is open after {timeout}s"
            if line.startswith(":"):
                continue
            if line == "":
                if "data" in fields:
                    out.append((fields["id"], fields["event"], orjson.loads(fields["data"])))
                fields = {}
                continue
            key, _, value = line.partition(": ")
            fields[key] = value
    return out


# ----------------------------------------------------------------- webhooks
def webhook_attempts(c: httpx.Client, job_id: str, n: int, timeout: float = 20) -> list[dict[str, Any]]:
    """Wait until GET /jobs/{id}/webhooks lists at least `n` attempts; return them."""

    def listed() -> list[dict[str, Any]] | None:
        r = c.get(f"/jobs/{job_id}/webhooks")
        assert r.status_code == 200, r.text
        got: list[dict[str, Any]] = r.json()["deliveries"]
        return got if len(got) >= n else None

    found: list[dict[str, Any]] = wait_until(listed, timeout, message=f"{n} webhook attempts of {job_id}")
    return found


def delivery_state(db_path: Path, job_id: str) -> tuple[str, int]:
    """(state, attempts) of the job's delivery row, read from the server's database file."""
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as conn:
        row = conn.execute(
            "SELECT state, attempts FROM webhook_deliveries WHERE job_id = ?", (job_id,)
        ).fetchone()
    assert row is not None
    return str(row[0]), int(row[1])
