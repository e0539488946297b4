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


def as_a_client_sends(case: schemathesis.Case, webhook_url: str | None) -> None:
    """Make the case's schema-valid key and webhook URL what a client would send (see above)."""
    body = case.body
    items = body.get("jobs") if isinstance(body, dict) else None  # POST /jobs/batch: each item a submit body
    for item in [body, *(items if isinstance(items, list) else [])]:
        if isinstance(item, dict) and webhook_url is not None:
            url = item.get("webhook_url")
            if isinstance(url, str) and len(url) <= MAX_WEBHOOK_URL and WEBHOOK_URL.match(url):
                item["webhook_url"] = webhook_url
        item_key = item.get("idempotency_key") if isinstance(item, dict) and item is not body else None
        if isinstance(item_key, str) and 1 <= len(item_key) <= MAX_KEY:
            assert isinstance(item, dict)
            item["idempotency_key"] = key_for_body(
                item_key, {k: v for k, v in item.items() if k != "idempotency_key"}
            )
    key = (case.headers or {}).get(KEY_HEADER)
    if isinstance(key, str) and 1 <= len(key) <= MAX_KEY:
        case.headers[KEY_HEADER] = key_for_body(key, body)


@schemathesis.hook
def before_call(ctx: Any, case: schemathesis.Case, **kwargs: Any) -> None:
    as_a_client_sends(case, os.environ.get("SCHEMATHESIS_WEBHOOK_URL"))
