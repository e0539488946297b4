"""Problem `type` URIs resolve: each answers a page that explains the error (HTML, or Markdown
when asked), open without an API key, and every problem code the server can send has one."""

from __future__ import annotations

import re
from pathlib import Path

from jobserver.http.problems import ERROR_TABLE, PROBLEM_TYPES
from tests.helpers import REPO
from tests.inproc import RunningApp, running_app

# problem(<status>, "<code>", ...) and MalformedRequestError("<code>", ...) (a 400) anywhere in the
# package, plus the error table
PROBLEM_CALL = re.compile(r'(?:problem|_refuse)\(\s*(\d{3}),\s*"([a-z0-9-]+)"')  # the app's, the protocol's
MALFORMED = re.compile(r'MalformedRequestError\(\s*"([a-z0-9-]+)"')


def codes_in_source() -> set[tuple[int, str]]:
    found = set()
    for path in (REPO / "jobserver").rglob("*.py"):
        text = path.read_text()
        found |= {(int(s), c) for s, c in PROBLEM_CALL.findall(text)}
        found |= {(400, c) for c in MALFORMED.findall(text)}
    return found | {(status, code) for _, status, code, _ in ERROR_TABLE}


def test_every_problem_the_server_sends_has_a_page() -> None:
    codes = codes_in_source()
    assert len(codes) >= 12  # the scan finds the calls
    for status, code in codes:
        assert code in PROBLEM_TYPES, f"/problems/{code} has no page"
        assert status in PROBLEM_TYPES[code].statuses, (code, status)


def test_the_type_of_each_error_answer_resolves_to_its_page(app: RunningApp) -> None:
    c = app.client
    answers = [
        c.get("/jobs/nope"),
        c.post("/jobs", json={"task": "jobserver.examples.add", "args": {"a": "x"}}),
        c.post("/jobs", content=b"{", headers={"content-type": "application/json"}),
        c.post("/jobs", content=b"a=1", headers={"content-type": "text/plain"}),
        c.request("PATCH", "/jobs"),
        c.get("/no/such/route"),
    ]
    for answer in answers:
        problem = answer.json()
        page = c.get(problem["type"])
        assert page.status_code == 200, problem["type"]
        assert page.headers["content-type"].startswith("text/html")
        assert f"<h1>{problem['title']}</h1>" in page.text
        assert "What to do" in page.text
        markdown = c.get(problem["type"], headers={"accept": "text/markdown"})
        assert markdown.headers["content-type"].startswith("text/markdown")
        assert markdown.text.startswith(f"# {problem['title']}\n")
    unknown = c.get("/problems/no-such-problem")
    assert unknown.status_code == 404
    assert unknown.json()["type"] == "/problems/not-found"


def test_the_pages_are_open_when_api_keys_are_on(tmp_path: Path) -> None:
    with running_app(tmp_path, config={"auth": {"api_keys": ["k1"]}}) as app:
        denied = app.client.get("/jobs")
        assert denied.status_code == 401
        page = app.client.get(denied.json()["type"])
        assert page.status_code == 200 and "<h1>Unauthorized</h1>" in page.text
        assert app.client.get("/problemsx").status_code == 401  # only the pages are open


def test_every_page_keeps_code_spans_and_escapes_its_text(app: RunningApp) -> None:
    for code in PROBLEM_TYPES:
        page = app.client.get(f"/problems/{code}").text
        assert "`" not in page, code  # code spans became <code>
        assert page.count("<code>") == page.count("</code>") > 0, code
