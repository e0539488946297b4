"""The bench's output: one table (figure | jobserver | machine limit | ratio | target), or JSON.

Owns which figure is compared with which limit, and the targets. A row whose
value is missing prints "n/a"; why it is missing is listed under the table.
Ratio = jobserver ÷ limit: above 1 is more throughput or more latency than the
limit. Imports only `bench.plan`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from bench.plan import Plan


@dataclass(frozen=True)
class Row:
    """One line of the table."""

    label: str
    key: str | None  # jobserver value; None for a machine-only line
    unit: str  # "/s", "ms", "s", "MiB"
    limit_label: str = ""
    limit_key: str | None = None
    target: tuple[str, float] | None = None  # (">=" or "<=", number)


READ_ROWS = [
    ("status", "GET /jobs?status=completed&limit=50"),
    ("task", "GET /jobs?task=...&limit=50"),
    ("pending", "GET /jobs?status=pending&limit=50"),
    ("by_id", "GET /jobs/{id}"),
]


def rows(plan: Plan, scale: bool, sync_full: bool = False, synchronous: str = "normal") -> list[Row]:
    """The table's rows for this plan (`sync_full`: the synchronous = "full" submit run was made)."""
    idle = f"after {plan.idle_s:g} s idle"
    same_idle = f"same idle, {plan.idle_gap_s:g} s gaps"
    out = [
        Row(
            f'submit throughput, {plan.conns} conns (synchronous = "{synchronous}")',
            "submit.rps",
            "/s",
            "bare route POST",
            "bare.submit_rps",
            (">=", 2500),
        ),
        Row("  same, vs raw SQLite", "submit.rps", "/s", "SQLite 1 row/txn", "sqlite.rows1_per_s"),
        Row("submit latency p50", "submit.p50_ms", "ms", "bare route POST p50", "bare.submit_p50_ms"),
        Row(
            "submit latency p99",
            "submit.p99_ms",
            "ms",
            "bare route POST p99",
            "bare.submit_p99_ms",
            ("<=", 50),
        ),
    ]
    if sync_full:
        out += [
            Row(
                'submit throughput, synchronous = "full"',
                "syncfull.submit.rps",
                "/s",
                f'same, "{synchronous}"',
                "submit.rps",
            ),
            Row(
                "  same, vs raw SQLite",
                "syncfull.submit.rps",
                "/s",
                "SQLite 1 row/txn FULL",
                "sqlite.rows1_full_per_s",
            ),
            Row(
                "  its latency p50", "syncfull.submit.p50_ms", "ms", f'same, "{synchronous}"', "submit.p50_ms"
            ),
            Row(
                "  its latency p99",
                "syncfull.submit.p99_ms",
                "ms",
                f'same, "{synchronous}"',
                "submit.p99_ms",
                ("<=", 50),
            ),
            Row(
                "  pickup p50, right after a submit",
                "syncfull.pickup.warm_p50_ms",
                "ms",
                f'same, "{synchronous}"',
                "pickup.warm_p50_ms",
            ),
        ]
    out += [
        Row(
            f"end-to-end no-op jobs ({plan.e2e_jobs:,}, seen done by GET)",
            "e2e.jobs_per_s",
            "/s",
            "SQLite 1 row/txn",
            "sqlite.rows1_per_s",
            (">=", 1500),
        ),
        Row(
            "  same, from the jobs' own timestamps",
            "e2e.server_jobs_per_s",
            "/s",
            "SQLite 100 rows/txn",
            "sqlite.rows100_per_s",
        ),
        Row(
            "pickup p50, right after a submit",
            "pickup.warm_p50_ms",
            "ms",
            "bare 1-conn round trip p50",
            "bare.rtt_p50_ms",
            ("<=", 1),
        ),
        Row(
            "pickup p99, right after a submit",
            "pickup.warm_p99_ms",
            "ms",
            "bare 1-conn round trip p99",
            "bare.rtt_p99_ms",
            ("<=", 3),
        ),
        Row("  started_at - created_at p50 (server, 1 ms steps)", "pickup.warm_server_p50_ms", "ms"),
        Row("  started_at - created_at p99 (server, 1 ms steps)", "pickup.warm_server_p99_ms", "ms"),
        Row(
            f"pickup p50, {idle}",
            "pickup.idle_p50_ms",
            "ms",
            f"bare round trip p50, {same_idle}",
            "bare.idle_rtt_p50_ms",
            ("<=", 1),
        ),
        Row(
            f"pickup p99, {idle}",
            "pickup.idle_p99_ms",
            "ms",
            f"bare round trip p99, {same_idle}",
            "bare.idle_rtt_p99_ms",
            ("<=", 3),
        ),
        Row(
            f"first pickup {idle}",
            "pickup.idle_first_ms",
            "ms",
            "bare first round trip, same idle",
            "bare.idle_rtt_first_ms",
        ),
        Row("  started_at - created_at p50, after idle", "pickup.idle_server_p50_ms", "ms"),
        Row("  started_at - created_at p99, after idle", "pickup.idle_server_p99_ms", "ms"),
        Row(
            f"async I/O: {plan.async_jobs:,} jobs awaiting {plan.async_sleep_s:g} s, wall",
            "async.wall_s",
            "s",
            "ideal",
            "ideal.async_wall_s",
        ),
        *(
            Row(f"{label} p50", f"reads.{name}_p50_ms", "ms", "bare 1-conn round trip p50", "bare.rtt_p50_ms")
            for name, label in READ_ROWS
        ),
        Row(
            f"parked jobs waiting for a signal ({plan.parked_jobs:,}): server threads",
            "parked.threads_after",
            "threads",
            "threads before parking",
            "parked.threads_before",
        ),
        Row(
            "  resident memory per 1,000 parked, last round of five",
            "parked.rss_last_round_per_1000_mb",
            "MiB",
            "first round",
            "parked.rss_first_round_per_1000_mb",
        ),
        Row(
            "  resident memory with all parked",
            "parked.rss_after_mb",
            "MiB",
            "before parking",
            "parked.rss_before_mb",
        ),
        Row(
            f"signal -> resumed run p50 ({plan.signal_samples} one at a time, the rest parked)",
            "signal.resume_p50_ms",
            "ms",
            "pickup p50, right after a submit",
            "pickup.warm_p50_ms",
            ("<=", 5),
        ),
        Row(
            "signal -> resumed run p99",
            "signal.resume_p99_ms",
            "ms",
            "pickup p99, right after a submit",
            "pickup.warm_p99_ms",
        ),
        Row(
            "  all the other parked jobs signalled at once, resumed",
            "signal.all_resumed_per_s",
            "/s",
            "end-to-end no-op jobs",
            "e2e.jobs_per_s",
        ),
        Row(
            f"spawn_many of {plan.fan_out:,} children (one transaction)",
            "spawn.children_per_s",
            "/s",
            "SQLite 100 rows/txn",
            "sqlite.rows100_per_s",
        ),
        Row("  the same, wall", "spawn.many_ms", "ms"),
        Row(
            f"gather of {plan.fan_out:,}: last child's end -> parent running",
            "gather.resume_ms",
            "ms",
            "pickup p50, right after a submit",
            "pickup.warm_p50_ms",
        ),
        Row(
            f"submit with {plan.sse_streams} event streams open",
            "sse.submit.rps",
            "/s",
            "submit, no streams",
            "submit.rps",
        ),
        Row("  its latency p99", "sse.submit.p99_ms", "ms", "submit p99, no streams", "submit.p99_ms"),
        Row("startup to /healthz", "startup_s", "s", "bare route server", "bare.startup_s"),
        Row("peak RSS", "peak_rss_mb", "MiB", "bare route server", "bare.peak_rss_mb"),
    ]
    if scale:
        out += _scale_rows(plan)
    out += [
        Row("load generator ceiling (canned responder)", None, "/s", "", "loadgen.ceiling_rps"),
        Row("bare route GET hello", None, "/s", "", "bare.hello_rps"),
        Row("SQLite inserts, 100 rows/txn", None, "/s", "", "sqlite.rows100_per_s"),
        Row("SQLite inserts, 1 row/txn, synchronous=FULL", None, "/s", "", "sqlite.rows1_full_per_s"),
    ]
    return out


