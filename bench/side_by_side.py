"""jobserver beside the designs it replaces, in one run: `python -m bench --peers`.

Owns starting each system (jobserver at its default config; the seed article's
FastAPI `BackgroundTasks` + dict; its FastAPI + Celery + Redis), driving each
with the same load generator and the same figures (pickup one job at a time,
end-to-end no-op jobs, submit throughput and latency), alternating systems over
`rounds` rounds so a drift of the machine hits every system alike, and the
table of ratios. A ratio is "how many times better jobserver is": peer time ÷
jobserver time for latencies, jobserver rate ÷ peer rate for throughputs.

Each system's CPU is counted over its submit and end-to-end figures: every
process it started and their children (Celery's prefork workers), plus Redis's
own for Celery. CPU per job, with the cores the load generator leaves, bounds
the rate any spreading of the same work over the cores could reach; the table
prints that bound beside the measured rate.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from bench.jobserver_figures import Bench, Figure, fig_e2e, fig_pickup, fig_submit, start_server
from bench.plan import Plan
from bench.servers import BenchError, ServerProcess, free_port

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")  # as the Celery peer reads it
SYSTEMS = ("jobserver", "background_tasks", "celery")
NAMES = {
    "jobserver": "jobserver",
    "background_tasks": "BackgroundTasks + dict",
    "celery": "Celery + Redis (prefork 2)",
}
MODULES = {"background_tasks": "background_tasks", "celery": "celery_redis"}
# jobserver exactly as `python -m jobserver` runs it: the documented defaults, log level included
DEFAULTS = {"server": {"log_level": "info"}, "workers": {"async_concurrency": 100}}
FIGURES: list[tuple[str, Figure]] = [
    ("pickup", partial(fig_pickup, idle=False)),
    ("end-to-end", fig_e2e),
    ("submit", partial(fig_submit, settle=False)),
]
# (key, label, higher is better, target against BackgroundTasks or an absolute bound)
ROWS: list[tuple[str, str, bool, str]] = [
    ("submit.rps", "submit req/s", True, ">= 1.0x BackgroundTasks"),
    ("submit.p99_ms", "submit p99 ms", False, "<= 50 ms"),
    ("e2e.jobs_per_s", "end to end jobs/s", True, ">= 1.0x BackgroundTasks"),
    ("pickup.warm_p50_ms", "pickup p50 ms", False, "<= 1 ms"),
    ("pickup.warm_p99_ms", "pickup p99 ms", False, "<= 3 ms"),
    ("submit.cpu_us", "CPU per submit µs", False, ""),
    ("submit.cores", "cores used while submitting", False, ""),
    ("e2e.cpu_us", "CPU per job end to end µs", False, ""),
]
CPU_FIGURES = {"submit", "end-to-end"}
NOT_COMPARED = {"submit.cores"}  # a share of the machine, neither better nor worse


def _tree_cpu_s(roots: set[int]) -> float:
    """CPU seconds (user + system) used so far by `roots` and every live process below them."""
    parent_and_cpu: dict[int, tuple[int, int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while /proc was read
            continue
        parent_and_cpu[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    ticks, members = 0, set(roots)
    for pid in sorted(parent_and_cpu):  # a child's pid may be lower than its parent's: walk up instead
        walk = pid
        while walk > 1 and walk not in members:
            walk = parent_and_cpu.get(walk, (0, 0))[0]
        if walk in members:
            members.add(pid)
            ticks += parent_and_cpu[pid][1]
    return ticks / os.sysconf("SC_CLK_TCK")


def _redis_cpu_s() -> float:
    """CPU seconds the Redis server has used so far (its own INFO)."""
    import redis

    info = redis.Redis.from_url(REDIS_URL).info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def _system_cpu_s(system: str, procs: list[ServerProcess]) -> float:
    """CPU seconds a system under test has used so far, Redis included for Celery."""
    roots = {p.proc.pid for p in procs if p.proc is not None}
    own = await asyncio.to_thread(_tree_cpu_s, roots)
    return own + (await asyncio.to_thread(_redis_cpu_s) if system == "celery" else 0.0)


def _cpu_figures(name: str, plan: Plan, got: dict[str, Any], cpu_s: float, wall_s: float) -> dict[str, Any]:
    """CPU per job, from the CPU a figure's run used and its own rate or job count."""
    if name == "submit":
        cores = cpu_s / wall_s
        rps = got.get("submit.rps")
        return {"submit.cores": cores, "submit.cpu_us": cores / rps * 1e6 if rps else None}
    done = plan.e2e_jobs - (got.get("e2e.not_completed") or 0)
    return {"e2e.cpu_us": cpu_s / done * 1e6 if done else None}


async def _start_peer(name: str, workdir: Path) -> list[ServerProcess]:
    """The peer's processes, its HTTP one first, answering /healthz."""
    port = free_port()
    web = [sys.executable, "-m", f"bench.peers.{MODULES[name]}", str(port)]
    procs = [ServerProcess(name, web, workdir, workdir / f"{name}.log", port)]
    if name == "celery":
        import redis

        try:
            redis.Redis.from_url(REDIS_URL).flushdb()
        except redis.RedisError as exc:
            raise BenchError(f"Redis at {REDIS_URL} is not reachable: {exc}") from exc
        worker = [
            sys.executable, "-m", "celery", "-A", "bench.peers.celery_redis:celery_app", "worker",
            "--pool", "prefork", "--concurrency", "2", "--loglevel", "warning", "--without-heartbeat",
            "--without-gossip", "--without-mingle",
        ]  # fmt: skip
        procs.append(ServerProcess("celery worker", worker, workdir, workdir / "celery-worker.log", port))
    for proc in procs:
        await proc.start()
    try:
        await procs[0].wait_ready("/healthz", 60)
    except BaseException:
        for proc in procs:
            await proc.stop(10)
        raise
    return procs


