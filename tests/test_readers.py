"""The reader threads: reads run off the event loop, answers and errors come back to the
awaiting coroutine, a caller that gives up does not stall the pool, and a stopped pool refuses."""

from __future__ import annotations

import asyncio
import threading

import pytest

from jobserver.storage.readers import ReadPool


def test_reads_run_on_reader_threads_and_answer_the_awaiting_coroutine() -> None:
    pool = ReadPool(3, "test-read")

    async def main() -> tuple[list[str], str]:
        names = await asyncio.gather(*(pool.run(lambda: threading.current_thread().name) for _ in range(20)))
        with pytest.raises(KeyError, match="missing"):
            await pool.run({}.__getitem__, "missing")
        return names, threading.current_thread().name

    try:
        names, loop_thread = asyncio.run(main())
    finally:
        pool.shutdown()
    assert set(names) <= {"test-read_0", "test-read_1", "test-read_2"} and loop_thread not in names


def test_a_caller_that_gives_up_leaves_the_pool_working() -> None:
    pool = ReadPool(1, "test-read")
    release = threading.Event()

    started = threading.Event()

    def slow_read() -> None:
        started.set()
        release.wait(10)

    async def main() -> int:
        slow = asyncio.ensure_future(pool.run(slow_read))
        assert await asyncio.to_thread(started.wait, 10)
        slow.cancel()  # e.g. its client went away while the read ran
        release.set()
        return await asyncio.wait_for(pool.run(lambda: 42), 10)

    try:
        assert asyncio.run(main()) == 42
    finally:
        pool.shutdown()


def test_a_stopped_pool_refuses_reads() -> None:
    pool = ReadPool(2, "test-read")

    async def main() -> None:
        assert await pool.run(lambda: "first") == "first"
        pool.shutdown()
        with pytest.raises(RuntimeError, match="stopped"):
            await pool.run(lambda: "late")

    asyncio.run(main())


def test_threads_are_started_only_when_reads_find_none_idle() -> None:
    """A thread holds a database connection: reads one after another use one thread, and only
    reads at once start more, up to the pool's size."""
    pool = ReadPool(4, "test-read")
    release = threading.Event()
    running: list[int] = []
    lock = threading.Lock()
    four_running = threading.Event()

    def held_read() -> None:
        with lock:
            running.append(1)
            if len(running) == 4:
                four_running.set()
        release.wait(10)

    async def main() -> tuple[int, int, bool]:
        for _ in range(30):
            await pool.run(lambda: None)
        one_after_another = len(pool._threads)
        held = [asyncio.ensure_future(pool.run(held_read)) for _ in range(10)]
        four_at_once = await asyncio.to_thread(four_running.wait, 10)
        release.set()
        await asyncio.gather(*held)
        return one_after_another, len(pool._threads), four_at_once

    try:
        assert asyncio.run(main()) == (1, 4, True)
    finally:
        pool.shutdown()