def _scale_rows(plan: Plan) -> list[Row]:
    out: list[Row] = []
    for name, what in (
        ("finished", f"{plan.scale_finished:,} finished jobs"),
        ("pending", f"{plan.scale_pending:,} pending (delayed) jobs"),
    ):
        p = f"scale.{name}."
        out += [
            Row(f"[{what}] submit throughput", p + "submit.rps", "/s", "same, empty database", "submit.rps"),
            Row(f"[{what}] submit p99", p + "submit.p99_ms", "ms", "same, empty database", "submit.p99_ms"),
            Row(
                f"[{what}] end-to-end jobs",
                p + "e2e.jobs_per_s",
                "/s",
                "same, empty database",
                "e2e.jobs_per_s",
            ),
            Row(
                f"[{what}] pickup p50",
                p + "pickup.warm_p50_ms",
                "ms",
                "same, empty database",
                "pickup.warm_p50_ms",
            ),
            Row(
                f"[{what}] pickup p99",
                p + "pickup.warm_p99_ms",
                "ms",
                "same, empty database",
                "pickup.warm_p99_ms",
            ),
            *(
                Row(
                    f"[{what}] {label} p50",
                    f"{p}reads.{rname}_p50_ms",
                    "ms",
                    "same, empty database",
                    f"reads.{rname}_p50_ms",
                )
                for rname, label in READ_ROWS
            ),
            Row(f"[{what}] startup to /healthz", p + "startup_s", "s", "same, empty database", "startup_s"),
            Row(f"[{what}] peak RSS", p + "peak_rss_mb", "MiB", "same, empty database", "peak_rss_mb"),
        ]
    out.append(
        Row(
            f"[{plan.drain_jobs:,} due jobs at start] drain, from launch",
            "scale.drain.jobs_per_s",
            "/s",
            "end-to-end, empty database",
            "e2e.jobs_per_s",
        )
    )
    return out


