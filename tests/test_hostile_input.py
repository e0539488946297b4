"""Hostile input at every route: no answer is a 5xx, every 4xx is a problem document,
and nothing that was refused changed anything.

The routes come from the app itself, so a route added later is covered without
editing this file. Each route gets odd path ids, odd query values for every
query parameter the API knows, odd headers, and (for routes that take a body)
bodies that are too big, too deep, not UTF-8, not JSON, or JSON with NaN,
duplicate keys and numbers beyond 64 bits.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.routing import Route

from tests.helpers import finished, submit
from tests.inproc import RunningApp, running_app

# end to end: the whole server through its public interface, every route
pytestmark = pytest.mark.e2e
ODD_IDS = [
    "x",
    "0",
    "-1",
    "99999999999999999999",
    "%00",
    "%C2%B2",
    "%FF%FE",
    "..%2F..%2Fetc",
    "a" * 5000,
    "%F0%9F%92%A5",
    "null",
    " ",
]
ODD_VALUES = [
    "",
    "-1",
    "0",
    "1e400",
    "NaN",
    "Infinity",
    "-Infinity",
    "99999999999999999999",
    "9" * 5000,
    "%C2%B2",
    "%FF",
    "%00",
    "true",
    "[]",
    "{}",
    "a" * 10000,
    "pending",
    "0x10",
]
UNDECLARED = "x"  # a query parameter no route declares
ODD_HEADERS: list[dict[str, str | bytes]] = [
    {"Last-Event-ID": v} for v in ("99999999999999999999", "9" * 5000, "-5", "1.5", "²".encode(), "abc", "")
] + [
    {"Idempotency-Key": "ключ".encode()},
    {"Idempotency-Key": b"\xff\xfe"},
    {"Idempotency-Key": "k" * 300},
    {"Idempotency-Key": ""},
    {"Content-Type": "application/json; charset=latin-1"},
    {"Content-Type": "text/plain"},
    {"Content-Type": "application/xml"},
    {"Accept": "application/xml"},
]


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def deep(depth: int, objects: bool = False) -> str:
    """JSON text of a value nested `depth` levels (built as text: encoders stop earlier)."""
    if objects:
        return '{"k": ' * depth + "1" + "}" * depth
    return "[" * depth + "1" + "]" * depth


def raw(text: str | bytes) -> bytes:
    return text if isinstance(text, bytes) else text.encode()


def job_body(task: str, args: Any) -> bytes:
    return orjson.dumps({"task": task, "args": args})


def deep_job(depth: int, objects: bool = False) -> bytes:
    return raw('{"task": "' + ECHO + '", "args": {"value": ' + deep(depth, objects) + "}}")


ECHO = "tests.e2e_tasks.echo"
ADD = "jobserver.examples.add"
ODD_BODIES: list[bytes] = [
    b"",
    b"null",
    b"[]",
    b'"text"',
    b"1",
    b"{",
    b"\xff\xfe\xfa",
    b'{"task": "\xff"}',
    b'{"task": "' + ECHO.encode() + b'", "args": {"value": NaN}}',
    b'{"task": "' + ECHO.encode() + b'", "args": {"value": Infinity}}',
    b'{"task": "' + ECHO.encode() + b'", "args": {"value": 1e400}}',
    b'{"task": "' + ECHO.encode() + b'", "args": {"value": -1e400}}',
    b'{"task": "' + ECHO.encode() + b'", "task": 5}',
    b'{"task": "' + ADD.encode() + b'", "args": {"a": 99999999999999999999, "b": 1}}',
    b'{"task": "' + ADD.encode() + b'", "args": {"a": "99999999999999999999", "b": 1}}',
    b'{"task": "' + ADD.encode() + b'", "args": {"a": "-99999999999999999999", "b": 1}}',
    b'{"task": "' + ADD.encode() + b'", "args": {"a": "' + b"9" * 5000 + b'", "b": 1}}',
    b'{"task": "' + ECHO.encode() + b'", "args": {"value": 18446744073709551616}}',
    b'{"task": "' + ECHO.encode() + b'", "args": {"value": -9223372036854775809}}',
    b'{"task": "\\u0000"}',
    b'{"task": "' + ECHO.encode() + b'", "args": {"value": "\\ud800"}}',
    deep_job(65),
    deep_job(250),
    deep_job(300, objects=True),
    raw("[" * 300 + "]" * 300),
    raw('{"task": "' + ECHO + '", "args": {"value": ' + "[" * 1000 + "]" * 1000 + "}}"),
    raw('{"task": "' + ECHO + '", "args": {"value": ' + "[" * 5000 + "]" * 5000 + "}}"),
    raw('{"task": "' + ECHO + '", "x": ' + "[" * 300 + "]" * 300 + "}"),
    raw('{"task": "' + ECHO + '", "args": {"value": "' + "x" * 2_000_000 + '"}}'),
    job_body(ECHO, {"value": "x" * 100_000}),
    job_body("x" * 10_000, {}),
    orjson.dumps({"task": ECHO, "args": [1, 2]}),
    orjson.dumps({"task": ECHO, "args": None, "priority": 99999999999999999999 // 10}),
    raw('{"task": "' + ECHO + '", "priority": 99999999999999999999}'),
    raw('{"task": "' + ECHO + '", "delay": 1e308}'),
    raw('{"task": "' + ECHO + '", "run_at": "99999-01-01T00:00:00Z"}'),
    raw('{"task": "' + ECHO + '", "webhook_url": "http://' + "a" * 300 + '.example/"}'),
    raw('{"task": "' + ECHO + '", "webhook_url": "javascript:alert(1)"}'),
    raw('{"status": ["pending"], "ids": [' + ",".join(['"x"'] * 2000) + "]}"),
    raw('{"ids": "' + "9" * 5000 + '"}'),
    raw('{"cron": "' + "*" * 5000 + '"}'),
    raw('{"payload": ' + "[" * 1000 + "]" * 1000 + "}"),
]

# Odd but well-formed: a submit of one of these is accepted (202), every other body above is not.
ACCEPTED_JOBS: list[bytes] = [
    b'{"task": "' + ECHO.encode() + b'", "args": {"value": 1, "value": [1, 2]}}',
    b'{"task": "' + ECHO.encode() + b'", "args": {"value": "99999999999999999999"}}',
    b'{"task": "' + ECHO.encode() + b'", "args": {"value": "\\u0000"}}',
    job_body(ECHO, {"value": [1.5e308, -1.5e308]}),
    job_body(ECHO, {"value": {"a" * 1000: 1}}),
    raw('{"task": "' + ECHO + '", "timeout": 1e-300}'),
]


def routes_of(app: RunningApp) -> Iterator[tuple[str, str, list[str]]]:
    """(method, path template, path parameter names) of every route the app serves."""
    for route in app.asgi_app.routes:
        if isinstance(route, Route):
            for method in sorted(route.methods or ()):
                if method != "HEAD":
                    yield method, route.path, list(route.param_convertors)


def query_names(app: RunningApp, method: str, path: str) -> list[str]:
    """The query parameters the OpenAPI document declares for a route, and one it does not."""
    doc = app.client.get("/openapi.json").json()
    operation = doc["paths"].get(path, {}).get(method.lower(), {})
    return [p["name"] for p in operation.get("parameters", []) if p["in"] == "query"] + [UNDECLARED]


def fill(path: str, names: list[str], value: str) -> str:
    for name in names:
        path = path.replace("{" + name + "}", value)
    return path


def check(response: httpx.Response, what: str) -> None:
    assert response.status_code < 500, f"{what}: {response.status_code} {response.text[:300]}"
    if 400 <= response.status_code < 500:
        ctype = response.headers.get("content-type", "")
        assert ctype.startswith("application/problem+json"), f"{what}: {ctype} {response.text[:200]}"
        doc = response.json()
        assert doc["status"] == response.status_code, what
        assert doc["type"] and doc["title"] and "detail" in doc, what


def send(c: httpx.Client, method: str, url: str, **kwargs: Any) -> httpx.Response:
    if method == "GET" and url.endswith("/events"):
        with c.stream(method, url, timeout=10, **kwargs) as r:
            r.read()  # the stream of a finished job ends by itself
            return r
    return c.request(method, url, timeout=10, **kwargs)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningApp, str]]:
    tmp: Path = tmp_path_factory.mktemp("hostile")
    with running_app(tmp) as app:
        job_id = submit(app.client, ADD, {"a": 1, "b": 2})
        finished(app.client, job_id)
        yield app, job_id


def count_jobs(app: RunningApp) -> int:
    import sqlite3

    with sqlite3.connect(app.db_path) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])


def test_odd_path_ids_and_query_values(hostile: tuple[RunningApp, str]) -> None:
    app, job_id = hostile
    c = app.client
    before = count_jobs(app)
    routes = list(routes_of(app))
    deletes = [r for r in routes if r[0] == "DELETE"]  # last: they would remove the job the others read
    for method, path, names in [r for r in routes if r[0] != "DELETE"] + deletes:
        for ident in ODD_IDS if names else []:
            url = fill(path, names, ident)
            check(send(c, method, url), f"{method} {url[:80]}")
        if method == "DELETE":
            continue
        url = fill(path, names, job_id)
        for name, value in itertools.product(query_names(app, method, path), ODD_VALUES):
            full = f"{url}?{name}={value}"
            check(send(c, method, full), f"{method} {full[:120]}")
    assert count_jobs(app) <= before + 1  # POST /jobs/{id}/retry may queue the finished job again


def test_odd_headers(hostile: tuple[RunningApp, str]) -> None:
    app, job_id = hostile
    c = app.client
    before = count_jobs(app)
    for method, path, names in routes_of(app):
        if method == "DELETE":
            continue
        url = fill(path, names, job_id)
        for headers in ODD_HEADERS:
            check(send(c, method, url, headers=headers), f"{method} {url} {headers}")
    assert count_jobs(app) <= before + 1  # a POST /jobs/{id}/retry of the finished job may requeue it


def test_odd_bodies(hostile: tuple[RunningApp, str]) -> None:
    app, job_id = hostile
    c = app.client
    before = count_jobs(app)
    json_type = {"Content-Type": "application/json"}
    for method, path, names in routes_of(app):
        if method not in ("POST", "PUT", "PATCH"):
            continue
        url = fill(path, names, "no-such-job" if "retry" in path or "cancel" in path else job_id)
        for body in ODD_BODIES:
            r = send(c, method, url, content=body, headers=json_type)
            check(r, f"{method} {url} body {body[:60]!r}")
            assert r.status_code >= 400, f"{method} {url} accepted {body[:60]!r}"
            keyed = send(c, method, url, content=body, headers={**json_type, "Idempotency-Key": "hostile"})
            check(keyed, f"{method} {url} body {body[:60]!r} with an Idempotency-Key")
            assert keyed.status_code >= 400, f"{method} {url} accepted {body[:60]!r}"
    assert count_jobs(app) == before
    for body in ACCEPTED_JOBS:
        r = send(c, "POST", "/jobs", content=body, headers=json_type)
        assert r.status_code == 202, (body[:60], r.text)
        finished(c, r.json()["id"])
    assert count_jobs(app) == before + len(ACCEPTED_JOBS)


def test_last_event_id_is_parsed_strictly(hostile: tuple[RunningApp, str]) -> None:
    app, job_id = hostile
    c = app.client
    whole = send(c, "GET", f"/jobs/{job_id}/events")
    assert whole.status_code == 200 and b"event: status" in whole.content
    for value in ("99999999999999999999", "9" * 5000, "²".encode(), "-1", "1.0", "1 2"):
        r = send(c, "GET", f"/jobs/{job_id}/events", headers={"Last-Event-ID": value})
        assert r.status_code == 400, (value, r.status_code)
        assert r.json()["code"] == "invalid-last-event-id"
    r = send(c, "GET", f"/jobs/{job_id}/events?last_event_id=%C2%B2")
    assert r.status_code == 400
    r = send(c, "GET", f"/jobs/{job_id}/events", headers={"Last-Event-ID": "0"})
    assert r.status_code == 200 and r.content == whole.content


def test_integers_beyond_64_bits_are_refused_by_name(hostile: tuple[RunningApp, str]) -> None:
    app, _ = hostile
    r = app.client.post("/jobs", json={"task": ADD, "args": {"a": "99999999999999999999", "b": 1}})
    assert r.status_code == 422
    assert ["body", "args", "a"] in [e["loc"] for e in r.json()["errors"]]
    big = raw('{"task": "' + ECHO + '", "args": {"value": {"deep": [1, ' + str(2**64) + "]}}}")
    r = app.client.post("/jobs", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 422
    assert ["body", "args", "value", "deep", 1] in [e["loc"] for e in r.json()["errors"]]
    ok = app.client.post("/jobs", json={"task": ECHO, "args": {"value": 2**63 - 1}})
    assert ok.status_code == 202
    assert finished(app.client, ok.json()["id"])["result"] == 2**63 - 1


def test_nesting_limit(hostile: tuple[RunningApp, str]) -> None:
    app, _ = hostile
    limit = app.settings.server.max_json_depth
    json_type = {"Content-Type": "application/json"}
    ok = app.client.post("/jobs", content=job_body(ECHO, {"value": nested(limit - 3)}), headers=json_type)
    assert ok.status_code == 202, ok.text
    assert finished(app.client, ok.json()["id"])["result"] == nested(limit - 3)
    # past 1024 levels the JSON parser itself gives up: the same answer, naming the same place
    for depth, objects in ((limit + 1, False), (300, False), (1000, False), (1025, False), (50_000, True)):
        for headers in (json_type, {**json_type, "Idempotency-Key": f"deep-{depth}"}):
            r = app.client.post("/jobs", content=deep_job(depth, objects), headers=headers)
            assert r.status_code == 422, (depth, r.text[:200])
            error = r.json()["errors"][0]
            assert f"nested deeper than {limit} levels" in error["msg"] and error["type"] == "too_deep"
            assert r.json()["detail"] == f"the body is nested deeper than {limit} levels"
            step: str | int = "k" if objects else 0  # an index is a number, as in pydantic's errors
            assert error["loc"] == ["body", "args", "value", *[step] * (limit - 2)], (depth, error["loc"])
    r = app.client.post("/jobs", content=raw("[" * 1100 + "x"), headers=json_type)
    assert r.status_code == 400 and r.json()["code"] == "malformed-json", r.text  # deep, and not JSON
