"""The single writer: group commit, isolation of failing ops, after-commit hooks."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import os
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVarTuple

import peewee as pw
import pytest

from jobserver.core.errors import StorageError
from jobserver.storage.models import Checkpoints, SqliteFile, create_schema, open_database
from jobserver.storage.store import JobStore
from jobserver.storage.writer import Tx, WriteFuture, notify_payloads
from jobserver.storage.writer import _wake as writer_wake
from tests.inproc import running_app
from tests.storage import open_store

Ts = TypeVarTuple("Ts")


def count(store: JobStore, sql: str = "SELECT COUNT(*) FROM meta WHERE key != 'schema_version'") -> int:
    return int(store._query(sql)[0][0])


def insert(key: str) -> Callable[[Tx], str]:
    def op(tx: Tx) -> str:
        tx.execute("INSERT INTO meta (key, value) VALUES (?, 'v')", (key,))
        return key

    return op


def test_concurrent_ops_share_commits(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        gate = threading.Event()
        store.writer.submit(lambda tx: gate.wait(10))  # hold the writer so the rest queue up
        futures = [store.writer.submit(insert(f"k{i}")) for i in range(200)]
        gate.set()
        assert [f.result(10) for f in futures] == [f"k{i}" for i in range(200)]
        assert count(store) == 200
        assert store.writer.batches <= 3  # 201 ops, a couple of transactions


def test_failing_op_before_write_leaves_others_committed(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        gate = threading.Event()
        store.writer.submit(lambda tx: gate.wait(10))

        def bad(tx: Tx) -> None:
            tx.one("SELECT 1")
            raise ValueError("refused")

        a, b, c = store.writer.submit(insert("a")), store.writer.submit(bad), store.writer.submit(insert("c"))
        gate.set()
        assert a.result(10) == "a" and c.result(10) == "c"
        with pytest.raises(ValueError):
            b.result(10)
        assert count(store) == 2


def test_failing_op_after_write_is_undone_alone(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        gate = threading.Event()
        hooks: list[str] = []
        store.writer.submit(lambda tx: gate.wait(10))

        def half(tx: Tx) -> None:
            tx.execute("INSERT INTO meta (key, value) VALUES ('half', 'v')")
            tx.after_commit(lambda: hooks.append("half"))
            raise ValueError("after a write")

        def good(tx: Tx) -> None:
            insert("good")(tx)
            tx.after_commit(lambda: hooks.append("good"))

        futures: list[WriteFuture[Any]] = [
            store.writer.submit(good),
            store.writer.submit(half),
            store.writer.submit(insert("z")),
        ]
        gate.set()
        futures[0].result(10)
        futures[2].result(10)
        with pytest.raises(ValueError):
            futures[1].result(10)
        keys = {r[0] for r in store._query("SELECT key FROM meta WHERE key != 'schema_version'")}
        assert keys == {"good", "z"}
        assert hooks == ["good"]  # hooks of the undone op never run


def test_an_op_cancelled_before_it_ran_is_dropped_and_the_writer_lives_on(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        gate = threading.Event()
        held = store.writer.submit(lambda tx: gate.wait(10))
        dropped = store.writer.submit(insert("dropped"))
        assert dropped.cancel()  # its caller gave up while it waited (a cancelled await)
        gate.set()
        held.result(10)
        assert store.writer.call(insert("after")) == "after"  # the writer thread is alive
        assert count(store, "SELECT COUNT(*) FROM meta WHERE key = 'dropped'") == 0
        running = store.writer.submit(lambda tx: gate.wait(10))
        running.result(10)
        assert not running.cancel()  # a finished op's answer stands


def test_a_read_only_connection_fails_as_storage_error_and_a_new_one_recovers(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        store.writer.call(lambda tx: tx.execute("PRAGMA query_only = 1"))  # as a read-only file would
        with pytest.raises(StorageError, match="readonly"):
            store.writer.call(insert("refused"))
        assert not store.writer.health.ok
        assert store.writer.call(insert("after")) == "after"  # on a new connection
        assert store.writer.health.ok
        assert count(store) == 1


def test_a_locked_database_fails_writes_until_it_is_released(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with open_store(tmp_path, busy_timeout_s=0.05) as store:
        other = sqlite3.connect(tmp_path / "jobs.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        try:
            for i in range(3):
                with pytest.raises(StorageError, match="locked"):
                    store.writer.call(insert(f"k{i}"))
            with pytest.raises(StorageError):
                store.writable().result(10)
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert not store.writer.health.ok
        store.writable().result(10)  # the probe write commits: writes work again
        assert store.writer.health.ok
        failures = [r for r in caplog.records if r.getMessage().startswith("database writes fail")]
        assert len(failures) == 1  # the outage is logged when it starts, not once per write
        assert any(r.getMessage().startswith("database writes work again") for r in caplog.records)


def test_notify_payloads_stay_under_postgres_limit_and_carry_every_note() -> None:
    notes = {f"c{i:036d}" for i in range(500)} | {"d"}
    payloads = notify_payloads("node1", notes)
    assert len(payloads) > 1 and all(len(p.encode()) < 8000 for p in payloads)
    assert all(p.startswith("node1 ") for p in payloads)
    assert {n for p in payloads for n in p.split(" ", 1)[1].split(",")} == notes


def test_an_op_after_the_writer_stopped_fails_at_once(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        assert store.writer.call(insert("before")) == "before"
        store.writer.stop()
        with pytest.raises(StorageError, match="writer has stopped"):
            store.writer.call(insert("after"), timeout=5)  # refused, not left to time out
        assert count(store) == 1


def test_coroutines_await_answers_and_one_commit_wakes_their_loop_once(tmp_path: Path) -> None:
    """An event loop awaits a write's future directly; the answers of one commit reach the
    loop with one call into it, and a coroutine cancelled while its op waits drops the op."""
    with open_store(tmp_path) as store:
        gate = threading.Event()

        async def main() -> tuple[list[str], int]:
            loop = asyncio.get_running_loop()
            calls = 0
            threadsafe = loop.call_soon_threadsafe

            def counting(
                callback: Callable[[*Ts], object],
                *args: *Ts,
                context: contextvars.Context | None = None,
            ) -> asyncio.Handle:
                nonlocal calls
                scheduled: object = callback  # any callback: counted when it is the writer's wake-up
                calls += scheduled is writer_wake
                return threadsafe(callback, *args, context=context)

            loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
            started = threading.Event()

            def hold(tx: Tx) -> bool:
                started.set()
                return gate.wait(10)

            held = store.writer.submit(hold)  # the rest queue behind it
            assert await asyncio.to_thread(started.wait, 10)
            calls = 0
            awaiting: list[int] = []

            async def answer(future: Awaitable[str]) -> str:
                awaiting.append(1)  # the await below registers with the future before it yields
                return await future

            waiting = [asyncio.ensure_future(answer(store.writer.submit(insert(f"k{i}")))) for i in range(50)]
            given_up = asyncio.ensure_future(answer(store.writer.submit(insert("given-up"))))
            every_one = loop.create_future()
            loop.call_soon(lambda: every_one.set_result(len(awaiting)))  # after the 51 tasks' first steps
            assert await asyncio.wait_for(every_one, 10) == 51  # every coroutine awaits its answer
            given_up.cancel()
            await asyncio.wait([given_up])  # its op is given up before the writer may take it
            gate.set()
            answers = await asyncio.gather(*waiting)
            await asyncio.wrap_future(held)
            return answers, calls

        answers, calls = asyncio.run(main())
        assert answers == [f"k{i}" for i in range(50)]
        assert calls == 1  # the 50 answers of one commit wake the loop once, not once each
        assert count(store, "SELECT COUNT(*) FROM meta WHERE key = 'given-up'") == 0


def test_a_thread_waits_for_an_answer_with_a_timeout(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        gate = threading.Event()
        held = store.writer.submit(lambda tx: gate.wait(10))
        queued = store.writer.submit(insert("late"))
        with pytest.raises(TimeoutError):
            queued.result(0.05)
        results: list[str] = []
        waiters = [threading.Thread(target=lambda: results.append(queued.result(10))) for _ in range(3)]
        for waiter in waiters:
            waiter.start()
        gate.set()
        for waiter in waiters:
            waiter.join(10)
        assert results == ["late"] * 3 and held.result(1) is True
        assert queued.done() and queued.exception() is None


def test_commits_leave_checkpoints_to_the_maintenance_pass(tmp_path: Path) -> None:
    """A commit no longer copies the log into the file once it passes SQLite's default 1,000
    pages (that stalled every job of the commit for milliseconds); the maintenance pass does,
    and only after the writer committed since its last run."""
    with open_store(tmp_path) as store:
        db_file = tmp_path / "jobs.db"
        blob = "x" * 3000  # about a page per row

        def write_rows(first: int, rows: int) -> None:
            for start in range(first, first + rows, 50):

                def fifty(tx: Tx, start: int = start) -> list[Any]:
                    return [
                        tx.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (f"k{n}", blob))
                        for n in range(start, start + 50)
                    ]

                store.writer.call(fifty)

        write_rows(0, 1500)  # 30 commits, some 1,500 pages
        before = db_file.stat().st_size
        assert before < 1_000_000  # the rows are all still in the log: no commit checkpointed
        commits = [1]
        assert isinstance(store.db, SqliteFile)
        checkpoints = Checkpoints(store.db, lambda: commits[0])
        checkpoints.run_once()
        after = db_file.stat().st_size
        assert after > before + 4_000_000  # the pass copied the log into the file
        write_rows(1500, 500)
        checkpoints.run_once()  # the commit count it is given has not moved: nothing to do
        assert db_file.stat().st_size == after
        commits[0] += 1
        checkpoints.run_once()
        assert db_file.stat().st_size > after + 1_000_000
        assert count(store, "SELECT COUNT(*) FROM meta WHERE key LIKE 'k%'") == 2000


@pytest.mark.parametrize("suffix", ["", "-wal"])
def test_a_database_file_removed_while_the_server_runs_is_refused_not_written_to(
    tmp_path: Path, suffix: str
) -> None:
    """Commits to the deleted file (or its deleted log) would answer 202 and be lost at the
    next crash or start; a new connection would make an empty file in its place."""
    with running_app(tmp_path) as app:
        c = app.client
        body = {"task": "jobserver.examples.add", "args": {"a": 1, "b": 2}}
        assert c.post("/jobs", json=body).status_code == 202
        removed = app.db_path.with_name(app.db_path.name + suffix)
        removed.unlink()
        refused = c.post("/jobs", json=body)
        assert refused.status_code == 503 and refused.json()["code"] == "storage-unavailable", refused.text
        assert "was removed or replaced" in refused.json()["detail"]
        assert refused.headers["retry-after"]
        assert c.get("/readyz").status_code == 503
        assert not removed.exists()  # no connection made a new, empty file there


def test_an_app_stopped_leaves_no_file_open(tmp_path: Path) -> None:
    """A stopped server's database, with its connections and their files, goes with it: a
    process that builds servers one after another (an embedding app's tests) keeps no file open."""

    def open_files() -> int:
        gc.collect()  # connections dropped with their threads are closed by their finalizers
        return len(os.listdir("/proc/self/fd"))

    def one_app(n: int) -> None:
        (tmp_path / str(n)).mkdir()
        with running_app(tmp_path / str(n)) as app:
            assert app.client.post("/jobs", json={"task": "jobserver.examples.noop"}).status_code == 202

    one_app(0)
    before = open_files()
    for n in range(1, 4):
        one_app(n)
    assert open_files() <= before + 2, sorted(
        os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
    )


def test_a_connection_collected_during_a_file_check_leaves_it_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection's finalizer runs in whichever thread the garbage collector happens to run,
    the one checking the database's log files among them, while it holds the count's lock."""
    db = open_database("sqlite:///x", tmp_path / "jobs.db", "normal", 5.0)
    create_schema(db)
    assert isinstance(db, SqliteFile)
    db.connect()  # this thread's connection stays open, and with it the log files

    def leave_a_closed_connection_in_a_cycle() -> None:
        cycle: list[Any] = [db.connection()]
        cycle.append(cycle)  # only the garbage collector frees it, and runs its finalizer
        db.close()

    real_stat = os.stat

    def stat_then_collect(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        result = real_stat(path, *args, **kwargs)
        if str(path).endswith("-wal"):  # inside the check of the log files
            gc.collect()
        return result

    checking = threading.Thread(target=db.check_file, daemon=True)
    gc.disable()
    try:
        other = threading.Thread(target=leave_a_closed_connection_in_a_cycle)
        other.start()
        other.join(10)
        monkeypatch.setattr(os, "stat", stat_then_collect)
        checking.start()
        checking.join(10)
        monkeypatch.undo()
        assert not checking.is_alive(), "the check waits on a lock its own thread holds"
        # the gone connection was counted: with this thread's closed too, none is open, and a
        # log file SQLite removes at the last close and makes again is no cause for alarm
        db.close()
        wal = tmp_path / "jobs.db-wal"
        if wal.exists():
            wal.unlink()
        db.connect()
        db.connection().execute("INSERT INTO meta (key, value) VALUES ('k', 'v')")
        db.check_file()
    finally:
        gc.enable()
        if not checking.is_alive():  # a stuck check holds the lock that closing takes
            db.close()


def test_a_file_removed_between_the_check_and_the_open_is_not_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread's first connection checks the file, then opens it: a removal in between must
    not leave a new, empty database where the server's was."""
    db_file = tmp_path / "jobs.db"
    db = open_database("sqlite:///x", db_file, "normal", 5.0)
    assert isinstance(db, SqliteFile)
    create_schema(db)
    db.connect()
    real_stat = os.stat

    def stat_then_remove(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        result = real_stat(path, *args, **kwargs)
        if str(path) == str(db_file):  # the check has looked: the file goes before the open
            db_file.unlink(missing_ok=True)
        return result

    refused: list[Exception] = []

    def first_connection() -> None:
        try:
            db.connection()
        except pw.OperationalError as exc:  # the driver's error, as Peewee raises it
            refused.append(exc)

    monkeypatch.setattr(os, "stat", stat_then_remove)
    other = threading.Thread(target=first_connection)
    other.start()
    other.join(10)
    monkeypatch.undo()
    try:
        assert refused and "unable to open" in str(refused[0]), refused
        assert not db_file.exists()
    finally:
        db.close()
