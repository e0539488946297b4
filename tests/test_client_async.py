"""The AsyncClient against the real app in-process (httpx.ASGITransport on the app a
running runtime serves), its parity with the sync Client, and what both do when the
network fails: a port nothing listens on, a connection that drops after the request was
handled, an event stream cut in the middle.

The network failures are made at the transport, the process edge: the app behind it is
the real one, so a request that "was handled but whose answer was lost" really queued a job.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import threading
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from jobserver.client.aio import AsyncClient
from jobserver.client.sdk import Client, Event, Job, UnauthorizedError
from jobserver.core.errors import (
    JobNotFinishedError,
    JobNotFoundError,
    ServerUnavailableError,
    WaitTimeoutError,
)
from tests.helpers import free_port
from tests.inproc import RunningApp, running_app, served_app

ADD = "jobserver.examples.add"
SLEEP = "jobserver.examples.sleep"
NOOP = "jobserver.examples.noop"
WAIT_S = 30.0
T = TypeVar("T")


def run(body: Callable[[AsyncClient], Awaitable[T]], app: RunningApp, **options: Any) -> T:
    """Run `body` with an AsyncClient on the app, in a fresh event loop."""

    async def main() -> T:
        transport = options.pop("transport", None) or httpx.ASGITransport(app=app.asgi_app)
        async with AsyncClient("http://testserver", transport=transport, **options) as client:
            return await body(client)

    return asyncio.run(main())


def test_every_client_method_has_an_async_twin_with_the_same_signature() -> None:
    public = {n: f for n, f in inspect.getmembers(Client, inspect.isfunction) if not n.startswith("_")}
    public.pop("close")
    for name, method in public.items():
        twin = getattr(AsyncClient, name, None)
        assert twin is not None, f"AsyncClient has no {name}"
        assert inspect.signature(twin).parameters.keys() == inspect.signature(method).parameters.keys(), name
        assert inspect.iscoroutinefunction(twin) or inspect.isasyncgenfunction(twin), name
        assert twin.__doc__ == method.__doc__, name


def test_submit_wait_list_events_and_delete(app: RunningApp) -> None:
    async def body(c: AsyncClient) -> None:
        job = await c.submit(SLEEP, {"seconds": 0.05, "steps": 3}, idempotency_key="async-1")
        again = await c.submit(SLEEP, {"seconds": 0.05, "steps": 3}, idempotency_key="async-1")
        assert again.replayed and again["id"] == job["id"]
        done = await c.wait(job["id"], timeout=WAIT_S)
        assert done["status"] == "completed" and done["result"] == {"slept": 0.05}
        assert (await c.get(job["id"]))["status"] == "completed"
        assert [j["id"] async for j in c.iter_jobs(task=SLEEP, page_size=1)] == [job["id"]]
        assert [j["id"] for j in (await c.list(idempotency_key="async-1"))["jobs"]] == [job["id"]]
        [summary] = (await c.list(idempotency_key="async-1", fields="summary"))["jobs"]
        assert summary["id"] == job["id"] and "result" not in summary
        events = [e async for e in c.events(job["id"])]
        assert "progress" in [e.event for e in events]  # progress is coalesced, so at least one
        assert events[-1].event == "status" and events[-1].data["status"] == "completed"
        tail = [e async for e in c.events(job["id"], last_event_id=events[-2].id)]
        assert tail == events[-1:]
        assert await c.webhooks(job["id"]) == []
        assert (await c.stats())["counts"]["completed"] >= 1
        await c.delete(job["id"])
        with pytest.raises(JobNotFoundError):
            await c.get(job["id"])

    run(body, app)


def test_operator_calls_and_errors(app: RunningApp) -> None:
    async def body(c: AsyncClient) -> None:
        assert {t["name"] for t in await c.tasks()} >= {ADD, NOOP}
        assert (await c.pause_task(NOOP))["paused"] is True
        held = [(await c.submit(NOOP))["id"] for _ in range(3)]
        with pytest.raises(WaitTimeoutError) as timed_out:
            await c.wait(held[0], timeout=0.2)
        assert timed_out.value.job["status"] == "pending"
        with pytest.raises(JobNotFinishedError):
            await c.delete(held[0])
        assert await c.cancel_many(task=NOOP) == 3
        assert await c.delete_many(ids=held[:2]) == 2
        assert [j["id"] for j in (await c.list(task=NOOP))["jobs"]] == [held[2]]
        assert (await c.resume_task(NOOP))["paused"] is False
        made = await c.put_schedule("nightly", ADD, "0 3 * * *", {"a": 1, "b": 2})
        assert made["name"] == "nightly" and [s["name"] for s in await c.schedules()] == ["nightly"]
        await c.delete_schedule("nightly")

    run(body, app)


def test_a_wrong_key_and_a_missing_key_say_different_things(tmp_path: Path) -> None:
    with running_app(tmp_path, config={"auth": {"api_keys": ["k1"]}}) as app:

        async def refused(c: AsyncClient) -> UnauthorizedError:
            with pytest.raises(UnauthorizedError) as info:
                await c.get("x")
            return info.value

        missing, wrong = run(refused, app), run(refused, app, api_key="nope")
        assert (missing.key_sent, wrong.key_sent) == (False, True)
        assert "needs an API key" in str(missing) and "refused the API key" in str(wrong)

        async def allowed(c: AsyncClient) -> int:
            return len(await c.tasks())

        assert run(allowed, app, api_key="k1") > 0


def test_a_server_that_is_down_raises_server_unavailable_sync_and_async() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url, retries=1) as c, pytest.raises(ServerUnavailableError) as sync_info:
        c.get("x")
    assert sync_info.value.url == url and isinstance(sync_info.value.__cause__, httpx.ConnectError)

    async def main() -> None:
        async with AsyncClient(url, retries=1) as c:
            with pytest.raises(ServerUnavailableError):
                await c.submit(ADD, {"a": 1, "b": 1})
            with pytest.raises(ServerUnavailableError):
                _ = [e async for e in c.events("x")]

    asyncio.run(main())


class FlakyNetwork(httpx.AsyncBaseTransport):
    """The real app behind a network that refuses the first `refuse` connections (nothing is
    sent), then loses the first `lose` answers after the app handled the request."""

    def __init__(self, app: Any, lose: int = 0, refuse: int = 0) -> None:
        self.inner = httpx.ASGITransport(app=app)
        self.lose, self.refuse = lose, refuse
        self.tried = 0
        self.sent: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.tried += 1
        if self.refuse > 0:
            self.refuse -= 1
            raise httpx.ConnectError("connection refused", request=request)
        self.sent.append(request)
        response = await self.inner.handle_async_request(request)
        if self.lose > 0:
            self.lose -= 1
            await response.aclose()
            raise httpx.RemoteProtocolError("connection closed before the answer", request=request)
        return response


def test_only_safe_requests_are_sent_again_after_a_lost_answer(app: RunningApp) -> None:
    async def keyed(c: AsyncClient) -> Job:
        return await c.submit(ADD, {"a": 1, "b": 2}, idempotency_key="lost-once")

    transport = FlakyNetwork(app.asgi_app, lose=1)
    job = run(keyed, app, transport=transport)
    assert len(transport.sent) == 2 and job.replayed  # the first one was queued; the resend replays it

    async def unkeyed(c: AsyncClient) -> None:
        await c.submit(NOOP, delay=3600)

    transport = FlakyNetwork(app.asgi_app, lose=1)
    with pytest.raises(ServerUnavailableError) as info:
        run(unkeyed, app, transport=transport)
    assert len(transport.sent) == 1 and isinstance(info.value.__cause__, httpx.RemoteProtocolError)
    with Client(http_client=app.client) as c:
        assert len(c.list(task=NOOP)["jobs"]) == 1  # queued once, never twice

    async def read(c: AsyncClient) -> dict[str, Any]:
        return await c.get(job["id"])

    transport = FlakyNetwork(app.asgi_app, lose=2)
    assert run(read, app, transport=transport)["id"] == job["id"] and len(transport.sent) == 3


def test_any_request_is_sent_again_when_its_connection_was_refused(app: RunningApp) -> None:
    async def unkeyed(c: AsyncClient) -> Job:
        return await c.submit(NOOP, delay=3600)

    transport = FlakyNetwork(app.asgi_app, refuse=2)
    job = run(unkeyed, app, transport=transport)
    assert transport.tried == 3 and not job.replayed  # nothing reached the server before the third
    with Client(http_client=app.client) as c:
        assert [j["id"] for j in c.list(task=NOOP)["jobs"]] == [job["id"]]  # queued once
    transport = FlakyNetwork(app.asgi_app, refuse=10)
    with pytest.raises(ServerUnavailableError):
        run(unkeyed, app, transport=transport)
    assert transport.tried == 4  # the first try and 3 retries


class CutAfterFirstEvent(httpx.AsyncByteStream):
    """A response body that breaks off after its first complete event."""

    def __init__(self, inner: httpx.AsyncByteStream) -> None:
        self.inner = inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        buffered = b""
        async for chunk in self.inner:
            buffered += chunk
            if b"\n\n" in buffered:
                yield buffered[: buffered.index(b"\n\n") + 2]
                raise httpx.ReadError("connection reset mid-stream")
        yield buffered


class DropFirstStream(httpx.AsyncBaseTransport):
    """The real app, with the first event stream cut after one event."""

    def __init__(self, app: Any) -> None:
        self.inner = httpx.ASGITransport(app=app)
        self.cut = False
        self.sent: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        response = await self.inner.handle_async_request(request)
        if request.url.path.endswith("/events") and not self.cut:
            self.cut = True
            assert isinstance(response.stream, httpx.AsyncByteStream)
            return httpx.Response(
                response.status_code, headers=response.headers, stream=CutAfterFirstEvent(response.stream)
            )
        return response


def test_events_resume_with_last_event_id_after_a_dropped_stream(app: RunningApp) -> None:
    with Client(http_client=app.client) as c:
        job = c.submit(SLEEP, {"seconds": 0.05, "steps": 2})
        c.wait(job["id"], timeout=WAIT_S)
        expected = list(c.events(job["id"]))

    async def body(c: AsyncClient) -> list[Event]:
        return [e async for e in c.events(job["id"])]

    transport = DropFirstStream(app.asgi_app)
    got = run(body, app, transport=transport)
    assert got == expected  # nothing lost, nothing repeated
    assert [r.headers.get("last-event-id") for r in transport.sent] == [None, expected[0].id]


@pytest.mark.e2e  # 120 connections over a real socket
def test_more_open_streams_than_httpx_pools_by_default_all_connect(tmp_path: Path) -> None:
    """Each open event stream (or long poll) holds a connection: an agent watching 120 jobs at
    once from one AsyncClient needs 120. httpx pools 100 by default, and the 101st waited
    for a free one until it failed as "cannot reach"; the server, not the SDK, bounds them."""
    streams = 120

    async def body() -> None:
        # a connection that waited on a full pool would fail after 5 s, and again at each retry
        async with AsyncClient(served.url, timeout=5) as client:
            job = await client.submit(NOOP, {}, delay=3600)
            loop = asyncio.get_running_loop()
            first_events: list[asyncio.Future[None]] = [loop.create_future() for _ in range(streams)]

            async def watch(seen: asyncio.Future[None]) -> None:
                async for _ in client.events(job["id"]):
                    if not seen.done():
                        seen.set_result(None)

            watchers = [asyncio.ensure_future(watch(seen)) for seen in first_events]
            opened = asyncio.ensure_future(asyncio.gather(*first_events))
            either: list[asyncio.Future[Any]] = [opened, *watchers]
            await asyncio.wait(either, timeout=WAIT_S, return_when=asyncio.FIRST_COMPLETED)
            ended = [w for w in watchers if w.done()]  # none may end before the cancel
            assert opened.done() and not ended, [w.exception() for w in ended]
            await client.cancel(job["id"])
            await asyncio.wait_for(asyncio.gather(*watchers), WAIT_S)

    with served_app(tmp_path) as served:
        asyncio.run(body())


def test_a_watch_open_when_the_client_closes_ends_instead_of_opening_a_new_pool(tmp_path: Path) -> None:
    """`aclose()` while a task still iterates `events()`: the stream is cut, and reconnecting
    would make a pool nothing closes. The watch raises instead, as httpx's calls do."""

    async def body() -> None:
        client = AsyncClient(served.url, timeout=5)
        job = await client.submit(NOOP, {}, delay=3600)
        watch = client.events(job["id"])
        assert (await anext(watch)).event == "status"
        await client.aclose()
        with pytest.raises(RuntimeError, match="closed"):
            await asyncio.wait_for(anext(watch), WAIT_S)
        with pytest.raises(RuntimeError, match="closed"):
            await client.get(job["id"])
        async with AsyncClient(served.url) as other:  # another client is not closed
            assert (await other.cancel(job["id"]))["status"] == "cancelled"

    with served_app(tmp_path) as served, warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        asyncio.run(body())


