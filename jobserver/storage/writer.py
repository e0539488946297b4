"""Writer: one thread owns the write connection; concurrent writes share one commit.

Every change to the database goes through `Writer`. Callers hand it an *op*, a
function of a `Tx`; the writer thread takes every op that is waiting, runs them
in ONE transaction (an op that fails after writing sends the batch down a slow
path where each op gets its own transaction, so one failing op never undoes
the others), commits once, then answers each caller and runs the ops'
after-commit hooks (waking workers, notifying watchers). This is group commit:
under load, hundreds of submits share one fsync, and nothing ever waits on
SQLite's lock (there is only one writer), least of all the event loop.
"""

from __future__ import annotations

import _thread
import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import CancelledError, Future
from typing import Any, Generic, TypeVar, cast

import peewee as pw

from jobserver.core.errors import StorageError
from jobserver.storage.failures import WriteHealth, as_storage_error, needs_new_connection
from jobserver.storage.models import SqliteFile, once_more_if_dropped

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_BATCH = 512


class Tx:
    """The transaction an op runs in: execute SQL, register after-commit hooks."""

    __slots__ = ("_cur", "_hooks", "_notes", "_pg", "_undo", "changed", "wrote")

    def __init__(self, cur: Any, pg: bool) -> None:
        self._cur = cur
        self._pg = pg
        self._hooks: list[Callable[[], None]] = []
        self._undo: list[Callable[[], None]] = []
        self._notes: list[str] = []
        self.wrote = False
        self.changed = False  # some statement changed a row: the commit proves writes work

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement (`?` placeholders) and return the cursor."""
        if not self.wrote and not sql.startswith("SELECT"):
            self.wrote = True
        if self._pg:
            sql = _pg_sql(sql)
        self._cur.execute(sql, params)
        if self.wrote and not self.changed and self._cur.rowcount > 0:
            self.changed = True
        return self._cur

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        """Run a statement and return its first row."""
        row: tuple[Any, ...] | None = self.execute(sql, params).fetchone()
        return row

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a statement and return all rows."""
        rows: list[tuple[Any, ...]] = self.execute(sql, params).fetchall()
        return rows

    def after_commit(self, hook: Callable[[], None]) -> None:
        """Run `hook` on the writer thread once this transaction has committed."""
        self._hooks.append(hook)

    @property
    def pg(self) -> bool:
        """True on PostgreSQL (row locks and NOTIFY exist)."""
        return self._pg

    def notify(self, note: str) -> None:
        """Tell the other nodes (PostgreSQL NOTIFY, sent with this transaction's commit)."""
        if self._pg:
            self._notes.append(note)

    def on_rollback(self, hook: Callable[[], None]) -> None:
        """Run `hook` if this op's work is rolled back (to undo in-memory bookkeeping)."""
        self._undo.append(hook)


_PG_CACHE: dict[str, str] = {}


def _pg_sql(sql: str) -> str:
    """Translate `?` placeholders to psycopg's `%s` (our SQL has no literal `?` or `%`)."""
    out = _PG_CACHE.get(sql)
    if out is None:
        out = _PG_CACHE[sql] = sql.replace("?", "%s")
    return out


CHANNEL = "jobserver"
NOTIFY_MAX_BYTES = 7000  # PostgreSQL refuses payloads of 8,000 bytes or more


def notify_payloads(tag: str, notes: set[str]) -> list[str]:
    """The notes of one commit as few NOTIFY payloads: "<tag> <note>,<note>,..."."""
    payloads: list[str] = []
    chunk: list[str] = []
    size = 0
    for note in sorted(notes):
        if chunk and size + len(note) + 1 > NOTIFY_MAX_BYTES:
            payloads.append(f"{tag} {','.join(chunk)}")
            chunk, size = [], 0
        chunk.append(note)
        size += len(note) + 1
    if chunk:
        payloads.append(f"{tag} {','.join(chunk)}")
    return payloads


_PENDING, _RUNNING, _CANCELLED, _DONE = range(4)
_GUARD = threading.Lock()  # a state change and a waiter's registration never interleave


