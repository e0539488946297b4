"""Schemathesis against the running app: every route, generated valid and invalid
requests, every check Schemathesis has (`--checks all`): no answer may be a 5xx, accept
what the schema forbids, refuse what it allows, or differ from what /openapi.json promises.

The app runs in-process with its worker threads (tests/inproc.py) and Schemathesis
calls it as an ASGI app. The schema is loaded from the app's /openapi.json; the
routes to parametrize over come from the same document builder, so a new route is
tested without editing this file.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS, CheckFunction, is_check_class, load_all_checks
from schemathesis.specs.openapi.checks import positive_data_acceptance

from jobserver.core.tasks import Registry
from jobserver.http.openapi import build_openapi, ops_paths
from tests.inproc import RunningApp, running_app
from tests.receiver import running_receiver
from tests.schemathesis_hooks import as_a_client_sends

# end to end: the whole server through its public interface, every route
pytestmark = pytest.mark.e2e
TASK_MODULES = ["jobserver.examples"]  # not the test tasks: some of them spin forever on purpose
EXAMPLES = {GenerationMode.POSITIVE: 30, GenerationMode.NEGATIVE: 15}
# the operator routes (schedules, pausing, bulk actions, stats) have small flat inputs: half as many
OPERATOR_PATHS = set(ops_paths(secured=False))
DOC = build_openapi(Registry.from_modules(TASK_MODULES), secured=False)
ROUTES = [
    (method.upper(), path, "parameters" in op or "requestBody" in op)
    for path, item in DOC["paths"].items()
    for method, op in item.items()
    if path != "/openapi.json"  # Schemathesis leaves out the document it was loaded from
]
load_all_checks()
# Every registered check function, what `call_and_validate` runs (the registry may also hold
# check classes, which span a whole run: none is registered)
ALL_CHECKS = [check for check in CHECKS.get_all() if not is_check_class(check)]
# A schedule's cron, timezone and task are checked by the server, not by its schema (which cannot
# state what a valid cron expression is): a schema-valid body may be refused with 422.
# A schedule's cron, and a signal body's integers beyond 64 bits at any depth, are refused by
# the server but cannot be stated in a schema: those operations run every other check.
EXCLUDED: dict[str, list[CheckFunction]] = {
    "PUT /schedules/{name}": [positive_data_acceptance],
    "POST /jobs/{job_id}/signals/{name}": [positive_data_acceptance],
}


@pytest.fixture(scope="module")
def fuzzed_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningApp, Any, str]]:
    """One app for the module's routes (cases of one route leave jobs the next can act on):
    the app, its schema as Schemathesis loaded it from /openapi.json, and a webhook URL."""
    config = {
        "tasks": {"modules": TASK_MODULES},
        "webhooks": {"allow_hosts": ["127.0.0.1"], "retry_schedule": ["1s"], "timeout": 1},
    }
    with running_receiver() as receiver, running_app(tmp_path_factory.mktemp("fuzzed"), config=config) as app:
        schema = schemathesis.openapi.from_asgi("/openapi.json", app.asgi_app)
        yield app, schema, receiver.url("/hook")


def test_the_schema_describes_every_route(fuzzed_app: tuple[RunningApp, Any, str]) -> None:
    _, schema, _ = fuzzed_app
    described = {(op.ok().method.upper(), op.ok().path) for op in schema.get_all_operations()}
    assert described == {(method, path) for method, path, _ in ROUTES}


@pytest.mark.parametrize(
    ("method", "path", "mode"),
    [
        (method, path, mode)
        for method, path, has_inputs in ROUTES
        # negative cases need something to make invalid: a parameter or a body
        for mode in (list(EXAMPLES) if has_inputs else [GenerationMode.POSITIVE])
    ],
    ids=lambda v: v.value if isinstance(v, GenerationMode) else str(v),
)
def test_every_route_conforms_to_its_schema(
    fuzzed_app: tuple[RunningApp, Any, str], method: str, path: str, mode: GenerationMode
) -> None:
    app, schema, webhook_url = fuzzed_app
    examples = EXAMPLES[mode] // (2 if path in OPERATOR_PATHS else 1)
    try:
        calls = run_cases(schema[path][method], mode, examples, webhook_url)
    except Exception as exc:
        if not interpreter_ast_race(exc):
            raise
        calls = run_cases(schema[path][method], mode, examples, webhook_url)  # the same cases again
    assert calls, "no case was generated"
    # still whole: the database answers and the worker threads are alive
    ready = app.client.get("/readyz")
    assert ready.status_code == 200, ready.text


def interpreter_ast_race(exc: BaseException) -> bool:
    """Whether `exc` comes from CPython 3.11's `ast` failing when threads parse at once (gh-106905):
    Hypothesis parses a strategy's source to describe it while the app's worker threads format
    the tracebacks of failed jobs. Nothing of the server's; the cases are run again."""
    pending: list[BaseException] = [exc]
    seen: set[int] = set()
    while pending:
        e = pending.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, SystemError) and "AST constructor recursion depth mismatch" in str(e):
            return True
        pending += [
            *getattr(e, "exceptions", ()),
            *(c for c in (e.__cause__, e.__context__) if c is not None),
        ]
    return False


def run_cases(operation: Any, mode: GenerationMode, examples: int, webhook_url: str) -> list[str]:
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
    def run(case: schemathesis.Case[Any]) -> None:
        calls.append(f"{case.method} {case.formatted_path}")
        as_a_client_sends(case, webhook_url)
        case.call_and_validate(
            checks=ALL_CHECKS, excluded_checks=EXCLUDED.get(operation.label, []), timeout=30
        )

    run()
    return calls
