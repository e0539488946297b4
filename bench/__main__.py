"""`python -m bench`: measure jobserver and the machine's own limits, print one table.

Order of a run: the load generator's ceiling, the bare Starlette route, raw
SQLite inserts, then jobserver (`python -m jobserver --config ...` in a
temporary directory), then (full run, or --sync-full) back-to-back pickups and
the submit figure again on a fresh server with `[database] synchronous = "full"`,
then with --scale the seeded-database scenarios.
Progress goes to stderr, the table (or --json) to stdout. Exit code 1 when a
figure could not be measured; missed targets do not change the exit code.

    python -m bench --quick          # CI smoke, under a minute
    python -m bench                  # full run, a few minutes
    python -m bench --idle-seconds 600   # a longer idle before the after-idle pickups
    python -m bench --scale          # adds 1,000,000 finished / 100,000 pending jobs
    python -m bench --ops            # adds GET /stats at 1,000,000 jobs, a bulk retry of 100,000
    python -m bench --quick --sync-full  # the synchronous = "full" submit figure in a quick run too
    python -m bench --config extra.toml  # merged over the bench's server config
    python -m bench --peers          # side by side with BackgroundTasks and Celery (bench extra)
    python -m bench --curves         # cost as the work grows: connections, table size, waiting jobs, streams
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Coroutine
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import uvloop

from bench import baselines, report
from bench.jobserver_figures import (
    FIGURES,
    Figure,
    fig_pickup,
    fig_submit,
    load_extra_config,
    merge,
    run_figures,
)
from bench.operations import run_operations
from bench.plan import Plan, make_plan
from bench.scale import run_scale
from bench.servers import BenchError

Measured = tuple[dict[str, Any], dict[str, str]]  # (values, errors) of a run


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs for CI smoke use (under a minute)")
    parser.add_argument(
        "--scale", action="store_true", help="also measure on databases seeded with many jobs"
    )
    parser.add_argument(
        "--ops", action="store_true", help="also measure GET /stats on a big database and a bulk retry"
    )
    parser.add_argument(
        "--only-ops", action="store_true", help="measure only the --ops figures (no machine limits)"
    )
    parser.add_argument(
        "--sync-full",
        action="store_true",
        help='also measure submit throughput with synchronous = "full" (always in a full run)',
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of the table")
    parser.add_argument("--config", type=Path, help="TOML merged over the bench's server config")
    parser.add_argument(
        "--idle-seconds", type=float, help="how long the server sits idle before the after-idle pickups"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary directory (configs, logs, databases)"
    )
    parser.add_argument(
        "--peers",
        action="store_true",
        help="only jobserver beside FastAPI BackgroundTasks and Celery + Redis, alternating (bench extra)",
    )
    parser.add_argument(
        "--curves",
        action="store_true",
        help="only the curves: connections, finished and waiting jobs, idle event streams",
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the --peers run (at least 2)")
    args = parser.parse_args(argv)
    chosen = [
        flag
        for flag, on in (("--peers", args.peers), ("--curves", args.curves), ("--only-ops", args.only_ops))
        if on
    ]
    if len(chosen) > 1:  # each is a run of its own: one would be dropped without a word
        parser.error(f"{' and '.join(chosen)} are runs of their own: choose one")
    if args.rounds < 2:
        parser.error("--rounds is at least 2 (systems alternate over the rounds)")
    return args


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def _machine_limits(plan: Plan, workdir: Path, values: dict[str, Any], errors: dict[str, str]) -> None:
    steps = [
        ("load generator ceiling", baselines.loadgen_ceiling),
        ("bare Starlette route", baselines.bare_route),
    ]
    for name, step in steps:
        _log(f"machine: {name}")
        try:
            values |= await step(plan, workdir)
        except (BenchError, OSError) as exc:
            errors[name] = f"{type(exc).__name__}: {exc}"
    _log("machine: raw SQLite inserts")
    try:
        values |= baselines.sqlite_inserts(plan, workdir)
    except Exception as exc:  # the schema comes from jobserver.storage.models, which may be broken
        errors["raw SQLite inserts"] = f"{type(exc).__name__}: {exc}"


async def _sync_full(
    plan: Plan, workdir: Path, extra: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Back-to-back pickups (one commit each) and the submit figure again, on a fresh server whose
    database fsyncs every commit."""
    server_dir = workdir / "server-sync-full"
    server_dir.mkdir()
    figures: list[tuple[str, Figure]] = [
        ("pickup latency, back to back", partial(fig_pickup, idle=False)),
        ("submit throughput and latency", partial(fig_submit, settle=False)),
    ]
    try:
        v, e = await run_figures(
            plan,
            server_dir,
            merge(extra, {"database": {"synchronous": "full"}}),
            figures,
            lambda m: _log(f'synchronous = "full": {m}'),
        )
    except (BenchError, OSError) as exc:
        return {}, {'synchronous = "full"': f"{type(exc).__name__}: {exc}"}
    return {f"syncfull.{k}": x for k, x in v.items()}, {f'synchronous = "full": {k}': x for k, x in e.items()}


