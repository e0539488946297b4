"""The connection cap's WARNING: one at the first hit, then at most one per interval with the
counts since; driven on a real event loop with a short interval."""

from __future__ import annotations

import asyncio
import logging

import pytest

from jobserver.http.protocol import CapWarnings, OneWritePerResponse


class _Lines(logging.Handler):
    """Collects the WARNING lines and sets `second` when two have arrived (on the loop's thread)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []
        self.second = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
        if len(self.lines) == 2:
            self.second.set()


def test_cap_warnings_are_rate_limited_and_keep_count() -> None:
    logger = logging.getLogger("jobserver.http.protocol")

    async def flood() -> list[str]:
        lines = _Lines()
        logger.addHandler(lines)
        try:
            warnings = CapWarnings(limit=20, interval_s=0.2)
            for i in range(50):
                warnings.hit(evicted=i % 2 == 0)
            assert len(lines.lines) == 1  # the first at once, the other 49 wait for the interval
            await asyncio.wait_for(lines.second.wait(), 5)
            return lines.lines
        finally:
            logger.removeHandler(lines)

    lines = asyncio.run(flood())
    assert "server.max_connections = 20" in lines[0]
    assert "1 waiting client(s) closed to make room, 0 new connection(s) refused" in lines[0]
    assert "24 waiting client(s) closed to make room, 25 new connection(s) refused" in lines[1]


def test_a_hit_after_a_quiet_interval_is_reported_at_once(caplog: pytest.LogCaptureFixture) -> None:
    warnings = CapWarnings(limit=5, interval_s=0.0)
    with caplog.at_level(logging.WARNING, logger="jobserver.http.protocol"):
        warnings.hit(evicted=False)
        warnings.hit(evicted=False)
    assert [r.getMessage().count("1 new connection(s) refused") for r in caplog.records] == [1, 1]


class _Recorded:
    """A transport that records each write (one system call each on a real socket)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.wrote = asyncio.Event()  # set by each write

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        self.wrote.set()

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


def test_a_response_head_and_body_leave_in_one_write() -> None:
    async def respond() -> tuple[list[bytes], list[bytes], list[bytes], bool]:
        loop = asyncio.get_running_loop()
        transport = _Recorded()
        writes = OneWritePerResponse(transport, loop)  # type: ignore[arg-type]
        writes.write(b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n")
        writes.write(b"{}")
        answered = list(transport.writes)
        # a stream's head with nothing to send yet goes out at the end of the loop's pass
        transport.wrote.clear()
        writes.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        held = list(transport.writes)
        await asyncio.wait_for(transport.wrote.wait(), 10)
        streamed = list(transport.writes)
        writes.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        writes.close()  # a head still held is sent before the connection closes
        return answered, held, streamed, transport.writes[-1].startswith(b"HTTP/1.1 204")

    answered, held, streamed, flushed_on_close = asyncio.run(respond())
    assert answered == [b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n{}"]
    assert held == answered
    assert streamed[-1] == b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    assert flushed_on_close
