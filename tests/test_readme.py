"""The README's Python, run as a reader copies it: the tour's SDK lines, the task modules of
"Writing tasks", "Limits" and "Agent workflows", and the FastAPI endpoints that call jobserver.

Each snippet is taken from README.md as it stands, so a snippet that drifts from the product
(a renamed import, a changed signature, an answer that no longer says what the README shows)
fails here. Only what a reader must add is added: the helpers a snippet leaves to them
(`search_web`, `call_llm`) and the FastAPI app around the endpoints.
"""

from __future__ import annotations

import contextlib
import io
import re
import sqlite3
import subprocess
import sys
import threading
import types
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobserver.core.tasks import Registry
from jobserver.storage.writer import Tx
from tests.helpers import finished, wait_until
from tests.inproc import ServedApp, served_app

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
README_URL = "http://127.0.0.1:8000"


def python_blocks(heading: str) -> list[str]:
    """The ```python blocks of the README section that starts at `heading`, in order."""
    section = README.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    return [part.split("```", 1)[0] for part in section.split("```python\n")[1:]]


def module_from(name: str, code: str, prelude: str = "") -> types.ModuleType:
    """`code` as the module `name` (what `import name` would give had a reader saved it)."""
    module = types.ModuleType(name)
    exec(compile(prelude + code, f"README.md ({name})", "exec"), module.__dict__)
    return module


# what "Writing tasks" leaves to the reader: a search and an LLM call
HELPERS = """
def search_web(query):
    return [f"{query}: page {i}" for i in range(3)]


def call_llm(page):
    return f"notes on {page}"
"""
# the work of the FastAPI example's Celery endpoints, as a task
BATCH_TASK = """
from jobserver import JobContext, task


@task
def process_document_batch(ctx: JobContext, document_ids: list[str]) -> dict:
    ctx.progress(len(document_ids), len(document_ids), "analyzed")
    return {"documents": len(document_ids)}
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedApp]:
    """A server whose `myapp.tasks` is the README's "Writing tasks" module."""
    writing = python_blocks("## Writing tasks")[0]
    package = types.ModuleType("myapp")
    tasks = module_from("myapp.tasks", writing + BATCH_TASK, HELPERS)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "myapp", package)
        mp.setitem(sys.modules, "myapp.tasks", tasks)
        config = {"tasks": {"modules": ["jobserver.examples", "myapp.tasks"]}}
        with served_app(tmp_path_factory.mktemp("readme"), config) as app:
            yield app


def test_the_task_snippets_are_modules_the_server_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    writing = python_blocks("## Writing tasks")[0]
    limits, workflows = python_blocks("### Limits")[0], python_blocks("### Agent workflows")[0]
    for name, code in (("readme_writing", writing), ("readme_limits", limits), ("readme_agent", workflows)):
        monkeypatch.setitem(sys.modules, name, module_from(name, code))
    registry = Registry.from_modules(["readme_writing", "readme_limits", "readme_agent"])
    assert {t.name for t in registry.all()} == {
        "readme_writing.research",
        "readme_writing.charge_card",
        "readme_writing.call_provider",
        "readme_limits.summarize",
        "readme_agent.review",
    }


def test_the_tours_sdk_lines_print_the_sum(served: ServedApp) -> None:
    [sdk] = python_blocks("## Five-minute tour")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(sdk.replace(README_URL, served.url), {})
    assert out.getvalue() == "5\n"  # as its comment says


