"""Bounded request heads, the head deadline and the connection cap, over real sockets
against the real server process: its memory, its open files and its clock are the point."""

from __future__ import annotations

import json
import select
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e import Server, start_server
from tests.helpers import submit, wait_until

pytestmark = pytest.mark.e2e

MIB = 1 << 20
SLOW_HEAD = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"  # a head that never ends


def vm_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


def answer_of(data: bytes) -> tuple[int, dict[str, object]]:
    """(status, problem document) of a raw HTTP answer."""
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"content-type: application/problem+json" in head.lower(), data[:400]
    return int(head.split(b" ", 2)[1]), json.loads(body)


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """What the server sends until it closes the connection, and when it closed (monotonic)."""
    sock.settimeout(timeout)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received, time.monotonic()


def flood_heads(port: int, pid: int, connections: int, head_bytes: int) -> tuple[list[bytes], int]:
    """`connections` sockets each send a header line that never ends, up to `head_bytes` or until
    the server answers; returns the start of each answer, and the server's RSS at the end of the
    flood, with the sockets still open."""
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(connections)]
    sent, answers = dict.fromkeys(socks, 0), dict.fromkeys(socks, b"")
    chunk = b"a" * 65536
    deadline = time.monotonic() + 60
    try:
        for s in socks:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Filler: ")
            s.setblocking(False)
        while pending := [s for s in socks if not answers[s] and sent[s] < head_bytes]:
            assert time.monotonic() < deadline, "the head flood did not finish in 60 s"
            readable, writable, _ = select.select(pending, pending, [], 1.0)
            for s in readable:
                try:
                    answers[s] = s.recv(65536) or b"(closed)"
                except ConnectionResetError:
                    answers[s] = b"(reset)"
            for s in set(writable) - set(readable):
                try:
                    sent[s] += s.send(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    sent[s] = head_bytes
        return [answers[s] for s in socks], vm_rss_bytes(pid)
    finally:
        for s in socks:
            s.close()


def test_a_huge_header_gets_431_and_memory_stays_bounded(shared: Server) -> None:
    assert shared.proc is not None
    with socket.create_connection(("127.0.0.1", shared.port), timeout=10) as sock:
        sock.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * (40 * 1024) + b"\r\n\r\n"
        )
        status, doc = answer_of(read_until_closed(sock, 10)[0])
    assert status == 431 and doc["status"] == 431 and "32768 bytes" in str(doc["detail"]), doc

    baseline = vm_rss_bytes(shared.proc.pid)
    answers, rss = flood_heads(shared.port, shared.proc.pid, connections=50, head_bytes=4 * MIB)
    grown = rss - baseline
    assert all(a.startswith(b"HTTP/1.1 431 ") for a in answers), {a[:40] for a in answers}
    assert grown < 40 * MIB, f"RSS grew by {grown / MIB:.1f} MiB under 50 x 4 MiB heads"
    assert shared.client().get("/healthz").status_code == 200


def test_too_many_header_lines_get_431(shared: Server) -> None:
    lines = "".join(f"X-Line-{i}: {i}\r\n" for i in range(101))
    with socket.create_connection(("127.0.0.1", shared.port), timeout=10) as sock:
        sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n{lines}\r\n".encode())
        status, doc = answer_of(read_until_closed(sock, 10)[0])
    assert status == 431 and "100 header lines" in str(doc["detail"]), doc
    r = shared.client().get("/healthz", headers={f"X-Line-{i}": "1" for i in range(90)})
    assert r.status_code == 200


