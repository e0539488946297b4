"""A start that cannot work says so in one line and exits with its documented code: the real
server process on a read-only data directory, a lock file it cannot open, a database whose
pages are damaged; and an empty database file is warned about."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import Server, start_server
from tests.helpers import Config, submit, wait_until

pytestmark = pytest.mark.e2e

QUIET: Config = {"server": {"log_level": "warning"}}  # stderr then holds only what a failed start prints


def failed_start(tmp_path: Path, db: Path) -> tuple[int, str]:
    """Start the server on `db` (from a directory of its own, so its log holds only this start);
    its exit code and everything it printed."""
    workdir = tmp_path / "failed-start"
    workdir.mkdir()
    srv = start_server(workdir, {**QUIET, "database": {"url": f"sqlite:///{db}"}}, wait=False)
    return srv.wait_exit(timeout=30), srv.log()


def assert_one_line(output: str, *needles: str) -> None:
    assert "Traceback" not in output, output
    lines = output.splitlines()
    assert len(lines) == 1 and lines[0].startswith("jobserver: cannot start: "), output
    for needle in needles:
        assert needle in lines[0], output


def stop(srv: Server) -> None:
    srv.terminate()
    assert srv.wait_exit() == 0, srv.log()


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs the test can turn read-only; root ignores file permissions, so a read-only
    mount is the way to make a directory read-only for it."""
    path = tmp_path / "data"
    path.mkdir()
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a read-only tmpfs (permissions alone do not stop root)")
    try:
        mount("-t", "tmpfs", "-o", "size=8m", "tmpfs", str(path))
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here (a container without CAP_SYS_ADMIN?): {exc}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def test_a_read_only_data_directory_is_one_line(tmp_path: Path, tmpfs: Path) -> None:
    db = tmpfs / "jobs.db"
    srv = start_server(tmp_path, {"database": {"url": f"sqlite:///{db}"}})
    submit(srv.client(), "jobserver.examples.add", {"a": 1, "b": 2})
    stop(srv)
    mount("-o", "remount,ro", str(tmpfs))
    code, output = failed_start(tmp_path, db)
    assert code == 1
    assert_one_line(output, f"the database file {db} is not writable", "Read-only file system")


def test_a_directory_where_the_database_file_goes_is_one_line(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    db.mkdir()
    code, output = failed_start(tmp_path, db)
    assert code == 1
    assert_one_line(output, f"cannot open the database file {db}", "Is a directory")


def test_a_database_with_damaged_pages_is_one_line(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    stop(start_server(tmp_path, {"database": {"url": f"sqlite:///{db}"}}))  # tables and indexes: many pages
    with sqlite3.connect(db) as conn:  # everything in the main file, none of it in the WAL
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size, pages = (
            conn.execute("PRAGMA page_size").fetchone()[0],
            conn.execute("PRAGMA page_count").fetchone()[0],
        )
    assert pages > 8
    with open(db, "r+b") as f:  # page 1 (the 100-byte header and the schema) stays whole
        f.seek(page_size)
        f.write(os.urandom(page_size * (pages - 1)))
    code, output = failed_start(tmp_path, db)
    assert code == 1
    assert_one_line(output, str(db), "is damaged", "restore it from a backup")


def test_an_empty_database_file_is_warned_about(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    db.touch()
    srv = start_server(tmp_path, {"database": {"url": f"sqlite:///{db}"}})
    wait_until(lambda: "exists but is empty (0 bytes)" in srv.log(), 10, message="the empty-file warning")
    assert "WARNING jobserver.storage.integrity" in srv.log()
    assert srv.client().get("/healthz").status_code == 200  # an empty file is a new database: it serves
    stop(srv)
