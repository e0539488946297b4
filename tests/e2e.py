"""Start the real server (`python -m jobserver --config ...`) as a subprocess on 127.0.0.1.

Used by the end-to-end tests, the way a user runs it: a config file in a temp
dir, a fresh SQLite file, a free port; readiness is a bounded wait on /healthz.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
STARTED: list[Server] = []  # every server a test started; the conftest stops them after each test


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(value)


def write_config(path: Path, config: dict[str, dict[str, Any]]) -> None:
    lines = []
    for section, values in config.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")


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


def default_config(tmp_path: Path, port: int) -> dict[str, dict[str, Any]]:
    return {
        "server": {"host": "127.0.0.1", "port": port, "log_level": "info"},
        "database": {"url": f"sqlite:///{tmp_path / 'jobs.db'}"},
        "workers": {"threads": 4, "lease_seconds": 5, "shutdown_grace_seconds": 5},
        "tasks": {"modules": ["jobserver.examples", "tests.e2e_tasks"]},
        "webhooks": {
            "allow_hosts": ["127.0.0.1", "localhost"],
            "retry_schedule": ["200ms", "400ms", "800ms"],
        },
    }


class Server:
    """A running `python -m jobserver` process."""

    def __init__(self, tmp_path: Path, config: dict[str, dict[str, Any]], env: dict[str, str] | None) -> None:
        self.tmp_path = tmp_path
        self.config = config
        self.port = int(config["server"]["port"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = tmp_path / "config.toml"
        write_config(self.config_path, config)
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **(env or {})}
        self.log_path = tmp_path / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._clients: list[httpx.Client] = []

    def start(self, wait: bool = True) -> Server:
        log = open(self.log_path, "ab")  # noqa: SIM115 (the child process writes to it until it stops)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jobserver", "--config", str(self.config_path)],
            cwd=self.tmp_path,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout, 0.05, "the server to answer /healthz")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self, api_key: str | None = None, timeout: float = 30.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        c = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        self._clients.append(c)
        return c

    def kill(self) -> None:
        """SIGKILL, the way a crash ends it."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def restart(self) -> Server:
        """Start again on the same config and database (after kill or exit)."""
        return self.start()

    def stop(self) -> None:
        for c in self._clients:
            c.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)


def start_server(
    tmp_path: Path,
    config: dict[str, dict[str, Any]] | None = None,
    env: dict[str, str] | None = None,
    wait: bool = True,
) -> Server:
    """Start the server with the default test config updated section by section."""
    merged = default_config(tmp_path, free_port())
    for section, values in (config or {}).items():
        merged.setdefault(section, {}).update(values)
    srv = Server(tmp_path, merged, env)
    STARTED.append(srv)
    return srv.start(wait=wait)


def has_line(path: Path) -> bool:
    """A task's marker file holds at least one whole line (created is not enough: a kill can
    land between the file's creation and its first write)."""
    try:
        return path.read_text().endswith("\n")
    except FileNotFoundError:
        return False