async def run(args: argparse.Namespace, plan: Plan, workdir: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Every measurement of the run; (values, errors)."""
    values: dict[str, Any] = {
        "ideal.async_wall_s": plan.async_sleep_s,
        "machine.cpus": os.cpu_count(),
        "machine.load_start": os.getloadavg()[0],
    }
    errors: dict[str, str] = {}
    extra = load_extra_config(args.config)
    if args.only_ops:
        v, e = await run_operations(plan, workdir, extra, _log)
        return values | v | {"bench.only_ops": True}, errors | e
    await _machine_limits(plan, workdir, values, errors)
    server_dir = workdir / "server"
    server_dir.mkdir()
    try:
        v, e = await run_figures(plan, server_dir, extra, FIGURES, _log)
        values |= v
        errors |= e
    except (BenchError, OSError) as exc:
        errors["jobserver"] = f"{type(exc).__name__}: {exc}"
    values["db.synchronous"] = str(extra.get("database", {}).get("synchronous", "normal")).lower()
    if args.sync_full or not args.quick:
        v, e = await _sync_full(plan, workdir, extra)
        values |= v
        errors |= e
    if args.scale:
        v, e = await run_scale(plan, workdir, extra, _log)
        values |= v
        errors |= e
    if args.ops:
        v, e = await run_operations(plan, workdir, extra, _log)
        values |= v
        errors |= e
    values["machine.load_end"] = os.getloadavg()[0]
    return values, errors


def _run_in(args: argparse.Namespace, workdir: Path, work: Coroutine[Any, Any, Measured]) -> Measured:
    """Run one of the bench's coroutines on uvloop; its work dir goes afterwards, unless --keep."""
    try:
        return uvloop.run(work)
    finally:
        if args.keep:
            _log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _peers(args: argparse.Namespace, plan: Plan, workdir: Path, t0: float) -> int:
    from bench.side_by_side import run_peers, table

    values, errors = _run_in(args, workdir, run_peers(plan, workdir, args.rounds, _log))
    values["bench.elapsed_s"] = time.perf_counter() - t0
    values["machine.cpus"] = os.cpu_count()
    if args.json:
        sys.stdout.buffer.write(
            orjson.dumps({"values": values, "errors": errors}, option=orjson.OPT_INDENT_2)
        )
        sys.stdout.write("\n")
    else:
        print(
            f"jobserver beside its peers ({plan.name} plan, {values['bench.elapsed_s']:.0f} s, {os.cpu_count()} CPUs)"
        )
        print(table(values, errors))
    return 1 if errors else 0


def _curves(args: argparse.Namespace, plan: Plan, workdir: Path, t0: float) -> int:
    from bench.curves import run_curves, table

    load_start = os.getloadavg()
    values, errors = _run_in(args, workdir, run_curves(plan, workdir, _log))
    if args.json:
        sys.stdout.buffer.write(
            orjson.dumps({"values": values, "errors": errors}, option=orjson.OPT_INDENT_2)
        )
        sys.stdout.write("\n")
    else:
        load_end = os.getloadavg()
        print(
            f"jobserver as the work grows ({plan.name} plan, {time.perf_counter() - t0:.0f} s, "
            f"{os.cpu_count()} CPUs, load average {load_start[0]:.2f} at the start, {load_end[0]:.2f} at the end)"
        )
        print(table(values, errors))
    return 1 if errors else 0


def main(argv: list[str] | None = None) -> int:
    """Run the bench; print the report; 1 when some figure could not be measured."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    plan = make_plan(args.quick, args.idle_seconds)
    workdir = Path(tempfile.mkdtemp(prefix="jobserver-bench-"))
    t0 = time.perf_counter()
    if args.peers:
        return _peers(args, plan, workdir, t0)
    if args.curves:
        return _curves(args, plan, workdir, t0)
    values, errors = _run_in(args, workdir, run(args, plan, workdir))
    values["bench.elapsed_s"] = time.perf_counter() - t0
    if args.json:
        sys.stdout.buffer.write(
            orjson.dumps(report.as_json(plan, args.scale, values, errors), option=orjson.OPT_INDENT_2)
        )
        sys.stdout.write("\n")
    else:
        print(f"jobserver bench ({plan.name} plan, {values['bench.elapsed_s']:.0f} s)")
        print(report.table(plan, args.scale, values, errors))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
