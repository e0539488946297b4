"""Start the real server (`python -m jobserver --config ...`) as a subprocess on 127.0.0.1.

Used by the end-to-end tests, the way a user runs it: a config file in a temp
dir, a fresh SQLite file, a free port; readiness is a bounded wait on /healthz.
The process is forked from one that has already imported jobserver (tests/forkserver.py),
unless it runs under a command of its own (`prefix`).
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
from pathlib import Path

import httpx

from bench.nodes import spawn_process
from tests import forkserver
from tests.helpers import REPO, Config, free_port, merged_config, wait_until, write_config

STARTED: list[Server] = []  # every server a test started; the conftest stops them after each test


class Server:
    """A running `python -m jobserver` process."""

    def __init__(
        self, tmp_path: Path, config: Config, env: dict[str, str] | None, prefix: list[str] | None = None
    ) -> None:
        self.tmp_path = tmp_path
        self.prefix = prefix or []  # a command the server runs under (e.g. setpriv, to drop privileges)
        self.config = config
        self.port = int(config["server"]["port"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = tmp_path / "config.toml"
        write_config(self.config_path, config)
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **(env or {})}
        self.log_path = tmp_path / "server.log"
        self.proc: subprocess.Popen[bytes] | forkserver.ForkedProcess | None = None
        self._clients: list[httpx.Client] = []

    def start(self, wait: bool = True) -> Server:
        argv = ["--config", str(self.config_path)]
        if self.prefix:
            self.proc = spawn_process(argv, self.tmp_path, self.env, self.log_path, self.prefix)
        else:
            self.proc = forkserver.spawn(argv, self.tmp_path, self.env, self.log_path)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            # http.client, not httpx: a new httpx client loads the CA bundle, at every poll
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
            try:
                conn.request("GET", "/healthz")
                return conn.getresponse().status == 200
            except OSError:
                return False
            finally:
                conn.close()

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
    config: Config | None = None,
    env: dict[str, str] | None = None,
    wait: bool = True,
    prefix: list[str] | None = None,
) -> Server:
    """Start the server with the default test config updated section by section."""
    srv = Server(tmp_path, merged_config(tmp_path, free_port(), config), env, prefix)
    STARTED.append(srv)
    return srv.start(wait=wait)


def all_ready(*servers: Server) -> None:
    """Wait for servers started with `wait=False`: started together, their starts (mostly
    imports) overlap rather than follow each other."""
    for srv in servers:
        srv.wait_ready()
