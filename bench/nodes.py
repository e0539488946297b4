"""`python -m bench.nodes`: several jobserver nodes on one PostgreSQL database.

Figures, each measured in the same run on this machine:
- claim throughput with 1, 2 and 3 nodes: a backlog of no-op jobs inserted in one
  transaction (with the NOTIFY a submit sends) and drained by nodes already up;
  jobs / (commit -> none left), with the CPU the nodes and PostgreSQL used meanwhile;
- the cost of a limit per claim: the same drain of a task holding a concurrency key
  that never fills, against the plain task;
- cross-node pickup: an idle node starts a job submitted on a busy one, with NOTIFY
  and with `database.notify = false` (polling every `workers.poll_interval`).

    python -m bench.nodes                      # about two minutes
    python -m bench.nodes --jobs 2000 --samples 20
    JOBSERVER_BENCH_PG=postgresql://postgres@127.0.0.1:5432 python -m bench.nodes
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench.servers import child_env, free_port

PG = os.environ.get("JOBSERVER_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new PostgreSQL database, dropped afterwards."""
    name = f"jobserver_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG}/{name}"
    finally:
        with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# starts `python -m jobserver ARGV` in a directory, with an environment, appending its output to
# a log file; returns the process (what `subprocess.Popen` offers of poll, wait, send_signal, pid)
Spawn = Callable[[list[str], Path, dict[str, str], Path], Any]


