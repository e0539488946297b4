"""LimitStore: the SQL of limits, run inside the job store's transactions.

A concurrency key is held by a row in `limit_holds` from the claim to the end of
the attempt (the same transactions that mark the job running and end it); a
rate key is charged a row in `limit_charges` at each start. A claim checks a
job's keys with the key's `limits` row locked (PostgreSQL: `FOR UPDATE`, in key
order), so two nodes can never both take the last unit: a claim on another node
checking the same key waits the few milliseconds until this one commits. (A
claim that skipped a locked key instead left its jobs pending with nobody to
claim them again until the next wake-up: with three nodes woken by the same
notification, that was most claims.)

A job that does not fit is parked: status 'blocked' with `blocked_by` (the API
shows it pending), out of the claim's index range, so it holds back nobody and
no claim reads it again. It is unparked when its key frees: one job per slot in
the transaction that ends a holder, and by `unpark_due` when the key's `wake_at`
comes (a rate window that refills, and a periodic look at every key with parked
jobs, which also covers a slot freed on another node while this one parked).
Must not import above storage.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import peewee as pw

from jobserver.core.limits import HeldLimit, as_declared, load_held
from jobserver.storage.models import read_rows
from jobserver.storage.writer import Tx, Writer

CHARGE_KEPT_S = 60.0  # how long a charge is kept past its window
UNPARK_PAGE = 64  # parked jobs one key's look at them reads at most
DUE_NOTE = "d"  # NOTIFY: a job became due
IDLE_KEY_S = 3600.0  # a key with nothing held, parked or charged this long past its window is dropped
# a key nothing uses: no hold, no parked job, no look due, no charge within IDLE_KEY_S past its window
IDLE_KEY = (
    "wake_at IS NULL"
    " AND NOT EXISTS (SELECT 1 FROM limit_holds h WHERE h.key = limits.key)"
    " AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.status = 'blocked' AND j.blocked_by = limits.key)"
    " AND NOT EXISTS (SELECT 1 FROM limit_charges c WHERE c.key = limits.key"
    " AND c.at > ? - COALESCE(limits.per_s, 0))"
)


@dataclass(frozen=True, slots=True)
class KeyUse:
    """One key as GET /limits shows it."""

    key: str
    kind: str
    limit: float
    per_s: float | None
    in_use: float
    blocked: int


@dataclass
class _Key:
    """A key's state within one claim transaction."""

    held: HeldLimit
    used: float


