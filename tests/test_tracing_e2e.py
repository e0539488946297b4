"""Traces from the real server process: `python -m jobserver` with the otel extra and the
standard OTEL_* variables, exporting over OTLP/HTTP to a receiver on 127.0.0.1 that decodes
the protobuf it is sent. One trace runs from a submit that carried a `traceparent`, through
the attempts and their steps, to the webhook delivery."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e import start_server
from tests.helpers import finished
from tests.otlp_receiver import running_otlp_receiver
from tests.receiver import Receiver

pytestmark = pytest.mark.e2e

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN_ID = "b7ad6b7169203331"


def test_the_server_exports_one_trace_from_submit_to_webhook(tmp_path: Path, receiver: Receiver) -> None:
    with running_otlp_receiver() as otlp:
        env = {
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": otlp.endpoint,
            "OTEL_SERVICE_NAME": "jobs-under-test",
            "OTEL_BSP_SCHEDULE_DELAY": "50",  # milliseconds between batch exports
        }
        srv = start_server(tmp_path, env=env)
        c = srv.client()
        r = c.post(
            "/jobs",
            json={
                "task": "tests.e2e_tasks.two_steps",
                "args": {"fail_first": True},
                "webhook_url": receiver.url("/hook"),
            },
            headers={"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN_ID}-01"},
        )
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        assert finished(c, job_id)["status"] == "completed"
        [hook] = receiver.wait_for(1, "/hook")
        [webhook] = otlp.wait_for("webhook ")
        [submit] = otlp.wait_for("POST /jobs")
        attempts = otlp.wait_for("run ", 2)
        steps = otlp.wait_for("step ", 2)
        srv.terminate()
        assert srv.wait_exit() == 0

    every = [submit, *attempts, *steps, webhook]
    assert {s.trace_id for s in every} == {TRACE_ID}
    assert {s.service for s in every} == {"jobs-under-test"}
    assert submit.parent_span_id == CALLER_SPAN_ID
    assert submit.attributes["jobserver.job.id"] == job_id
    attempts.sort(key=lambda s: s.attributes["jobserver.attempt"])
    assert [(a.attributes["jobserver.attempt"], a.attributes["jobserver.outcome"]) for a in attempts] == [
        (1, "retrying"),
        (2, "completed"),
    ]
    assert {a.parent_span_id for a in attempts} == {submit.span_id}
    assert {a.attributes["jobserver.job.id"] for a in attempts} == {job_id}
    assert attempts[0].events == ["exception"]
    assert sorted(s.name for s in steps) == ["step fetch", "step summarize"]
    assert {s.parent_span_id for s in steps} == {attempts[0].span_id}
    assert webhook.parent_span_id == submit.span_id
    assert webhook.attributes["http.response.status_code"] == 200
    assert hook.headers["traceparent"] == f"00-{TRACE_ID}-{webhook.span_id}-01"