def _ops_rows(plan: Plan) -> list[Row]:
    """--ops: GET /stats on a big database, a bulk retry and the submits it runs beside."""
    big, bulk = f"{plan.stats_finished:,} finished jobs", f"bulk retry of {plan.bulk_jobs:,} jobs"
    return [
        Row(f"[{big}] GET /stats p50", "ops.stats_big.stats_p50_ms", "ms", "empty database", "ops.stats_empty.stats_p50_ms", ("<=", 5)),
        Row(f"[{big}] GET /stats p99", "ops.stats_big.stats_p99_ms", "ms", "empty database", "ops.stats_empty.stats_p99_ms"),
        Row(f"[{big}] first start (counters built)", "ops.stats_big.startup_s", "s", "empty database", "ops.stats_empty.startup_s"),
        Row(f"[{bulk}] time", "ops.bulk.bulk_retry_s", "s"),
        Row(f"[{bulk}] jobs retried", "ops.bulk.bulk_retry_jobs_per_s", "/s"),
        Row(f"[{bulk}] submit p50 meanwhile", "ops.bulk.probe_during_p50_ms", "ms", "just before", "ops.bulk.probe_before_p50_ms"),
        Row(f"[{bulk}] submit p99 meanwhile", "ops.bulk.probe_during_p99_ms", "ms", "just before", "ops.bulk.probe_before_p99_ms", ("<=", 100)),
        Row(f"[{bulk}] slowest submit meanwhile", "ops.bulk.probe_max_during_ms", "ms"),
    ]  # fmt: skip


def _fmt(value: Any, unit: str) -> str:
    if not isinstance(value, (int, float)):
        return "n/a"
    if unit == "/s":
        return f"{value:,.0f}/s"
    if unit == "ms":
        return f"{value:.2f} ms" if value < 100 else f"{value:,.0f} ms"
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "MiB":
        return f"{value:,.1f} MiB"
    return f"{value:.0f} {unit}"


def _target(row: Row, value: Any) -> str:
    if row.target is None:
        return ""
    op, bound = row.target
    text = f"{'≥' if op == '>=' else '≤'} {_fmt(bound, row.unit)}"
    if not isinstance(value, (int, float)):
        return text
    ok = value >= bound if op == ">=" else value <= bound
    return f"{text} {'ok' if ok else 'MISSED'}"


def _rows_for(plan: Plan, scale: bool, values: dict[str, Any], errors: dict[str, str]) -> list[Row]:
    sync_full = any(k.startswith("syncfull.") for k in values) or any(
        k.startswith("synchronous") for k in errors
    )
    if values.get("bench.only_ops"):
        return _ops_rows(plan)
    out = rows(plan, scale, sync_full, str(values.get("db.synchronous", "normal")))
    if any(k.startswith("ops.") for k in values) or any(k.startswith("ops ") for k in errors):
        out += _ops_rows(plan)
    return out


