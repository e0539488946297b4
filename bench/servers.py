"""Child processes of a bench run: the servers under test and load generator runs.

Owns starting a server as a subprocess on 127.0.0.1, waiting until it answers,
reading its peak RSS (VmHWM), stopping it (SIGTERM, then SIGKILL after a
bound), and running `bench.loadgen` in a process of its own. Every wait here
is bounded. Imports nothing from jobserver.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


class BenchError(Exception):
    """A bench step could not run (a server did not start, a load run failed)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of child processes: this checkout first on the import path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class ServerProcess:
    """One server under test, run as `argv` in `cwd`, its output kept in `log_path`."""

    def __init__(self, name: str, argv: list[str], cwd: Path, log_path: Path, port: int) -> None:
        self.name, self.argv, self.cwd, self.log_path, self.port = name, argv, cwd, log_path, port
        self.proc: asyncio.subprocess.Process | None = None
        self.base_url = f"http://{HOST}:{port}"
        self.started_at = 0.0

    async def start(self) -> None:
        """Start the process (output goes to the log file)."""
        with open(self.log_path, "ab") as log:
            self.started_at = time.perf_counter()
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                cwd=self.cwd,
                env=child_env(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )

    async def wait_ready(self, path: str = "/healthz", timeout_s: float = 60.0) -> float:
        """Poll `path` until it answers 200; return seconds since start."""
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(base_url=self.base_url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.proc is None or self.proc.returncode is not None:
                    raise BenchError(f"{self.name} exited with {self.returncode()}:\n{self.log_tail()}")
                try:
                    if (await client.get(path)).status_code == 200:
                        return time.perf_counter() - self.started_at
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.02)
        raise BenchError(f"{self.name} did not answer {path} within {timeout_s:g} s:\n{self.log_tail()}")

    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    def peak_rss_mb(self) -> float | None:
        """Peak resident set size so far (VmHWM), in MiB; None when unreadable."""
        if self.proc is None:
            return None
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def cpu_s(self) -> float | None:
        """CPU seconds (user + system, all threads) the process has used so far; None when unreadable."""
        if self.proc is None:
            return None
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def stop(self, timeout_s: float = 40.0) -> int | None:
        """SIGTERM, wait up to `timeout_s`, then SIGKILL; return the exit code."""
        if self.proc is None or self.proc.returncode is not None:
            return self.returncode()
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout_s)
        except TimeoutError:
            self.proc.kill()
            await asyncio.wait_for(self.proc.wait(), 10)
        return self.proc.returncode

    def log_tail(self, lines: int = 30) -> str:
        """The last lines the process wrote."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


async def run_loadgen(spec: dict[str, Any], timeout_s: float | None = None) -> dict[str, Any]:
    """Run one load spec in a separate `python -m bench.loadgen` process."""
    spec = {"host": HOST, **spec}
    limit = timeout_s or float(spec.get("timeout_s", 120.0)) + 30.0
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.loadgen",
        cwd=REPO_ROOT,
        env=child_env(),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(orjson.dumps(spec)), limit)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise BenchError(f"load generator did not finish within {limit:g} s") from None
    if proc.returncode != 0:
        raise BenchError(
            f"load generator failed ({proc.returncode}):\n{err.decode(errors='replace')[-2000:]}"
        )
    result: dict[str, Any] = orjson.loads(out)
    return result
