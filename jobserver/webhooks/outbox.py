"""The webhook outbox's writing side: a finished job's delivery row is inserted in
the same transaction that finished the job (and a `job.waiting` one in the
transaction that parked a job to wait for a signal), so a committed ending always has its
webhook and a rolled-back one never does. The sender (its own threads) is woken
after the commit through the event both are given at construction.
"""

from __future__ import annotations

import threading

from jobserver.core.lifecycle import FINISHED
from jobserver.core.records import JobRecord
from jobserver.storage.writer import Tx
from jobserver.webhooks.payload import build_payload, event_type_for

INSERT_DELIVERY_SQL = (
    "INSERT INTO webhook_deliveries (id, job_id, url, event_type, payload, state, attempts, "
    "next_attempt_at, created_at) VALUES (?, ?, ?, ?, ?, 'pending', 0, ?, ?)"
)


class Outbox:
    """Queues a job's `job.<status>` webhook inside a transaction."""

    def __init__(self, wake: threading.Event) -> None:
        self._wake = wake

    def record(self, tx: Tx, rec: JobRecord, now: float) -> None:
        """Insert the delivery row when `rec` is a finished job with a webhook_url, or one that
        starts waiting for a signal."""
        if not rec.webhook_url:
            return
        if rec.status not in FINISHED and (rec.to_api()["waiting_for"] or {}).get("kind") != "signal":
            return
        tx.after_commit(self._wake.set)
        delivery_id = f"msg_{rec.id.replace('-', '')}_{rec.run_seq}_{int(now * 1000)}"
        event_type = event_type_for(rec.status)
        payload = build_payload(event_type, rec.to_api(), now).decode()
        tx.execute(INSERT_DELIVERY_SQL, (delivery_id, rec.id, rec.webhook_url, event_type, payload, now, now))