# a closed loop never closes its sockets: the ones its pool kept are closed when collected
@pytest.mark.filterwarnings("ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_client_made_outside_any_loop_serves_one_asyncio_run_after_another(tmp_path: Path) -> None:
    """A module-level client in a script that calls `asyncio.run` more than once: the first
    loop's pooled connections die with it, so the next loop must not be handed them."""
    with served_app(tmp_path) as served:
        client = AsyncClient(served.url)

        async def add_and_wait(c: AsyncClient) -> Any:
            job = await c.submit(ADD, {"a": 1, "b": 2})
            return (await c.wait(job["id"], timeout=30))["result"]

        assert asyncio.run(add_and_wait(client)) == 3
        assert asyncio.run(add_and_wait(client)) == 3  # on a new loop
        assert asyncio.run(add_and_wait(client)) == 3
        asyncio.run(client.aclose())
        del client
        gc.collect()  # here, under this test's filter, not in whichever test runs next


def test_a_client_shared_by_two_threads_each_with_its_own_loop_serves_both_at_once(tmp_path: Path) -> None:
    """Two threads, each running its own event loop at the same time, share one client: each
    loop keeps a pool of its own, which its `aclose()` closes, rather than taking over the
    other's and leaving connections that nobody closes."""
    rounds = 5
    both_in_a_call = threading.Barrier(2, timeout=WAIT_S)
    results: dict[str, list[Any]] = {"a": [], "b": []}
    errors: list[BaseException] = []
    with served_app(tmp_path) as served:
        shared = [AsyncClient(served.url)]

        async def rounds_of_waits(client: AsyncClient, name: str, a: int) -> None:
            for i in range(rounds):
                job = await client.submit(ADD, {"a": a, "b": i})
                waiting = asyncio.ensure_future(client.wait(job["id"], timeout=WAIT_S))
                await asyncio.to_thread(both_in_a_call.wait)  # the other loop is in a call too
                results[name].append((await waiting)["result"])
            await client.aclose()

        def thread(name: str, a: int) -> None:
            try:
                asyncio.run(rounds_of_waits(shared[0], name, a))
            except BaseException as exc:
                errors.append(exc)
                both_in_a_call.abort()

        threads = [threading.Thread(target=thread, args=(n, a)) for n, a in (("a", 100), ("b", 200))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT_S * 2)
        assert not errors, errors
        assert results == {"a": [100 + i for i in range(rounds)], "b": [200 + i for i in range(rounds)]}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            shared.clear()
            gc.collect()
        assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []
