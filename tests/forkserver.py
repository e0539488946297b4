"""Start `python -m jobserver` processes by forking one that has already imported jobserver.

A server process spends most of its start importing (about a second of CPU on a small VM),
and the suite starts over a hundred, besides many more runs of the CLI. A fork server per test
worker imports jobserver once; each start forks it, and the child runs `jobserver.cli.main`,
the function `python -m jobserver` runs, in its own working directory and environment, with
its output in files, and the working directory first on `sys.path` as `-m` puts it. The child
is a real process of its own: SIGKILL, SIGTERM and SIGINT reach it as they reach one started
from scratch, and its exit status is reported as Popen reports it (a signal's number, negated).

Each start forks twice, since only a parent can wait for a child: the fork server's child
forks the process, waits for it and writes its exit status to a pipe whose other end the
test holds (sent with the request over a Unix socket), so a test waits on that pipe.
`TESTS_FORK_SERVERS=0` starts every server with `python -m jobserver` instead.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path
from typing import Any

from bench.nodes import spawn_process

REPO = Path(__file__).resolve().parent.parent
ENABLED = os.environ.get("TESTS_FORK_SERVERS", "1") != "0"
# what `python -m jobserver` imports before it serves
PRELOADED = (
    "jobserver.cli",
    "jobserver.core.config",
    "jobserver.core.schedules",
    "jobserver.logs",
    "jobserver.runtime",
    "jobserver.examples",
    "jobserver.client.commands",
    "uvicorn.protocols.http.httptools_impl",
    "uvicorn.lifespan.on",
    "uvicorn.loops.auto",
)


class ForkedProcess:
    """The part of `subprocess.Popen` the tests use, for a server the fork server started."""

    def __init__(self, pid: int, status_fd: int) -> None:
        self.pid = pid
        self._status_fd = status_fd  # its waiter writes the exit status here, then closes it
        self.returncode: int | None = None

    def _status(self, timeout: float | None) -> int | None:
        """The exit status once it is written, waiting at most `timeout` (None: as long as it takes)."""
        if self.returncode is None and select.select([self._status_fd], [], [], timeout)[0]:
            written = os.read(self._status_fd, 32)
            os.close(self._status_fd)
            if not written:
                raise RuntimeError(f"the waiter of pid {self.pid} ended without its exit status")
            self.returncode = int(written)
        return self.returncode

    def poll(self) -> int | None:
        return self._status(0)

    def wait(self, timeout: float | None = None) -> int:
        code = self._status(timeout)
        if code is None:
            raise subprocess.TimeoutExpired(f"jobserver (pid {self.pid})", timeout or 0.0)
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass  # it exited just now; its status follows

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


class _ForkServer:
    """The fork server of this test process, started at its first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # one message per request and per answer; a request carries the status pipe's write end
        self._channel, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
        with theirs:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    f"from tests.forkserver import serve_forks; serve_forks({theirs.fileno()})",
                ],
                pass_fds=[theirs.fileno()],
                cwd=REPO,
                env=env,
            )

    def start(self, argv: list[str], cwd: Path, env: dict[str, str], out: Path, err: Path) -> ForkedProcess:
        request = {"argv": argv, "cwd": str(cwd), "env": env, "out": str(out), "err": str(err)}
        status_read, status_write = os.pipe()
        try:
            with self._lock:
                socket.send_fds(self._channel, [json.dumps(request).encode()], [status_write])
                answer = self._channel.recv(32)
        finally:
            os.close(status_write)  # the waiter holds the only write end now
        if not answer:
            os.close(status_read)
            raise RuntimeError(f"the fork server exited with {self._proc.wait()}")
        return ForkedProcess(int(answer), status_read)

    def close(self) -> None:
        self._channel.close()  # it exits at the end of its requests
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


_server: _ForkServer | None = None
_server_lock = threading.Lock()


def start(
    argv: list[str], cwd: Path, env: dict[str, str], out: Path, err: Path | None = None
) -> ForkedProcess:
    """Start `python -m jobserver <argv>` from the fork server; its standard output is appended
    to `out`, its standard error to `err` (the same file when None), and its input is empty."""
    global _server
    with _server_lock:
        if _server is None or _server._proc.poll() is not None:
            _server = _ForkServer()
            atexit.register(_server.close)
        server = _server
    return server.start(argv, cwd, env, out, err or out)


def spawn(
    argv: list[str], cwd: Path, env: dict[str, str], log_path: Path
) -> ForkedProcess | subprocess.Popen[bytes]:
    """`python -m jobserver ARGV` with its output appended to `log_path`: forked from the fork
    server, or (TESTS_FORK_SERVERS=0) a new interpreter."""
    return start(argv, cwd, env, log_path) if ENABLED else spawn_process(argv, cwd, env, log_path)


def run(argv: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    """`subprocess.run([python, "-m", "jobserver", *argv], capture_output=True, text=True)`,
    from the fork server."""
    with tempfile.TemporaryDirectory(prefix="jobserver-run-") as tmp:
        out, err = Path(tmp) / "out", Path(tmp) / "err"
        proc = start(argv, Path.cwd(), env, out, err)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            raise
        return subprocess.CompletedProcess(["jobserver", *argv], code, out.read_text(), err.read_text())


# ---------------------------------------------------------------- in the fork server
def serve_forks(channel_fd: int) -> None:
    """The fork server's loop: a JSON request (with a status pipe) in, the process's pid out."""
    import importlib

    for name in PRELOADED:
        importlib.import_module(name)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the waiting children are reaped by the kernel
    channel = socket.socket(fileno=channel_fd)
    while True:
        message, fds, _, _ = socket.recv_fds(channel, 1 << 20, 1)
        if not message:
            return  # the test process closed its end
        request, status_fd = json.loads(message), fds[0]
        read_end, write_end = os.pipe()
        if os.fork() == 0:
            channel.close()
            os.close(read_end)
            _wait_for_process(request, write_end, status_fd)  # never returns
        os.close(write_end)
        os.close(status_fd)
        with os.fdopen(read_end, "rb") as answer:
            channel.send(answer.read())


def _wait_for_process(request: dict[str, Any], answer_fd: int, status_fd: int) -> None:
    """The fork server's child: fork the process, say its pid, wait for it, write its status."""
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # so that waitpid sees the process's end
        pid = os.fork()
        if pid == 0:
            os.close(answer_fd)
            os.close(status_fd)
            _run_main(request)  # never returns
        os.write(answer_fd, str(pid).encode())
        os.close(answer_fd)
        _, status = os.waitpid(pid, 0)
        os.write(status_fd, str(os.waitstatus_to_exitcode(status)).encode())
    finally:
        os._exit(0)


def _run_main(request: dict[str, Any]) -> None:
    """What `python -m jobserver` does once it has imported jobserver."""
    code = 1
    try:
        os.chdir(request["cwd"])
        for fd, path in ((1, request["out"]), (2, request["err"])):
            file_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(file_fd, fd)
            os.close(file_fd)
        null_fd = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null_fd, 0)
        os.close(null_fd)
        os.environ.clear()
        os.environ.update(request["env"])
        extra = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
        sys.path[:1] = [os.getcwd(), *(p for p in extra if p not in sys.path)]
        sys.argv = [str(REPO / "jobserver" / "__main__.py"), *request["argv"]]
        from jobserver.cli import main

        code = main(request["argv"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        try:  # what the interpreter does at its end: wait for threads, run exit functions
            threading._shutdown()  # type: ignore[attr-defined]
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
