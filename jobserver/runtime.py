"""Runtime: starts and stops the parts in order, and handles signals.

Start: bind the listening socket (a server that cannot serve never claims a
job), lock the SQLite file (one server per file) and check it (a damaged file
stops the start), build every part, rescue
what a previous process left running, start the tasks' event loop, the
webhook sender, the dispatcher, the worker threads and the maintenance thread,
then serve HTTP with bounded connections (the open-files limit raised first).
Stop (SIGTERM/SIGINT): refuse new jobs (503), let running
jobs finish within the grace period, then record each one the grace period
cut off (put back, or failed at once for an at-most-once task), flush, exit 0.
A second signal exits at once; nothing accepted is lost, the next start
rescues it.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import functools
import gc
import logging
import os
import resource
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, cast

import uvicorn

from jobserver.build import Parts, build
from jobserver.core.clock import Clock, SystemClock
from jobserver.core.config import Settings
from jobserver.core.errors import DatabaseInUseError, StorageError
from jobserver.core.records import JobRecord
from jobserver.core.tasks import Registry
from jobserver.core.tracing import Tracing
from jobserver.http.protocol import BoundedHttpToolsProtocol, CapWarnings, ConnectionLimits
from jobserver.runner.executor import STUCK_GRACE_S
from jobserver.storage.integrity import check_sqlite_file
from jobserver.storage.writer import WriteFuture, wait_all

log = logging.getLogger(__name__)
SWITCH_INTERVAL_S = 0.001
RECORD_TIMEOUT_S = 10.0  # how long the shutdown waits for its last writes to commit
MIN_SPARE_FILES = 64  # open files kept free of client connections (database, webhooks, task I/O)


def raise_open_files_limit() -> int:
    """Raise the soft limit on open files to the hard one, as servers commonly do; the new soft limit.

    A client connection is an open file: with the usual soft limit of 1,024, a few
    hundred slow clients would leave no file for the database or the next /healthz."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass  # keep the soft limit we have
    return soft


