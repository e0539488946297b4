"""WebhookSender: delivers the webhook outbox on its own threads.

Owns what happens to a delivery row after the outbox wrote it with the
job's final status: picking due rows, one attempt each through
`webhooks.deliver_once`, and recording the attempt together with the row's
next state in one writer op. Also owns the signing secret (`load_secret`) and
the read behind `GET /jobs/{id}/webhooks` (`WebhookSender.attempts`).

Delivery states::

    pending ──── 2xx ─────────────────────────────► delivered
      │  ▲
      │  └─ any other answer, timeout, refused URL: attempts + 1, next_attempt_at = end + wait
      └──── 410, or the retry schedule is used up ──► failed

A row's state changes only in the transaction that stores its attempt, so no
row is ever stuck "in flight". Right before sending, the sender moves the row's
`next_attempt_at` past the attempt's timeout: a lease that expires by itself.
Another sender (a second PostgreSQL node) skips the row meanwhile, and when this
process dies mid-attempt the row is due again once the lease runs out. Delivery
is therefore at least once; the `webhook-id` (the row's id) lets receivers
drop repeats.

Threads: one loop thread picks due rows; each attempt runs on its own daemon
thread, at most `parallel` at once, so a slow receiver holds up only its own
delivery and never the writer, the workers or the API.

Fairness: many deliveries to one receiver that stopped answering would otherwise
take every slot for a whole timeout, again and again, while deliveries to healthy
receivers wait behind them. Deliveries to one host (host:port) therefore hold at
most `per_host` of the slots (6 of 8), leaving the rest to other hosts. The oldest
due rows go first, passing over a host at its share; the rows passed over stay
pending, untouched, and are picked when that host has a free slot. Each sender
(each node) counts its own share; the lease still keeps nodes from sending a row twice.
"""

from __future__ import annotations

import functools
import logging
import random
import ssl
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import peewee as pw

from jobserver.core.clock import Clock, rfc3339
from jobserver.core.config import WebhooksSettings
from jobserver.core.errors import StorageError, WebhookURLError
from jobserver.core.tracing import NO_TRACING, Span, Tracing
from jobserver.storage.models import read_rows
from jobserver.storage.writer import Tx, Writer
from jobserver.webhooks import netguard
from jobserver.webhooks.payload import AttemptResult, deliver_once, generate_secret, next_delay, secret_key

log = logging.getLogger(__name__)

SECRET_META_KEY = "webhook_secret"
LEASE_MARGIN_S = 2.0  # the lease outlives the attempt's timeout by this much
IDLE_WAIT_S = 1.0  # the loop looks for due rows at least this often, even without a wake
MIN_WAIT_S = 0.01
STOP_GRACE_S = 2.0  # how long stop() lets attempts in flight finish and be recorded
# Bounds the due query's length. One pattern covers a host's URLs that share a
# scheme://host:port/ prefix, so only path-less URLs (a pattern each) can use many.
MAX_SKIPPED_URLS = 64

_DUE_WHERE = (
    "SELECT id, job_id, url, payload, attempts, event_type, "
    "(SELECT trace_context FROM jobs WHERE jobs.id = webhook_deliveries.job_id) FROM webhook_deliveries "
    "WHERE state = 'pending' AND next_attempt_at <= ?"
)
_DUE_ORDER = " ORDER BY next_attempt_at LIMIT ?"
_NOT_URL = " AND url NOT LIKE ? ESCAPE '!'"  # not a backslash: its quoting differs between databases
DUE_SQL = _DUE_WHERE + _DUE_ORDER
NEXT_DUE_SQL = "SELECT MIN(next_attempt_at) FROM webhook_deliveries WHERE state = 'pending'"
ATTEMPTS_SQL = (
    "SELECT a.delivery_id, a.attempt, a.at, a.status_code, a.error, a.duration_ms, d.event_type "
    "FROM webhook_attempts a LEFT JOIN webhook_deliveries d ON d.id = a.delivery_id "
    "WHERE a.job_id = ? ORDER BY a.id"
)
STILL_DUE_SQL = "SELECT 1 FROM webhook_deliveries WHERE job_id = ? AND state = 'pending' LIMIT 1"


