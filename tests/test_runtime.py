"""How serving sizes itself to the process: the open-files limit and the connection cap under it;
and a start that fails part way, which leaves nothing running."""

from __future__ import annotations

import asyncio
import gc
import resource
import threading
import warnings
from pathlib import Path

import pytest

from jobserver.runner.queue import WorkerPool
from jobserver.runtime import Runtime, _cancel_tasks, connection_cap, raise_open_files_limit
from tests.helpers import wait_until
from tests.inproc import running_app, settings_for


def test_the_soft_open_files_limit_is_raised_to_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no hard limit on open files here: nothing to raise the soft one to")
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
    try:
        assert raise_open_files_limit() == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_connection_cap_keeps_files_free_for_everything_else() -> None:
    assert connection_cap(1000, 1_048_576) == 1000
    assert connection_cap(1000, 1024) == 768  # a quarter of the files stay free
    assert connection_cap(1000, 256) == 192  # at least 64 stay free
    assert connection_cap(50, 1024) == 50
    assert connection_cap(1000, 40) == 1
    assert connection_cap(1000, resource.RLIM_INFINITY) == 1000


def test_a_start_that_fails_part_way_stops_what_it_started_and_unlocks_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_app(tmp_path) as app:
        job = app.client.post("/jobs", json={"task": "jobserver.examples.add", "args": {"a": 1, "b": 2}})
        app.runtime.parts.dispatcher.stop_claiming()  # it stays pending for the next start
    before = set(threading.enumerate())
    spawn = WorkerPool._spawn
    made = 0

    def spawn_until_refused(pool: WorkerPool) -> None:
        nonlocal made
        made += 1
        if made > 1:
            raise RuntimeError("can't start new thread")  # what the OS answers past its limit
        spawn(pool)

    monkeypatch.setattr(WorkerPool, "_spawn", spawn_until_refused)
    settings = settings_for(tmp_path, {"workers": {"threads": 3}})
    with pytest.raises(RuntimeError, match="can't start new thread"):
        Runtime(settings).open()
    wait_until(
        lambda: not [t for t in set(threading.enumerate()) - before if t.name.startswith("jobserver")],
        message="the threads of the failed start to stop",
    )
    monkeypatch.undo()
    with running_app(tmp_path) as app:  # the file is not left locked, and the job was not lost
        done = app.client.get(f"/jobs/{job.json()['id']}", params={"wait": 10}).json()
        assert (done["status"], done["result"]) == ("completed", 3)


def test_attempts_handed_to_the_loop_as_it_stops_are_cancelled_before_they_start() -> None:
    """A worker can hand an async attempt to the tasks' loop just as the stop ends the loop's
    thread: the close cancels it before its first step, as it cancels the ones running, and
    none is dropped unawaited."""
    loop = asyncio.new_event_loop()
    ran: list[str] = []
    began = asyncio.Event()
    never = asyncio.Event()  # what a running attempt awaits: its I/O, which does not come

    async def attempt(name: str) -> None:
        ran.append(name)
        began.set()
        await never.wait()

    running = asyncio.run_coroutine_threadsafe(attempt("running"), loop)
    loop.run_until_complete(asyncio.wait_for(began.wait(), 10))  # "running" waits at its first await
    made = asyncio.run_coroutine_threadsafe(attempt("made"), loop)
    loop.call_soon(loop.stop)
    loop.run_forever()  # one pass: "made" is a task whose first step is still to come
    queued = asyncio.run_coroutine_threadsafe(attempt("queued"), loop)  # not even a task yet
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _cancel_tasks(loop)
        loop.close()
        gc.collect()
    assert ran == ["running"]  # none of the others' code ran
    assert running.cancelled() and made.cancelled() and queued.cancelled()
    assert not [w for w in caught if "never awaited" in str(w.message)], [str(w.message) for w in caught]
