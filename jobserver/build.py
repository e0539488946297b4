"""build(settings, clock): every part of one server, wired once.

Each part gets its collaborators at construction; nothing is patched on
afterwards. Building opens the database, creates the schema and starts the
writer (storage is needed to build the rest), but starts no worker, claims
nothing and serves nothing: the runtime starts the parts in order, after the
listening socket is bound. Tests build the same parts in-process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import peewee as pw
from starlette.applications import Starlette

from jobserver.core.clock import Clock
from jobserver.core.config import Settings
from jobserver.core.hub import Hub
from jobserver.core.limits import declared_now
from jobserver.core.observers import JobObserver
from jobserver.core.records import JobRecord
from jobserver.core.schedules import Schedule, check_configured
from jobserver.core.tasks import Registry
from jobserver.core.tracing import NO_TRACING, Tracing, tracing_wanted
from jobserver.http.app import READ_THREADS, Services, create_app
from jobserver.http.ops_routes import OpsServices, ops_routes
from jobserver.http.webhook_routes import webhook_routes
from jobserver.ops.maintenance import Maintenance
from jobserver.ops.metrics import Metrics
from jobserver.ops.rescuer import Rescuer
from jobserver.ops.retention import Pruner
from jobserver.ops.scheduler import Scheduler
from jobserver.ops.stats import COMPACT_INTERVAL_S, Stats
from jobserver.ops.summary import INTERVAL_S, Summary
from jobserver.runner.bulk import BulkActions
from jobserver.runner.commands import JobCommands
from jobserver.runner.dispatcher import Dispatcher
from jobserver.runner.executor import Executor
from jobserver.runner.notices import Notices
from jobserver.runner.pausing import TaskControl
from jobserver.runner.pending import PendingReasons
from jobserver.runner.queue import WorkerPool
from jobserver.runner.reporter import Reporter
from jobserver.runner.slots import Slots
from jobserver.runner.submission import JobFactory
from jobserver.runner.wakeup import Wakeup
from jobserver.storage.counters import Counters, install_counters
from jobserver.storage.limits import LimitStore
from jobserver.storage.listener import Listener
from jobserver.storage.models import (
    Checkpoints,
    SqliteFile,
    create_schema,
    open_database,
    read_rows,
    wait_for_database,
)
from jobserver.storage.pauses import TaskPauses
from jobserver.storage.readers import ReadPool
from jobserver.storage.schedules import ScheduleStore
from jobserver.storage.store import JobStore
from jobserver.storage.writer import Writer
from jobserver.webhooks.netguard import WebhookGuard
from jobserver.webhooks.outbox import Outbox
from jobserver.webhooks.sender import WebhookSender, load_secret

log = logging.getLogger(__name__)
SCHEDULER_INTERVAL_S = 1.0  # how often due schedule ticks are looked for
CLOCK_SKEW_WARN_S = 2.0  # a node's clock this far from PostgreSQL's is logged at start


def check_clock(db: pw.Database, clock: Clock) -> float:
    """Log a WARNING when this machine's clock is far from the PostgreSQL server's; the offset.

    Nodes stamp leases, rate-limit charges and schedule ticks with their own clocks and compare
    them with the stamps of other nodes: a node whose clock runs ahead by most of a lease
    rescues jobs that still run elsewhere, and one off by seconds lets a rate window through
    early. The database's clock is the one every node can compare itself with."""
    with db.connection_context():
        rows = read_rows(db, True, "SELECT EXTRACT(EPOCH FROM clock_timestamp())")
    offset = clock.now() - float(rows[0][0])
    if abs(offset) > CLOCK_SKEW_WARN_S:
        log.warning(
            "this machine's clock is %.1f s %s the PostgreSQL server's: nodes compare leases, rate "
            "windows and schedule ticks by their own clocks, so keep every node's clock in sync (NTP)",
            abs(offset), "ahead of" if offset > 0 else "behind",
            extra={"action": "clock_skew"},
        )  # fmt: skip
    return offset


@dataclass(frozen=True)
class Parts:
    """Every long-lived part of one server process."""

    settings: Settings
    clock: Clock
    owner: str
    db: pw.Database
    writer: Writer
    store: JobStore
    limits: LimitStore
    registry: Registry
    hub: Hub
    metrics: Metrics
    summary: Summary
    reporter: Reporter
    slots: Slots
    wakeup: Wakeup
    tasks_loop: asyncio.AbstractEventLoop
    executor: Executor
    dispatcher: Dispatcher
    commands: JobCommands
    rescuer: Rescuer
    pool: WorkerPool
    webhook_sender: WebhookSender
    pruner: Pruner
    maintenance: Maintenance
    readers: ReadPool
    app: Starlette
    task_pauses: TaskPauses
    scheduler: Scheduler
    configured_schedules: list[Schedule]  # config.toml's, checked against the tasks
    stats: Stats
    bulk: BulkActions
    tracing: Tracing
    listener: Listener | None  # PostgreSQL with `database.notify`: the other nodes' commits


