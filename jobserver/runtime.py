"""Runtime: builds the parts, starts and stops them in order, handles signals.

Start: lock the SQLite file (one server per file), open the database, create
the schema, start the writer, rescue what a previous process left running,
start the async-task loop, the worker threads and the maintenance thread, then
serve HTTP. Stop (SIGTERM/SIGINT): refuse new jobs (503), let running jobs
finish within the grace period, put the rest back as pending, flush, exit 0. A
second signal exits at once; nothing accepted is lost, the next start rescues it.
"""

from __future__ import annotations

import asyncio
import fcntl
import gc
import logging
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import uvicorn

from jobserver.core.clock import Clock, SystemClock
from jobserver.core.config import Settings
from jobserver.core.errors import DatabaseInUseError
from jobserver.core.hub import Hub
from jobserver.core.records import Claim, JobRecord
from jobserver.core.tasks import Registry
from jobserver.http.app import Services, create_app
from jobserver.http.webhook_routes import webhook_routes
from jobserver.ops.metrics import Metrics
from jobserver.ops.retention import Pruner
from jobserver.runner.engine import Engine
from jobserver.runner.queue import WorkerPool
from jobserver.runner.wakeup import Wakeup
from jobserver.storage.models import create_schema, open_database
from jobserver.storage.store import JobStore
from jobserver.storage.writer import Writer
from jobserver.webhooks.sender import WebhookSender, load_secret

log = logging.getLogger(__name__)
SWITCH_INTERVAL_S = 0.001


def lock_sqlite_file(path: Path) -> int:
    """Take an OS lock next to the SQLite file; it dies with the process."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(str(path) + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DatabaseInUseError(str(path)) from None
    return fd


def watch_engine(engine: Engine, metrics: Metrics) -> None:
    """Point the engine's hooks at the metrics (keeping any `on_finished` already set)."""
    before = engine.on_finished

    def on_finished(rec: JobRecord, claim: Claim) -> None:
        before(rec, claim)
        metrics.attempt_ended(rec, claim)

    engine.on_finished = on_finished
    engine.on_submitted = metrics.job_submitted
    engine.on_claimed = metrics.attempt_started
    engine.on_cancelled = metrics.job_finished
    engine.on_rescued = metrics.jobs_rescued