def connection_cap(max_connections: int, open_files: int) -> int:
    """`max_connections`, lowered when it would leave too few files for everything else."""
    if open_files == resource.RLIM_INFINITY:
        return max_connections
    spare = max(MIN_SPARE_FILES, open_files // 4)
    return max(1, min(max_connections, open_files - spare))


def lock_sqlite_file(path: Path) -> tuple[int, bool]:
    """Take an OS lock on the SQLite file itself (made empty if it is new: SQLite reads an empty
    file as a new database); it dies with the process. The lock is the file's, so a server
    started on a symlink or a hard link to it finds it too, and no stray file can be deleted
    to lift it. (flock and SQLite's own byte-range locks do not meet; the descriptor stays
    open for the life of the server, as closing any descriptor of the file would drop
    SQLite's locks on it.) Returns (descriptor, whether the file was made now).

    StorageError when the file cannot be opened (a read-only or missing directory, a
    directory in its place), DatabaseInUseError when another process holds the lock."""
    real = os.path.realpath(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        existed = os.path.exists(real)
        fd = os.open(real, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if existed and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise StorageError(f"the database file {path} is not writable: {reason}") from exc
        raise StorageError(f"cannot open the database file {path}: {reason}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DatabaseInUseError(str(path)) from None
    return fd, not existed


def bind_listener(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything else starts (OSError when it cannot be)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    """uvicorn, with its signal handling replaced by ours (set a flag, return)."""

    def __init__(self, config: uvicorn.Config, runtime: Runtime) -> None:
        super().__init__(config)
        self.runtime = runtime

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.runtime.signal_received(sig)


class Runtime:
    """Owns one server process's parts from start to stop."""

    def __init__(
        self,
        settings: Settings,
        clock: Clock | None = None,
        registry: Registry | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.settings = settings
        self.tracing = tracing  # None: the OTEL_* variables decide
        self.clock = clock or SystemClock()
        self.registry = registry  # None: built from tasks.modules
        self._lock_fd: int | None = None
        self.drain_requested = threading.Event()
        self._signals = 0
        self._drained = False
        self.server: _Server | None = None
        self._loop_thread: threading.Thread | None = None

    def open(self) -> Parts:
        """Lock the SQLite file, build every part and start them (serving HTTP is separate)."""
        path = self.settings.sqlite_path()
        if path is not None:
            self._lock_fd, made = lock_sqlite_file(path)
            try:
                if not made:  # a file made just now is a new database: nothing to check
                    check_sqlite_file(path, self.settings.database.startup_check)
            except StorageError:
                os.close(self._lock_fd)
                self._lock_fd = None
                raise
        try:
            self.parts = p = build(
                self.settings, self.clock, self.registry, self.tracing, self.drain_requested
            )
        except BaseException:
            self._unlock()
            raise
        try:
            return self._start(p)
        except BaseException:
            # a start that fails part way (the OS refusing a thread, say) stops what it started:
            # no worker claims a job for a process that is exiting, and the file is unlocked
            try:
                self._stop()
            except Exception as exc:  # the start's own error is the one to report
                log.debug("stopping after a failed start failed too", exc_info=exc)
            raise

    def _start(self, p: Parts) -> Parts:
        registered = ", ".join(t.name for t in p.registry.all())
        if registered:
            log.info("tasks registered: %s", registered, extra={"action": "start"})
        else:  # every submit would be refused: an empty JOBSERVER_TASKS_MODULES, say
            log.warning(
                "no tasks registered: every submit will be refused as an unknown task; set tasks.modules "
                "(JOBSERVER_TASKS_MODULES) to the modules that define your @task functions",
                extra={"action": "start"},
            )
        unknown = sorted(task for task in p.stats.pending_by_task() if task not in p.registry)
        if unknown:
            log.warning(
                "jobs of tasks this process does not know stay pending: %s", ", ".join(unknown),
                extra={"action": "unknown_tasks"},
            )  # fmt: skip
        p.rescuer.rescue_once(every_other_owner=not self.settings.is_postgres)
        p.scheduler.sync_configured(p.configured_schedules)
        self._loop_thread = threading.Thread(
            target=_serve_tasks, args=(p.tasks_loop,), name="jobserver-async", daemon=True
        )
        self._loop_thread.start()
        p.webhook_sender.start()
        p.dispatcher.start()
        if p.listener is not None:
            p.listener.start()
        p.pool.start()
        p.maintenance.start()
        return p

    @property
    def app(self) -> Any:
        """The ASGI app."""
        return self.parts.app

    def signal_received(self, sig: int) -> None:
        """Signal handler: first signal drains, a second one exits at once."""
        self._signals += 1
        if self._signals == 1:
            self.drain_requested.set()
        else:
            os._exit(1)

    def serve(self, sock: socket.socket) -> None:
        """Serve HTTP on the bound socket until a signal, then drain and close. Blocks.

        Tunes the process, which serving owns: the API, the writer and the workers share
        one GIL, and Python's default 5 ms switch interval lets a busy thread keep a woken
        worker or the event loop waiting that long; start-up objects (modules, registry,
        schemas) need no more collection passes; every client connection is an open file,
        so the open-files limit is raised and the connection cap kept under it."""
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        gc.freeze()
        s = self.settings.server
        open_files = raise_open_files_limit()
        cap = connection_cap(s.max_connections, open_files)
        if cap < s.max_connections:
            log.warning(
                "server.max_connections = %d lowered to %d: the process may open %d files and keeps some "
                "for the database and webhooks (raise the open-files limit, e.g. ulimit -n)",
                s.max_connections, cap, open_files,
                extra={"action": "connection_limit"},
            )  # fmt: skip
        self.server = self.http_server(cap)
        drainer = threading.Thread(target=self._drain_on_signal, name="jobserver-drain", daemon=True)
        drainer.start()
        self.server.run(sockets=[sock])
        self.close()

    def http_server(self, max_connections: int) -> _Server:
        """uvicorn on the app, with bounded connections and our signal handling (run it on a
        listening socket: `run(sockets=[sock])`)."""
        s = self.settings.server
        limits = ConnectionLimits(
            s.max_header_bytes, s.max_header_lines, s.header_timeout, max_connections, s.body_timeout
        )
        protocol = functools.partial(
            BoundedHttpToolsProtocol, limits=limits, cap_warnings=CapWarnings(max_connections)
        )
        config = uvicorn.Config(
            self.parts.app,
            host=s.host,
            port=s.port,
            loop="uvloop",
            http=cast(type[asyncio.Protocol], protocol),
            lifespan="off",
            access_log=False,
            # nothing here reads the client's address, so X-Forwarded-For is not parsed per request
            proxy_headers=False,
            log_config=None,
            timeout_graceful_shutdown=2,
        )
        return _Server(config, self)

    def _drain_on_signal(self) -> None:
        self.drain_requested.wait()
        grace = self.settings.workers.shutdown_grace_seconds
        log.info(
            "draining: no new jobs; waiting up to %ss for running jobs", grace, extra={"action": "drain"}
        )
        self.drain(grace)
        self.parts.hub.close()  # open waits and streams answer now, before the server stops
        if self.server is not None:
            self.server.should_exit = True

    def drain(self, grace_s: float) -> None:
        """Stop claiming, let running jobs finish within `grace_s`, then record each one
        the grace period cut off, and wait until all of it is committed."""
        if self._drained:
            return
        self._drained = True
        p = self.parts
        began = time.monotonic()
        records: list[WriteFuture[JobRecord]] = p.executor.release_unstarted(p.dispatcher.stop_claiming())
        unstarted = len(records)
        self._wait_running(grace_s)
        cut_off = p.executor.running_count()
        if cut_off:
            p.executor.stop_all("shutdown")
            self._wait_running(STUCK_GRACE_S)
        for attempt in p.executor.running():  # stuck in a blocking call: record it without it
            future = p.executor.abandon(attempt)
            if future is not None:
                records.append(future)
        wait_all(records, RECORD_TIMEOUT_S)
        if unstarted or cut_off:
            log.info(
                "drained in %.1fs: %d running jobs cut off by the grace period (each put back, or "
                "failed where its task's on_crash says so), %d claimed jobs put back before they started",
                time.monotonic() - began, cut_off, unstarted, extra={"action": "drained"},
            )  # fmt: skip

    def _wait_running(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.parts.executor.running_count() and time.monotonic() < deadline:
            time.sleep(0.02)

    def close(self) -> None:
        """Stop everything in reverse order."""
        self._stop()
        log.info("stopped", extra={"action": "stopped"})

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _stop(self) -> None:
        p = self.parts
        self.drain(0)
        p.pool.stop(timeout_s=1)
        p.maintenance.stop()
        if p.listener is not None:
            p.listener.stop()
        future = p.reporter.flush_once(self.clock.now())
        if future is not None:
            wait_all([future], RECORD_TIMEOUT_S)
        p.tasks_loop.call_soon_threadsafe(p.tasks_loop.stop)
        if self._loop_thread is not None:
            self._loop_thread.join(timeout=5)  # a task that blocks the loop leaves it behind
        p.webhook_sender.stop()
        p.readers.shutdown()
        p.writer.stop()
        p.summary.log_once()  # what ended since the last summary line, the drain's outcomes too
        p.tracing.close()
        self._unlock()


def _serve_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Run the async tasks' loop until it is stopped, then cancel what is left on it and close
    it, in this thread: the one that stops it may run a loop of its own (the server's)."""
    loop.run_forever()
    _cancel_tasks(loop)
    loop.close()


def _cancel_tasks(loop: asyncio.AbstractEventLoop, timeout_s: float = 1.0) -> None:
    """Cancel the async attempts still on the stopped loop (given up by the drain; their
    outcomes are no longer recorded) and give them a moment to unwind, as `asyncio.run` does
    at its end: a loop closed under pending tasks leaves them to be destroyed mid-await.

    The loop runs once more, after its stop. The tasks are cancelled before it does, so one
    made but not yet started never starts; an attempt handed to the loop and not yet a task
    becomes one in that first pass, ahead of `cancel_all`, which cancels it before its first
    step. None of their code runs, and none is dropped unawaited."""
    for task in asyncio.all_tasks(loop):
        task.cancel()

    async def cancel_all() -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)

    loop.run_until_complete(cancel_all())