class WriteFuture(Future[T], Generic[T]):
    """The answer to one op: a `concurrent.futures.Future` (threads wait on `result()`,
    `asyncio.wrap_future` and callbacks work as usual) that an event loop can also `await`
    directly. It is the cost of every write, so it is lighter than the stock one: no Condition
    per future (a thread that waits blocks on a lock held until the answer lands), and the
    coroutines awaiting the answers of one commit are woken by one call into their loop
    (`Writer` gathers them), not one per future."""

    def __init__(self) -> None:  # the base class's Condition and lists are never made
        self._phase = _PENDING
        self._value: Any = None
        self._exc: BaseException | None = None
        self._latch: Any = None  # a lock held until the answer lands, made for the first waiting thread
        # made when first needed (most futures have one awaiting coroutine and no callback)
        self._loop_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] | None = None
        self._done_callbacks: list[Callable[[Future[T]], object]] | None = None

    def __repr__(self) -> str:
        return f"<WriteFuture state={('pending', 'running', 'cancelled', 'done')[self._phase]}>"

    def cancel(self) -> bool:
        with _GUARD:
            if self._phase == _CANCELLED:
                return True
            if self._phase != _PENDING:
                return False
            self._phase = _CANCELLED
            self._exc = CancelledError()
            waiters, self._loop_waiters = self._loop_waiters, None
        self._settle(waiters)
        return True

    def cancelled(self) -> bool:
        return self._phase == _CANCELLED

    def running(self) -> bool:
        return self._phase == _RUNNING

    def done(self) -> bool:
        return self._phase >= _CANCELLED

    def add_done_callback(self, fn: Callable[[Future[T]], object]) -> None:
        with _GUARD:
            if not self.done():
                if self._done_callbacks is None:
                    self._done_callbacks = []
                self._done_callbacks.append(fn)
                return
        try:
            fn(self)
        except Exception:
            log.exception("future callback failed", extra={"action": "hook_failed"})

    def _wait(self, timeout: float | None) -> None:
        if self.done():
            return
        with _GUARD:
            if not self.done() and self._latch is None:
                self._latch = _thread.allocate_lock()
                self._latch.acquire()
            latch = self._latch
        if latch is not None and not self.done():
            if not latch.acquire(True, -1 if timeout is None else max(timeout, 0)):
                raise TimeoutError()
            latch.release()

    def result(self, timeout: float | None = None) -> T:
        self._wait(timeout)
        if self._exc is not None:
            raise self._exc
        return cast(T, self._value)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._wait(timeout)
        if self._phase == _CANCELLED:
            raise CancelledError()
        return self._exc

    def set_running_or_notify_cancel(self) -> bool:
        with _GUARD:
            if self._phase == _CANCELLED:
                return False
            self._phase = _RUNNING
            return True

    def set_result(self, result: T) -> None:
        self._finish(result, None)

    def set_exception(self, exception: BaseException | None) -> None:
        self._finish(None, exception)

    def _finish(self, value: Any, exc: BaseException | None, wakes: _LoopWakes | None = None) -> None:
        """Set the answer; the coroutines awaiting it are woken now, or, given `wakes`, added to
        it so that the writer wakes each loop once for a whole commit."""
        with _GUARD:
            if self._phase >= _CANCELLED:
                return
            self._value, self._exc, self._phase = value, exc, _DONE
            waiters, self._loop_waiters = self._loop_waiters, None
        self._settle(waiters, wakes)

    def _settle(
        self,
        waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] | None,
        wakes: _LoopWakes | None = None,
    ) -> None:
        """Wake what waits on this future (its state is final; nothing registers any more)."""
        if self._latch is not None:
            self._latch.release()
        if waiters:
            own = {} if wakes is None else wakes
            for loop, waiter in waiters:
                own.setdefault(loop, []).append(waiter)
            if wakes is None:
                _wake_loops(own)
        callbacks, self._done_callbacks = self._done_callbacks or (), None
        for fn in callbacks:
            try:
                fn(self)
            except Exception:
                log.exception("future callback failed", extra={"action": "hook_failed"})

    def __await__(self) -> Generator[Any, None, T]:
        if not self.done():
            loop = asyncio.get_running_loop()
            waiter = loop.create_future()
            with _GUARD:
                registered = not self.done()
                if registered:
                    if self._loop_waiters is None:
                        self._loop_waiters = []
                    self._loop_waiters.append((loop, waiter))
            if registered:
                try:
                    yield from waiter
                except asyncio.CancelledError:
                    with _GUARD:
                        if self._loop_waiters and (loop, waiter) in self._loop_waiters:
                            self._loop_waiters.remove((loop, waiter))
                    self.cancel()  # dropped if the writer has not taken it yet
                    raise
        return self.result()


