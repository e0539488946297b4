"""What the client subcommands show people: tables, a job's details, and the live progress
line while they wait for a job, drawn with rich (tables and a live line that redraws in
place on a terminal, and prints nothing but the final state when the output is piped).

Scripts pass `--json` and get the API's JSON instead; nothing here is parsed by a machine.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

PIPED_WIDTH = 200  # wide enough that a piped table is never cut to 80 columns
DESCRIPTION_WIDTH = 100  # characters of a task's description the tasks table shows at most
STATUS_STYLES = {
    "pending": "yellow",
    "running": "cyan",
    "waiting": "magenta",
    "completed": "green",
    "failed": "red",
    "cancelled": "bright_black",
}


def reader_gone(stream: TextIO) -> None:
    """The reader of `stream` closed it (`... | head`): what is left to print goes nowhere,
    quietly, and the command carries on to its own exit code."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, stream.fileno())
    os.close(devnull)


def write_out(text: str) -> bool:
    """`text` on stdout at once; nothing when its reader is gone (then False)."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        reader_gone(sys.stdout)
        return False
    return True


class _Console(Console):
    """rich's Console, but a reader that stopped reading is not an error: rich would exit 1."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        reader_gone(sys.stderr if self.stderr else sys.stdout)


def consoles() -> tuple[Console, Console]:
    """stdout for results, stderr for progress and notes."""
    out = _Console(soft_wrap=False)
    if not out.is_terminal:
        out = _Console(soft_wrap=False, width=PIPED_WIDTH)
    return out, _Console(stderr=True, soft_wrap=False)


def status_text(status: str) -> Text:
    """A job status in its colour."""
    return Text(status, style=STATUS_STYLES.get(status, ""))


def _short_json(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _parse_time(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value)) if value else None
    except ValueError:
        return None


def duration(job: Mapping[str, Any]) -> str:
    """How long the job ran (or has been running), e.g. `1.2s`, `3m04s`; blank before it started."""
    started, ended = _parse_time(job.get("started_at")), _parse_time(job.get("finished_at"))
    if started is None:
        return ""
    end = ended or datetime.now(started.tzinfo)
    seconds = max(0.0, (end - started).total_seconds())
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def progress_text(progress: Any) -> str:
    """`3/10 step 3 of 10` from a job's progress object."""
    if not isinstance(progress, Mapping):
        return ""
    current, total, message = progress.get("current"), progress.get("total"), progress.get("message")
    head = f"{current}/{total}" if total else (str(current) if current is not None else "")
    return " ".join(part for part in (head, str(message or "")) if part)


def jobs_table(jobs: Iterable[Mapping[str, Any]]) -> Table:
    """One row per job: id, task, status, attempts, progress, created, duration."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in ("ID", "TASK", "STATUS", "ATTEMPTS", "PROGRESS", "CREATED", "DURATION"):
        table.add_column(name, no_wrap=True, overflow="ellipsis")
    for job in jobs:
        table.add_row(
            str(job["id"]),
            str(job["task"]),
            status_text(str(job["status"])),
            f"{job.get('attempts', 0)}/{job.get('max_attempts', '?')}",
            progress_text(job.get("progress")),
            str(job.get("created_at") or "")[:19].replace("T", " "),
            duration(job),
        )
    return table


def job_table(job: Mapping[str, Any]) -> Table:
    """A job's fields, one per line; result, args and error as compact JSON."""
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in job.items():
        if value is None or value == "":
            continue
        shown: Text | str = status_text(str(value)) if key == "status" else ""
        if not shown:
            shown = value if isinstance(value, str) else _short_json(value, 400)
        table.add_row(key, shown)
    if job.get("started_at"):
        table.add_row("duration", duration(job))
    return table


def tasks_table(tasks: Iterable[Mapping[str, Any]], unknown: Iterable[Mapping[str, Any]] = ()) -> Table:
    """One line per task: name, paused or not, sync or async, the start of its description;
    then one per task that jobs wait for though the server does not register it."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("TASK", no_wrap=True)
    table.add_column("STATE", no_wrap=True)
    table.add_column("KIND", no_wrap=True)
    table.add_column("DESCRIPTION")  # wraps in a narrow terminal rather than push the others out
    for task in tasks:
        # its first paragraph on one line, cut short: a long one would crowd the other columns out
        summary = textwrap.shorten(str(task.get("description") or ""), DESCRIPTION_WIDTH, placeholder=" …")
        table.add_row(
            str(task["name"]),
            Text("paused", style="yellow") if task.get("paused") else Text("active"),
            "async" if task.get("is_async") else "sync",
            summary,
        )
    for task in unknown:
        table.add_row(
            str(task["name"]),
            Text("unknown", style="red"),
            "",
            f"{_waiting(int(task.get('pending', 0)))} for it: no process of this server registers it",
        )
    return table


def _waiting(n: int) -> str:
    return "1 job waits" if n == 1 else f"{n} jobs wait"


def rows_table(columns: Iterable[str], rows: Iterable[Iterable[Any]]) -> Table:
    """A plain table of the given rows."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in columns:
        table.add_column(name, no_wrap=True, overflow="ellipsis")
    for row in rows:
        table.add_row(
            *("" if cell is None else cell if isinstance(cell, Text) else str(cell) for cell in row)
        )
    return table


def progress_line(job: Mapping[str, Any], latest_log: str) -> Text:
    """The live line under a waited-on job (its id is on the line above): status, progress bar,
    latest log line, time so far."""
    line = Text.assemble(status_text(str(job["status"])), no_wrap=True, overflow="ellipsis")
    progress = job.get("progress")
    if isinstance(progress, Mapping) and progress.get("total"):
        done = max(0.0, min(1.0, float(progress.get("current") or 0) / float(progress["total"])))
        filled = int(done * 16)
        line.append(f" [{'#' * filled}{'.' * (16 - filled)}] ")
        line.append(progress_text(progress))
    if latest_log:
        line.append("  | ", style="bright_black")
        line.append(latest_log, style="italic")
    line.append(f"  {duration(job)}", style="bright_black")
    return line