async def _measure(plan: Plan, system: str, workdir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """One system's figures on a fresh start of it."""
    workdir.mkdir(parents=True)
    if system == "jobserver":
        server, _, _ = await start_server(workdir, DEFAULTS)
        procs = [server]
    else:
        procs = await _start_peer(system, workdir)
    bench = Bench(plan, procs[0], {})
    values: dict[str, Any] = {}
    try:
        for name, figure in FIGURES:
            log(f"{NAMES[system]}: {name}")
            cpu0, t0 = await _system_cpu_s(system, procs), time.perf_counter()
            got = await figure(bench)
            cpu1, t1 = await _system_cpu_s(system, procs), time.perf_counter()
            values |= got
            if name in CPU_FIGURES:
                values |= _cpu_figures(name, plan, got, cpu1 - cpu0, t1 - t0)
    finally:
        for proc in procs:
            await proc.stop(20)
    return values


async def run_peers(
    plan: Plan, workdir: Path, rounds: int, log: Callable[[str], None]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Every system, `rounds` times, alternating; values per round and their medians."""
    values: dict[str, Any] = {"peers.rounds": rounds}
    errors: dict[str, str] = {}
    per_round: dict[str, list[dict[str, Any]]] = {s: [] for s in SYSTEMS}
    for r in range(rounds):
        order = SYSTEMS if r % 2 == 0 else tuple(reversed(SYSTEMS))
        for system in order:
            log(f"round {r + 1} of {rounds}: {NAMES[system]}")
            try:
                got = await _measure(plan, system, workdir / f"round{r + 1}-{system}", log)
            except ImportError as exc:  # a peer's packages come with the bench extra
                errors[f"{NAMES[system]}, round {r + 1}"] = (
                    f"{exc}: the peers need the bench extra, which ./test.sh installs"
                )
                continue
            except (BenchError, OSError, TimeoutError, KeyError, TypeError, ValueError) as exc:
                errors[f"{NAMES[system]}, round {r + 1}"] = f"{type(exc).__name__}: {exc}"
                continue
            per_round[system].append(got)
            values |= {f"{system}.r{r + 1}.{k}": v for k, v in got.items()}
    for system, runs in per_round.items():
        for key in [k for k, *_ in ROWS] + ["submit.client_cpu"]:
            samples = [run[key] for run in runs if run.get(key) is not None]
            values[f"{system}.{key}"] = statistics.median(samples) if samples else None
    return values, errors


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def ratio(values: dict[str, Any], key: str, higher_better: bool, peer: str) -> float | None:
    """How many times better jobserver is than `peer` on `key`."""
    ours, theirs = values.get(f"jobserver.{key}"), values.get(f"{peer}.{key}")
    if not ours or not theirs:
        return None
    return float(ours / theirs if higher_better else theirs / ours)


def met(values: dict[str, Any], key: str, higher_better: bool, target: str) -> bool | None:
    """Whether the same run shows the target met."""
    if not target:
        return None
    if target.startswith(">= 1.0x"):
        r = ratio(values, key, higher_better, "background_tasks")
        return None if r is None else r >= 1.0
    bound = float(target.split()[1])
    ours = values.get(f"jobserver.{key}")
    return None if ours is None else ours <= bound


def cpu_bound(values: dict[str, Any]) -> tuple[float, float, float] | None:
    """(cores left by the load generator, the submit rate they would give at jobserver's CPU per submit,
    that rate as a ratio to BackgroundTasks' measured one), or None when a figure is missing."""
    cpu_us, client = values.get("jobserver.submit.cpu_us"), values.get("jobserver.submit.client_cpu")
    peer_rps, cpus = values.get("background_tasks.submit.rps"), os.cpu_count()
    if not cpu_us or client is None or not peer_rps or not cpus:
        return None
    left = cpus - client
    return left, left / cpu_us * 1e6, left / cpu_us * 1e6 / peer_rps


def table(values: dict[str, Any], errors: dict[str, str]) -> str:
    """The side-by-side table: medians over the rounds, ratios, targets."""
    head = ["figure", *(NAMES[s] for s in SYSTEMS), "vs BackgroundTasks", "vs Celery", "target", "met"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, label, higher, target in ROWS:
        cells = [label, *(_fmt(values.get(f"{s}.{key}")) for s in SYSTEMS)]
        for peer in ("background_tasks", "celery"):
            r = None if key in NOT_COMPARED else ratio(values, key, higher, peer)
            cells.append("" if key in NOT_COMPARED else "n/a" if r is None else f"{r:.2f}x")
        ok = met(values, key, higher, target)
        cells += [target, "" if not target else "n/a" if ok is None else ("yes" if ok else "NO")]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    bound = cpu_bound(values)
    if bound is not None:
        left, rps, versus = bound
        lines.append(
            f"CPU bound on submits: the load generator left {left:.2f} of {os.cpu_count()} cores; at jobserver's "
            f"CPU per submit, even every one of them busy would give {rps:,.0f} req/s, {versus:.2f}x BackgroundTasks."
        )
        lines.append("")
    lines.append(f"medians of {values.get('peers.rounds')} rounds, systems alternating; per round:")
    for system in SYSTEMS:
        rounds = sorted({k.split(".")[1] for k in values if k.startswith(f"{system}.r")})
        for round_key in rounds:
            parts = [f"{label} {_fmt(values.get(f'{system}.{round_key}.{key}'))}" for key, label, *_ in ROWS]
            lines.append(f"  {NAMES[system]}, {round_key}: " + ", ".join(parts))
    for name, error in errors.items():
        lines.append(f"  could not measure {name}: {error}")
    return "\n".join(lines)
