"""`python -m bench.soak`: three nodes, mixed jobs, one node SIGKILLed and restarted.

Submits jobs of four kinds across the nodes (a concurrency-limited one that records
its span, a rate-limited one, one that appends a line, a no-op), kills one node
with SIGKILL twice while they run (restarting it each time), and checks that
every job completed, that every line was written, that no concurrency key ever
had more than its limit running (the maximum overlap of the recorded spans) and
that no window of the rate key's `per` saw more than its limit started (the
jobs' `started_at`, when they were charged).

    python -m bench.soak                 # 3,000 jobs, 2 kills (about a minute)
    python -m bench.soak --jobs 300 --kills 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.nodes import Node, Spawn, fresh_database, spawn_process

CONCURRENCY = 3  # bench.tasks.held: Concurrency("soak:{model}", 3)
RATE, RATE_PER_S = 40.0, 1.0  # bench.tasks.spend: Rate("soak-tokens", 40, per="1s")


def _bodies(jobs: int, workdir: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(jobs):
        kind = i % 10
        if kind < 4:
            args = {"path": str(workdir / "spans"), "model": "abc"[i % 3], "hold_s": 0.05}
            out.append({"task": "bench.tasks.held", "args": args})
        elif kind == 4 and i % 20 == 4:
            out.append({"task": "bench.tasks.spend", "args": {"tokens": 10}})
        elif kind < 8:
            out.append(
                {"task": "bench.tasks.write", "args": {"path": str(workdir / "lines"), "value": f"v{i}"}}
            )
        else:
            out.append({"task": "bench.tasks.noop", "args": {}})
    return out


def max_overlap(runs: list[tuple[float, float]]) -> int:
    edges = sorted([(b, 1) for b, _ in runs] + [(e, -1) for _, e in runs])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def busiest_window(starts: list[float], cost: float, per_s: float) -> float:
    starts = sorted(starts)
    best, lo = 0.0, 0
    for hi, at in enumerate(starts):
        while starts[lo] <= at - per_s:
            lo += 1
        best = max(best, (hi - lo + 1) * cost)
    return best


def _at(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def run_soak(workdir: Path, url: str, jobs: int, kills: int, spawn: Spawn = spawn_process) -> dict[str, Any]:
    """Run the soak on the (empty) database `url`; its findings (`violations` judges them).
    `spawn` starts each node's process."""
    bodies = _bodies(jobs, workdir)
    nodes: list[Node] = []
    try:  # a node that fails to start, or an assertion, must not leave the others running
        for i in range(3):
            nodes.append(Node(workdir, f"n{i}", url, spawn, lease_seconds=2).start())
        ids: list[str] = []
        errors: list[str] = []
        lock = threading.Lock()

        def submit(part: list[dict[str, Any]], node: Node) -> None:
            with httpx.Client(base_url=node.url, timeout=30) as c:
                for body in part:
                    r = c.post("/jobs", json=body)
                    with lock:
                        (ids.append(r.json()["id"]) if r.status_code == 202 else errors.append(r.text))

        # the victim takes no submits: a kill must not cut a submit off (its client would see an error)
        senders = [threading.Thread(target=submit, args=(bodies[i::2], nodes[i])) for i in range(2)]
        began = time.time()
        for t in senders:
            t.start()
        victim = nodes[2]
        for k in range(kills):
            while len(ids) < jobs * (k + 1) // (kills + 1):
                time.sleep(0.05)
            victim.kill()
            victim.start()
        for t in senders:
            t.join()
        finished: dict[str, dict[str, Any]] = {}
        with httpx.Client(base_url=nodes[0].url, timeout=120) as c:
            for job_id in ids:
                finished[job_id] = c.get(f"/jobs/{job_id}", params={"wait": 60}).json()
        took = time.time() - began
    finally:
        for n in nodes:
            n.stop()
    spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for line in (workdir / "spans").read_text().splitlines():
        _, model, b, e = line.split()
        spans[model].append((float(b), float(e)))
    written = set((workdir / "lines").read_text().split()) if (workdir / "lines").exists() else set()
    wanted = {b["args"]["value"] for b in bodies if b["task"] == "bench.tasks.write"}
    statuses: dict[str, int] = defaultdict(int)
    for job in finished.values():
        statuses[job["status"]] += 1
    spend_starts = [_at(j["started_at"]) for j in finished.values() if j["task"] == "bench.tasks.spend"]
    return {
        "submitted": len(ids),
        "submit_errors": errors,
        "statuses": dict(statuses),
        "lines_missing": sorted(wanted - written),
        "max_overlap": {m: max_overlap(r) for m, r in spans.items()},
        "busiest_rate_window": busiest_window(spend_starts, 10.0, RATE_PER_S),
        "retried": sum(1 for j in finished.values() if j["attempts"] > 1),
        "seconds": took,
    }


def violations(result: dict[str, Any], jobs: int) -> list[str]:
    """What the soak found wrong (empty: nothing lost, no limit exceeded)."""
    out = []
    if result["submitted"] != jobs or result["submit_errors"]:
        out.append(f"submitted {result['submitted']} of {jobs}: {result['submit_errors'][:3]}")
    if result["statuses"] != {"completed": jobs}:
        out.append(f"not every job completed: {result['statuses']}")
    if result["lines_missing"]:
        out.append(f"lines never written: {result['lines_missing'][:10]}")
    if any(v > CONCURRENCY for v in result["max_overlap"].values()):
        out.append(f"a concurrency key ran over its limit: {result['max_overlap']}")
    if result["busiest_rate_window"] > RATE:
        out.append(f"the rate key ran over its limit: {result['busiest_rate_window']}")
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--kills", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="jobserver-soak-") as tmp, fresh_database() as url:
        result = run_soak(Path(tmp), url, args.jobs, args.kills)
    print(result)
    wrong = violations(result, args.jobs)
    for line in wrong:
        print("VIOLATION:", line)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
