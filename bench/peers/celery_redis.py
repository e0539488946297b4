"""The seed article's second design: FastAPI in front of Celery, Redis as broker and result
backend, with the article's Celery settings (JSON, `task_track_started`).

The web process calls `.delay()` and `AsyncResult` as the article does, from
FastAPI's thread pool (plain `def` endpoints: both calls block on Redis). The
workers are a separate `celery worker` process (prefork). `?wait=` is
`AsyncResult.get(timeout=...)`, which waits on Redis pub/sub for the result.

    python -m bench.peers.celery_redis PORT            # the web process
    celery -A bench.peers.celery_redis:celery_app worker --pool prefork --concurrency 2
Both read the Redis URL from BENCH_REDIS_URL (default redis://127.0.0.1:6379/15).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Protocol, cast

from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeout
from celery.result import AsyncResult
from fastapi import FastAPI, HTTPException

from bench.peers.common import MAX_WAIT_S, TASKS, JobRequest, rfc3339, serve

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
celery_app = Celery("agent_tasks", broker=REDIS_URL, backend=REDIS_URL)
celery_app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_track_started=True,
    result_extended=True,  # the result keeps the task's kwargs: its submit time
    worker_hijack_root_logger=False,
)

STATUS = {"PENDING": "pending", "STARTED": "running", "SUCCESS": "completed", "FAILURE": "failed"}


class RunTask(Protocol):
    """What the web process uses of the Celery task (Celery is untyped): `.delay` queues a call."""

    def delay(self, name: str, created: float) -> AsyncResult: ...


def _run_task(name: str, created: float) -> dict[str, Any]:
    started = time.time()
    result = TASKS[name]()
    return {"result": result, "started": started, "finished": time.time()}


run_task = cast(RunTask, celery_app.task(name="run_task")(_run_task))


app = FastAPI()


@app.post("/jobs", status_code=202)
def submit(request: JobRequest) -> dict[str, Any]:
    if request.task not in TASKS:
        raise HTTPException(422, f"unknown task {request.task}")
    created = time.time()
    task = run_task.delay(request.task, created)
    return {"id": task.id, "status": "pending", "created_at": rfc3339(created)}


@app.get("/jobs/{task_id}")
def get(task_id: str, wait: float = 0) -> dict[str, Any]:
    result = AsyncResult(task_id, app=celery_app)
    if wait > 0:
        try:
            result.get(timeout=min(wait, MAX_WAIT_S), propagate=False)
        except CeleryTimeout:
            pass
    out: dict[str, Any] = {"id": task_id, "status": STATUS.get(result.status, result.status.lower())}
    if result.successful():
        value = result.result
        created = (result.kwargs or {}).get("created") or (result.args or [None, None])[1]
        out |= {
            "result": value["result"],
            "created_at": rfc3339(created),
            "started_at": rfc3339(value["started"]),
            "finished_at": rfc3339(value["finished"]),
        }
    elif result.failed():
        out["error"] = str(result.result)
    return out


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


if __name__ == "__main__":
    serve(app, int(sys.argv[1]))
