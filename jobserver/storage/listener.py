"""Listener: hears the other nodes' commits through PostgreSQL LISTEN/NOTIFY.

One thread per process with a connection of its own (LISTEN needs a session
that lives on: it cannot go through a pooler in transaction mode). Each payload
is "<node tag> <note>,<note>,..." as the writer sends it with a commit; notes of
our own node are skipped (this process already woke its parts). A lost
connection is opened again with doubling waits, and after every (re)connect
`resync` runs, since whatever was sent meanwhile is lost: polling stays the
fallback. Must not import above storage.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg

from jobserver.storage.writer import CHANNEL

log = logging.getLogger(__name__)
BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 5.0
POLL_S = 0.5  # how often the thread looks at its stop flag between notifications


class Listener:
    """LISTEN on the jobserver channel and hand the other nodes' notes on."""

    def __init__(
        self,
        url: str,
        node_tag: str,
        deliver: Callable[[list[str]], None],
        resync: Callable[[], None],
    ) -> None:
        self.url = url.replace("postgres://", "postgresql://", 1)
        self.node_tag = node_tag
        self.deliver = deliver
        self.resync = resync
        self.listening = threading.Event()  # set while LISTEN is in force
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="jobserver-listener", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=POLL_S * 4)

    def handle(self, payload: str) -> None:
        """One NOTIFY payload."""
        tag, _, notes = payload.partition(" ")
        if tag != self.node_tag and notes:
            self.deliver(notes.split(","))

    def _loop(self) -> None:
        delay = BACKOFF_MIN_S
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    if delay > BACKOFF_MIN_S:
                        log.info("listening for other nodes again", extra={"action": "listen"})
                    delay = BACKOFF_MIN_S
                    self.resync()
                    while not self._stop.is_set():
                        for notice in conn.notifies(timeout=POLL_S):
                            self.handle(notice.payload)
            except psycopg.Error as exc:
                if delay == BACKOFF_MIN_S:
                    log.warning(
                        "lost the notification connection (%s); polling until it is back",
                        exc,
                        extra={"action": "listen_failed"},
                    )
            except Exception:  # a part we deliver to failed: keep listening
                log.exception("handling a notification failed", extra={"action": "listen_failed"})
            self.listening.clear()
            self._stop.wait(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)