def load_tracing(environ: Mapping[str, str]) -> Tracing:
    """OpenTelemetry when the OTEL_* variables ask for traces and the `otel` extra is installed;
    otherwise the tracer that does nothing, and OpenTelemetry is never imported."""
    if not tracing_wanted(environ):
        return NO_TRACING
    try:
        from jobserver.ops.tracing import OtelTracing
    except ImportError as exc:
        log.warning(
            "OTEL_* variables ask for traces, but OpenTelemetry is not installed (%s): "
            "install jobserver[otel]; tracing stays off",
            exc,
            extra={"action": "tracing_off"},
        )
        return NO_TRACING
    return OtelTracing.from_env(environ)


def build(
    settings: Settings,
    clock: Clock,
    registry: Registry | None = None,
    tracing: Tracing | None = None,
    stop: threading.Event | None = None,
) -> Parts:
    """Assemble every part (the writer runs; nothing else has started). Without `tracing`, the
    process environment's OTEL_* variables decide. `stop` set (a signal) ends a wait for
    PostgreSQL with StartStoppedError."""
    s = settings
    tracing = tracing if tracing is not None else load_tracing(os.environ)
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    registry = registry or Registry.from_modules(s.tasks.modules)
    configured_schedules = check_configured(
        s.schedules, registry, s.server.max_args_bytes
    )  # a bad one stops the start here
    db = open_database(s.database.url, s.sqlite_path(), s.database.synchronous, s.database.busy_timeout)
    if s.is_postgres:
        wait_for_database(db, s.database.startup_wait, stop or threading.Event())  # None: nothing stops it
    create_schema(db)
    if s.is_postgres:
        check_clock(db, clock)
    install_counters(db, s.is_postgres, clock.now())
    node_tag = uuid.uuid4().hex[:12]
    writer = Writer(db, s.is_postgres, node_tag, s.database.notify)
    writer.start()
    outbox_wake = threading.Event()
    hub = Hub()
    wakeup = Wakeup()
    task_pauses = TaskPauses(db, writer, s.is_postgres)
    task_pauses.load()
    slots = Slots(
        registry.all(), s.workers.threads, s.workers.async_concurrency, threading.Event(), task_pauses.paused
    )

    def job_due() -> None:
        """Jobs held back by a limit are due again: wake the workers (thread and async)."""
        wakeup.notify()
        slots.async_work.set()

    def woken(rec: JobRecord) -> None:
        """A parked job is pending again: tell its watchers, and wake a worker to resume it."""
        hub.publish(rec.id)
        wakeup.notify()
        if slots.is_async(rec.task):
            slots.async_work.set()

    limits = LimitStore(
        db,
        writer,
        s.is_postgres,
        s.workers.poll_interval,
        job_due,
        task_pauses.paused,
        declared_now(limit for taskdef in registry.all() for limit in taskdef.limits),
        frozenset(taskdef.name for taskdef in registry.all()),
    )
    store = JobStore(db, writer, s.is_postgres, limits, Outbox(outbox_wake).record, woken)
    metrics = Metrics(store.count_in, clock.now)
    summary = Summary(clock.monotonic)
    observers: list[JobObserver] = [metrics, summary]
    # one guard for the submit's check and each delivery's: never the server's own API
    guard = WebhookGuard(s.webhooks.allow_private, s.webhooks.allow_hosts, s.server.host, s.server.port)
    sender = WebhookSender(
        s.webhooks,
        db,
        writer,
        clock,
        load_secret(s.webhooks, db, writer, s.is_postgres),
        s.is_postgres,
        guard,
        wake=outbox_wake,
        on_attempt=metrics.webhook_delivery,
        tracing=tracing,
    )
    reporter = Reporter(writer, hub.publish, s.events.max_log_lines)
    tasks_loop = asyncio.new_event_loop()
    # Async tasks' sync steps and reads run on the loop's default executor, asyncio's own sized
    # by the CPU count (6 threads on 2 cores): one per async slot, so that a few slow steps never
    # hold up every other async job's steps.
    tasks_loop.set_default_executor(
        ThreadPoolExecutor(s.workers.async_concurrency, thread_name_prefix="jobserver-step")
    )
    factory = JobFactory(s, registry)
    executor = Executor(
        store,
        writer,
        registry,
        clock,
        hub,
        slots,
        wakeup,
        reporter,
        observers,
        tasks_loop,
        factory,
        tracing=tracing,
    )
    lease_s = s.workers.lease_seconds
    dispatcher = Dispatcher(
        store,
        slots,
        executor,
        clock,
        wakeup,
        observers,
        owner,
        lease_s,
        s.workers.poll_interval,
    )
    readers = ReadPool(READ_THREADS, "jobserver-read")
    commands = JobCommands(
        s, store, registry, clock, hub, wakeup, dispatcher, executor, observers, factory, readers, guard
    )
    rescuer = Rescuer(store, registry, clock, hub, wakeup, observers, owner, executor.running_ids)
    pool = WorkerPool(dispatcher, executor, s.workers.threads)
    pruner = Pruner(s.retention, writer, limits, clock)
    scheduler = Scheduler(
        ScheduleStore(db, writer, store, s.is_postgres),
        registry,
        clock,
        observers,
        dispatcher.job_added,
        s.server.max_args_bytes,
    )
    stats = Stats(Counters(db, s.is_postgres), writer, clock)
    bulk = BulkActions(store, clock, hub, wakeup, dispatcher, commands)

    def flush_progress() -> None:
        future = reporter.flush_once(clock.now())
        if future is not None:
            future.result()

    def watchdog() -> None:
        pool.replace(executor.watchdog_once())

    def heartbeat() -> None:
        executor.heartbeat_once(owner, lease_s)

    def unpark() -> None:
        due = limits.next_wake_at()
        if due is not None and due <= clock.now():
            limits.unpark_due(clock.now()).result()

    def wake_due() -> None:  # claims wake due sleepers too; this covers a server whose workers are all busy
        store.wake_due(clock.now()).result()

    checkpoint_pass = (
        [(Checkpoints.INTERVAL_S, Checkpoints(db, lambda: writer.batches).run_once)]
        if isinstance(db, SqliteFile)
        else []
    )
    maintenance = Maintenance(
        clock,
        [
            (0.1, watchdog),
            (0.1, executor.record_retries_once),
            (s.events.progress_flush_interval, flush_progress),
            (max(0.5, lease_s / 3), heartbeat),
            (0.1, unpark),
            # a lease expires at most a lease after the last heartbeat: a dead node's jobs and
            # limit slots come back within a lease and a tenth (one index range read per pass)
            (max(0.1, lease_s / 10), rescuer.rescue_once),
            (s.workers.poll_interval, wake_due),
            (s.retention.interval, pruner.start_pass),
            (INTERVAL_S, summary.log_once),
            (SCHEDULER_INTERVAL_S, scheduler.tick_once),
            (COMPACT_INTERVAL_S, lambda: stats.compact_once().result()),
            *checkpoint_pass,
        ],
    )
    app = create_app(
        Services(
            s,
            commands,
            store,
            limits,
            registry,
            hub,
            workers_alive=lambda: pool.alive() > 0,
            extra_routes=[
                *webhook_routes(store, sender, readers),
                *ops_routes(
                    OpsServices(
                        scheduler,
                        scheduler.store,
                        TaskControl(task_pauses, registry, clock, wakeup, slots),
                        bulk,
                        stats,
                        readers,
                        s.server.max_body_bytes,
                        s.server.max_json_depth,
                    )
                ),
            ],
            readers=readers,
            reasons=PendingReasons(
                registry, slots.capacity_for, clock.now, s.is_postgres, lambda: dispatcher.draining
            ),
            metrics=metrics,
            now=clock.now,
            tracing=tracing,
            paused_tasks=task_pauses.current,
            pending_by_task=stats.pending_by_task,
        )
    )
    listener = None
    if s.is_postgres and s.database.notify:
        notices = Notices(dispatcher, executor, hub)
        listener = Listener(s.database.url, node_tag, notices.deliver, notices.resync)
    return Parts(
        s, clock, owner, db, writer, store, limits, registry, hub, metrics, summary, reporter, slots, wakeup,
        tasks_loop, executor, dispatcher, commands, rescuer, pool, sender, pruner, maintenance, readers, app,
        task_pauses, scheduler, configured_schedules, stats, bulk, tracing, listener,
    )  # fmt: skip
