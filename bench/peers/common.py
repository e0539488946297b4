"""What the peers share: the request body, the task bodies, times as jobserver writes them,
and how they are served (uvicorn with jobserver's own HTTP settings)."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import uvicorn
from pydantic import BaseModel, Field

NOOP = "jobserver.examples.noop"
NOW = "jobserver.examples.now"
MAX_WAIT_S = 60.0


class JobRequest(BaseModel):
    """The body of `POST /jobs`, validated as the seed article validates its requests."""

    task: str = Field(min_length=1, max_length=200)
    args: dict[str, Any] = Field(default_factory=dict)


def noop() -> None:
    """Does nothing: the bench measures the system around the task."""


def now() -> float:
    """When the task started, by the machine's clock (the pickup figure)."""
    return time.time()


TASKS = {NOOP: noop, NOW: now}


def rfc3339(epoch: float | None) -> str | None:
    return None if epoch is None else dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat()


def serve(app: Any, port: int) -> None:
    """uvicorn as jobserver runs it: uvloop, httptools, no access log, one process."""
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )
