"""Sequential raw HTTP/1.1 client and event-stream holder, for latency figures in the bench process.

Owns one keep-alive connection over asyncio streams that sends a request and
notes the wall-clock time (`time.time()`) just before the bytes leave, so it
can be compared with timestamps a task records on the same machine (and the
round trip, `last_rtt_s`); `gapped_series`, the idle pattern of the
after-idle samples (shared by jobserver's pickups and the bare route); and
`hold_stream`, which keeps one Server-Sent Events response open and reads it.
Imports `bench.loadgen` for request building; nothing from jobserver.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson

from bench.loadgen import build_request

T = TypeVar("T")


class RawClient:
    """One keep-alive connection; one request at a time."""

    def __init__(self, host: str, port: int, headers: dict[str, str] | None = None) -> None:
        self.host, self.port, self.headers = host, port, headers or {}
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.last_rtt_s = 0.0  # the last request's round trip: bytes sent -> whole answer read

    async def __aenter__(self) -> RawClient:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.writer is not None:
            self.writer.close()

    async def request(
        self, method: str, path: str, body: Any = None, timeout_s: float = 70.0
    ) -> tuple[int, Any, float]:
        """Send one request; return (status, parsed JSON body or None, wall time just before sending)."""
        assert self.reader is not None and self.writer is not None
        req: dict[str, Any] = {"method": method, "path": path, "headers": self.headers}
        if body is not None:
            req["body"] = body
        data = build_request(self.host, self.port, req)
        sent_at, t0 = time.time(), time.perf_counter()
        self.writer.write(data)
        status, raw = await asyncio.wait_for(self._response(), timeout_s)
        self.last_rtt_s = time.perf_counter() - t0
        try:
            doc = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            doc = None
        return status, doc, sent_at

    async def _response(self) -> tuple[int, bytes]:
        assert self.reader is not None
        head = (await self.reader.readuntil(b"\r\n\r\n")).lower()
        status = int(head[9:12])
        i = head.find(b"\r\ncontent-length:")
        if i < 0:
            raise ValueError("response without Content-Length")
        length = int(head[i + 17 : head.find(b"\r\n", i + 2)])
        return status, await self.reader.readexactly(length)


async def gapped_series(
    host: str,
    port: int,
    idle_s: float,
    count: int,
    gap_s: float,
    sample: Callable[[RawClient], Awaitable[T]],
    headers: dict[str, str] | None = None,
) -> list[T]:
    """The after-idle pattern: `idle_s` with no connection open, then one fresh connection
    and `count` samples, each after a further `gap_s` of quiet."""
    await asyncio.sleep(idle_s)
    out: list[T] = []
    async with RawClient(host, port, headers) as client:
        for _ in range(count):
            await asyncio.sleep(gap_s)
            out.append(await sample(client))
    return out


async def hold_stream(
    host: str, port: int, path: str, opened: asyncio.Queue[int], headers: dict[str, str] | None = None
) -> int:
    """Open an event stream at `path`, report its status on `opened`, read until it ends; return bytes read."""
    reader, writer = await asyncio.open_connection(host, port)
    total = 0
    try:
        writer.write(
            build_request(
                host,
                port,
                {
                    "method": "GET",
                    "path": path,
                    "headers": {"Accept": "text/event-stream", **(headers or {})},
                },
            )
        )
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        await opened.put(status)
        if status != 200:
            return 0
        for _ in range(10_000_000):  # bounded; the stream ends when the job does or when cancelled
            chunk = await reader.read(65536)
            if not chunk:
                break
            total += len(chunk)
    finally:
        writer.close()
    return total
