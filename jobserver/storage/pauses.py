"""TaskPauses: which tasks are paused, stored so a pause survives restarts and holds on every node.

The claim asks which tasks are paused inside its own transaction. On SQLite one process
owns the file and every pause goes through its writer, so the answer is a set
kept in memory and changed by the pause's own transaction (undone if it rolls
back): a claim reads no extra row. On PostgreSQL another node may pause a task
at any time, so the claim reads the (tiny) table in its transaction: a pause
that committed before a claim began is seen by it, whichever node made it.
"""

from __future__ import annotations

import threading

import peewee as pw

from jobserver.storage.limits import DUE_NOTE
from jobserver.storage.models import read_rows
from jobserver.storage.writer import Tx, WriteFuture, Writer


class TaskPauses:
    """The stored set of paused tasks."""

    def __init__(self, db: pw.Database, writer: Writer, pg: bool) -> None:
        self.db = db
        self.writer = writer
        self.pg = pg
        self._lock = threading.Lock()
        self._cached: frozenset[str] = frozenset()

    def load(self) -> None:
        """Read the stored pauses (at start, before any claim)."""
        with self.db.connection_context():
            rows = self.db.execute_sql("SELECT task FROM task_pauses").fetchall()
        with self._lock:
            self._cached = frozenset(str(task) for (task,) in rows)

    def paused(self, tx: Tx) -> frozenset[str]:
        """The paused tasks as the claim transaction `tx` sees them (writer thread)."""
        if self.pg:
            return frozenset(str(task) for (task,) in tx.all("SELECT task FROM task_pauses"))
        return self._cached

    def current(self) -> frozenset[str]:
        """The paused tasks, for display (any thread; on PostgreSQL a read of the table)."""
        if self.pg:
            return frozenset(
                str(task) for (task,) in read_rows(self.db, self.pg, "SELECT task FROM task_pauses")
            )
        with self._lock:
            return self._cached

    def set_paused(self, task: str, paused: bool, now: float) -> WriteFuture[bool]:
        """Pause or resume `task`; resolves to True when this changed anything."""

        def op(tx: Tx) -> bool:
            if paused:
                changed = tx.one(
                    "INSERT INTO task_pauses (task, paused_at) VALUES (?, ?) "
                    "ON CONFLICT (task) DO NOTHING RETURNING task",
                    (task, now),
                )
            else:
                changed = tx.one("DELETE FROM task_pauses WHERE task = ? RETURNING task", (task,))
                if changed is not None:
                    tx.notify(DUE_NOTE)  # its jobs are due on every node, not a poll interval later
            if changed is not None and not self.pg:
                self._change(task, paused)
                tx.on_rollback(lambda: self._change(task, not paused))
            return changed is not None

        return self.writer.submit(op)

    def _change(self, task: str, paused: bool) -> None:
        with self._lock:
            self._cached = self._cached | {task} if paused else self._cached - {task}
