"""HTTP route `GET /jobs/{id}/webhooks`: a job's webhook delivery attempts.

Answers `{"deliveries": [{"id", "attempt", "at", "status_code", "error",
"duration_ms", "type"}], "pending": bool}`, oldest first: `id` is the
delivery's `webhook-id` (the same on every retry of it), `status_code` is null
when no HTTP answer arrived. `pending` is true while the list may still grow: the job
has a webhook URL and has not finished, or a delivery is queued or waiting for
a retry. So a page that shows the list knows when it is final (until the job is
retried). 404 for an unknown job. Both reads run in one hop to the reader
threads, never on the event loop. Added to the app through
`Runtime.extra_routes`, so it sits behind the same auth middleware as every
other route.

No SQL here.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from jobserver.core.errors import JobServerError
from jobserver.core.lifecycle import FINISHED
from jobserver.http.app import refuse_query
from jobserver.http.problems import problem_for
from jobserver.storage.readers import ReadPool
from jobserver.storage.store import JobStore
from jobserver.webhooks.sender import WebhookSender


def webhook_routes(store: JobStore, sender: WebhookSender, readers: ReadPool) -> list[Route]:
    """The routes to add to the app."""

    def _deliveries(job_id: str) -> dict[str, Any]:
        job = store.get(job_id)  # 404 for an unknown job; a finished job's deliveries are queued
        # read before the attempts: a list said to be final holds every attempt
        pending = job.webhook_url is not None and (job.status not in FINISHED or sender.still_due(job_id))
        return {"deliveries": sender.attempts(job_id), "pending": pending}

    async def list_deliveries(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        try:
            refuse_query(request)
            answer = await readers.run(_deliveries, job_id)
        except JobServerError as exc:
            return problem_for(exc)
        return Response(orjson.dumps(answer), media_type="application/json")

    return [Route("/jobs/{job_id}/webhooks", list_deliveries, methods=["GET"])]