_LoopWakes = dict[asyncio.AbstractEventLoop, list["asyncio.Future[None]"]]


def _wake_loops(wakes: _LoopWakes) -> None:
    for loop, waiters in wakes.items():
        try:
            loop.call_soon_threadsafe(_wake, waiters)
        except RuntimeError:  # that loop has closed: nothing awaits there any more
            pass


def _wake(waiters: list[asyncio.Future[None]]) -> None:
    """On an event loop: resume each coroutine awaiting an answer that landed."""
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)


def wait_all(futures: Sequence[Future[Any]], timeout_s: float) -> None:
    """Wait until every future is answered, or `timeout_s` has passed (their outcomes are the
    callers' business)."""
    deadline = time.monotonic() + timeout_s
    for future in futures:
        try:
            future.exception(max(deadline - time.monotonic(), 0))
        except (TimeoutError, CancelledError):
            pass


class _Item(Generic[T]):
    __slots__ = ("future", "op")

    def __init__(self, op: Callable[[Tx], T]) -> None:
        self.op = op
        self.future: WriteFuture[T] = WriteFuture()


_STOP = object()


def _refuse(item: _Item[Any]) -> None:
    if item.future.set_running_or_notify_cancel():
        item.future.set_exception(StorageError("the database writer has stopped"))


def _run_all(hooks: list[Callable[[], None]]) -> None:
    for hook in hooks:
        try:
            hook()
        except Exception:
            log.exception("rollback hook failed", extra={"action": "hook_failed"})


class _Fallback(Exception):
    """An op failed after writing: the batch must be redone op by op."""


