"""Schemathesis against the running app: every route, generated valid and invalid
requests; no answer may be a 5xx or differ from what /openapi.json promises.

The app runs in-process with its worker threads (tests/inproc.py) and Schemathesis
calls it as an ASGI app. The schema is loaded from the app's /openapi.json; the
routes to parametrize over come from the same document builder, so a new route is
tested without editing this file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from jobserver.core.tasks import Registry
from jobserver.http.openapi import build_openapi, ops_paths
from tests.inproc import running_app

TASK_MODULES = ["jobserver.examples"]  # not the test tasks: some of them spin forever on purpose
EXAMPLES = {GenerationMode.POSITIVE: 60, GenerationMode.NEGATIVE: 30}
# the operator routes (schedules, pausing, bulk actions, stats) have small flat inputs: half as many
OPERATOR_PATHS = set(ops_paths(secured=False))
DOC = build_openapi(Registry.from_modules(TASK_MODULES), secured=False)
ROUTES = [
    (method.upper(), path, "parameters" in op or "requestBody" in op)
    for path, item in DOC["paths"].items()
    for method, op in item.items()
    if path != "/openapi.json"  # Schemathesis leaves out the document it was loaded from
]
CHECKS = [not_a_server_error, response_schema_conformance]


def test_every_route_conforms_to_its_schema(tmp_path: Path, subtests: pytest.Subtests) -> None:
    config = {
        "tasks": {"modules": TASK_MODULES},
        "webhooks": {"allow_hosts": [], "retry_schedule": ["1s"], "timeout": 1},
    }
    with running_app(tmp_path, config=config) as app:
        schema = schemathesis.openapi.from_asgi("/openapi.json", app.asgi_app)
        described = {(op.ok().method.upper(), op.ok().path) for op in schema.get_all_operations()}
        assert described == {(method, path) for method, path, _ in ROUTES}
        calls: list[str] = []
        for method, path, has_inputs in ROUTES:
            # negative cases need something to make invalid: a parameter or a body
            modes = list(EXAMPLES) if has_inputs else [GenerationMode.POSITIVE]
            for mode in modes:
                with subtests.test(msg=f"{method} {path} {mode.value}"):
                    examples = EXAMPLES[mode] // (2 if path in OPERATOR_PATHS else 1)
                    calls += run_cases(schema[path][method], mode, examples)
        assert len(calls) >= 300, len(calls)
        # still whole: the database answers and the worker threads are alive
        ready = app.client.get("/readyz")
        assert ready.status_code == 200, ready.text


def run_cases(operation: Any, mode: GenerationMode, examples: int) -> list[str]:
    """Generate cases for one operation, call the app, check each answer; the calls made."""
    calls: list[str] = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        calls.append(f"{case.method} {case.formatted_path}")
        case.call_and_validate(checks=CHECKS, timeout=10)

    run()
    return calls