class LimitStore:
    """Checks, holds, charges, parks and unparks; every write inside a caller's transaction."""

    def __init__(
        self,
        db: pw.Database,
        writer: Writer,
        pg: bool,
        recheck_s: float,
        woken: Callable[[], None],
        paused: Callable[[Tx], frozenset[str]] = lambda tx: frozenset(),
        declared: Mapping[str, tuple[str, float, float | None]] | None = None,
    ) -> None:
        self.db = db
        self.writer = writer
        self.pg = pg
        self.recheck_s = recheck_s  # parked jobs of a key are looked at again at least this often
        self.woken = woken  # after a commit that made jobs due again (wakes this process's workers)
        self.paused = paused  # the paused tasks, as a transaction sees them
        self.declared = declared or {}  # key template -> what the running code declares (the latest)
        self._skip_locked = " FOR UPDATE SKIP LOCKED" if pg else ""
        self._for_update = " FOR UPDATE" if pg else ""

    # ---------------------------------------------------------------- claim
    def admit(self, tx: Tx, now: float, jobs: Sequence[tuple[str, str]]) -> list[str]:
        """Of the (id, limits JSON) candidates, in claim order, the ids that fit every key; the
        rest are parked on the first key they do not fit. Call `take` for these once claimed."""
        held = {job_id: self._held(text) for job_id, text in jobs}
        keys = self._lock({h.key: h for hs in held.values() for h in hs}, tx, now)
        admitted = []
        for job_id, _ in jobs:
            mine = held[job_id]
            blocking = next((h for h in mine if keys[h.key].used + _units(h) > h.n), None)
            if blocking is not None:
                self._park(tx, job_id, blocking, now)
                continue
            for h in mine:
                keys[h.key].used += _units(h)
            admitted.append(job_id)
        return admitted

    def _held(self, text: str) -> list[HeldLimit]:
        """A queued job's limits as the running code declares them: what a claim checks and takes."""
        return [as_declared(h, self.declared) for h in load_held(text)]

    def _lock(self, wanted: dict[str, HeldLimit], tx: Tx, now: float) -> dict[str, _Key]:
        """Lock the keys' rows (creating them), skipping those locked elsewhere; their use now."""
        if not wanted:
            return {}
        names = sorted(wanted)
        marks = ", ".join("?" * len(names))
        select = f"SELECT key, n, per_s FROM limits WHERE key IN ({marks}) ORDER BY key{self._for_update}"
        rows = tx.all(select, names)
        if len(rows) < len(names):  # a key's first job: make its row, then lock it
            for name in sorted(set(names) - {str(r[0]) for r in rows}):
                h = wanted[name]
                tx.execute(
                    "INSERT INTO limits (key, kind, n, per_s) VALUES (?, ?, ?, ?) ON CONFLICT (key) DO NOTHING",
                    (name, h.kind, h.n, h.per_s),
                )
            rows = tx.all(select, names)
        out = {}
        for name, n, per_s in rows:
            h = wanted[str(name)]
            if float(n) != h.n or per_s != h.per_s:  # the task's declaration changed: the latest wins
                tx.execute(
                    "UPDATE limits SET n = ?, per_s = ?, kind = ? WHERE key = ?",
                    (h.n, h.per_s, h.kind, h.key),
                )
            out[h.key] = _Key(h, self._used(tx, h, now))
        return out

    def _used(self, tx: Tx, h: HeldLimit, now: float) -> float:
        if h.kind == "concurrency":
            row = tx.one("SELECT COUNT(*) FROM limit_holds WHERE key = ?", (h.key,))
        else:
            assert h.per_s is not None
            # a claim's `now` is read before its op waits for the writer, and nodes' claims interleave:
            # a charge is dropped only long after it left every window a late claim may still look at
            tx.execute(
                "DELETE FROM limit_charges WHERE key = ? AND at <= ?", (h.key, now - h.per_s - CHARGE_KEPT_S)
            )
            row = tx.one(
                "SELECT COALESCE(SUM(units), 0) FROM limit_charges WHERE key = ? AND at > ?",
                (h.key, now - h.per_s),
            )
        return float(row[0]) if row is not None else 0.0

    def _park(self, tx: Tx, job_id: str, h: HeldLimit, now: float) -> None:
        tx.execute("UPDATE jobs SET status = 'blocked', blocked_by = ? WHERE id = ?", (h.key, job_id))
        wake = self._refill_at(tx, h, now) if h.kind == "rate" else now + self.recheck_s
        tx.execute(
            "UPDATE limits SET wake_at = ? WHERE key = ? AND (wake_at IS NULL OR wake_at > ?)",
            (wake, h.key, wake),
        )

    def _refill_at(self, tx: Tx, h: HeldLimit, now: float) -> float:
        """When enough of the key's window has passed for a start costing `h.cost` to fit."""
        assert h.per_s is not None
        rows = tx.all(
            "SELECT at, units FROM limit_charges WHERE key = ? AND at > ? ORDER BY at", (h.key, now - h.per_s)
        )
        used = sum(float(u) for _, u in rows)
        for at, units in rows:
            used -= float(units)
            if used + h.cost <= h.n:
                return float(at) + h.per_s
        return now + self.recheck_s

    def take(self, tx: Tx, now: float, claimed: Sequence[tuple[str, int, str]]) -> None:
        """Hold and charge the keys of jobs just claimed: (id, run_seq, limits JSON)."""
        for job_id, run_seq, text in claimed:
            for h in self._held(text):
                if h.kind == "concurrency":
                    tx.execute(  # a hold left by a transition that did not free it would be kept, not doubled
                        "INSERT INTO limit_holds (key, job_id) VALUES (?, ?) ON CONFLICT (key, job_id) DO NOTHING",
                        (h.key, job_id),
                    )
                else:
                    tx.execute(
                        "INSERT INTO limit_charges (key, job_id, run_seq, at, units) VALUES (?, ?, ?, ?, ?)",
                        (h.key, job_id, run_seq, now, h.cost),
                    )

    # -------------------------------------------------------------- release
    def release(self, tx: Tx, job_id: str, limits: str) -> None:
        """The job's attempt ended (in this transaction): free its concurrency keys and make
        one parked job of each due again."""
        keys = [h.key for h in load_held(limits) if h.kind == "concurrency"]
        if not keys:
            return
        tx.execute("DELETE FROM limit_holds WHERE job_id = ?", (job_id,))
        for key in keys:
            self._unpark(tx, key, 1)

    def _unpark(self, tx: Tx, key: str, n: int) -> int:
        """Make the key's first `n` parked jobs due. A job of a paused task goes too without taking
        one of the `n`: it waits on its pause instead, and no longer stands in front of the jobs
        of other tasks (it is checked against the key again when it is claimed after a resume)."""
        if n <= 0:
            return 0
        paused = self.paused(tx)
        rows = tx.all(
            "SELECT id, task FROM jobs WHERE status = 'blocked' AND blocked_by = ? "
            f"ORDER BY priority DESC, run_at, id LIMIT ?{self._skip_locked}",
            (key, n + UNPARK_PAGE if paused else n),
        )
        due: list[str] = []
        for job_id, task in rows:
            due.append(str(job_id))
            n -= task not in paused
            if n == 0:
                break
        return self._make_due(tx, due)

    def _make_due(self, tx: Tx, ids: list[str]) -> int:
        if not ids:
            return 0
        tx.execute(
            f"UPDATE jobs SET status = 'pending', blocked_by = NULL WHERE id IN ({', '.join('?' * len(ids))}) "
            "AND status = 'blocked'",
            ids,
        )
        tx.notify(DUE_NOTE)
        tx.after_commit(self.woken)
        return len(ids)

    # ------------------------------------------------------ periodic look
    def next_wake_at(self) -> float | None:
        """When some key's parked jobs are to be looked at next."""
        rows = read_rows(self.db, self.pg, "SELECT MIN(wake_at) FROM limits")
        return None if not rows or rows[0][0] is None else float(rows[0][0])

    def unpark_due(self, now: float) -> Any:
        """A writer op's future: for every key whose `wake_at` came, make due as many parked
        jobs as fit now; resolves to how many."""

        def op(tx: Tx) -> int:
            rows = tx.all(
                f"SELECT key, kind, n, per_s FROM limits WHERE wake_at <= ? ORDER BY key{self._skip_locked}",
                (now,),
            )
            total = 0
            for key, kind, n, per_s in rows:
                total += self._look_at(
                    tx, HeldLimit(str(key), "rate" if kind == "rate" else "concurrency", float(n), per_s), now
                )
            return total

        return self.writer.submit(op)

    def _look_at(self, tx: Tx, key: HeldLimit, now: float) -> int:
        free = key.n - self._used(tx, key, now)
        paused = self.paused(tx)
        parked = tx.all(
            "SELECT id, limits, task FROM jobs WHERE status = 'blocked' AND blocked_by = ? "
            f"ORDER BY priority DESC, run_at, id LIMIT ?{self._skip_locked}",
            (key.key, UNPARK_PAGE),
        )
        due: list[str] = []
        waiting: HeldLimit | None = None
        for job_id, text, task in parked:
            if task in paused:  # due without taking room: it waits on its pause (see _unpark)
                due.append(str(job_id))
                continue
            mine = next((h for h in load_held(text) if h.key == key.key), key)
            if _units(mine) > free:
                waiting = mine
                break
            free -= _units(mine)
            due.append(str(job_id))
        made = self._make_due(tx, due)
        if waiting is None and len(parked) < UNPARK_PAGE:
            wake = None
        elif key.kind == "rate" and waiting is not None:
            wake = self._refill_at(tx, waiting, now)
        else:
            wake = now + self.recheck_s
        tx.execute("UPDATE limits SET wake_at = ? WHERE key = ?", (wake, key.key))
        return made

    # ------------------------------------------------------------- pruning
    def prune_idle_op(self, now: float, batch: int) -> Callable[[Tx], int]:
        """A writer op: drop up to `batch` keys nothing holds or waits on and nothing charged
        for IDLE_KEY_S past their window (a concurrency key keeps no charges: idle is enough),
        with their charges; how many keys went.

        A templated key (`llm:{model}`) makes a row for every value it ever saw: without this
        the table, and GET /limits, would only grow. A row is a lock and a copy of the
        declaration, so the next claim of a dropped key makes it again. On PostgreSQL the
        candidates are locked first (skipping any a claim holds now), and the DELETE checks
        them again in its own, later snapshot: a hold or charge committed in between keeps
        its key."""

        def op(tx: Tx) -> int:
            horizon = now - IDLE_KEY_S
            keys = [
                str(r[0])
                for r in tx.all(
                    f"SELECT key FROM limits WHERE {IDLE_KEY} ORDER BY key LIMIT ?{self._skip_locked}",
                    (horizon, batch),
                )
            ]
            if not keys:
                return 0
            marks = ", ".join("?" * len(keys))
            gone = tx.execute(
                f"DELETE FROM limits WHERE key IN ({marks}) AND {IDLE_KEY}", (*keys, horizon)
            ).rowcount
            tx.execute(
                f"DELETE FROM limit_charges WHERE key IN ({marks}) "
                "AND NOT EXISTS (SELECT 1 FROM limits l WHERE l.key = limit_charges.key)",
                keys,
            )
            return int(gone)

        return op

    # ------------------------------------------------------------ settling
    def report_usage(self, job_id: str, run_seq: int, key: str, units: float) -> Any:
        """A writer op's future: settle the attempt's charge of a rate key with its real usage."""

        def op(tx: Tx) -> bool:
            row = tx.one(
                "SELECT units FROM limit_charges WHERE key = ? AND job_id = ? AND run_seq = ?",
                (key, job_id, run_seq),
            )
            if row is None:
                return False  # the window passed (the charge was dropped) or the attempt was given up
            tx.execute(
                "UPDATE limit_charges SET units = ? WHERE key = ? AND job_id = ? AND run_seq = ?",
                (units, key, job_id, run_seq),
            )
            if units < float(row[0]):  # given back: parked jobs may fit now
                tx.execute("UPDATE limits SET wake_at = ? WHERE key = ? AND wake_at IS NOT NULL", (0.0, key))
            return True

        return self.writer.submit(op)

    # ---------------------------------------------------------------- reads
    def usage(self, now: float) -> list[KeyUse]:
        """Every key with its limit, its use now and how many jobs it holds back."""
        out = []
        for key, kind, n, per_s in read_rows(
            self.db, self.pg, "SELECT key, kind, n, per_s FROM limits ORDER BY key"
        ):
            if kind == "rate":
                rows = read_rows(
                    self.db, self.pg,
                    "SELECT COALESCE(SUM(units), 0) FROM limit_charges WHERE key = ? AND at > ?",
                    (key, now - float(per_s)),
                )  # fmt: skip
            else:
                rows = read_rows(self.db, self.pg, "SELECT COUNT(*) FROM limit_holds WHERE key = ?", (key,))
            blocked = read_rows(
                self.db,
                self.pg,
                "SELECT COUNT(*) FROM jobs WHERE status = 'blocked' AND blocked_by = ?",
                (key,),
            )
            out.append(KeyUse(str(key), str(kind), float(n), per_s, float(rows[0][0]), int(blocked[0][0])))
        return out


def _units(h: HeldLimit) -> float:
    return 1.0 if h.kind == "concurrency" else h.cost
