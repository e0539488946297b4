"""Limits in one process on SQLite: Concurrency and Rate keys, parked jobs, GET /limits,
ctx.report_usage, the bad declarations and args refused, and limits with workflows (a
waiting run's slots, batch submits, spawned children)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from jobserver import Concurrency, Rate, task
from jobserver.core.clock import ManualClock
from jobserver.core.errors import TaskDefinitionError
from jobserver.core.lifecycle import Outcome
from jobserver.core.limits import HeldLimit, as_declared, declared_now
from jobserver.core.records import Claim, JobIds, NewJob
from jobserver.core.tasks import build_taskdef
from jobserver.storage.models import read_rows
from jobserver.storage.store import JobStore
from tests.helpers import finished, submit, wait_until
from tests.inproc import RunningApp, running_app
from tests.limits_check import bound, busiest_window, claim_all, max_overlap, queue, run_ticks, spans, ticks
from tests.storage import claim_one, end_attempt, open_store

HELD = "tests.e2e_tasks.held_key"
GATED = "tests.e2e_tasks.gated_approval"


def job(c: httpx.Client, job_id: str) -> dict[str, Any]:
    return dict(c.get(f"/jobs/{job_id}").json())


def limit(c: httpx.Client, key: str) -> dict[str, Any]:
    found: dict[str, Any] = next(k for k in c.get("/limits").json()["limits"] if k["key"] == key)
    return found


def in_use(c: httpx.Client, key: str) -> float:
    """The key's use now; 0 once a retention pass dropped it (a concurrency key no job holds
    or waits on goes at the first pass: README, Limits)."""
    found = [k for k in c.get("/limits").json()["limits"] if k["key"] == key]
    return float(found[0]["in_use"]) if found else 0.0


def test_a_full_key_parks_its_jobs_and_holds_back_no_other_key(app: RunningApp, tmp_path: Path) -> None:
    c = app.client
    path, release = str(tmp_path / "spans"), str(tmp_path / "release")
    a = [submit(c, HELD, {"path": path, "model": "a", "hold_s": 0, "release": release}) for _ in range(6)]
    wait_until(lambda: sum(job(c, i)["status"] == "running" for i in a) == 3)
    held_back = [job(c, i) for i in a if job(c, i)["status"] != "running"]
    wait_until(lambda: all(job(c, j["id"])["blocked_by"] == "llm:a" for j in held_back))
    reason = job(c, held_back[0]["id"])["pending_reason"]  # what the dashboard says of it
    assert reason["code"] == "blocked_by_limit" and "llm:a" in reason["detail"]
    assert all(j["status"] == "pending" for j in held_back)
    # another key of the same task, and another task, run at once
    b = submit(c, HELD, {"path": path, "model": "b", "hold_s": 0})
    assert finished(c, b)["status"] == "completed"
    assert finished(c, submit(c, "jobserver.examples.add", {"a": 1, "b": 2}))["result"] == 3
    key = limit(c, "llm:a")
    assert (key["kind"], key["limit"], key["in_use"], key["blocked"]) == ("concurrency", 3, 3, 3)
    Path(release).touch()
    assert all(finished(c, i)["status"] == "completed" for i in a)
    assert max_overlap(spans(Path(path))["a"]) == 3
    assert all(job(c, i)["blocked_by"] is None for i in a)
    assert in_use(c, "llm:a") == 0


def test_many_jobs_on_one_key_never_exceed_it(app: RunningApp, tmp_path: Path) -> None:
    c = app.client
    path = str(tmp_path / "spans")
    ids = [submit(c, HELD, {"path": path, "model": "m", "hold_s": 0.05}) for _ in range(30)]
    assert all(finished(c, i)["status"] == "completed" for i in ids)
    # four worker threads, a key of three: the key is what holds the fourth back (that it is
    # reached, exactly, is the test above, which holds every run until the key is full)
    assert max_overlap(spans(Path(path))["m"]) <= 3


def test_a_rate_key_holds_over_every_window(app: RunningApp, tmp_path: Path) -> None:
    c = app.client
    path = str(tmp_path / "starts")
    ids = [submit(c, "tests.e2e_tasks.spends_tokens", {"path": path, "tokens": 4}) for _ in range(6)]
    jobs = [finished(c, i) for i in ids]
    assert all(j["status"] == "completed" for j in jobs)
    # charged when claimed: the job's started_at
    starts = sorted(httpx_time(j["started_at"]) for j in jobs)
    assert busiest_window([(at, 4.0) for at in starts], 0.5) <= 10
    assert starts[-1] - starts[0] >= 1.0  # 24 tokens at 10 per 500 ms take at least two refills
    key = limit(c, "tokens")
    assert key["kind"] == "rate" and key["per"] == 0.5 and key["limit"] == 10


def httpx_time(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_reported_usage_gives_back_what_the_estimate_overcharged(app: RunningApp) -> None:
    c = app.client
    # each start is charged 6 of 10 per minute: a second job would wait a minute, unless the
    # first one reports that it used only 1
    first = submit(c, "tests.e2e_tasks.settles_usage", {"team": "t", "used": 1})
    assert finished(c, first)["status"] == "completed"
    second = submit(c, "tests.e2e_tasks.settles_usage", {"team": "t", "used": 3})
    assert finished(c, second, timeout=10)["status"] == "completed"
    assert limit(c, "budget:t")["in_use"] == 4
    third = submit(c, "tests.e2e_tasks.settles_usage", {"team": "t", "used": 6})
    assert finished(c, third)["status"] == "completed"  # 4 + 6 fits
    fourth = submit(c, "tests.e2e_tasks.settles_usage", {"team": "t", "used": 1})
    wait_until(lambda: job(c, fourth)["blocked_by"] == "budget:t")  # 10 + 6 does not
    assert job(c, fourth)["status"] == "pending"
    assert limit(c, "budget:t")["in_use"] == 10


def test_an_endless_usage_is_refused_and_charges_nothing(app: RunningApp) -> None:
    c = app.client
    job_id = submit(c, "tests.e2e_tasks.reports_endless_usage", {"team": "t"})
    done = c.get(f"/jobs/{job_id}", params={"wait": 10}).json()
    assert done["status"] == "completed" and "finite" in done["result"], done
    assert limit(c, "budget:t")["in_use"] == 6  # the estimate stands


def test_a_parked_job_can_be_cancelled(app: RunningApp, tmp_path: Path) -> None:
    c = app.client
    path, release = str(tmp_path / "spans"), str(tmp_path / "release")
    ids = [submit(c, HELD, {"path": path, "model": "x", "release": release}) for _ in range(4)]
    wait_until(lambda: any(job(c, i)["blocked_by"] == "llm:x" for i in ids))
    parked = next(i for i in ids if job(c, i)["blocked_by"] == "llm:x")
    r = c.post(f"/jobs/{parked}/cancel")
    assert r.status_code == 202 and r.json()["status"] == "cancelled" and r.json()["blocked_by"] is None
    assert limit(c, "llm:x")["blocked"] == 0
    Path(release).touch()
    assert sum(finished(c, i)["status"] == "completed" for i in ids) == 3


def test_a_task_concurrency_is_a_limit_keyed_by_the_task(app: RunningApp, tmp_path: Path) -> None:
    c = app.client
    started, release = tmp_path / "started", tmp_path / "release"
    ids = [
        submit(c, "tests.e2e_tasks.capped", {"started": str(started), "release": str(release)})
        for _ in range(3)
    ]
    wait_until(lambda: limit(c, "tests.e2e_tasks.capped")["blocked"] == 1)
    assert limit(c, "tests.e2e_tasks.capped")["in_use"] == 2
    release.touch()
    assert all(finished(c, i)["status"] == "completed" for i in ids)


def test_get_tasks_lists_a_task_concurrency_with_its_limits(app: RunningApp) -> None:
    tasks = {t["name"]: t["options"] for t in app.client.get("/tasks").json()["tasks"]}
    capped = tasks["tests.e2e_tasks.capped"]
    assert capped["concurrency"] == 2
    assert capped["limits"] == [{"kind": "concurrency", "key": "tests.e2e_tasks.capped", "limit": 2}]
    assert [k["key"] for k in tasks[HELD]["limits"]] == ["llm:{model}"]  # declared ones as before


def test_args_that_break_a_limit_are_refused_and_queue_nothing(app: RunningApp) -> None:
    c = app.client
    r = c.post("/jobs", json={"task": "tests.e2e_tasks.spends_tokens", "args": {"path": "p", "tokens": 11}})
    assert r.status_code == 422 and "more than its limit" in r.text
    r = c.post("/jobs", json={"task": HELD, "args": {"path": "p", "model": "m" * 300}})
    assert r.status_code == 422 and "characters" in r.text
    assert c.get("/jobs").json()["jobs"] == []


def test_declarations_are_checked_when_the_task_is_registered() -> None:
    def f(model: str) -> None: ...

    with pytest.raises(TaskDefinitionError, match="not a parameter"):
        build_taskdef(task(limits=[Concurrency("llm:{modle}", 2)])(f))
    with pytest.raises(ValueError, match="at least 1"):
        Concurrency("k", 0)
    with pytest.raises(ValueError, match="rate window"):
        Rate("k", 5, per="soon")
    with pytest.raises(ValueError, match="only name args"):
        Concurrency("k:{model.attr}", 1)
    with pytest.raises(TaskDefinitionError, match="same key"):
        build_taskdef(task(limits=[Concurrency("llm:{model}", 2), Rate("llm:{model}", 5, per="1m")])(f))
    with pytest.raises(TaskDefinitionError, match="same key"):  # concurrency=n is a key named after the task
        build_taskdef(task(name="t", concurrency=2, limits=[Concurrency("t", 3)])(f))
    for endless in (math.inf, math.nan):  # JSON keeps neither: a stored job could not be read back
        with pytest.raises(ValueError, match="finite"):
            Rate("k", endless, per="1m")
        with pytest.raises(ValueError, match="finite"):
            Rate("k", 5, per=endless)
        with pytest.raises(ValueError, match="finite"):
            Rate("k", 5, per="1m", cost=endless)
    with pytest.raises(ValueError, match="finite"):
        Rate("k", 5, per="1m", cost=lambda args: args["x"] * 1e308).bind({"x": 10})
    options = build_taskdef(task(limits=[Rate("t:{model}", 5, per="1m")])(f)).options.public()
    assert options["limits"] == [{"kind": "rate", "key": "t:{model}", "limit": 5, "per_s": 60.0, "cost": 1}]


def test_a_claim_whose_clock_reading_is_older_still_sees_every_charge_of_its_window(tmp_path: Path) -> None:
    # a claim reads its clock before its op waits for the writer (and nodes interleave): a claim
    # that ran later but read the clock earlier must still see the charges of its own window
    two_per_10s = orjson.dumps([HeldLimit("r", "rate", 2, 10.0, 1.0, "r").to_json()]).decode()
    ids = JobIds()
    with open_store(tmp_path) as store:
        for _ in range(4):
            job = NewJob(ids.new(), "t", "{}", 0, 1, None, None, None, 100.0, 100.0, limits=two_per_10s)
            store.enqueue(job, None, lambda: None).result(10)
        assert claim_one(store, "me", 100.0, 30) is not None  # charged at 100
        assert claim_one(store, "me", 100.0, 30) is not None  # and again: the window is full
        assert claim_one(store, "me", 115.0, 30) is not None  # both are out of (105, 115]
        assert claim_one(store, "me", 108.0, 30) is None  # both are in (98, 108]: held back


def test_a_big_start_parked_on_a_rate_key_is_not_overtaken_by_later_small_ones(tmp_path: Path) -> None:
    def costing(units: float) -> str:
        return orjson.dumps([HeldLimit("r", "rate", 10, 10.0, units, "r").to_json()]).decode()

    ids = JobIds()
    with open_store(tmp_path) as store:

        def add(units: float, at: float, priority: int = 0) -> str:
            job = NewJob(ids.new(), "t", "{}", priority, 1, None, None, None, at, at, limits=costing(units))
            store.enqueue(job, None, lambda: None).result(10)
            return job.id

        def status(job_id: str) -> str:
            return store.get(job_id).status

        small = add(1, 100.0)
        assert claim_one(store, "me", 100.0, 30) is not None  # charged 1 at 100
        big = add(10, 101.0)
        assert claim_one(store, "me", 101.0, 30) is None and status(big) == "blocked"  # 1 + 10 > 10
        later = add(1, 102.0)  # 1 + 1 fits, but the big one came first
        assert claim_one(store, "me", 102.0, 30) is None and status(later) == "blocked"
        urgent = add(1, 103.0, priority=5)  # a higher priority goes ahead of the parked ones
        claim = claim_one(store, "me", 103.0, 30)
        assert claim is not None and claim.job_id == urgent
        assert store.limits.unpark_due(113.0).result(10) == 1  # the window is empty at last
        claim = claim_one(store, "me", 113.0, 30)
        assert claim is not None and claim.job_id == big and status(small) == "running"
        assert claim_one(store, "me", 113.0, 30) is None and status(later) == "blocked"  # 10 of 10


def test_a_bulk_cancel_of_pending_jobs_takes_the_parked_ones_too(app: RunningApp, tmp_path: Path) -> None:
    c = app.client
    path, release = str(tmp_path / "spans"), str(tmp_path / "release")
    ids = [submit(c, HELD, {"path": path, "model": "z", "release": release}) for _ in range(5)]
    wait_until(lambda: limit(c, "llm:z")["blocked"] == 2)
    r = c.post("/jobs/cancel", json={"status": "pending", "task": HELD})
    assert r.status_code == 200 and r.json()["count"] == 2
    assert limit(c, "llm:z")["blocked"] == 0
    cancelled = [job(c, i) for i in ids if job(c, i)["status"] == "cancelled"]
    assert len(cancelled) == 2 and all(j["blocked_by"] is None for j in cancelled)
    Path(release).touch()
    assert sum(finished(c, i)["status"] == "completed" for i in ids) == 3


# --------------------------------------------------------- with workflows
def test_a_waiting_job_frees_its_slot_and_takes_it_again_to_resume(app: RunningApp) -> None:
    c = app.client
    r = c.post("/jobs/batch", json={"jobs": [{"task": GATED, "args": {"team": "t"}} for _ in range(2)]})
    assert r.status_code == 202, r.text
    first, second = (j["id"] for j in r.json()["jobs"])
    # one slot on "gate:t": the second runs only because the first's park gave the slot back
    wait_until(lambda: all(job(c, i)["status"] == "waiting" for i in (first, second)))
    key = limit(c, "gate:t")  # the batch bound the task's limits to each job's args
    assert (key["limit"], key["in_use"], key["blocked"]) == (1, 0, 0)
    assert type(key["limit"]) is type(key["in_use"]) is int  # slots are counted, as 1, not 1.0
    for i in (first, second):
        assert c.post(f"/jobs/{i}/signals/go", json=i).status_code == 202
    assert [finished(c, i)["result"] for i in (first, second)] == [first, second]
    assert all(job(c, i)["attempts"] == 1 for i in (first, second))
    assert in_use(c, "gate:t") == 0


def test_spawned_children_hold_their_task_limits(app: RunningApp, tmp_path: Path) -> None:
    c = app.client
    path, release = str(tmp_path / "spans"), str(tmp_path / "release")
    args = {"path": path, "model": "kids", "release": release, "n": 5}
    parent = submit(c, "tests.e2e_tasks.spawns_held", args)

    def children() -> list[dict[str, Any]]:
        return list(c.get("/jobs", params={"parent": parent}).json()["jobs"])

    wait_until(lambda: sum(ch["status"] == "running" for ch in children()) == 3)
    wait_until(lambda: sum(ch["blocked_by"] == "llm:kids" for ch in children()) == 2)
    assert job(c, parent)["status"] == "waiting"
    Path(release).touch()
    assert finished(c, parent)["result"] == 5
    assert max_overlap(spans(Path(path))["kids"]) == 3
    assert in_use(c, "llm:kids") == 0


def test_a_paused_tasks_parked_jobs_hold_back_no_other_task_on_their_key(tmp_path: Path) -> None:
    """The slot goes to the next job that can run, not to a paused task's job (it would sit
    pending, holding the others back until each periodic look moved one more). The manual clock
    never moves: no periodic look helps."""
    first, second = "tests.e2e_tasks.first_on_slot", "tests.e2e_tasks.second_on_slot"
    with running_app(tmp_path, clock=ManualClock()) as app:
        c, release = app.client, tmp_path / "release"
        holder = submit(c, second, {"release": str(release)})
        wait_until(lambda: job(c, holder)["status"] == "running")
        ahead = [submit(c, first, {}) for _ in range(5)]  # higher priority, parked behind the holder
        wait_until(lambda: all(job(c, i)["blocked_by"] == "one-slot" for i in ahead))
        assert c.post(f"/tasks/{first}/pause").status_code == 200
        # still parked on the key, they wait for the resume first: the reason says the pause
        assert {job(c, i)["pending_reason"]["code"] for i in ahead} == {"task_paused"}
        behind = [submit(c, second, {}) for _ in range(3)]
        wait_until(lambda: all(job(c, i)["blocked_by"] == "one-slot" for i in behind))
        release.touch()
        assert [finished(c, i)["status"] for i in [holder, *behind]] == ["completed"] * 4
        assert {job(c, i)["pending_reason"]["code"] for i in ahead} == {"task_paused"}
        assert c.post(f"/tasks/{first}/resume").status_code == 200
        assert {finished(c, i)["result"] for i in ahead} == {"first"}


def test_a_deploy_that_changes_n_changes_it_for_jobs_already_queued(tmp_path: Path) -> None:
    # queued under n = 1; the running code now declares n = 3 for the same template
    one_slot = orjson.dumps([HeldLimit("dk", "concurrency", 1, template="dk").to_json()]).decode()
    ids = JobIds()
    with open_store(tmp_path) as store:
        for _ in range(4):
            job = NewJob(ids.new(), "t", "{}", 0, 1, None, None, None, 100.0, 100.0, limits=one_slot)
            store.enqueue(job, None, lambda: None).result(10)
    with open_store(tmp_path, declared={"dk": ("concurrency", 3.0, None)}) as store:
        assert [claim_one(store, "me", 100.0, 30) is not None for _ in range(4)] == [True, True, True, False]
        assert [(k.key, k.limit, k.in_use) for k in store.limits.usage(100.0)] == [("dk", 3.0, 3.0)]
    # a rate lowered below a queued job's cost: the job fits, and is charged the whole window
    costly = orjson.dumps([HeldLimit("t", "rate", 10, 60.0, 8.0, "t").to_json()]).decode()
    with open_store(tmp_path) as store:
        job = NewJob(ids.new(), "t", "{}", 0, 1, None, None, None, 200.0, 200.0, limits=costly)
        store.enqueue(job, None, lambda: None).result(10)
    with open_store(tmp_path, declared={"t": ("rate", 5.0, 60.0)}) as store:
        assert claim_one(store, "me", 200.0, 30) is not None
        assert [(k.key, k.limit, k.in_use) for k in store.limits.usage(200.0) if k.key == "t"] == [
            ("t", 5.0, 5.0)
        ]


def test_the_running_codes_declarations_are_what_claims_read(app: RunningApp) -> None:
    declared = app.runtime.parts.limits.declared
    assert declared["llm:{model}"] == ("concurrency", 3.0, None)
    assert declared["budget:{team}"] == ("rate", 10.0, 60.0)
    assert declared_now([Concurrency("a", 1), Concurrency("a", 2), Concurrency("b", 2)]) == {
        "b": ("concurrency", 2.0, None)
    }  # declared two ways by two tasks: each job keeps its own
    queued = HeldLimit("t", "rate", 10, 60.0, 8.0, "t")
    lowered = as_declared(queued, {"t": ("rate", 5.0, 60.0)})
    assert (lowered.n, lowered.cost) == (5.0, 5.0)  # a cost that no longer fits takes the whole window


# ------------------------------------------- parked jobs on a manual clock
def test_a_rate_key_starts_parked_jobs_as_soon_as_its_window_has_room(tmp_path: Path) -> None:
    """5 per 500 ms is 10 a second, not 5 each poll interval: the claim that parks the rest
    counts the starts it is about to charge when it works out the key's next look."""
    with open_store(tmp_path) as store:  # parked jobs looked at again every second at least
        queue(store, bound(HeldLimit("half", "rate", 5, 0.5, 1.0, "half")), 30, 99.0)
        started = run_ticks(store, ticks(100.0, 102.0))
        starts = [(at, 1.0) for at, claims in started.items() for _ in claims]
        assert len(starts) == 20
        assert busiest_window(starts, 0.5) == 5


