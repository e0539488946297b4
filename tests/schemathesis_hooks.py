"""Schemathesis hooks for runs against jobserver (`SCHEMATHESIS_HOOKS=tests.schemathesis_hooks`).

Two values of a submit are accepted or refused by what lies outside the request, which no
schema can state, so schema-valid ones are made into values a client would send:
- each `Idempotency-Key` names one body: a key reused with another body is refused with 422
  by design (the contract), and Schemathesis draws the same few keys for many bodies. Same
  key and same body still replay the first job.
- a `webhook_url` goes to `SCHEMATHESIS_WEBHOOK_URL` (a receiver on 127.0.0.1 that the
  server allows): a generated host would be looked up in DNS and then refused (422) as not
  resolving or as internal; webhook URL screening has its own tests (test_netguard.py).
Invalid values stay as drawn, so negative cases stay negative.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from typing import Any

import schemathesis

KEY_HEADER = "Idempotency-Key"
MAX_KEY = 255
DIGEST_CHARS = 16
MAX_WEBHOOK_URL = 2048
WEBHOOK_URL = re.compile("^[Hh][Tt][Tt][Pp]([Ss])?://")  # as the OpenAPI document states it


def key_for_body(key: str, body: Any) -> str:
    """`key` made specific to `body` (equal JSON, equal key), still 1 to 255 characters."""
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()
    return f"{key[: MAX_KEY - DIGEST_CHARS - 1]}.{digest[:DIGEST_CHARS]}"


def _as_a_client_submits(job: Any, webhook_url: str | None) -> None:
    """One submit body (or batch item): its webhook URL to the receiver, its own key per body."""
    if not isinstance(job, dict):
        return
    url = job.get("webhook_url")
    if (
        webhook_url is not None
        and isinstance(url, str)
        and len(url) <= MAX_WEBHOOK_URL
        and WEBHOOK_URL.match(url)
    ):
        job["webhook_url"] = webhook_url
    key = job.get("idempotency_key")
    if isinstance(key, str) and 1 <= len(key) <= MAX_KEY:
        job["idempotency_key"] = key_for_body(key, {k: v for k, v in job.items() if k != "idempotency_key"})


def as_a_client_sends(case: schemathesis.Case[Any], webhook_url: str | None) -> None:
    """Make the case's schema-valid keys and webhook URLs what a client would send (see above),
    in a submit body and in each item of a batch."""
    body = case.body
    _as_a_client_submits(body, webhook_url)
    jobs = body.get("jobs") if isinstance(body, dict) else None
    if isinstance(jobs, list):
        for item in jobs:
            _as_a_client_submits(item, webhook_url)
    headers: Mapping[str, Any] = case.headers or {}
    key = headers.get(KEY_HEADER)
    if isinstance(key, str) and 1 <= len(key) <= MAX_KEY:
        case.headers[KEY_HEADER] = key_for_body(key, body)


@schemathesis.hook
def before_call(ctx: Any, case: schemathesis.Case[Any], **kwargs: Any) -> None:
    as_a_client_sends(case, os.environ.get("SCHEMATHESIS_WEBHOOK_URL"))
