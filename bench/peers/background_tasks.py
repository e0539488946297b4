"""The seed article's first design: FastAPI `BackgroundTasks` and a dict of task records.

As in the article, the endpoint stores a record, schedules the work with
`background_tasks.add_task` and answers 202; the work runs in the same process
after the response, and nothing survives a restart. `?wait=` (which the article
does not have; its clients poll) is an `asyncio.Event` per record, so the bench's
follow-up GETs cost this design no more than they cost jobserver.

    python -m bench.peers.background_tasks PORT
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from typing import Any

from fastapi import BackgroundTasks, FastAPI, HTTPException

from bench.peers.common import MAX_WAIT_S, TASKS, JobRequest, rfc3339, serve

app = FastAPI()
task_store: dict[str, dict[str, Any]] = {}  # "In production, use Redis instead"
done_events: dict[str, asyncio.Event] = {}


async def run_task(task_id: str, name: str) -> None:
    info = task_store[task_id]
    info["status"], info["started"] = "running", time.time()
    try:
        info["result"] = TASKS[name]()
        info["status"] = "completed"
    except Exception as exc:
        info["status"], info["error"] = "failed", str(exc)
    info["finished"] = time.time()
    done_events.pop(task_id).set()


def job(info: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": info["id"],
        "status": info["status"],
        "result": info.get("result"),
        "error": info.get("error"),
        "created_at": rfc3339(info["created"]),
        "started_at": rfc3339(info.get("started")),
        "finished_at": rfc3339(info.get("finished")),
    }


@app.post("/jobs", status_code=202)
async def submit(request: JobRequest, background_tasks: BackgroundTasks) -> dict[str, Any]:
    if request.task not in TASKS:
        raise HTTPException(422, f"unknown task {request.task}")
    task_id = str(uuid.uuid4())
    task_store[task_id] = {"id": task_id, "status": "pending", "created": time.time()}
    done_events[task_id] = asyncio.Event()
    background_tasks.add_task(run_task, task_id, request.task)
    return job(task_store[task_id])


@app.get("/jobs/{task_id}")
async def get(task_id: str, wait: float = 0) -> dict[str, Any]:
    info = task_store.get(task_id)
    if info is None:
        raise HTTPException(404, "Task not found")
    event = done_events.get(task_id)
    if wait > 0 and event is not None:
        try:
            await asyncio.wait_for(event.wait(), min(wait, MAX_WAIT_S))
        except TimeoutError:
            pass
    return job(info)


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


if __name__ == "__main__":
    serve(app, int(sys.argv[1]))
