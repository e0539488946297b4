"""The single writer: group commit, isolation of failing ops, after-commit hooks."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from jobserver.core.errors import StorageError
from jobserver.storage.writer import Tx, notify_payloads
from tests.storage import open_store


def count(store, sql: str = "SELECT COUNT(*) FROM meta") -> int:
    return int(store._query(sql)[0][0])


def insert(key: str):
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

        futures = [store.writer.submit(good), store.writer.submit(half), store.writer.submit(insert("z"))]
        gate.set()
        futures[0].result(10)
        futures[2].result(10)
        with pytest.raises(ValueError):
            futures[1].result(10)
        keys = {r[0] for r in store._query("SELECT key FROM meta")}
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