@dataclass(frozen=True, slots=True)
class DueDelivery:
    """A pending delivery row, as read before an attempt."""

    id: str
    job_id: str
    url: str
    payload: str
    attempts: int
    event_type: str = ""
    trace_context: str | None = None  # the job's, when it was submitted with tracing on


def host_of(url: str) -> str:
    """What the fair share is counted by: one receiver's capacity sits behind one host:port."""
    try:
        _scheme, host, port = netguard.split_webhook_url(url)
    except (WebhookURLError, ValueError):
        return url  # refused at the attempt, without a request: a bucket of its own
    return f"{host}:{port}"


def _like_literal(text: str) -> str:
    return text.replace("!", "!!").replace("%", "!%").replace("_", "!_")


def url_pattern(url: str) -> str:
    """A LIKE pattern (escape `!`) for `url` and every URL that starts with the same
    `scheme://host:port/` text, so one pattern leaves out all of a host's deliveries even when
    each job has its own URL; a URL it matches has that host:port."""
    start = url.find("://")
    end = url.find("/", start + 3) if start >= 0 else -1
    if end < 0 or "?" in url[start:end] or "#" in url[start:end]:
        return _like_literal(url)  # nothing after the authority but a query: this URL alone
    return _like_literal(url[: end + 1]) + "%"


def _read(db: pw.Database, pg: bool, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    """A read on the calling thread's own connection."""
    return read_rows(db, pg, sql, params)


def stored_secret(db: pw.Database, pg: bool) -> str | None:
    """The signing secret generated on a first start and kept in the database, if there is one."""
    rows = _read(db, pg, "SELECT value FROM meta WHERE key = ?", (SECRET_META_KEY,))
    return str(rows[0][0]) if rows else None


def load_secret(settings: WebhooksSettings, db: pw.Database, writer: Writer, pg: bool) -> str:
    """The signing secret: `[webhooks] secret`, else the one kept in the database (made once)."""
    if settings.secret:
        return settings.secret
    stored = stored_secret(db, pg)
    if stored is not None:
        return stored
    candidate = generate_secret()

    def op(tx: Tx) -> str:
        # Another node may have stored one first: keep whichever is in the table.
        tx.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
            (SECRET_META_KEY, candidate),
        )
        row = tx.one("SELECT value FROM meta WHERE key = ?", (SECRET_META_KEY,))
        assert row is not None
        return str(row[0])

    secret = writer.call(op)
    if secret == candidate:
        log.warning(
            "generated a webhook signing secret and stored it in the database (table meta, key %r); "
            "receivers need it to verify signatures: `python -m jobserver secret` prints it, or set "
            "[webhooks] secret (JOBSERVER_WEBHOOKS_SECRET) to choose your own",
            SECRET_META_KEY,
            extra={"action": "webhook_secret_generated"},
        )
    return secret


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """The CA bundle takes tens of milliseconds to load: one context serves every sender in the process."""
    return httpx.create_ssl_context(trust_env=False)