class Writer:
    """The single writer thread with group commit."""

    def __init__(self, db: pw.Database, pg: bool, node_tag: str = "", notify: bool = True) -> None:
        self._db = db
        self._pg = pg
        self._node_tag = node_tag  # our own notifications carry it, so our listener skips them
        self._notify = pg and notify
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._stopped = False  # set once the thread has stopped: later ops are refused at once
        self._stopping = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="jobserver-writer", daemon=True)
        self.batches = 0
        self.ops = 0
        self.health = WriteHealth()
        self.busy_since: float | None = None  # when the batch in hand began (a disk that hangs holds it)

    def start(self) -> None:
        """Start the writer thread."""
        self._thread.start()

    def stop(self) -> None:
        """Finish the ops already queued, then stop; an op that comes later fails with
        StorageError at once (a caller waiting on it would otherwise wait out its timeout)."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout=30)
        with self._stopping:
            self._stopped = True
            while True:  # queued behind the stop
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not _STOP:
                    _refuse(item)

    def submit(self, op: Callable[[Tx], T]) -> WriteFuture[T]:
        """Queue an op; the future resolves after its transaction committed."""
        item = _Item(op)
        with self._stopping:
            if self._stopped:
                _refuse(item)
            else:
                self._queue.put(item)
        return item.future

    def call(self, op: Callable[[Tx], T], timeout: float | None = 60) -> T:
        """Run an op and wait for its commit (for worker threads, never the event loop)."""
        return self.submit(op).result(timeout)

    async def acall(self, op: Callable[[Tx], T]) -> T:
        """Run an op from the event loop without blocking it."""
        return await self.submit(op)

    def probe(self) -> WriteFuture[None]:
        """A small real write (one row of the meta table), to learn whether writes work now."""

        def op(tx: Tx) -> None:
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('write_probe', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (repr(time.time()),),
            )

        return self.submit(op)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                break
            batch = [first] if first.future.set_running_or_notify_cancel() else []
            stop = False
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                # an op whose caller gave up (a cancelled await) before it ran is dropped;
                # once running, its future can no longer be cancelled, so its answer always lands
                if item.future.set_running_or_notify_cancel():
                    batch.append(item)
            if batch:
                self.busy_since = time.monotonic()
                try:
                    self._run_batch(batch)
                finally:
                    self.busy_since = None
            if stop:
                break
        self._db.close()

    def _run_batch(self, batch: list[_Item[Any]]) -> None:
        """One transaction for the whole batch. Fast path: no savepoints. An op
        that fails after it wrote something (or any failure on PostgreSQL, where
        an error aborts the transaction) sends the batch down the slow path:
        roll back and run every op in a transaction of its own."""
        try:
            outcomes, hooks, changed = self._attempt_batch(batch)
        except _Fallback:
            self._rollback_quietly()
            for item in batch:
                self._run_batch_alone(item)
            return
        except Exception as exc:  # the transaction itself failed: every op fails
            self._fail_all(batch, exc)
            return
        self._publish(outcomes, hooks, len(batch), changed)

    def _run_batch_alone(self, item: _Item[Any]) -> None:
        try:
            outcomes, hooks, changed = self._attempt_batch([item], alone=True)
        except Exception as exc:
            self._fail_all([item], exc)
            return
        self._publish(outcomes, hooks, 1, changed)

    def _attempt_batch(
        self, batch: list[_Item[Any]], alone: bool = False
    ) -> tuple[list[tuple[_Item[Any], bool, Any]], list[Callable[[], None]], bool]:
        """(each op's outcome, the after-commit hooks, whether a row changed)."""
        outcomes: list[tuple[_Item[Any], bool, Any]] = []
        changed = False
        hooks: list[Callable[[], None]] = []
        undo: list[Callable[[], None]] = []
        notes: set[str] = set()
        try:
            cur = self._begin()
            for item in batch:
                tx = Tx(cur, self._pg)
                try:
                    value = item.op(tx)
                except Exception as raised:
                    exc = as_storage_error(raised, "write")
                    undo.extend(tx._undo)
                    if alone:
                        cur.execute("ROLLBACK")
                        _run_all(undo)
                        return [(item, False, exc)], [], False
                    if tx.wrote or self._pg:
                        raise _Fallback() from exc
                    outcomes.append((item, False, exc))  # failed before writing: nothing to undo
                else:
                    undo.extend(tx._undo)
                    outcomes.append((item, True, value))
                    hooks.extend(tx._hooks)
                    notes.update(tx._notes)
                    changed = changed or tx.changed
            if notes and self._notify:
                for payload in notify_payloads(self._node_tag, notes):
                    cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
            cur.execute("COMMIT")
        except BaseException:
            _run_all(undo)  # nothing of this attempt stays: neither may its bookkeeping
            raise
        return outcomes, hooks, changed

    def _begin(self) -> Any:
        """A cursor in a new transaction. On PostgreSQL, a connection the server ended since the
        last batch (a restart, a failover) fails at BEGIN, before anything of the batch was
        sent: the batch begins again on a new connection instead of failing every op."""
        statement = "BEGIN" if self._pg else "BEGIN IMMEDIATE"

        def begin() -> Any:
            if isinstance(self._db, SqliteFile):
                self._db.check_file()  # a commit to a deleted file would be lost: refuse it
            cur = self._db.connection().cursor()
            cur.execute(statement)
            return cur

        return once_more_if_dropped(self._db, begin)

    def _fail_all(self, batch: list[_Item[Any]], exc: Exception) -> None:
        error = as_storage_error(exc, "write")
        if error is exc:  # not the database's failure: a bug in an op
            log.exception("write transaction failed", extra={"action": "write_failed"})
        else:
            self._failed(exc)
        self._rollback_quietly()
        for item in batch:
            if not item.future.done():
                item.future.set_exception(error)

    def _failed(self, exc: BaseException) -> None:
        self.health.failed(exc)
        if needs_new_connection(exc) and isinstance(self._db, SqliteFile):
            self._db.reopen_all()

    def _publish(
        self,
        outcomes: list[tuple[_Item[Any], bool, Any]],
        hooks: list[Callable[[], None]],
        size: int,
        changed: bool,
    ) -> None:
        self.batches += 1
        self.ops += size
        failures = [v for _, ok, v in outcomes if not ok and isinstance(v, StorageError)]
        if failures:
            self._failed(failures[0].__cause__ or failures[0])
        elif changed:  # a commit that changed nothing proves nothing (a read-only file allows it)
            self.health.succeeded()
        for hook in hooks:  # wake-ups first: an idle worker should not wait for the answers
            try:
                hook()
            except Exception:
                log.exception("after-commit hook failed", extra={"action": "hook_failed"})
        wakes: _LoopWakes = {}
        for item, ok, value in outcomes:
            item.future._finish(value if ok else None, None if ok else value, wakes)
        _wake_loops(wakes)

    def _rollback_quietly(self) -> None:
        try:
            self._db.connection().cursor().execute("ROLLBACK")
        except Exception:
            pass
        if self._pg:
            try:
                self._db.close()
            except Exception:
                pass
