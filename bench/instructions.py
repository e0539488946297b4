"""Instructions per job, which do not depend on the machine's load: `python -m bench.instructions`.

Owns running one system (jobserver at its default config, as `--peers` runs it, or
a peer) under `valgrind --tool=callgrind` with instrumentation off until it
answers, then counting, with `callgrind_control`, the instructions the server
executes (all its threads) in three windows: idle (the settle time alone), `jobs`
no-op jobs submitted on 8 connections and run, and as many submitted and each
seen done by `GET /jobs/{id}?wait=`. Each window ends `SETTLE_S` after its load,
so the jobs of a submit-only run finish inside it; the idle window's count is
taken off the other two. Wall-clock figures on a shared machine move by tens of
percent between runs; these counts moved by 1 % (submit and run) and 7 % (end to
end, where how often a waiting GET is woken depends on timing).

    python -m bench.instructions                       # jobserver, 300 jobs
    python -m bench.instructions --system background_tasks
    python -m bench.instructions --by-library          # where jobserver's instructions go
    python -m bench.instructions --finished 1000000    # on a file already holding 1,000,000 finished jobs

Needs valgrind (`callgrind_control` comes with it). A run takes about a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import uvloop

from bench import seed
from bench.jobserver_figures import NOOP, Bench, base_config, merge, to_toml
from bench.plan import QUICK
from bench.servers import ServerProcess, free_port
from bench.side_by_side import DEFAULTS, MODULES

SETTLE_S = 4.0
CONNS = 8


def _control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, stdout=subprocess.DEVNULL)


def _totals(path: Path) -> int:
    for line in reversed(path.read_text(errors="replace").splitlines()):
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise ValueError(f"no totals in {path}")


def by_library(path: Path) -> list[tuple[str, int]]:
    """Self instructions per shared object of one callgrind dump, largest first."""
    names: dict[str, str] = {}
    costs: collections.Counter[str] = collections.Counter()
    obj = "?"
    after_call = False
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith(("ob=", "cob=")):
            m = re.match(r"c?ob=\((\d+)\)(?: (.*))?", line)
            if m and m.group(2):
                names[m.group(1)] = m.group(2).rsplit("/", 1)[-1]
            if line.startswith("ob=") and m:
                obj = names.get(m.group(1), m.group(1))
        elif line.startswith("calls="):
            after_call = True  # the next cost line is the call's inclusive cost, not self cost
        elif line[:1].isdigit() or line[:1] in "+-*":
            parts = line.split()
            if len(parts) >= 2:
                if after_call:
                    after_call = False
                else:
                    costs[obj] += int(parts[1])
    return costs.most_common()


async def count(system: str, jobs: int, workdir: Path) -> tuple[dict[str, float], dict[str, Path]]:
    """(instructions: idle total, per job submitted and run, per job end to end; each window's dump)."""
    port = free_port()
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={workdir}/cg.%p"]
    if system == "jobserver":
        config = merge(base_config(workdir / "jobs.db", port), DEFAULTS)
        (workdir / "config.toml").write_text(to_toml(config))
        argv = [*valgrind, sys.executable, "-m", "jobserver", "--config", str(workdir / "config.toml")]
    else:
        argv = [*valgrind, sys.executable, "-m", f"bench.peers.{MODULES[system]}", str(port)]
    server = ServerProcess(system, argv, workdir, workdir / "server.log", port)
    await server.start()
    out: dict[str, float] = {}
    dumps: dict[str, Path] = {}
    try:
        await server.wait_ready("/healthz", 600)
        assert server.proc is not None
        pid = server.proc.pid
        bench = Bench(QUICK, server, {})
        request = bench.submit_request(NOOP)
        await bench.load(mode="batch", requests=[request] * 50, conns=CONNS)  # warm the code paths
        await asyncio.sleep(SETTLE_S)
        windows: list[tuple[str, dict[str, Any] | None]] = [
            ("idle", None),
            ("submit", {"mode": "batch", "requests": [request] * jobs}),
            ("e2e", {"mode": "submit_follow", "requests": [request] * jobs, "follow": "/jobs/{id}?wait=60"}),
        ]
        for name, spec in windows:
            _control(pid, "--zero")
            _control(pid, "--instr=on")
            if spec is not None:
                await bench.load(conns=CONNS, keep=["status"], timeout_s=600, **spec)
            await asyncio.sleep(SETTLE_S)
            _control(pid, "--instr=off")
            _control(pid, "--dump")
            dump = max(workdir.glob(f"cg.{pid}.*"), key=lambda p: p.stat().st_mtime)
            dumps[name] = dump.rename(workdir / f"{name}.callgrind")
            total = _totals(dumps[name])
            out[name] = total if spec is None else (total - out["idle"]) / jobs
    finally:
        await server.stop(60)
    return out, dumps


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__.splitlines()[0])
    parser.add_argument("--system", choices=["jobserver", *MODULES], default="jobserver")
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--by-library", action="store_true", help="also where the submit window's went")
    parser.add_argument(
        "--finished", type=int, default=0, help="jobserver: seed its file with this many finished jobs first"
    )
    args = parser.parse_args()
    if args.finished and args.system != "jobserver":
        parser.error("--finished seeds jobserver's file; the peers keep no finished jobs")
    if shutil.which("callgrind_control") is None:
        sys.exit("valgrind is not installed")
    workdir = Path(tempfile.mkdtemp(prefix="jobserver-instructions-"))
    try:
        if args.finished:
            seed.create_schema(workdir / "jobs.db")
            seed.seed_jobs(workdir / "jobs.db", args.finished, "completed")
        values, dumps = uvloop.run(count(args.system, args.jobs, workdir))
        print(
            f"{args.system}, {args.jobs} no-op jobs on {CONNS} connections"
            f"{f' ({args.finished:,} finished jobs in the file)' if args.finished else ''}: "
            f"{values['submit'] / 1e3:,.0f} k instructions per job submitted and run, "
            f"{values['e2e'] / 1e3:,.0f} k per job end to end (GET ?wait); idle window "
            f"{values['idle'] / 1e6:,.1f} M, taken off"
        )
        if args.by_library:
            libs = by_library(dumps["submit"])
            total = sum(c for _, c in libs)
            for name, cost in libs[:8]:
                print(f"  {cost / total:6.1%}  {name}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
