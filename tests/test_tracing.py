"""OpenTelemetry traces in-process: the real app with an SDK tracer provider whose spans go
to the SDK's in-memory exporter. One trace runs from a submit that carried a `traceparent`
through every attempt and step to the webhook delivery, which carries `traceparent` on. A
workflow's durable calls (sleep, wait_for, spawn, gather) have spans in the run that parks on
them and again in the run that resumes, and spawned children's attempts are in the parent's trace.
Also: the OTEL_* variables that turn tracing on, and a server without them never importing
OpenTelemetry at all (checked in a fresh interpreter)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from jobserver.core.clock import ManualClock
from jobserver.core.errors import ConfigError
from jobserver.core.tracing import tracing_wanted
from jobserver.ops.tracing import OtelTracing, _exporters
from tests.helpers import REPO, finished, submit, wait_until
from tests.inproc import RunningApp, running_app
from tests.receiver import Receiver

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
CALLER_SPAN_ID = 0x00F067AA0BA902B7
TRACEPARENT = f"00-{TRACE_ID:032x}-{CALLER_SPAN_ID:016x}-01"


@pytest.fixture
def spans() -> Iterator[tuple[OtelTracing, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield OtelTracing(provider), exporter
    provider.shutdown()


def named(exporter: InMemorySpanExporter, prefix: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name.startswith(prefix)]


def in_order(exporter: InMemorySpanExporter, prefix: str) -> list[ReadableSpan]:
    return sorted(named(exporter, prefix), key=lambda s: s.start_time or 0)


def attrs(span: ReadableSpan) -> dict[str, object]:
    return dict(span.attributes or {})


def events(span: ReadableSpan) -> list[tuple[str, dict[str, object]]]:
    return [(e.name, dict(e.attributes or {})) for e in span.events]


def parked(app: RunningApp, job_id: str) -> bool:
    return bool(app.client.get(f"/jobs/{job_id}").json()["status"] == "waiting")


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    sid: int = span.context.span_id
    return sid


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    tid: int = span.context.trace_id
    return tid


HOOK_WITH_TOKENS = "/hook/PATHSECRET?token=QUERYSECRET"


def test_one_trace_runs_from_the_submit_through_attempts_and_steps_to_the_webhook(
    tmp_path: Path, spans: tuple[OtelTracing, InMemorySpanExporter], receiver: Receiver
) -> None:
    tracing, exporter = spans
    with running_app(tmp_path, tracing=tracing) as app:
        r = app.client.post(
            "/jobs",
            json={
                "task": "tests.e2e_tasks.two_steps",
                "args": {"fail_first": True},
                "webhook_url": receiver.url(HOOK_WITH_TOKENS),
            },
            headers={"traceparent": TRACEPARENT},
        )
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        assert "trace_context" not in r.json()  # kept on the job, not part of the job object
        assert finished(app.client, job_id)["status"] == "completed"
        [hook] = receiver.wait_for(1, HOOK_WITH_TOKENS)
        wait_until(lambda: named(exporter, "webhook "), 10, message="the webhook span")

    [submit_span] = named(exporter, "POST /jobs")
    assert submit_span.kind == SpanKind.SERVER
    assert (trace_id(submit_span), parent_id(submit_span)) == (TRACE_ID, CALLER_SPAN_ID)
    assert submit_span.attributes is not None
    assert submit_span.attributes["http.response.status_code"] == 202
    assert submit_span.attributes["jobserver.job.id"] == job_id

    attempts = sorted(named(exporter, "run "), key=lambda s: s.start_time or 0)
    assert [(s.attributes or {}).get("jobserver.attempt") for s in attempts] == [1, 2]
    assert [(s.attributes or {}).get("jobserver.outcome") for s in attempts] == ["retrying", "completed"]
    for attempt in attempts:
        assert attempt.name == "run tests.e2e_tasks.two_steps"
        assert attempt.kind == SpanKind.CONSUMER
        assert (trace_id(attempt), parent_id(attempt)) == (TRACE_ID, span_id(submit_span))
        assert (attempt.attributes or {})["jobserver.job.id"] == job_id
        assert (attempt.attributes or {})["jobserver.task"] == "tests.e2e_tasks.two_steps"
    assert attempts[0].status.status_code == StatusCode.ERROR
    assert [e.name for e in attempts[0].events] == ["exception"]

    # the steps ran in the first attempt; the second one got their stored results
    steps = named(exporter, "step ")
    assert sorted(s.name for s in steps) == ["step fetch", "step summarize"]
    assert {(trace_id(s), parent_id(s)) for s in steps} == {(TRACE_ID, span_id(attempts[0]))}

    [webhook] = named(exporter, "webhook ")
    assert webhook.name == "webhook job.completed"
    assert webhook.kind == SpanKind.CLIENT
    assert (trace_id(webhook), parent_id(webhook)) == (TRACE_ID, span_id(submit_span))
    assert (webhook.attributes or {})["http.response.status_code"] == 200
    assert hook.headers["traceparent"] == f"00-{TRACE_ID:032x}-{span_id(webhook):016x}-01"
    # the receiver by its host and port; its URL's path and query (tokens) reach no span
    assert {k: v for k, v in (webhook.attributes or {}).items() if k.startswith(("server.", "url."))} == {
        "url.scheme": "http",
        "server.address": "127.0.0.1",
        "server.port": receiver.port,
    }
    exported = repr([(s.attributes, [e.attributes for e in s.events]) for s in exporter.get_finished_spans()])
    assert "SECRET" not in exported


def test_steps_of_an_async_task_nest_under_its_attempt(
    tmp_path: Path, spans: tuple[OtelTracing, InMemorySpanExporter]
) -> None:
    tracing, exporter = spans
    with running_app(tmp_path, tracing=tracing) as app:
        job_id = submit(app.client, "tests.e2e_tasks.async_two_steps")
        assert finished(app.client, job_id)["result"] == 2
        wait_until(lambda: named(exporter, "run "), 10, message="the attempt span")
    [submit_span] = named(exporter, "POST /jobs")
    assert submit_span.parent is None  # no traceparent: the submit starts a trace
    [attempt] = named(exporter, "run ")
    assert (attempt.attributes or {})["jobserver.outcome"] == "completed"
    assert parent_id(attempt) == span_id(submit_span)
    steps = named(exporter, "step ")
    assert sorted(s.name for s in steps) == ["step fetch", "step summarize"]
    assert {parent_id(s) for s in steps} == {span_id(attempt)}
    assert {trace_id(s) for s in [*steps, attempt]} == {trace_id(submit_span)}


def test_a_wait_for_a_signal_parks_in_one_run_and_resumes_in_the_next(
    tmp_path: Path, spans: tuple[OtelTracing, InMemorySpanExporter]
) -> None:
    tracing, exporter = spans
    with running_app(tmp_path, tracing=tracing) as app:
        job_id = submit(app.client, "tests.e2e_tasks.approval", {"path": str(tmp_path / "marks")})
        wait_until(lambda: parked(app, job_id), message="the job to wait for its signal")
        assert app.client.post(f"/jobs/{job_id}/signals/approve", json={"ok": True}).status_code == 202
        assert finished(app.client, job_id)["status"] == "completed"
        wait_until(lambda: len(named(exporter, "run ")) == 2, 10, message="both runs' spans")
    runs = in_order(exporter, "run ")
    assert [attrs(r)["jobserver.outcome"] for r in runs] == ["waiting", "completed"]
    waits = in_order(exporter, "wait_for ")
    assert [w.name for w in waits] == ["wait_for approve", "wait_for approve"]
    assert [parent_id(w) for w in waits] == [span_id(r) for r in runs]
    assert {trace_id(s) for s in [*runs, *waits]} == {trace_id(runs[0])}
    first, second = waits
    assert attrs(first) == {
        "jobserver.call": "wait_for",
        "jobserver.step.name": "approve",
        "jobserver.call.outcome": "parked",
    }
    assert events(first) == [("parked", {"jobserver.wait.kind": "signal"})]
    assert first.status.status_code == StatusCode.UNSET  # parking is not an error
    assert attrs(second)["jobserver.call.outcome"] == "returned"
    assert events(second) == []
    # the steps around the wait: one in each run
    assert [(s.name, parent_id(s)) for s in in_order(exporter, "step ")] == [
        ("step draft", span_id(runs[0])),
        ("step publish", span_id(runs[1])),
    ]


def test_a_durable_sleep_parks_until_its_wake_up_time_then_resumes(
    tmp_path: Path, spans: tuple[OtelTracing, InMemorySpanExporter]
) -> None:
    tracing, exporter = spans
    clock = ManualClock()
    start = clock.now()
    with running_app(tmp_path, clock=clock, tracing=tracing) as app:
        job_id = submit(app.client, "tests.e2e_tasks.nap", {"path": str(tmp_path / "marks"), "seconds": 3600})
        wait_until(lambda: parked(app, job_id), message="the job to park")
        clock.advance(3601)
        assert finished(app.client, job_id)["status"] == "completed"
        wait_until(lambda: len(named(exporter, "run ")) == 2, 10, message="both runs' spans")
    runs = in_order(exporter, "run ")
    sleeps = in_order(exporter, "sleep ")
    assert [(s.name, parent_id(s), attrs(s)["jobserver.call.outcome"]) for s in sleeps] == [
        ("sleep nap", span_id(runs[0]), "parked"),
        ("sleep nap", span_id(runs[1]), "returned"),
    ]
    assert [events(s) for s in sleeps] == [
        [("parked", {"jobserver.wait.kind": "sleep", "jobserver.wait.until": start + 3600})],
        [],
    ]


@pytest.mark.parametrize("task", ["tests.e2e_tasks.fan_out", "tests.e2e_tasks.async_fan_out"])
def test_children_run_in_the_trace_of_their_spawn_and_gathers_park_until_they_end(
    tmp_path: Path, spans: tuple[OtelTracing, InMemorySpanExporter], task: str
) -> None:
    tracing, exporter = spans
    # one thread: a sync parent holds it from its spawn to its gather, so the gather parks
    with running_app(tmp_path, {"workers": {"threads": 1}}, tracing=tracing) as app:
        job_id = submit(app.client, task, {"path": "", "n": 2} if task.endswith(".fan_out") else {"n": 2})
        assert finished(app.client, job_id)["status"] == "completed"
        children = app.client.get("/jobs", params={"parent": job_id}).json()["jobs"]
        wait_until(lambda: len(named(exporter, "run tests.e2e_tasks.square")) == len(children), 10)
    [submit_span] = named(exporter, "POST /jobs")
    parent_runs = in_order(exporter, f"run {task}")
    spawns = in_order(exporter, "spawn ")
    # a spawn that ran once has one span: later runs get its stored ids
    expected = (
        [("spawn children", 2), ("spawn last", 1)] if task.endswith(".fan_out") else [("spawn children", 2)]
    )
    assert [(s.name, attrs(s)["jobserver.children"]) for s in spawns] == expected
    assert {parent_id(s) for s in spawns} <= {span_id(r) for r in parent_runs}
    # each child's attempt is a child of the span of the spawn that made it
    child_runs = named(exporter, "run tests.e2e_tasks.square")
    assert Counter(parent_id(r) for r in child_runs) == {
        span_id(s): attrs(s)["jobserver.children"] for s in spawns
    }
    assert {trace_id(s) for s in [*parent_runs, *spawns, *child_runs]} == {trace_id(submit_span)}

    gathers = in_order(exporter, "gather all")
    assert [attrs(g)["jobserver.call.outcome"] for g in gathers] == ["parked", "returned"]
    assert [events(g) for g in gathers] == [
        [("parked", {"jobserver.wait.kind": "children", "jobserver.wait.jobs": 2})],
        [],
    ]
    assert [parent_id(g) for g in gathers] == [span_id(r) for r in parent_runs[:2]]


def test_a_gather_of_a_failed_child_records_the_error_on_its_span(
    tmp_path: Path, spans: tuple[OtelTracing, InMemorySpanExporter]
) -> None:
    tracing, exporter = spans
    with running_app(tmp_path, {"workers": {"threads": 1}}, tracing=tracing) as app:
        job_id = submit(app.client, "tests.e2e_tasks.fan_out", {"path": "", "n": 2, "fail": [1]})
        assert finished(app.client, job_id)["status"] == "failed"
        wait_until(
            lambda: [s for s in named(exporter, "run ") if attrs(s).get("jobserver.outcome") == "failed"], 10
        )
    resumed = in_order(exporter, "gather all")[-1]
    assert attrs(resumed)["jobserver.call.outcome"] == "raised"
    assert resumed.status.status_code == StatusCode.ERROR
    assert [name for name, _ in events(resumed)] == ["exception"]


def test_an_attempt_after_a_restart_joins_the_trace_its_job_keeps(tmp_path: Path) -> None:
    first, second = InMemorySpanExporter(), InMemorySpanExporter()
    providers = [TracerProvider(), TracerProvider()]
    for provider, exporter in zip(providers, (first, second), strict=True):
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    with running_app(tmp_path, tracing=OtelTracing(providers[0])) as app:
        r = app.client.post(
            "/jobs",
            json={"task": "tests.e2e_tasks.two_steps", "args": {}, "delay": 3600},
            headers={"traceparent": TRACEPARENT},
        )
        job_id = r.json()["id"]
    [submit_span] = named(first, "POST /jobs")
    assert not named(first, "run ")
    with sqlite3.connect(tmp_path / "jobs.db") as db:  # the delay is over
        db.execute("UPDATE jobs SET status = 'pending', run_at = 0 WHERE id = ?", (job_id,))
    with running_app(tmp_path, tracing=OtelTracing(providers[1])) as app:  # a new process, as it were
        assert finished(app.client, job_id)["status"] == "completed"
        wait_until(lambda: named(second, "run "), 10, message="the attempt span")
    [attempt] = named(second, "run ")
    assert (trace_id(attempt), parent_id(attempt)) == (TRACE_ID, span_id(submit_span))
    for provider in providers:
        provider.shutdown()


def test_without_tracing_no_context_is_kept_and_webhooks_carry_no_traceparent(
    tmp_path: Path, receiver: Receiver
) -> None:
    with running_app(tmp_path) as app:
        r = app.client.post(
            "/jobs",
            json={
                "task": "jobserver.examples.add",
                "args": {"a": 1, "b": 2},
                "webhook_url": receiver.url("/h"),
            },
            headers={"traceparent": TRACEPARENT},
        )
        [hook] = receiver.wait_for(1, "/h")
        job_id = r.json()["id"]
    assert "traceparent" not in hook.headers
    with sqlite3.connect(tmp_path / "jobs.db") as db:
        assert db.execute("SELECT trace_context FROM jobs WHERE id = ?", (job_id,)).fetchone() == (None,)


@pytest.mark.parametrize(
    ("environ", "wanted"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "api"}, False),  # naming the service alone sends nothing anywhere
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "false"}, True),
    ],
)
def test_the_standard_variables_turn_tracing_on(environ: dict[str, str], wanted: bool) -> None:
    assert tracing_wanted(environ) is wanted


def test_exporters_are_named_by_the_standard_variables() -> None:
    [otlp] = _exporters({})
    assert type(otlp).__module__.startswith("opentelemetry.exporter.otlp.proto.http")
    assert [type(e).__name__ for e in _exporters({"OTEL_TRACES_EXPORTER": "console,otlp"})] == [
        "ConsoleSpanExporter",
        "OTLPSpanExporter",
    ]
    assert _exporters({"OTEL_TRACES_EXPORTER": "none"}) == []
    with pytest.raises(ConfigError, match="OTEL_TRACES_EXPORTER"):
        _exporters({"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        _exporters({"OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"})


# Builds the app from the environment (as the server does), runs a job, and prints whether
# any OpenTelemetry module was imported. A fresh interpreter: this one imported it above.
IMPORT_PROBE = textwrap.dedent(
    """
    import sys, tempfile
    # redis (in the test lock for the bench's Celery; huey imports it when present) imports
    # OpenTelemetry by itself: keep it out, the server does not need it
    sys.modules["redis"] = None
    from pathlib import Path
    from tests.helpers import finished, submit
    from tests.inproc import RunningApp, running_app
    from jobserver.build import load_tracing
    import os

    with tempfile.TemporaryDirectory() as tmp:
        with running_app(Path(tmp), tracing=load_tracing(os.environ)) as app:
            assert app.runtime.parts.tracing.enabled is (sys.argv[1] == "on"), app.runtime.parts.tracing
            job_id = submit(app.client, "tests.e2e_tasks.two_steps", {})
            assert finished(app.client, job_id)["status"] == "completed"
    print(sorted({m.split(".")[0] for m in sys.modules if m.startswith("opentelemetry")}))
    """
)


@pytest.mark.e2e  # fresh interpreters: what a process imports is the point
def test_without_the_variables_opentelemetry_is_never_imported() -> None:
    def probe(extra: dict[str, str], mode: str) -> str:
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), **extra}
        done = subprocess.run(
            [sys.executable, "-c", IMPORT_PROBE, mode],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().splitlines()[-1]

    assert probe({}, "off") == "[]"
    # the same probe sees the import when the variables ask for traces
    assert probe({"OTEL_TRACES_EXPORTER": "console"}, "on") == "['opentelemetry']"