def test_a_big_rate_key_starts_all_that_fit_not_a_page_of_them(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        queue(store, bound(HeldLimit("fast", "rate", 100, 1.0, 1.0, "fast")), 300, 99.0)
        assert len(claim_all(store, 100.0)) == 100  # and 200 parked
        assert store.limits.unpark_due(101.0).result(10) == 100  # one look, though a page is 64
        started = run_ticks(store, ticks(101.0, 103.0))
        per_second = [sum(len(c) for at, c in started.items() if s <= at < s + 1) for s in (101, 102)]
        assert per_second == [100, 100]


def test_a_job_held_by_another_of_its_keys_passes_the_slot_on(tmp_path: Path) -> None:
    """x needs the slot of "a" and one start of "b" a minute; y only the slot. When x's first
    run ends, the slot goes to the next x, which "b" holds back: the slot then goes on to the
    first y at once, not at the next periodic look."""
    slot = HeldLimit("a", "concurrency", 1, template="a")
    with open_store(tmp_path) as store:
        xs = queue(store, bound(slot, HeldLimit("b", "rate", 1, 60.0, 1.0, "b")), 3, 99.0, "x")
        ys = queue(store, bound(slot), 2, 99.0, "y")
        first = claim_all(store, 100.0)
        assert [c.job_id for c in first] == xs[:1]  # the rest parked on "a"
        end_attempt(store, first[0], Outcome.completed("1"), 100.5)
        # the next x is due for the slot: its claim parks it on "b" and passes the slot on, ...
        assert run_ticks(store, [100.5])[100.5][0].job_id == ys[0]
        blocked = dict(read_rows(store.db, False, "SELECT id, blocked_by FROM jobs WHERE status = 'blocked'"))
        assert blocked == {xs[1]: "b", xs[2]: "b", ys[1]: "a"}  # ... past the x behind it too


def test_parked_jobs_of_a_task_no_longer_deployed_hold_back_no_other_task(tmp_path: Path) -> None:
    """A task "gone" was removed by a deploy while its jobs were parked on a key it shared with "b".
    They wait for a process that knows their task, like a paused task's: when the slot frees it
    goes to the next "b", not to a job nobody here can run, one poll interval per such job."""
    slot = bound(HeldLimit("shared", "concurrency", 1, template="shared"))

    def claim_known(store: JobStore, now: float) -> list[Claim]:  # as Slots.accept: known tasks only
        return store.claim(
            "me", now, 30, lambda tx: (1000, None), lambda tx, c: [i for i, t in c if t != "gone"]
        ).result(10)

    with open_store(tmp_path, known=frozenset({"b"})) as store:
        [first] = queue(store, slot, 1, 99.0, "b")
        queue(store, slot, 3, 99.1, "gone")
        later = queue(store, slot, 2, 99.2, "b")
        [running] = claim_all(store, 100.0)  # by the code before the deploy, which knew "gone"
        assert running.job_id == first  # the rest are parked on the slot
        end_attempt(store, running, Outcome.completed("1"), 100.1)
        assert [c.job_id for c in claim_known(store, 100.1)] == later[:1]
        [key] = store.limits.usage(100.1)
        assert (key.in_use, key.blocked) == (1.0, 1)  # the "gone" jobs wait as pending, unclaimed


def test_a_backlog_on_a_full_key_holds_back_no_later_job_for_a_poll_interval(tmp_path: Path) -> None:
    """A claim takes sync jobs of a task not measured yet one per idle thread, so it parks a few
    of a backlog on a full key at a time: claims go on at once while they park, and a later job
    of another key or task starts at once, not after a poll interval per few jobs parked."""
    with running_app(tmp_path, {"workers": {"poll_interval": 60}}) as app:
        c, release = app.client, str(tmp_path / "release")
        backlog = [{"task": "tests.e2e_tasks.second_on_slot", "args": {"release": release}}] * 300
        r = c.post("/jobs/batch", json={"jobs": backlog})
        assert r.status_code == 202, r.text
        gate = submit(c, GATED, {"team": "t"})  # another key: a job with limits is never handed off
        wait_until(lambda: job(c, gate)["status"] == "waiting", timeout=10)
        assert limit(c, "one-slot")["blocked"] == 299
        Path(release).touch()