def spawn_process(
    argv: list[str], cwd: Path, env: dict[str, str], log_path: Path, prefix: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    """A new interpreter running `python -m jobserver ARGV`, under the command `prefix` if given."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [*prefix, sys.executable, "-m", "jobserver", *argv],
            cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip


class Node:
    """One `python -m jobserver` process on the shared database."""

    def __init__(
        self, workdir: Path, name: str, url: str, spawn: Spawn = spawn_process, **workers: Any
    ) -> None:
        self.spawn = spawn
        notify = workers.pop("notify", True)
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        settings = {"threads": 4, "lease_seconds": 2, "shutdown_grace_seconds": 2, **workers}
        config = (
            f'[server]\nhost = "127.0.0.1"\nport = {self.port}\nlog_level = "warning"\n'
            f'[database]\nurl = "{url}"\nnotify = {"true" if notify else "false"}\n'
            "[workers]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items())
            + '[tasks]\nmodules = ["bench.tasks"]\n'
        )  # fmt: skip
        (self.dir / "config.toml").write_text(config)
        self.proc: Any = None

    def start(self) -> Node:
        self.proc = self.spawn(
            ["--config", str(self.dir / "config.toml")], self.dir, child_env(), self.dir / "server.log"
        )
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, (self.dir / "server.log").read_text()
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {self.dir.name} did not start")
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def cpu_s(self) -> float:
        assert self.proc is not None
        return _cpu_of(self.proc.pid)


def _cpu_of(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _postgres_cpu_s() -> float:
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() in ("postgres", "postmaster"):
                    total += _cpu_of(int(entry.name))
            except OSError:
                continue
    return total


def insert_backlog(url: str, task: str, n: int) -> float:
    """Insert `n` due jobs of `task` in one transaction with a due notice; the commit time."""
    with psycopg.connect(url) as conn:
        now = time.time()
        conn.execute(
            "INSERT INTO jobs (id, task, args, status, priority, attempts, max_attempts, run_seq, "
            "cancel_requested, logs_dropped, created_at, run_at, limits) "
            "SELECT lpad(to_hex(g), 36, '0'), %s, '{}', 'pending', 0, 0, 1, 0, 0, 0, %s, %s, %s "
            "FROM generate_series(1, %s) g",
            (task, now, now, _limits_of(task), n),
        )
        conn.execute("SELECT pg_notify('jobserver', 'bench d')")
        conn.commit()
    return time.time()


def _limits_of(task: str) -> str | None:
    if task == "bench.tasks.noop_limited":
        return '[{"key": "bench", "kind": "concurrency", "n": 1000000, "t": "bench"}]'
    return None


def drain(workdir: Path, nodes: int, task: str, jobs: int, notify: bool = True) -> dict[str, float]:
    """Jobs/s for `nodes` nodes draining a backlog, and the CPU each side used."""
    with fresh_database() as url:
        where = workdir / f"drain-{nodes}-{task}-{notify}"
        running: list[Node] = []
        try:  # a node that fails to start must not leave the others running
            for i in range(nodes):
                running.append(Node(where, f"n{i}", url, notify=notify).start())
            cpu0 = sum(n.cpu_s() for n in running), _postgres_cpu_s()
            committed = insert_backlog(url, task, jobs)
            with psycopg.connect(url, autocommit=True) as conn:
                while True:
                    row = conn.execute("SELECT count(*) FROM jobs WHERE status <> 'completed'").fetchone()
                    if row is not None and row[0] == 0:
                        break
                    time.sleep(0.02)
            took = time.time() - committed
            cpu1 = sum(n.cpu_s() for n in running), _postgres_cpu_s()
        finally:
            for n in running:
                n.stop()
    return {
        "jobs_per_s": jobs / took,
        "nodes_cpu": (cpu1[0] - cpu0[0]) / took,
        "postgres_cpu": (cpu1[1] - cpu0[1]) / took,
    }


def pickup(workdir: Path, notify: bool, samples: int) -> list[float]:
    """Seconds from a submit on a busy node to the job's start on an idle one."""
    tag = "notify" if notify else "poll"
    with fresh_database() as url:
        busy = Node(workdir / f"pickup-{tag}", "busy", url, threads=1, notify=notify)
        idle = Node(workdir / f"pickup-{tag}", "idle", url, threads=2, notify=notify)
        release = workdir / f"release-{tag}"
        out = []
        try:
            busy.start()
            idle.start()
            with (
                httpx.Client(base_url=busy.url, timeout=30) as cb,
                httpx.Client(base_url=idle.url, timeout=30) as ci,
            ):
                cb.post("/jobs", json={"task": "bench.tasks.block", "args": {"release": str(release)}})
                time.sleep(0.5)  # the bench, not a test: let the busy node's only thread take it
                for i in range(samples):
                    path = workdir / f"stamp-{tag}-{i}"
                    sent = time.time()
                    r = cb.post("/jobs", json={"task": "bench.tasks.stamp", "args": {"path": str(path)}})
                    ci.get(f"/jobs/{r.json()['id']}", params={"wait": 30})
                    out.append(float(path.read_text()) - sent)
        finally:
            release.touch()
            busy.stop()
            idle.stop()
    return out


def bare_commits(connections: int, seconds: float = 2.0) -> float:
    """The machine's own limit: one-row commits per second on PostgreSQL, from `connections`
    connections at once (each waits for its commit, as a node's writer does)."""
    with fresh_database() as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (id bigserial PRIMARY KEY, v text)")
        counts = [0] * connections

        def loop(i: int) -> None:
            with psycopg.connect(url, autocommit=True) as conn:
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    conn.execute("INSERT INTO t (v) VALUES ('x')")
                    counts[i] += 1

        threads = [threading.Thread(target=loop, args=(i,)) for i in range(connections)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return sum(counts) / seconds


def ms(values: list[float], q: float) -> str:
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000:.1f} ms"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.nodes", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--samples", type=int, default=30)
    args = parser.parse_args(argv)
    print(f"load average at start: {os.getloadavg()[0]:.2f}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="jobserver-nodes-") as tmp:
        workdir = Path(tmp)
        for conns in (1, 3):
            print(f"machine: one-row commits on {conns} connection(s): {bare_commits(conns):,.0f}/s")
        rows = []
        for task in ("bench.tasks.noop", "bench.tasks.noop_limited"):
            for n in (1, 2, 3):
                print(f"drain {args.jobs} x {task} on {n} node(s)...", file=sys.stderr)
                r = drain(workdir, n, task, args.jobs)
                rows.append((task, n, r))
        print(f"drain {args.jobs} x bench.tasks.noop on 3 nodes without NOTIFY...", file=sys.stderr)
        quiet = drain(workdir, 3, "bench.tasks.noop", args.jobs, notify=False)
        print("| task | nodes | jobs/s | nodes' CPU (cores) | PostgreSQL CPU (cores) |")
        print("| --- | --- | --- | --- | --- |")
        for task, n, r in rows:
            print(
                f"| {task} | {n} | {r['jobs_per_s']:,.0f} | {r['nodes_cpu']:.2f} | {r['postgres_cpu']:.2f} |"
            )
        print(
            f"| bench.tasks.noop, `database.notify = false` | 3 | {quiet['jobs_per_s']:,.0f} | "
            f"{quiet['nodes_cpu']:.2f} | {quiet['postgres_cpu']:.2f} |"
        )
        plain = {n: r["jobs_per_s"] for t, n, r in rows if t == "bench.tasks.noop"}
        limited = {n: r["jobs_per_s"] for t, n, r in rows if t != "bench.tasks.noop"}
        for n in (1, 2, 3):
            per_job_us = (1 / limited[n] - 1 / plain[n]) * 1e6
            print(
                f"limit cost, {n} node(s): {limited[n] / plain[n]:.2f}x throughput, {per_job_us:+.0f} µs per job"
            )
        for notify in (True, False):
            print(f"cross-node pickup, notify={notify}...", file=sys.stderr)
            lat = pickup(workdir, notify, args.samples)
            label = "NOTIFY" if notify else "polling (poll_interval 1 s)"
            print(
                f"cross-node pickup with {label}: p50 {ms(lat, 0.5)}, p90 {ms(lat, 0.9)}, max {ms(lat, 1.0)}"
            )
    print(f"load average at end: {os.getloadavg()[0]:.2f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
