"""What the HTTP server process does with request bodies it must refuse: over real
sockets, against the real server process, since the server's framing and memory are
the point."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import Server

pytestmark = pytest.mark.e2e

GIB = 1 << 30
MIB = 1 << 20


@pytest.fixture(scope="module")
def server(shared: Server) -> Server:
    """One server process for the module: each test refuses its body and leaves nothing behind."""
    return shared


def vm_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


def chunked_frames(total: int, size: int = 256 * 1024) -> Iterator[bytes]:
    """A chunked-encoded body of `total` bytes, made one frame at a time (never held whole)."""
    frame = f"{size:x}\r\n".encode() + b" " * size + b"\r\n"
    for _ in range(total // size):
        yield frame
    yield b"0\r\n\r\n"


def http_head(server: Server, extra: str) -> bytes:
    return (
        f"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Content-Type: application/json\r\n{extra}\r\n"
    ).encode()


def read_status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def test_a_huge_chunked_body_is_refused_early_and_memory_stays_flat(server: Server) -> None:
    """1 GiB of chunked body: 413 arrives after about max_body_bytes, and the server's
    memory does not grow while the client keeps sending the rest."""
    assert server.proc is not None
    pid = server.proc.pid
    baseline = vm_rss_bytes(pid)
    peak = baseline
    frames = chunked_frames(GIB)
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.setblocking(False)
    out, sent, answer = http_head(server, "Transfer-Encoding: chunked\r\n"), 0, b""
    sent_when_answered: int | None = None
    started = time.monotonic()
    deadline = started + 120
    try:
        while time.monotonic() < deadline:
            readable, writable, _ = select.select([sock], [sock] if out else [], [], 1.0)
            if readable:
                data = sock.recv(65536)
                if not data:
                    break  # the server closed the connection: fine, the body is refused
                answer += data
                if sent_when_answered is None and b"\r\n\r\n" in answer:
                    sent_when_answered = sent
                    answered_after_s = time.monotonic() - started
            if writable:
                try:
                    n = sock.send(out)
                except (BrokenPipeError, ConnectionResetError):
                    break
                sent += n
                out = out[n:] or next(frames, b"")
                if sent % (64 * MIB) < n:
                    peak = max(peak, vm_rss_bytes(pid))
            if not out and sent_when_answered is not None:
                break  # all of the 1 GiB went out (or was refused) and the answer is in
    finally:
        sock.close()
    peak = max(peak, vm_rss_bytes(pid))
    assert sent_when_answered is not None, f"no answer after sending {sent} bytes"
    assert read_status(answer) == 413, answer[:300]
    assert sent_when_answered < 64 * MIB, "the server read far past max_body_bytes before answering"
    assert answered_after_s < 10
    assert peak - baseline < 50 * MIB, f"RSS grew by {(peak - baseline) / MIB:.1f} MiB"
    assert server.client().get("/healthz").status_code == 200


def test_a_large_content_length_is_refused_before_reading(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(http_head(server, f"Content-Length: {100 * GIB}\r\n"))  # and no body at all
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = sock.recv(65536)
            assert data, "connection closed without an answer"
            answer += data
    assert read_status(answer) == 413, answer[:300]
    assert b"application/problem+json" in answer.lower()