class WebhookSender:
    """Sends due webhook deliveries; `run_once(now)` is one pass, `start()` repeats it."""

    def __init__(
        self,
        settings: WebhooksSettings,
        db: pw.Database,
        writer: Writer,
        clock: Clock,
        secret: str,
        pg: bool,
        guard: netguard.WebhookGuard,
        client: httpx.Client | None = None,
        rng: random.Random | None = None,
        parallel: int = 8,
        wake: threading.Event | None = None,
        on_attempt: Callable[[str], None] = lambda outcome: None,
        tracing: Tracing = NO_TRACING,
    ) -> None:
        secret_key(secret)  # a malformed secret is a configuration error: fail at start
        self.settings = settings
        self.db = db
        self.writer = writer
        self.clock = clock
        self.secret = secret
        self.pg = pg
        self.guard = guard  # where deliveries may go (the SSRF rule, never the server's own API)
        self.parallel = parallel
        # A quarter of the slots (at least one, when there are two) stays free for other hosts.
        self.per_host = max(1, parallel - max(1, parallel // 4))
        self.rng = rng or random.Random()
        self.lease_s = settings.timeout + LEASE_MARGIN_S
        self._owns_client = client is None
        self._client = client
        self._client_lock = threading.Lock()
        self.on_attempt = on_attempt  # called with "delivered" | "retrying" | "failed"
        self.tracing = tracing
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._inflight: dict[str, str] = {}  # delivery id -> its host
        self._wake = wake or threading.Event()  # set by the outbox after a commit
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="jobserver-webhooks", daemon=True)

    @property
    def client(self) -> httpx.Client:
        """The HTTP client, made at the first attempt: a server that sends no webhook never loads
        the CA bundle or httpx's transport (httpcore), tens of milliseconds of every start."""
        with self._client_lock:
            if self._client is None:
                self._client = httpx.Client(trust_env=False, follow_redirects=False, verify=_tls_context())
            return self._client

    # ----------------------------------------------------------------- reads
    def attempts(self, job_id: str) -> list[dict[str, Any]]:
        """The job's delivery attempts, oldest first (reads on the caller's connection)."""
        return [
            {
                "id": delivery_id,
                "attempt": int(attempt),
                "at": rfc3339(at),
                "status_code": code,
                "error": error,
                "duration_ms": round(float(ms), 3),
                "type": event_type,
            }
            for delivery_id, attempt, at, code, error, ms, event_type in _read(
                self.db, self.pg, ATTEMPTS_SQL, (job_id,)
            )
        ]

    def still_due(self, job_id: str) -> bool:
        """Whether a delivery of the job is still to be made or retried (reads on the caller's connection).

        A reader that shows the attempts polls only while this holds: once every delivery is
        delivered or given up, its list of attempts is final until the job ends again.
        """
        return bool(_read(self.db, self.pg, STILL_DUE_SQL, (job_id,)))

    def _due(self, now: float, limit: int, skipped: Sequence[str] = ()) -> list[DueDelivery]:
        sql = _DUE_WHERE + _NOT_URL * len(skipped) + _DUE_ORDER
        rows = _read(self.db, self.pg, sql, (now, *skipped, limit))
        return [
            DueDelivery(str(i), str(j), str(u), str(p), int(n), str(e), t) for i, j, u, p, n, e, t in rows
        ]

    def _next_due(self) -> float | None:
        rows = _read(self.db, self.pg, NEXT_DUE_SQL, ())
        return None if not rows or rows[0][0] is None else float(rows[0][0])

    # ------------------------------------------------------------------- one pass
    def run_once(self, now: float) -> int:
        """Attempt the due deliveries there is room for, wait until they are recorded; how many."""
        threads = self._dispatch(now)
        for thread in threads:
            thread.join()
        return len(threads)

    def _dispatch(self, now: float) -> list[threading.Thread]:
        """Lease due rows and start one attempt thread for each; does not wait for them."""
        with self._lock:
            room = self.parallel - len(self._inflight)
            busy = set(self._inflight)
            load = Counter(self._inflight.values())
        if room <= 0:
            return []
        rows = self._pick(now, room, busy, load)
        if not rows:
            return []
        leased = self.writer.call(self._lease_op(rows, now))
        threads = []
        for delivery in rows:
            if delivery.id not in leased:
                continue  # another sender took it
            with self._lock:
                self._inflight[delivery.id] = host_of(delivery.url)
            thread = threading.Thread(
                target=self._attempt, args=(delivery, now), name="jobserver-webhook-attempt", daemon=True
            )
            thread.start()
            threads.append(thread)
        return threads

    def _pick(self, now: float, room: int, busy: set[str], load: Counter[str]) -> list[DueDelivery]:
        """The oldest due rows there is room for, leaving out those of hosts at their share.

        A host at its share may have any number of due rows ahead of everyone else's, so its
        URLs are then left out of the query (one LIKE pattern each) and the query is asked
        again: the rows behind them are reached in a few reads, however long that backlog is.
        """
        picked: dict[str, DueDelivery] = {}
        skipped: list[str] = []
        limit = len(busy) + room  # a full batch then holds a row neither busy nor picked before
        while True:
            rows = self._due(now, limit, skipped)
            more = False
            for delivery in rows:
                if delivery.id in busy or delivery.id in picked:
                    continue
                host = host_of(delivery.url)
                if load[host] >= self.per_host:
                    pattern = url_pattern(delivery.url)
                    if pattern not in skipped:
                        skipped.append(pattern)
                        more = True
                    continue
                picked[delivery.id] = delivery
                load[host] += 1
                if len(picked) == room:
                    return list(picked.values())
            # A full batch that did not fill the room skipped a row of a new pattern: ask again.
            if len(rows) < limit or not more or len(skipped) > MAX_SKIPPED_URLS:
                return list(picked.values())

    def _lease_op(self, rows: list[DueDelivery], now: float) -> Callable[[Tx], set[str]]:
        until = now + self.lease_s

        def op(tx: Tx) -> set[str]:
            leased = set()
            for d in rows:
                cur = tx.execute(
                    "UPDATE webhook_deliveries SET next_attempt_at = ? WHERE id = ? AND state = 'pending' "
                    "AND attempts = ? AND next_attempt_at <= ?",
                    (until, d.id, d.attempts, now),
                )
                if cur.rowcount == 1:
                    leased.add(d.id)
            return leased

        return op

    def _attempt(self, delivery: DueDelivery, now: float) -> None:
        """One attempt of one delivery, then its record; never raises (runs on its own thread)."""
        try:
            with self.tracing.delivery(f"webhook {delivery.event_type}", delivery.trace_context) as span:
                span.set("jobserver.job.id", delivery.job_id)
                span.set("jobserver.webhook.id", delivery.id)
                span.set("jobserver.webhook.attempt", delivery.attempts + 1)
                span.set("http.request.method", "POST")
                _set_receiver(span, delivery.url)
                result = deliver_once(
                    self.client,
                    delivery.url,
                    delivery.id,
                    delivery.payload.encode(),
                    self.secret,
                    now,
                    self.guard,
                    self.settings.timeout,
                    span.headers(),
                    self.settings.previous_secrets,
                )
                span.set("http.response.status_code", result.status_code)
                span.set("jobserver.webhook.outcome", result.outcome)
                span.set("jobserver.webhook.error", result.error)
            outcome = self._record(delivery, result, now)
            self.on_attempt(outcome)
        except Exception:
            log.exception(
                "webhook %s: the attempt could not be recorded; it is retried later",
                delivery.id,
                extra={"job_id": delivery.job_id, "action": "webhook_error"},
            )
        finally:
            with self._lock:
                self._inflight.pop(delivery.id, None)
                self._idle.notify_all()
            self._wake.set()  # a slot is free

    def _record(self, delivery: DueDelivery, result: AttemptResult, now: float) -> str:
        """Store the attempt and the delivery's next state in one transaction; the outcome word."""
        number = delivery.attempts + 1
        next_at: float | None = None
        if result.outcome == "delivered":
            state = "delivered"
        elif result.outcome == "gave_up":
            state = "failed"
        else:
            delay = next_delay(self.settings.retry_schedule, number, result.retry_after_s, self.rng)
            # the wait runs from the attempt's end: one that used its whole timeout gets it too
            state, next_at = ("failed", None) if delay is None else ("pending", self.clock.now() + delay)

        def op(tx: Tx) -> bool:
            if tx.one("SELECT 1 FROM webhook_deliveries WHERE id = ?", (delivery.id,)) is None:
                return False  # the job was deleted or pruned meanwhile
            tx.execute(
                "INSERT INTO webhook_attempts (delivery_id, job_id, attempt, at, status_code, error, "
                "duration_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    delivery.id,
                    delivery.job_id,
                    number,
                    now,
                    result.status_code,
                    result.error,
                    result.duration_ms,
                ),
            )
            tx.execute(
                "UPDATE webhook_deliveries SET state = ?, attempts = ?, next_attempt_at = ? "
                "WHERE id = ? AND state = 'pending' AND attempts = ?",
                (state, number, next_at, delivery.id, delivery.attempts),
            )
            return True

        self.writer.call(op)
        outcome = "retrying" if state == "pending" else state
        self._log(delivery, result, number, outcome, next_at)
        return outcome

    def _log(
        self, delivery: DueDelivery, result: AttemptResult, number: int, outcome: str, next_at: float | None
    ) -> None:
        extra = {"job_id": delivery.job_id, "action": f"webhook_{outcome}"}
        if outcome == "delivered":
            log.info(
                "webhook %s delivered (attempt %d, HTTP %s)",
                delivery.id,
                number,
                result.status_code,
                extra=extra,
            )
        elif outcome == "retrying":
            log.warning(
                "webhook %s attempt %d failed (%s); next attempt at %s",
                delivery.id,
                number,
                result.error,
                rfc3339(next_at),
                extra=extra,
            )
        else:
            log.warning(
                "webhook %s given up after attempt %d (%s)", delivery.id, number, result.error, extra=extra
            )

    # ------------------------------------------------------------------ thread
    def wake(self) -> None:
        """Look for due deliveries now (safe from any thread; the store calls it after commit)."""
        self._wake.set()

    def start(self) -> None:
        """Start the loop thread."""
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            wait = IDLE_WAIT_S
            try:
                now = self.clock.now()
                started = self._dispatch(now)
                with self._lock:
                    full = len(self._inflight) >= self.parallel
                due = None if full else self._next_due()  # when full, a finished attempt wakes us
                # A row already due that this pass did not start is in flight past its lease, raced
                # another sender, or waits for its host's share: a finished attempt wakes us, else
                # look again after the idle wait, not in a busy loop.
                if due is not None and (started or due > now):
                    wait = min(IDLE_WAIT_S, max(MIN_WAIT_S, due - self.clock.now()))
            except StorageError as exc:  # the writer logs the outage; deliveries wait for it to end
                log.debug("webhook sender pass failed: %s", exc, extra={"action": "webhook_error"})
            except Exception:
                log.exception("webhook sender pass failed", extra={"action": "webhook_error"})
            self._wake.wait(wait)
        self.db.close()  # this thread's read connection

    def stop(self) -> None:
        """Stop picking deliveries; let attempts in flight finish briefly (the rest are retried later)."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        with self._lock:
            self._idle.wait_for(lambda: not self._inflight, timeout=STOP_GRACE_S)
            idle = not self._inflight
        with self._client_lock:
            if self._owns_client and idle and self._client is not None:
                self._client.close()


def _set_receiver(span: Span, url: str) -> None:
    """The receiver on a delivery's span: its scheme, host and port, never the URL's path or query,
    which may hold the receiver's token (as a Slack or Discord webhook's path does), as the
    logs never hold it: a trace backend is read by more people than the database."""
    try:
        scheme, host, port = netguard.split_webhook_url(url)
    except WebhookURLError:
        return  # refused before any request: the attempt's error says why
    span.set("url.scheme", scheme)
    span.set("server.address", host)
    span.set("server.port", port)