def table(plan: Plan, scale: bool, values: dict[str, Any], errors: dict[str, str]) -> str:
    """The human-readable report."""
    lines = [["figure", "jobserver", "machine limit", "ratio", "target"]]
    for row in _rows_for(plan, scale, values, errors):
        value = values.get(row.key) if row.key else None
        limit = values.get(row.limit_key) if row.limit_key else None
        ratio = (
            f"{value / limit:.2f}x"
            if isinstance(value, (int, float)) and isinstance(limit, (int, float)) and limit
            else ""
        )
        shown = f"{_fmt(limit, row.unit)} {row.limit_label}".strip() if row.limit_key else ""
        lines.append(
            [row.label, _fmt(value, row.unit) if row.key else "—", shown, ratio, _target(row, value)]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(5)]
    text = [
        " | ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=False)).rstrip() for line in lines
    ]
    text.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(text + _notes(plan, values, errors))


def _notes(plan: Plan, values: dict[str, Any], errors: dict[str, str]) -> list[str]:
    out = [""]
    ceiling, submit = values.get("loadgen.ceiling_rps"), values.get("submit.rps")
    if ceiling and submit:
        out.append(
            f"load generator: ceiling {ceiling:,.0f} req/s = {ceiling / submit:.0f}x jobserver's submit "
            f"throughput; it used {values.get('submit.client_cpu', 0) * 100:.0f}% of one core during that run."
        )
    if values.get("submit.server_cpu") is not None:
        out.append(
            f"jobserver used {values['submit.server_cpu']:.2f} cores during the submit run (of {values.get('machine.cpus')})."
        )
    start, end = values.get("machine.load_start"), values.get("machine.load_end")
    if isinstance(start, float) and isinstance(end, float):
        busy = (
            " (the machine was already busy: figures are noisy)"
            if start > 0.5 * (values.get("machine.cpus") or 1)
            else ""
        )
        out.append(f"1-minute load average at start / end: {start:.2f} / {end:.2f}{busy}.")
    if ceiling and submit and ceiling < 3 * submit:
        out.append(
            "WARNING: the load generator's ceiling is within 3x of the figure: it may be the bottleneck."
        )
    out += _plan_notes(plan, values)
    for key in ("submit.not_202", "sse.submit.not_202", "e2e.not_completed", "async.not_completed"):
        if values.get(key):
            out.append(f"{key}: {values[key]}")
    out += [f"ERROR in {name}: {message}" for name, message in errors.items()]
    return out


def _plan_notes(plan: Plan, values: dict[str, Any]) -> list[str]:
    """The query plans of the seeded files: all of the first, then only what differs."""
    scenarios = (
        ("finished", f"{plan.scale_finished:,} finished"),
        ("pending", f"{plan.scale_pending:,} delayed"),
        ("drain", f"{plan.drain_jobs:,} due"),
    )
    found = [
        (label, values[f"scale.{name}.plans"])
        for name, label in scenarios
        if isinstance(values.get(f"scale.{name}.plans"), dict)
    ]
    if not found:
        return []
    out = [
        "query plans (EXPLAIN QUERY PLAN on the seeded files, no ANALYZE statistics, as the server leaves its file):"
    ]
    first_label, first = found[0]
    out += [f"  {query}: {plan}   [{first_label}]" for query, plan in first.items()]
    same = []
    for label, plans in found[1:]:
        differ = [
            f"  {query}: {plan}   [{label}]" for query, plan in plans.items() if first.get(query) != plan
        ]
        out += differ
        if not differ:
            same.append(label)
    if same:
        out.append(f"  (the same plans on the {' and '.join(same)} files)")
    return out


def as_json(plan: Plan, scale: bool, values: dict[str, Any], errors: dict[str, str]) -> dict[str, Any]:
    """The machine-readable report."""
    table_rows = []
    for row in _rows_for(plan, scale, values, errors):
        value = values.get(row.key) if row.key else None
        limit = values.get(row.limit_key) if row.limit_key else None
        ratio = (
            value / limit
            if isinstance(value, (int, float)) and isinstance(limit, (int, float)) and limit
            else None
        )
        table_rows.append({**asdict(row), "value": value, "limit": limit, "ratio": ratio})
    return {"plan": asdict(plan), "values": values, "errors": errors, "rows": table_rows}
