"""Load generator: a raw HTTP/1.1 keep-alive client on uvloop, closed loop.

Owns sending prebuilt request bytes over N connections (one request in flight
on each) and timing every response. It parses only the status line,
Content-Length and the body, so a request costs it far less than it costs the
server under test; `bench.baselines` measures its ceiling against a canned
responder so every run shows that. It runs in the bench process (`run`) or as
its own process (`python -m bench.loadgen`: a JSON spec on stdin, a JSON
result on stdout), so its CPU never mixes with the server's.

Spec keys: host, port, conns, mode, timeout_s, and per mode
- "duration": request, warmup_s, duration_s -> throughput over the window;
- "batch": requests (each sent once), keep -> field values pulled from bodies;
- "submit_follow": requests, then one GET per answer at follow (a path with
  `{id}`) -> the wall time from the first submit to the last followed answer.
A request is {"method", "path", "body"?: JSON value, "headers"?: {...}}.

Imports nothing from jobserver.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from array import array
from collections import Counter
from collections.abc import Sequence
from typing import Any

import orjson
import uvloop

MAX_RECONNECTS = 50


def build_request(host: str, port: int, req: dict[str, Any]) -> bytes:
    """Prebuild the bytes of one HTTP/1.1 request."""
    lines = [f"{req['method']} {req['path']} HTTP/1.1", f"Host: {host}:{port}"]
    for name, value in (req.get("headers") or {}).items():
        lines.append(f"{name}: {value}")
    body = b""
    if "body" in req:
        body = orjson.dumps(req["body"])
        lines.append("Content-Type: application/json")
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def percentiles_ms(
    samples_ns: Sequence[int], points: tuple[float, ...] = (50, 90, 99, 99.9)
) -> dict[str, float]:
    """Nearest-rank percentiles, mean and max of latencies in ns, as ms."""
    if not samples_ns:
        return {}
    ordered = sorted(samples_ns)
    n = len(ordered)
    out = {f"p{p:g}": ordered[max(0, math.ceil(p / 100 * n) - 1)] / 1e6 for p in points}
    out["mean"] = sum(ordered) / n / 1e6
    out["max"] = ordered[-1] / 1e6
    return out


class _Source:
    """Hands requests to connections and records what comes back."""

    keep_bodies = False

    def __init__(self) -> None:
        self.latencies = array("q")
        self.statuses: Counter[int] = Counter()
        self.errors = 0

    def next(self) -> tuple[int, bytes] | None:
        raise NotImplementedError

    def done(self, key: int, status: int, body: bytes | None, sent_ns: int, now_ns: int) -> None:
        raise NotImplementedError

    def failed(self, key: int) -> None:
        self.errors += 1

    def next_free(self) -> bool:
        raise NotImplementedError


class _Repeat(_Source):
    """The same request again and again until a deadline; measures a window after a warmup."""

    def __init__(self, data: bytes, measure_ns: int, end_ns: int) -> None:
        super().__init__()
        self.data, self.measure_ns, self.end_ns = data, measure_ns, end_ns
        self.completed_in_window = 0

    def next(self) -> tuple[int, bytes] | None:
        return (0, self.data) if time.perf_counter_ns() < self.end_ns else None

    def next_free(self) -> bool:
        return time.perf_counter_ns() < self.end_ns

    def done(self, key: int, status: int, body: bytes | None, sent_ns: int, now_ns: int) -> None:
        if self.measure_ns <= now_ns <= self.end_ns:
            self.completed_in_window += 1
        if sent_ns >= self.measure_ns:
            self.latencies.append(now_ns - sent_ns)
            self.statuses[status] += 1


class _Batch(_Source):
    """Each request once, in order, spread over the connections."""

    def __init__(self, items: list[bytes], keep_bodies: bool) -> None:
        super().__init__()
        self.items = items
        self.i = 0
        self.keep_bodies = keep_bodies
        self.bodies: list[bytes | None] = [None] * len(items)
        self.codes: list[int] = [0] * len(items)

    def next(self) -> tuple[int, bytes] | None:
        if self.i >= len(self.items):
            return None
        self.i += 1
        return (self.i - 1, self.items[self.i - 1])

    def next_free(self) -> bool:
        return self.i < len(self.items)

    def done(self, key: int, status: int, body: bytes | None, sent_ns: int, now_ns: int) -> None:
        self.latencies.append(now_ns - sent_ns)
        self.statuses[status] += 1
        self.codes[key] = status
        if self.keep_bodies:
            self.bodies[key] = body


class _Session(asyncio.Protocol):
    """One keep-alive connection working through a source, one request in flight."""

    def __init__(self, source: _Source, finished: asyncio.Future[bool]) -> None:
        self.source, self.finished = source, finished
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.need = -1
        self.head_end = 0
        self.status = 0
        self.current: tuple[int, int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._send_next()

    def _send_next(self) -> None:
        item = self.source.next()
        if item is None:
            self.current = None
            if not self.finished.done():
                self.finished.set_result(True)
            return
        self.current = (item[0], time.perf_counter_ns())
        self.transport.write(item[1])  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            if self.need < 0:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(buf[:end]).lower()
                i = head.find(b"\r\ncontent-length:")
                if i < 0:  # chunked or close-delimited: not something this client reads
                    self.transport.close()  # type: ignore[union-attr]
                    return
                j = head.find(b"\r\n", i + 2)
                self.status = int(head[9:12])
                self.head_end = end + 4
                self.need = self.head_end + int(head[i + 17 : j if j > 0 else end])
            if len(buf) < self.need:
                return
            body = bytes(buf[self.head_end : self.need]) if self.source.keep_bodies else None
            del buf[: self.need]
            self.need = -1
            now = time.perf_counter_ns()
            if self.current is not None:
                key, sent = self.current
                self.current = None
                self.source.done(key, self.status, body, sent, now)
                self._send_next()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.current is not None:
            self.source.failed(self.current[0])
            self.current = None
        if not self.finished.done():
            self.finished.set_result(False)


async def _drive(host: str, port: int, conns: int, source: _Source, timeout_s: float) -> None:
    """Run `conns` sessions over `source` until it is exhausted (reconnecting a bounded number of times)."""
    loop = asyncio.get_running_loop()

    async def one() -> None:
        for _ in range(MAX_RECONNECTS + 1):
            finished: asyncio.Future[bool] = loop.create_future()
            try:
                transport, _ = await loop.create_connection(lambda: _Session(source, finished), host, port)  # noqa: B023
            except OSError:
                source.errors += 1
                await asyncio.sleep(0.05)
                continue
            ok = await finished
            transport.close()
            if ok or not source.next_free():
                return

    await asyncio.wait_for(asyncio.gather(*(one() for _ in range(conns))), timeout_s)


def _summary(source: _Source, elapsed_s: float, cpu_s: float, completed: int) -> dict[str, Any]:
    return {
        "completed": completed,
        "errors": source.errors,
        "statuses": {str(k): v for k, v in sorted(source.statuses.items())},
        "elapsed_s": elapsed_s,
        "rps": completed / elapsed_s if elapsed_s > 0 else 0.0,
        "latency_ms": percentiles_ms(source.latencies),
        "client_cpu_s": cpu_s,
        "client_cpu_share": cpu_s / elapsed_s if elapsed_s > 0 else 0.0,
    }


async def _run_duration(spec: dict[str, Any]) -> dict[str, Any]:
    host, port = spec["host"], spec["port"]
    start = time.perf_counter_ns()
    measure = start + int(spec.get("warmup_s", 0.0) * 1e9)
    end = measure + int(spec["duration_s"] * 1e9)
    source = _Repeat(build_request(host, port, spec["request"]), measure, end)
    cpu0 = None

    async def cpu_mark() -> None:
        nonlocal cpu0
        await asyncio.sleep(max(0.0, (measure - time.perf_counter_ns()) / 1e9))
        cpu0 = time.process_time()

    marker = asyncio.ensure_future(cpu_mark())
    await _drive(host, port, spec["conns"], source, spec.get("timeout_s", spec["duration_s"] + 60))
    await marker
    cpu = time.process_time() - (cpu0 if cpu0 is not None else 0.0)
    return _summary(source, (end - measure) / 1e9, cpu, source.completed_in_window)


def _extract(bodies: list[bytes | None], keep: list[str]) -> list[dict[str, Any] | None]:
    out: list[dict[str, Any] | None] = []
    for body in bodies:
        try:
            doc = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            doc = None
        out.append({k: doc.get(k) for k in keep} if isinstance(doc, dict) else None)
    return out


async def _run_batch(
    spec: dict[str, Any], requests: list[dict[str, Any]], keep: list[str]
) -> tuple[dict[str, Any], list[Any], float, float]:
    host, port = spec["host"], spec["port"]
    source = _Batch([build_request(host, port, r) for r in requests], keep_bodies=bool(keep))
    wall0, t0, cpu0 = time.time(), time.perf_counter(), time.process_time()
    await _drive(host, port, spec["conns"], source, spec.get("timeout_s", 120.0))
    elapsed, wall1 = time.perf_counter() - t0, time.time()
    result = _summary(source, elapsed, time.process_time() - cpu0, sum(source.statuses.values()))
    return result, _extract(source.bodies, keep) if keep else [], wall0, wall1


async def _run_submit_follow(spec: dict[str, Any]) -> dict[str, Any]:
    sub, docs, wall0, _ = await _run_batch(spec, spec["requests"], ["id"])
    ids = [d["id"] for d in docs if d and d.get("id")]
    follow = [
        {"method": "GET", "path": spec["follow"].format(id=i), "headers": spec["requests"][0].get("headers")}
        for i in ids
    ]
    keep = spec.get("keep") or ["status"]
    fol, jobs, _, wall1 = await _run_batch(spec, follow, keep)
    return {
        "submit": sub,
        "follow": fol,
        "ids": ids,
        "jobs": jobs,
        "first_send_at": wall0,
        "last_answer_at": wall1,
        "elapsed_s": wall1 - wall0,
    }


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one load spec (see the module docstring) and return its summary."""
    mode = spec["mode"]
    if mode == "duration":
        return await _run_duration(spec)
    if mode == "batch":
        result, docs, wall0, wall1 = await _run_batch(spec, spec["requests"], spec.get("keep") or [])
        return {**result, "docs": docs, "first_send_at": wall0, "last_answer_at": wall1}
    if mode == "submit_follow":
        return await _run_submit_follow(spec)
    raise ValueError(f"unknown mode {mode!r}")


def main() -> None:
    """Read a spec from stdin, run it on uvloop, write the result to stdout."""
    spec = orjson.loads(sys.stdin.buffer.read())
    result = uvloop.run(run(spec))
    sys.stdout.buffer.write(orjson.dumps(result))


if __name__ == "__main__":
    main()