def test_pipelined_requests_and_bodies_with_many_lines_are_not_heads(shared: Server) -> None:
    """Only the head is bounded: pipelined requests in one write are all answered (a request with
    a body followed by one without too), and a body of 300 lines is a body, not 300 header lines."""
    get = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with socket.create_connection(("127.0.0.1", shared.port), timeout=10) as sock:
        sock.sendall((get * 2 + get.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n")).encode())
        received = read_until_closed(sock, 10)[0]
    assert received.count(b"HTTP/1.1 200 OK\r\n") == 3, received[:600]

    job = b'{"task": "jobserver.examples.add", "args": {"a": 1, "b": 2}}'
    post = b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    post += b"Content-Length: %d\r\n\r\n%s" % (len(job), job)
    with socket.create_connection(("127.0.0.1", shared.port), timeout=10) as sock:
        sock.sendall(post + get.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n").encode())
        received = read_until_closed(sock, 10)[0]
    assert b"HTTP/1.1 202 Accepted\r\n" in received and received.endswith(b'{"status":"ok"}'), received[-600:]

    body = "{" + "\n" * 300 + '"task": "jobserver.examples.add", "args": {"a": 1, "b": 2}}'
    r = shared.client().post("/jobs", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 202, r.text


def test_bytes_that_are_not_http_get_a_400_problem_and_a_request_in_flight_is_answered_first(
    shared: Server,
) -> None:
    for head in (b"GARBAGE\r\n\r\n", b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", shared.port), timeout=10) as sock:
            sock.sendall(head)
            status, doc = answer_of(read_until_closed(sock, 10)[0])
        assert status == 400 and doc["code"] == "malformed-request", doc
    get = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with socket.create_connection(("127.0.0.1", shared.port), timeout=10) as sock:
        sock.sendall(get + b"GARBAGE\r\n\r\n")  # the first answer whole, then the connection closes
        received = read_until_closed(sock, 10)[0]
    assert received.startswith(b"HTTP/1.1 200 OK\r\n") and received.endswith(b'{"status":"ok"}'), received
    assert received.count(b"HTTP/1.1") == 1, received


def test_a_malformed_chunked_body_gets_a_400_problem_and_the_connection_closes(shared: Server) -> None:
    """A chunk-size line that is not hex, at once or after a good chunk: a 400 problem and the
    connection closed, long before the body deadline; queued behind requests still being
    answered, they are answered whole and the connection closes."""
    post = (
        b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    for chunks in (b"zz\r\n{}\r\n0\r\n\r\n", b'9\r\n{"task": \r\nzz\r\n"x"}\r\n0\r\n\r\n'):
        with socket.create_connection(("127.0.0.1", shared.port), timeout=10) as sock:
            started = time.monotonic()
            sock.sendall(post + chunks)
            received, closed_at = read_until_closed(sock, 10)
        status, doc = answer_of(received)
        assert status == 400 and doc["code"] == "malformed-request" and "body" in str(doc["detail"]), doc
        assert closed_at - started < 5  # not the body deadline (30 s)
    get = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with socket.create_connection(("127.0.0.1", shared.port), timeout=10) as sock:
        sock.sendall(get * 2 + post + b"zz\r\n{}\r\n0\r\n\r\n")
        received = read_until_closed(sock, 10)[0]
    assert received.startswith(b"HTTP/1.1 200 OK\r\n") and received.count(b'{"status":"ok"}') == 2, received


def test_a_slow_client_is_closed_at_the_head_deadline(tmp_path: Path) -> None:
    srv = start_server(tmp_path, {"server": {"header_timeout": "1s"}})
    silent = socket.create_connection(("127.0.0.1", srv.port))
    with socket.create_connection(("127.0.0.1", srv.port)) as sock, silent:
        started = time.monotonic()
        sock.sendall(SLOW_HEAD)
        received, line = b"", 0
        while time.monotonic() - started < 10:  # one header line every 0.2 s, until the server answers
            if select.select([sock], [], [], 0.2)[0]:
                received, closed_at = read_until_closed(sock, 5)
                break
            sock.sendall(f"X-Trickle-{line}: y\r\n".encode())
            line += 1
        else:
            raise AssertionError(f"still open after 10 s and {line} header lines")
        status, doc = answer_of(received)
        assert status == 408, doc
        assert 0.9 < closed_at - started < 5
        assert read_until_closed(silent, 5)[0] == b""  # a client that sends nothing is closed too
    with httpx.Client(base_url=srv.url) as c:
        assert c.get("/healthz").status_code == 200  # a kept-alive client that is not slow stays fine
        assert c.get("/healthz").status_code == 200


def test_a_body_that_trickles_in_gets_408_and_nothing_of_it_is_done(tmp_path: Path) -> None:
    srv = start_server(tmp_path, {"server": {"body_timeout": "1s"}})
    body = b'{"task": "jobserver.examples.add", "args": {"a": 1, "b": 2}}'
    head = (
        b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    with socket.create_connection(("127.0.0.1", srv.port)) as sock:
        started = time.monotonic()
        sock.sendall(head)
        for sent in range(len(body) - 1):  # a byte every 0.2 s: the whole body would take 12 s
            if select.select([sock], [], [], 0.2)[0]:
                received, closed_at = read_until_closed(sock, 5)
                break
            sock.sendall(body[sent : sent + 1])
        else:
            raise AssertionError("the whole body but its last byte was read without an answer")
    status, doc = answer_of(received)
    assert status == 408 and "body" in str(doc["detail"]), doc
    assert 0.9 < closed_at - started < 5
    with httpx.Client(base_url=srv.url) as c:
        assert c.get("/jobs").json()["jobs"] == []  # the cut request submitted nothing
        assert c.post("/jobs", content=body, headers={"content-type": "application/json"}).status_code == 202
    assert "Traceback" not in srv.log() and "ERROR" not in srv.log()


def test_slow_clients_beyond_the_open_files_limit_leave_healthz_answering(tmp_path: Path) -> None:
    """With 256 open files (hard limit, so it cannot be raised), 300 connections that never
    finish their heads: the cap (under the limit) closes the oldest to make room, and /healthz
    keeps answering."""
    srv = start_server(
        tmp_path, {"server": {"header_timeout": "60s"}}, prefix=["prlimit", "--nofile=256:256", "--"]
    )
    socks = []
    try:
        for _ in range(300):
            s = socket.create_connection(("127.0.0.1", srv.port))
            s.sendall(SLOW_HEAD)
            socks.append(s)
        for _ in range(5):
            assert httpx.get(srv.url + "/healthz", timeout=5).status_code == 200
        wait_until(lambda: "connection limit reached" in srv.log(), 10, message="the cap's warning")
        assert "server.max_connections = 1000 lowered to 192" in srv.log()
    finally:
        for s in socks:
            s.close()


def test_the_connection_cap_refuses_when_all_are_busy_and_recovers(tmp_path: Path) -> None:
    """20 event streams fill a cap of 20: a new connection gets a 503 problem and the cap's
    WARNING (one line, not one per connection); once the streams close, /healthz answers again."""
    srv = start_server(tmp_path, {"server": {"max_connections": 20}})
    with srv.client() as c:
        job_id = submit(c, "jobserver.examples.add", {"a": 1, "b": 2}, delay=3600)
    streams: list[socket.socket] = []
    try:
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            s.sendall(f"GET /jobs/{job_id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            assert s.recv(65536).startswith(b"HTTP/1.1 200 "), "the stream did not start"
            streams.append(s)
        for _ in range(10):
            r = httpx.get(srv.url + "/healthz", timeout=5)
            assert r.status_code == 503, r.text
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["code"] == "too-many-connections"
        wait_until(lambda: "connection limit reached" in srv.log(), 10, message="the cap's warning")
    finally:
        for s in streams:
            s.close()
    wait_until(lambda: httpx.get(srv.url + "/healthz", timeout=5).status_code == 200, 10, 0.1, "/healthz")
    assert 1 <= srv.log().count("connection limit reached") <= 3, (
        srv.log()
    )  # rate-limited, not one per refusal