class AsyncLoop:
    """The event loop that runs async tasks, on its own thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="jobserver-async", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)


class Maintenance:
    """One thread for the periodic passes; `run_once` is one tick (tests call it)."""

    TICK_S = 0.05

    def __init__(self, engine: Engine, settings: Settings, extra: list[tuple[float, Any]]) -> None:
        self.engine = engine
        lease = settings.workers.lease_seconds
        self.passes: list[tuple[float, Any]] = [
            (0.1, engine.watchdog_once),
            (settings.events.progress_flush_interval, self._flush),
            (max(0.5, lease / 3), engine.heartbeat_once),
            (max(1.0, lease / 2), engine.rescue_once),
            *extra,
        ]
        self._next = [0.0] * len(self.passes)
        self.stop_flag = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="jobserver-maintenance", daemon=True)

    def _flush(self) -> None:
        fut = self.engine.reporter.flush_once(self.engine.clock.now())
        if fut is not None:
            fut.result()

    def run_once(self, now: float) -> None:
        for i, (interval, fn) in enumerate(self.passes):
            if now >= self._next[i]:
                self._next[i] = now + interval
                try:
                    fn()
                except Exception:
                    log.exception(
                        "maintenance pass %s failed",
                        getattr(fn, "__name__", fn),
                        extra={"action": "maintenance_failed"},
                    )

    def _loop(self) -> None:
        while not self.stop_flag.wait(self.TICK_S):
            self.run_once(time.monotonic())

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.stop_flag.set()
        self._thread.join(timeout=10)


class _Server(uvicorn.Server):
    """uvicorn, with its signal handling replaced by ours (set a flag, return)."""

    def __init__(self, config: uvicorn.Config, runtime: Runtime) -> None:
        super().__init__(config)
        self.runtime = runtime

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.runtime.signal_received(sig)


class Runtime:
    """Owns every long-lived part of one server process."""

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._lock_fd: int | None = None
        self.drain_requested = threading.Event()
        self._signals = 0
        self.server: _Server | None = None
        self.extra_routes: list[Any] = []
        self.extra_passes: list[tuple[float, Any]] = []

    def open(self) -> None:
        """Lock, open the database, build and start every part except HTTP."""
        # The API, the writer and the workers share one GIL; Python's default 5 ms switch
        # interval lets a busy thread keep a woken worker or the event loop waiting that long.
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        s = self.settings
        path = s.sqlite_path()
        if path is not None:
            self._lock_fd = lock_sqlite_file(path)
        self.db = open_database(s.database.url, path, s.database.synchronous, s.database.busy_timeout)
        create_schema(self.db)
        self.registry = Registry.from_modules(s.tasks.modules)
        self.writer = Writer(self.db, s.is_postgres)
        self.writer.start()
        self.store = JobStore(self.db, self.writer, s.is_postgres)
        secret = load_secret(s.webhooks, self.db, self.writer, s.is_postgres)
        self.webhook_sender = WebhookSender(
            s.webhooks, self.db, self.writer, self.clock, secret, s.is_postgres
        )
        self.store.on_outbox = self.webhook_sender.wake
        self.webhook_sender.start()
        self.pruner = Pruner(s.retention, self.writer, self.clock)
        self.extra_passes.append((s.retention.interval, self.pruner.start_pass))
        self.extra_routes.extend(webhook_routes(self.store, self.webhook_sender))
        self.hub = Hub()
        self.wakeup = Wakeup()
        self.engine = Engine(
            s, self.store, self.writer, self.registry, self.clock, self.hub, self.wakeup, self.owner
        )
        self.metrics = Metrics(self.store.count_in, self.clock.now)
        watch_engine(self.engine, self.metrics)
        self.webhook_sender.on_attempt = self.metrics.webhook_delivery
        self.engine.rescue_once(at_start=True)
        self.async_loop = AsyncLoop()
        self.async_loop.start()
        self.engine.loop = self.async_loop.loop
        self.pool = WorkerPool(self.engine, self.wakeup, s.workers.threads, s.workers.poll_interval)
        self.pool.start()
        self.maintenance = Maintenance(self.engine, s, self.extra_passes)
        self.maintenance.start()
        gc.freeze()  # startup objects (modules, registry, schemas) need no more collection passes
        self.app = create_app(
            Services(
                s,
                self.engine,
                self.store,
                self.registry,
                self.hub,
                workers_alive=lambda: self.pool.alive() > 0,
                extra_routes=self.extra_routes,
                metrics=self.metrics,
            )
        )

    def signal_received(self, sig: int) -> None:
        """Signal handler: first signal drains, a second one exits at once."""
        self._signals += 1
        if self._signals == 1:
            self.drain_requested.set()
        else:
            os._exit(1)

    def serve(self) -> None:
        """Serve HTTP until a signal, then drain and close. Blocks."""
        s = self.settings.server
        config = uvicorn.Config(
            self.app,
            host=s.host,
            port=s.port,
            loop="uvloop",
            http="httptools",
            lifespan="off",
            access_log=False,
            log_config=None,
            timeout_graceful_shutdown=2,
            backlog=2048,
        )
        self.server = _Server(config, self)
        drainer = threading.Thread(target=self._drain_on_signal, name="jobserver-drain", daemon=True)
        drainer.start()
        self.server.run()
        self.close()

    def _drain_on_signal(self) -> None:
        self.drain_requested.wait()
        log.info(
            "draining: no new jobs; waiting up to %ss for running jobs",
            self.settings.workers.shutdown_grace_seconds,
            extra={"action": "drain"},
        )
        self.drain(self.settings.workers.shutdown_grace_seconds)
        if self.server is not None:
            self.server.should_exit = True

    def drain(self, grace_s: float) -> None:
        """Stop taking jobs, wait for running ones up to `grace_s`, put back the rest."""
        self.engine.draining = True
        self.pool.stop_flag.set()
        self.wakeup.stop()
        self.engine.release_ready()
        deadline = time.monotonic() + grace_s
        while self.engine.running_count() and time.monotonic() < deadline:
            time.sleep(0.02)
        if self.engine.running_count():
            self.engine.stop_all("shutdown")
            hard = time.monotonic() + 3
            while self.engine.running_count() and time.monotonic() < hard:
                time.sleep(0.02)

    def close(self) -> None:
        """Stop everything in reverse order."""
        if not self.engine.draining:
            self.drain(0)
        self.pool.stop(timeout_s=1)
        self.engine.release_ready()  # claims that raced the drain
        self.maintenance.stop()
        self.maintenance._flush()
        self.async_loop.stop()
        self.webhook_sender.stop()
        self.writer.stop()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        log.info("stopped", extra={"action": "stopped"})
