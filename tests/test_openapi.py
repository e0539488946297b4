"""GET /openapi.json: a valid OpenAPI 3.2 document of every route, with each
registered task's args schema in the `task`-discriminated submit body, and the
event stream described as OpenAPI 3.2 describes Server-Sent Events."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from openapi_spec_validator import validate
from pydantic import BaseModel

from jobserver import task
from jobserver.core.tasks import Registry, build_taskdef
from jobserver.http.openapi import build_openapi
from tests.helpers import read_events, submit
from tests.inproc import RunningApp, running_app

CONTRACT_ROUTES = {
    ("post", "/jobs"),
    ("post", "/jobs/batch"),
    ("post", "/jobs/{job_id}/signals/{name}"),
    ("get", "/jobs"),
    ("get", "/jobs/{job_id}"),
    ("delete", "/jobs/{job_id}"),
    ("post", "/jobs/{job_id}/cancel"),
    ("post", "/jobs/{job_id}/retry"),
    ("get", "/jobs/{job_id}/events"),
    ("get", "/jobs/{job_id}/webhooks"),
    ("get", "/tasks"),
    ("get", "/limits"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/"),
    ("get", "/openapi.json"),
    ("get", "/problems/{code}"),
    ("get", "/schedules"),
    ("get", "/schedules/{name}"),
    ("put", "/schedules/{name}"),
    ("delete", "/schedules/{name}"),
    ("post", "/schedules/{name}/pause"),
    ("post", "/schedules/{name}/resume"),
    ("post", "/tasks/{name}/pause"),
    ("post", "/tasks/{name}/resume"),
    ("post", "/jobs/cancel"),
    ("post", "/jobs/retry"),
    ("post", "/jobs/delete"),
    ("get", "/stats"),
}


def inline(node: Any, doc: dict[str, Any]) -> Any:
    """Replace every local `$ref` by what it points at (the schemas here are not recursive)."""
    if isinstance(node, dict):
        if "$ref" in node:
            target: Any = doc
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            return inline(target, doc)
        return {k: inline(v, doc) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [inline(v, doc) for v in node]
    return node


def submit_members(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """task name -> its member schema of the submit union."""
    body = doc["components"]["schemas"]["SubmitBody"]
    mapping = body["discriminator"]["mapping"]
    assert body["discriminator"]["propertyName"] == "task"
    assert sorted(m["$ref"] for m in body["oneOf"]) == sorted(mapping.values())
    return {name: inline({"$ref": ref}, doc) for name, ref in mapping.items()}


def test_the_served_document_is_valid_and_complete(app: RunningApp) -> None:
    c = app.client
    r = c.get("/openapi.json")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    doc = r.json()
    validate(doc)
    assert doc["openapi"].startswith("3.2")
    routes = {(method, path) for path, item in doc["paths"].items() for method in item}
    assert routes == CONTRACT_ROUTES
    assert "securitySchemes" not in doc["components"] and "security" not in doc

    tasks = c.get("/tasks").json()["tasks"]
    members = submit_members(doc)
    assert set(members) == {t["name"] for t in tasks}
    for t in tasks:
        member = members[t["name"]]
        assert member["properties"]["task"]["const"] == t["name"]
        assert member["properties"]["args"] == inline(t["args_schema"], t["args_schema"])
        assert member["additionalProperties"] is False

    events = doc["paths"]["/jobs/{job_id}/events"]["get"]["responses"]
    assert events["200"]["content"]["text/event-stream"] == {
        "itemSchema": {"$ref": "#/components/schemas/JobEvent"}
    }
    metrics = doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert "text/plain" in metrics
    submit = doc["paths"]["/jobs"]["post"]["responses"]
    for status in ("400", "409", "413", "415", "422", "503"):
        problem = inline(submit[status], doc)
        assert problem["content"]["application/problem+json"]["schema"]["required"] == [
            "type",
            "title",
            "status",
        ]
    assert {"202", "200"} <= set(submit)
    assert "404" in doc["paths"]["/jobs/{job_id}"]["get"]["responses"]


def test_every_route_of_the_app_is_documented(app: RunningApp) -> None:
    doc = app.client.get("/openapi.json").json()
    documented = {(method, path) for path, item in doc["paths"].items() for method in item}
    served = {
        (method.lower(), re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path))  # {name:path} is {name} in OpenAPI
        for route in app.asgi_app.routes
        for method in (route.methods or set()) - {"HEAD"}
    }
    assert served == documented


def test_the_operator_bodies_are_the_validators_schemas(app: RunningApp) -> None:
    doc = app.client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    assert set(schemas["ScheduleBody"]["properties"]) == {"task", "cron", "timezone", "args", "catch_up"}
    assert schemas["ScheduleBody"]["required"] == ["task", "cron"]
    assert schemas["CancelFilter"]["properties"]["status"]["enum"] == ["pending", "running", "waiting"]
    assert schemas["RetryFilter"]["properties"]["status"]["enum"] == ["failed", "cancelled"]
    for name in ("CancelFilter", "RetryFilter", "DeleteFilter"):  # null is refused: not offered
        assert "null" not in str(schemas[name]) and "None" not in str(schemas[name]), schemas[name]
    put = doc["paths"]["/schedules/{name}"]["put"]
    assert {"200", "201", "422"} <= set(put["responses"])


def test_with_api_keys_the_document_declares_bearer_auth(tmp_path: Path) -> None:
    with running_app(tmp_path, config={"auth": {"api_keys": ["k1"]}}) as app:
        assert app.client.get("/openapi.json").status_code == 401
        doc = app.new_client("k1").get("/openapi.json").json()
    # (the document as a whole is validated without auth; here only what auth adds differs)
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "Authorization: Bearer <API key>",
    }
    assert doc["security"] == [{"bearer": []}]
    assert doc["paths"]["/healthz"]["get"]["security"] == []
    assert doc["paths"]["/"]["get"]["security"] == []
    assert "401" in doc["paths"]["/jobs"]["post"]["responses"]
    assert "401" not in doc["paths"]["/healthz"]["get"]["responses"]


@pytest.mark.parametrize("open_paths", [["/metrics", "/readyz"], [], ["/healthz", "/jobs"]])
def test_the_document_marks_open_exactly_the_routes_that_answer_without_a_key(
    tmp_path: Path, open_paths: list[str]
) -> None:
    with running_app(tmp_path, config={"auth": {"api_keys": ["k1"], "open_paths": open_paths}}) as app:
        doc = app.new_client("k1").get("/openapi.json").json()
        anonymous = app.new_client()
        for path, item in doc["paths"].items():
            for method, op in item.items():
                documented_open = op.get("security", doc["security"]) == []
                assert documented_open == ("401" not in op["responses"]), (method, path)
                if "{" in path and not path.startswith("/problems/"):
                    assert not documented_open, (method, path)
                    continue
                url = path.replace("{code}", "validation-error")
                answer = anonymous.request(method, url, json={} if method != "get" else None)
                assert (answer.status_code != 401) == documented_open, (method, path, answer.status_code)
    assert ("/healthz" in open_paths) == (doc["paths"]["/healthz"]["get"].get("security") == [])


class Address(BaseModel):
    street: str
    city: str = "Paris"


class Customer(BaseModel):
    name: str
    addresses: list[Address]


@task(name="shop.ship")
def ship(customer: Customer, express: bool = False) -> None:
    """Ship an order."""


@task(name="shop.refund")
def refund(order_id: int, to: Address | None = None) -> None:
    """Refund an order."""


def test_nested_models_are_hoisted_into_components() -> None:
    registry = Registry([build_taskdef(ship), build_taskdef(refund)])
    doc = build_openapi(registry, secured=False)
    validate(doc)
    schemas = doc["components"]["schemas"]
    assert "$defs" not in str(doc)
    # both tasks use Address: each keeps its own hoisted copy, no name collides
    assert {"shop.ship.defs.Address", "shop.ship.defs.Customer", "shop.refund.defs.Address"} <= set(schemas)
    members = submit_members(doc)
    for name, fn in (("shop.ship", ship), ("shop.refund", refund)):
        args_schema = build_taskdef(fn).schema
        assert members[name]["properties"]["args"] == inline(args_schema, args_schema)
        assert members[name]["description"] == build_taskdef(fn).description
    assert members["shop.ship"]["required"] == ["task", "args"]
    assert members["shop.refund"]["required"] == ["task", "args"]


def test_a_task_without_required_args_may_omit_them() -> None:
    @task(name="t.noop")
    def noop(times: int = 1) -> None:
        pass

    doc = build_openapi(Registry([build_taskdef(noop)]), secured=False)
    assert submit_members(doc)["t.noop"]["required"] == ["task"]


def test_the_builder_does_not_change_the_task_schemas() -> None:
    taskdef = build_taskdef(ship)
    before = copy.deepcopy(taskdef.schema)
    build_openapi(Registry([taskdef]), secured=True)
    assert taskdef.schema == before


def test_workflow_routes_and_fields_are_described(app: RunningApp) -> None:
    doc = app.client.get("/openapi.json").json()
    job = doc["components"]["schemas"]["Job"]["properties"]
    assert "waiting" in job["status"]["enum"] and "parent_id" in job and "waiting_for" in job
    waiting_for = doc["components"]["schemas"]["WaitingFor"]
    assert waiting_for["properties"]["kind"]["enum"] == ["sleep", "signal", "children"]
    batch = doc["paths"]["/jobs/batch"]["post"]
    assert (
        batch["requestBody"]["content"]["application/json"]["schema"]["properties"]["jobs"]["maxItems"]
        == 1000
    )
    item = doc["components"]["schemas"]["BatchItem"]
    member = inline(item["oneOf"][0], doc)
    assert "idempotency_key" in member["properties"]
    signal = doc["paths"]["/jobs/{job_id}/signals/{name}"]["post"]
    assert set(signal["responses"]) >= {"200", "202", "404", "409"}
    params = {p["name"] for p in doc["paths"]["/jobs"]["get"]["parameters"]}
    assert "parent" in params


def test_every_event_a_stream_sends_matches_the_item_schema_of_its_kind(app: RunningApp) -> None:
    """The stream as a client reads it: each event's `data`, parsed as JSON, is valid against
    the `contentSchema` of the member that its `event` names in the discriminator."""
    doc = app.client.get("/openapi.json").json()
    item = doc["components"]["schemas"]["JobEvent"]
    mapping = item["discriminator"]["mapping"]
    assert item["discriminator"]["propertyName"] == "event"
    assert sorted(m["$ref"] for m in item["oneOf"]) == sorted(mapping.values())
    job_id = submit(app.client, "tests.e2e_tasks.two_steps", {"fail_first": True})
    ctx = submit(app.client, "jobserver.examples.sleep", {"seconds": 0.01, "steps": 2})
    seen = set()
    for jid in (job_id, ctx):
        events = read_events(app.client, jid)
        for event_id, kind, data in events:
            member = inline({"$ref": mapping[kind]}, doc)
            assert member["properties"]["event"] == {"const": kind}
            assert jsonschema.Draft202012Validator(member).is_valid(
                {"event": kind, "data": "{}", "id": event_id}
            )
            content = member["properties"]["data"]
            assert content["contentMediaType"] == "application/json"
            errors = list(jsonschema.Draft202012Validator(content["contentSchema"]).iter_errors(data))
            assert not errors, (kind, data, errors[0].message)
            seen.add(kind)
    assert seen == {"status", "progress", "log"}
    bad = inline({"$ref": mapping["status"]}, doc)["properties"]["data"]["contentSchema"]
    assert not jsonschema.Draft202012Validator(bad).is_valid({"id": 1})  # the check can fail


def test_an_undeclared_method_gets_405_with_every_method_of_the_path(app: RunningApp) -> None:
    r = app.client.request("PATCH", "/jobs")
    assert r.status_code == 405
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["allow"] == "GET, HEAD, POST"
    assert app.client.request("TRACE", "/tasks").headers["allow"] == "GET, HEAD"
    # a literal path beside /jobs/{id} is its own resource: the wrong method there is no job id
    for method in ("GET", "DELETE"):
        for path in ("/jobs/batch", "/jobs/cancel", "/jobs/retry", "/jobs/delete"):
            r = app.client.request(method, path)
            assert (r.status_code, r.headers.get("allow")) == (405, "POST"), (method, path, r.text)


def test_a_path_with_a_trailing_slash_is_a_404_problem_never_a_redirect(app: RunningApp) -> None:
    """The API never redirects: a client that takes a redirect for a success would misread it."""
    for method, path in (("GET", "/jobs/"), ("POST", "/jobs/"), ("GET", "/tasks/"), ("GET", "/healthz/")):
        r = app.client.request(method, path, follow_redirects=False)
        assert r.status_code == 404, (method, path, r.status_code, r.headers)
        assert r.headers["content-type"] == "application/problem+json"
