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
jobs, which also covers a slot freed on another node while this one parked),
and by a claim that leaves a key with room while jobs are parked on it (a job
made due for that room was held back by another of its keys).
Must not import above storage.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import peewee as pw

from jobserver.core.limits import HeldLimit, as_declared, load_held
from jobserver.storage.models import read_rows
from jobserver.storage.writer import Tx, Writer

CHARGE_KEPT_S = 60.0  # how long a charge is kept past its window
UNPARK_PAGE = 64  # parked jobs one page of a key's look reads
LOOK_PAGES = 16  # pages one look reads at most while the key has room
ADMIT_PAGE = 8  # parked jobs a claim reads of a key it leaves with room
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


def _claim_order(tx: Tx, ids: Sequence[str]) -> dict[str, tuple[Any, ...]]:
    """Each candidate's place in the claim order: (priority, run_at, id)."""
    rows = tx.all(f"SELECT priority, run_at, id FROM jobs WHERE id IN ({', '.join('?' * len(ids))})", ids)
    return {str(job_id): (int(priority), float(run_at), str(job_id)) for priority, run_at, job_id in rows}


def _behind(candidate: tuple[Any, ...] | None, head: tuple[Any, ...] | None) -> bool:
    """Whether a candidate comes after a parked head in claim order (priority first, then oldest)."""
    if candidate is None or head is None:
        return False
    return (-candidate[0], candidate[1], candidate[2]) > (-head[0], head[1], head[2])


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
    """A key's state within one transaction. A rate key keeps the charges of its window,
    with those the transaction is about to write (a claim charges its starts only once it has
    decided every job; jobs a look makes due are charged by the claim that takes them): when
    the window has room again is worked out from them."""

    held: HeldLimit
    used: float
    charges: list[tuple[float, float]] = field(default_factory=list)  # (at, units), oldest first
    wake_at: float | None = None

    def fits(self, h: HeldLimit) -> bool:
        return self.used + _units(h) <= h.n

    def has_room(self) -> bool:
        """Whether some start could fit: a free slot, or any room left in the window."""
        if self.held.kind == "concurrency":
            return self.used + 1.0 <= self.held.n
        return self.used < self.held.n

    def add(self, h: HeldLimit, now: float) -> None:
        self.used += _units(h)
        if h.kind == "rate":
            self.charges.append((now, h.cost))


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
        known: frozenset[str] | None = None,
    ) -> None:
        self.db = db
        self.writer = writer
        self.pg = pg
        self.recheck_s = recheck_s  # parked jobs of a key are looked at again at least this often
        self.woken = woken  # after a commit that made jobs due again (wakes this process's workers)
        self.paused = paused  # the paused tasks, as a transaction sees them
        self.declared = declared or {}  # key template -> what the running code declares (the latest)
        self.known = known  # the tasks the running code registers (None: every task)
        self._skip_locked = " FOR UPDATE SKIP LOCKED" if pg else ""
        self._for_update = " FOR UPDATE" if pg else ""

    # ---------------------------------------------------------------- claim
    def admit(self, tx: Tx, now: float, jobs: Sequence[tuple[str, str]]) -> list[str]:
        """Of the (id, limits JSON) candidates, in claim order, the ids that fit every key; the
        rest are parked on the first key they do not fit. Call `take` for these once claimed.

        A job may have been made due for the room of one key and be parked here on another
        (its rate key is spent): that room would stay unused until the next periodic look, and
        hold back the jobs behind it on the first key, some of them of tasks that need no other
        key. So a key left with room while jobs are parked on it gets looked at in this
        transaction, and its next parked jobs are made due."""
        held = {job_id: self._held(text) for job_id, text in jobs}
        keys = self._lock({h.key: h for hs in held.values() for h in hs}, tx, now)
        heads = self._parked_heads(tx, keys)
        order = _claim_order(tx, [job_id for job_id, _ in jobs]) if heads else {}
        admitted = []
        parked: dict[str, list[HeldLimit]] = {}
        for job_id, _ in jobs:
            mine = held[job_id]
            blocking = next(
                (h for h in mine if not keys[h.key].fits(h) or _behind(order.get(job_id), heads.get(h.key))),
                None,
            )
            if blocking is not None:
                tx.execute(
                    "UPDATE jobs SET status = 'blocked', blocked_by = ? WHERE id = ?", (blocking.key, job_id)
                )
                parked.setdefault(blocking.key, []).append(blocking)
                continue
            for h in mine:
                keys[h.key].add(h, now)
            admitted.append(job_id)
        for name, key in keys.items():
            if name in parked:  # the charges of the jobs admitted above count: they are written next
                wake = min(self._refill_at(key, h, now) for h in parked[name])
                tx.execute(
                    "UPDATE limits SET wake_at = ? WHERE key = ? AND (wake_at IS NULL OR wake_at > ?)",
                    (wake, name, wake),
                )
            elif key.wake_at is not None and key.has_room():
                self._look_at(tx, key, now, ADMIT_PAGE, 1)
        if parked:
            # the jobs behind those parked (of other keys: other tenants, other models) are due
            # now: claim again at once, not a poll interval later, or a backlog on one full key
            # would hold back every other key's jobs a poll interval per claim's worth of it
            tx.after_commit(self.woken)
        return admitted

    def _parked_heads(self, tx: Tx, keys: Mapping[str, _Key]) -> dict[str, tuple[Any, ...]]:
        """The claim order (priority, run_at, id) of the first job parked on each key that has
        some: a candidate behind it is parked behind it, though the key has room for the
        candidate's smaller cost. Otherwise small starts would keep a rate window from ever
        having room for a big one, and the big one would wait for ever. A key with parked jobs
        has a look due (`wake_at`); a parked job of a paused task, or of a task this process does
        not know, stands in front of nobody."""
        heads: dict[str, tuple[Any, ...]] = {}
        aside: Callable[[str], bool] | None = None
        for name, key in keys.items():
            if key.wake_at is None:
                continue
            if aside is None:
                aside = self._aside(tx)
            for priority, run_at, job_id, task in tx.all(
                "SELECT priority, run_at, id, task FROM jobs WHERE status = 'blocked' AND blocked_by = ? "
                "ORDER BY priority DESC, run_at, id LIMIT ?",
                (name, UNPARK_PAGE),
            ):
                if not aside(str(task)):
                    heads[name] = (int(priority), float(run_at), str(job_id))
                    break
        return heads

    def _held(self, text: str) -> list[HeldLimit]:
        """A queued job's limits as the running code declares them: what a claim checks and takes."""
        return [as_declared(h, self.declared) for h in load_held(text)]

    def _lock(self, wanted: dict[str, HeldLimit], tx: Tx, now: float) -> dict[str, _Key]:
        """Lock the keys' rows (creating them), skipping those locked elsewhere; their use now."""
        if not wanted:
            return {}
        names = sorted(wanted)
        marks = ", ".join("?" * len(names))
        select = f"SELECT key, kind, n, per_s, wake_at FROM limits WHERE key IN ({marks}) ORDER BY key{self._for_update}"
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
        for name, kind, n, per_s, wake_at in rows:
            h = wanted[str(name)]
            self._redeclare(tx, h, (str(kind), float(n), per_s))
            out[h.key] = self._state(tx, h, now, None if wake_at is None else float(wake_at))
        return out

    def _redeclare(self, tx: Tx, h: HeldLimit, row: tuple[str, float, float | None]) -> None:
        """The task's declaration changed (its size, its window or its kind): the latest wins."""
        if row != (h.kind, h.n, h.per_s):
            tx.execute(
                "UPDATE limits SET n = ?, per_s = ?, kind = ? WHERE key = ?", (h.n, h.per_s, h.kind, h.key)
            )

    def _state(self, tx: Tx, h: HeldLimit, now: float, wake_at: float | None = None) -> _Key:
        """The key's use now, by the kind `h` declares: the holds of a concurrency key, the
        charges within the window of a rate key."""
        if h.kind == "concurrency" or h.per_s is None:
            row = tx.one("SELECT COUNT(*) FROM limit_holds WHERE key = ?", (h.key,))
            return _Key(h, float(row[0]) if row is not None else 0.0, wake_at=wake_at)
        # a claim's `now` is read before its op waits for the writer, and nodes' claims interleave:
        # a charge is dropped only long after it left every window a late claim may still look at
        tx.execute(
            "DELETE FROM limit_charges WHERE key = ? AND at <= ?", (h.key, now - h.per_s - CHARGE_KEPT_S)
        )
        charges = [
            (float(at), float(units))
            for at, units in tx.all(
                "SELECT at, units FROM limit_charges WHERE key = ? AND at > ? ORDER BY at",
                (h.key, now - h.per_s),
            )
        ]
        return _Key(h, sum(units for _, units in charges), charges, wake_at)

    def _refill_at(self, key: _Key, h: HeldLimit, now: float) -> float:
        """When enough of the key's window has passed for a start costing `h.cost` to fit."""
        if h.kind != "rate" or h.per_s is None:  # a concurrency key frees with its holders
            return now + self.recheck_s
        if key.fits(h):
            return now
        used = key.used
        for at, units in sorted(key.charges):
            used -= units
            if used + h.cost <= h.n:
                return at + h.per_s
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
        """The job's attempt ended (in this transaction): free the keys it holds and make one
        parked job of each due again.

        What is freed is what the claim took, read back from `limit_holds`, not the job's
        stored limits: a deploy may have changed a key's kind since (a rate key that is a
        concurrency key now is held, though the job was queued as charged only)."""
        if not limits:
            return
        freed = tx.all("DELETE FROM limit_holds WHERE job_id = ? RETURNING key", (job_id,))
        for key in sorted(str(row[0]) for row in freed):
            self._unpark(tx, key, 1)

    def _unpark(self, tx: Tx, key: str, n: int) -> int:
        """Make the key's first `n` parked jobs due. A job of a paused task goes too without taking
        one of the `n`: it waits on its pause instead, and no longer stands in front of the jobs
        of other tasks (it is checked against the key again when it is claimed after a resume).
        So does a job of a task the running code does not register (removed by a deploy, or
        known only to nodes still on older code): it waits for a process that knows its task,
        and the claim there checks it against the key again."""
        if n <= 0:
            return 0
        aside = self._aside(tx)
        due: list[str] = []
        for page in (n, n + UNPARK_PAGE):  # a page past the first only if some were set aside
            rows = tx.all(
                "SELECT id, task FROM jobs WHERE status = 'blocked' AND blocked_by = ? "
                f"ORDER BY priority DESC, run_at, id LIMIT ?{self._skip_locked}",
                (key, page),
            )
            due, left = [], n
            for job_id, task in rows:
                due.append(str(job_id))
                left -= not aside(str(task))
                if left == 0:
                    break
            if left == 0 or len(rows) < page:
                break
        return self._make_due(tx, due)

    def _aside(self, tx: Tx) -> Callable[[str], bool]:
        """Whether a parked job of a task is made due without taking room: its task is paused
        (it waits on its pause), or no task of the running code has its name (it waits for a
        process that knows it). Either way it holds back no job behind it on its key."""
        paused, known = self.paused(tx), self.known
        return lambda task: task in paused or (known is not None and task not in known)

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
                stored = (str(kind), float(n), per_s)
                held = self._declared_key(tx, str(key), stored)
                self._redeclare(tx, held, stored)
                total += self._look_at(tx, self._state(tx, held, now), now)
            return total

        return self.writer.submit(op)

    def _declared_key(self, tx: Tx, key: str, row: tuple[str, float, float | None]) -> HeldLimit:
        """The key as the running code declares it for its first parked job's template.

        The row holds the declaration of the last claim of the key: after a deploy, parked jobs
        are looked at before any claim of the key, and the row may still give an old size, an
        old window or the other kind (a concurrency key has no window to wait for)."""
        kind, n, per_s = row
        stored = HeldLimit(key, "rate" if kind == "rate" else "concurrency", n, per_s)
        head = tx.one(
            "SELECT limits FROM jobs WHERE status = 'blocked' AND blocked_by = ? ORDER BY priority DESC, run_at, id LIMIT 1",
            (key,),
        )
        return stored if head is None else self._mine(str(head[0]), stored)

    def _mine(self, text: str, key: HeldLimit) -> HeldLimit:
        """A parked job's limit on `key`, as the running code declares it (the key's own if the
        job names no such key)."""
        return next((as_declared(h, self.declared) for h in load_held(text) if h.key == key.key), key)

    def _look_at(
        self, tx: Tx, key: _Key, now: float, page: int = UNPARK_PAGE, pages: int = LOOK_PAGES
    ) -> int:
        """Make due the key's parked jobs, in their order, while they fit; set the key's next look.

        Pages of parked jobs are read while the room lasts: a key whose window has room for
        hundreds of starts gets them all now, not a page per poll interval. Past `pages` pages
        the next look is due at once (the next maintenance pass), which keeps one transaction short."""
        aside = self._aside(tx)
        made, parked, waiting = 0, [], None
        for _ in range(pages):
            parked = tx.all(
                "SELECT id, limits, task FROM jobs WHERE status = 'blocked' AND blocked_by = ? "
                f"ORDER BY priority DESC, run_at, id LIMIT ?{self._skip_locked}",
                (key.held.key, page),
            )
            due: list[str] = []
            for job_id, text, task in parked:
                if aside(str(task)):  # due without taking room: it waits on its pause (see _unpark)
                    due.append(str(job_id))
                    continue
                mine = self._mine(str(text), key.held)
                if not key.fits(mine):
                    waiting = mine
                    break
                key.add(mine, now)
                due.append(str(job_id))
            made += self._make_due(tx, due)
            if waiting is not None or len(parked) < page:
                break
        if waiting is not None:
            wake: float | None = self._refill_at(key, waiting, now)
        elif len(parked) < page:
            wake = None
        else:
            wake = now  # every page read was made due and there may be more: go on at the next pass
        tx.execute("UPDATE limits SET wake_at = ? WHERE key = ?", (wake, key.held.key))
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
