"""The real server while its database refuses writes: a read-only file, a full disk, a frozen one.

Every refused write is a 503 with a problem document, /readyz says not ready
while writes fail and ready again once they work, the workers wait out the
failure instead of spinning, and an outcome that could not be written is
written once the disk has room, so the job does not run a second time.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e import Server, start_server
from tests.helpers import finished, has_line, submit, wait_until

pytestmark = pytest.mark.e2e

AS_ROOT = os.geteuid() == 0
# root writes any file whatever its mode: run the server without the capabilities that let it
DROP_OVERRIDE = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps", "-dac_override,-dac_read_search"]  # fmt: skip


def ready(srv: Server) -> int:
    return httpx.get(srv.url + "/readyz", timeout=10).status_code


def refused_as_unavailable(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == "storage-unavailable"


def database_files(db: Path) -> list[Path]:
    return [
        db.parent / (db.name + suffix)
        for suffix in ("", "-wal", "-shm")
        if (db.parent / (db.name + suffix)).exists()
    ]


@pytest.mark.skipif(not AS_ROOT or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_a_read_only_database_file_is_refused_at_start(tmp_path: Path) -> None:
    srv = start_server(tmp_path)
    c = srv.client()
    finished(c, submit(c, "jobserver.examples.add", {"a": 1, "b": 2}))
    srv.terminate()
    assert srv.wait_exit() == 0
    db = tmp_path / "jobs.db"
    for path in database_files(db):
        path.chmod(0o444)
    srv.prefix = DROP_OVERRIDE
    srv.start(wait=False)
    assert srv.wait_exit() == 1
    lines = srv.log().splitlines()
    refusal = [line for line in lines if line.startswith("jobserver:")]
    assert refusal == [f"jobserver: cannot start: the database file {db} is not writable: Permission denied"]
    assert "Traceback" not in srv.log()


def test_a_locked_database_answers_503_backs_off_and_recovers(tmp_path: Path) -> None:
    config = {"server": {"log_level": "debug"}, "database": {"busy_timeout": "100ms"}}
    srv = start_server(tmp_path, config)
    c = srv.client()
    finished(c, submit(c, "jobserver.examples.add", {"a": 1, "b": 2}))
    other = sqlite3.connect(tmp_path / "jobs.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process takes the write lock and keeps it
    try:
        refused_as_unavailable(
            c.post("/jobs", json={"task": "jobserver.examples.add", "args": {"a": 1, "b": 2}})
        )
        wait_until(lambda: ready(srv) == 503, 20, 0.1, "/readyz to say not ready")
        body = httpx.get(srv.url + "/readyz", timeout=10).json()
        assert "locked" in body["checks"]["database"] or "within" in body["checks"]["database"]
        before = srv.log().count("claim failed")
        window_start = time.monotonic()
        while time.monotonic() - window_start < 3.0:  # a window in which to count the claims tried
            assert ready(srv) == 503
        tried = srv.log().count("claim failed") - before
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert tried <= 8, tried  # one probe at a time, backing off: not every thread spinning
    log = srv.log()
    assert "Error reading from queue" not in log and "Traceback" not in log
    assert log.count("database writes fail") == 1  # logged when the outage starts, not per write
    wait_until(lambda: ready(srv) == 200, 20, 0.1, "/readyz to recover")
    assert finished(c, submit(c, "jobserver.examples.add", {"a": 2, "b": 2}))["result"] == 4
    assert "database writes work again" in srv.log()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MB ext4 file system in a file, mounted through a loop device (one that can be frozen)."""
    if not AS_ROOT or shutil.which("mkfs.ext4") is None or shutil.which("fsfreeze") is None:
        pytest.skip("mounting a small file system needs root, mkfs.ext4 and fsfreeze")
    image, mount = tmp_path / "disk.img", tmp_path / "disk"
    mount.mkdir()
    with image.open("wb") as f:
        f.truncate(24 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-m", "0", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["fsfreeze", "-u", str(mount)], check=False, capture_output=True)
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Fill the file system to its last byte; the filler file is returned for removal."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (1 << 20, 4096, 1):
            chunk = b"\0" * size
            try:
                while True:
                    os.write(fd, chunk)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_answers_503_and_the_outcome_is_written_once_there_is_room(
    tmp_path: Path, small_disk: Path
) -> None:
    srv = start_server(tmp_path, {"database": {"url": f"sqlite:///{small_disk / 'jobs.db'}"}})
    c = srv.client()
    started, release = tmp_path / "started", tmp_path / "release"
    # a result of 1 MB cannot go into log space the file already has (a checkpointed log is
    # written again from its start): its write needs room the full disk does not have
    args = {"started": str(started), "release": str(release), "pad": 1_000_000}
    job = submit(c, "tests.e2e_tasks.block_until_file", args)
    wait_until(lambda: has_line(started), 20, message="the job to start")
    filler = fill(small_disk)
    release.touch()
    wait_until(lambda: "could not record the outcome of " + job in srv.log(), 20, 0.05, "the refused write")
    # a submit whose rows need room is refused as unavailable (a small write can still land in
    # log space the file already has, and /readyz's probe write with it)
    big = [{"task": "tests.e2e_tasks.echo", "args": {"value": "x" * 60_000}}] * 12
    refused_as_unavailable(c.post("/jobs/batch", json={"jobs": big}))
    assert c.get(f"/jobs/{job}").json()["status"] == "running"
    filler.unlink()
    done = finished(c, job, timeout=30)
    assert (done["status"], done["result"], done["attempts"]) == (
        "completed",
        "released" + " " * 1_000_000,
        1,
    )
    assert len(started.read_text().splitlines()) == 1  # it ran once
    wait_until(lambda: ready(srv) == 200, 20, 0.1, "/readyz to recover")
    assert finished(c, submit(c, "jobserver.examples.add", {"a": 2, "b": 3}))["result"] == 5
    # a disk that stops answering (frozen, as a stalled network volume) holds a submit's write:
    # /readyz says so in time, and the submit is committed once the disk answers again
    subprocess.run(["fsfreeze", "-f", str(small_disk)], check=True)
    held: list[httpx.Response] = []
    body = {"task": "jobserver.examples.add", "args": {"a": 3, "b": 3}}
    submitter = threading.Thread(target=lambda: held.append(srv.client(timeout=60).post("/jobs", json=body)))
    try:
        submitter.start()
        wait_until(lambda: ready(srv) == 503, 20, 0.1, "/readyz to say the frozen disk is not ready")
        began = time.monotonic()
        r = httpx.get(srv.url + "/readyz", timeout=30)
        assert time.monotonic() - began < 5
        assert re.fullmatch(
            r"error: a (read did not answer|write did not commit) within 2.0s", r.json()["checks"]["database"]
        ), r.text
    finally:
        subprocess.run(["fsfreeze", "-u", str(small_disk)], check=True)
        submitter.join(timeout=60)
    assert held[0].status_code == 202, held[0].text
    assert finished(c, held[0].json()["id"])["result"] == 6
    wait_until(lambda: ready(srv) == 200, 20, 0.1, "/readyz to recover from the frozen disk")
