"""The hub's watches: a publish from any thread wakes the job's watchers on their loop, a
change seen before the wait is not lost, a quiet wait ends at its timeout, and a watch
leaves the hub with its block."""

from __future__ import annotations

import asyncio
import threading

from jobserver.core.hub import Hub


def test_a_watch_wakes_on_a_publish_from_another_thread_and_times_out_when_quiet() -> None:
    hub = Hub()

    async def main() -> tuple[bool, bool, bool, bool]:
        with hub.watch("job-1") as watch, hub.watch("job-2") as other:
            watch.clear()
            threading.Thread(target=hub.publish, args=("job-1",)).start()
            woken = await asyncio.wait_for(watch.wait(10), 20)
            watch.clear()
            hub.publish("job-1")  # a change between the read and the wait is kept
            await _after_callbacks_queued_so_far()
            kept = await watch.wait(10)
            watch.clear()
            quiet = await watch.wait(0.01)  # nothing changed: the timeout ends it
            other_woken = await other.wait(0)  # a publish for job-1 is not job-2's
        return woken, kept, quiet, other_woken

    assert asyncio.run(main()) == (True, True, False, False)
    assert not hub._watchers  # each watch left with its block


async def _after_callbacks_queued_so_far() -> None:
    """Return once the loop has run every callback queued before this call (it runs them in
    order): here, the publish's wake of the watch."""
    marker = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon_threadsafe(marker.set_result, None)
    await asyncio.wait_for(marker, 10)