def test_the_fastapi_endpoints_submit_and_read_jobs(
    served: ServedApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi import FastAPI
    from starlette.testclient import TestClient

    # the jobserver column of each pair, in the app the article's endpoints live in
    blocks = python_blocks("### Calling jobserver from a FastAPI app, instead of BackgroundTasks or Celery")
    ours = [blocks[1], blocks[3]]
    monkeypatch.setenv("JOBSERVER_API_KEY", "unused: this server has no keys")
    namespace: dict[str, Any] = {}
    exec(
        "import os\nfrom fastapi import APIRouter, Header, HTTPException\nfrom pydantic import BaseModel\n"
        "class ResearchRequest(BaseModel):\n    query: str\n"
        "class BatchAnalyzeRequest(BaseModel):\n    document_ids: list[str]\n"
        "router = APIRouter()\n",
        namespace,
    )
    for code in ours:
        exec(code.replace(README_URL, served.url), namespace)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await namespace["jobs"].aclose()  # "close the client on shutdown"

    app = FastAPI(lifespan=lifespan)
    app.include_router(namespace["router"])
    c = served.client()
    with TestClient(app) as web:
        first = web.post("/research", json={"query": "durable"}, headers={"Idempotency-Key": "click"})
        again = web.post("/research", json={"query": "durable"}, headers={"Idempotency-Key": "click"})
        assert first.status_code == again.status_code == 202
        assert first.json()["task_id"] == again.json()["task_id"]  # a double click: one job
        job_id = first.json()["task_id"]
        assert finished(c, job_id)["status"] == "completed"
        job = web.get(f"/research/{job_id}").json()
        assert job["result"] == {"summary": "notes on durable: page 1"}
        assert [s["name"] for s in job["steps"]] == ["search", "read-0", "read-1"]
        assert web.get("/research/no-such-job").status_code == 404

        batch = web.post("/batch-analyze", json={"document_ids": ["a", "b"]})
        assert batch.status_code == 202 and batch.json()["status"] in ("pending", "running", "completed")
        finished(c, batch.json()["task_id"])
        status = web.get(f"/batch-analyze/{batch.json()['task_id']}").json()
        assert status["progress"] == {"current": 2, "total": 2, "message": "analyzed"}
        assert status["result"] == {"documents": 2}


def test_the_backup_line_finishes_while_the_server_commits(served: ServedApp, tmp_path: Path) -> None:
    """The "Backups" line, run by the sqlite3 shell (another process) on a 100 MB file while jobs
    are submitted: it finishes with a sound copy. The shell's `.backup` started again from the
    first page at every commit in between, and so never finished."""
    line = re.search(r"`(sqlite3 data/jobserver\.db [^`]+)`", README.split("- **Backups**", 1)[1])
    assert line is not None
    target = tmp_path / "backup.db"
    command = (
        line[1]
        .replace("data/jobserver.db", str(served.app.db_path))
        .replace("/backups/jobserver-$(date +%F).db", str(target))
    )
    writer = served.app.runtime.parts.writer
    blob = "x" * 3000  # about a page a row: 30,000 rows make a file of 100 MB

    def rows(tx: Tx, start: int) -> None:
        for n in range(start, start + 1000):
            tx.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (f"backup-filler-{n}", blob))

    for start in range(0, 30_000, 1000):
        writer.call(lambda tx, start=start: rows(tx, start))  # type: ignore[misc]
    stop = threading.Event()
    accepted: list[str] = []

    def submit_jobs() -> None:
        with served.client() as c:
            while not stop.is_set():
                r = c.post("/jobs", json={"task": "jobserver.examples.add", "args": {"a": 1, "b": 2}})
                assert r.status_code == 202, r.text
                accepted.append(r.json()["id"])

    def commit_often() -> None:  # the small writes a busy server makes between its submits
        while not stop.is_set():
            writer.probe().result(10)

    threads = [threading.Thread(target=submit_jobs), threading.Thread(target=commit_often)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: len(accepted) >= 20, 30, 0.01, "jobs to flow")
        before = len(accepted)
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        during = len(accepted) - before
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        writer.call(lambda tx: tx.execute("DELETE FROM meta WHERE key LIKE 'backup-filler-%'"))
    assert during >= 5, during  # the server went on committing while the copy was read
    copy = sqlite3.connect(target)
    try:
        assert copy.execute("PRAGMA quick_check").fetchall() == [("ok",)]
        assert copy.execute("SELECT COUNT(*) FROM meta WHERE key LIKE 'backup-filler-%'").fetchone() == (
            30_000,
        )
        assert copy.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] >= before
    finally:
        copy.close()
