"""The client subcommands of `python -m jobserver`: submit, get, wait, follow, logs, list,
cancel, retry, delete, signal, webhooks, tasks, schedules, pause, resume, stats, limits.

`cancel`, `retry` and `delete` take one job id, or filters (`--status`, `--task`, `--id`,
or `--all`) for every matching job.

Each talks to a running server through `client.Client`, found through `--url`
or JOBSERVER_URL (default http://127.0.0.1:8000), with the key from `--api-key`
or JOBSERVER_API_KEY. People get tables (render.py); `--json` gives the API's JSON
for scripts. `submit` prints the job id at once; `--wait`, `wait` and `follow` then show
a live line with the progress and the latest log line (`follow` prints every log line
too), and Ctrl-C stops watching, leaves the job running and says how to watch it again.
An error is one line on stderr.

Exit codes (EXIT_* below): 0 done, or the job completed; 1 the job failed, or any other
error; 2 a usage or validation error (bad flags, bad JSON, a 400, 413 or 422); 3 the job
was cancelled; 4 the wait timed out with the job unfinished; 5 the server cannot be
reached; 130 interrupted with Ctrl-C (the job keeps running).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from rich.live import Live

from jobserver.client import render
from jobserver.client.protocol import DEFAULT_RECONNECT_FOR_S
from jobserver.client.sdk import DEFAULT_URL, Client, ClientError
from jobserver.client.transport import reconnect_pause_s
from jobserver.core.bounds import MAX_LIMIT, MAX_WAIT_S
from jobserver.core.errors import (
    DrainingError,
    IdempotencyMismatchError,
    InvalidRequestError,
    JobServerError,
    ServerUnavailableError,
    StorageError,
    TaskNotFoundError,
    WaitTimeoutError,
    WebhookURLError,
    field_errors_text,
)
from jobserver.core.lifecycle import FINISHED

PROG = "python -m jobserver"
FINISHED_NAMES = ("completed", "failed", "cancelled")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED, EXIT_TIMED_OUT, EXIT_UNREACHABLE = 0, 1, 2, 3, 4, 5
EXIT_INTERRUPTED = 130
POLL_S = 1.0  # how often the live line reads the job's new events while it waits
SCHEDULE_ACTIONS = ("list", "pause", "resume", "delete")
USAGE_ERRORS = (InvalidRequestError, TaskNotFoundError, WebhookURLError, IdempotencyMismatchError)
# the server is not there to serve, for now: a script tries again later, or another node
UNAVAILABLE_ERRORS = (ServerUnavailableError, DrainingError, StorageError)


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error reported as one line on stderr (exit code 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _not_json(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def json_loads(text: str) -> Any:
    """JSON as the standard has it: Python's `NaN`, `Infinity` and `-Infinity` are a ValueError."""
    return json.loads(text, parse_constant=_not_json)


def parse_key_value(text: str) -> tuple[str, Any]:
    """`key=value` with the value parsed as JSON when it is JSON, else kept as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        return key, json_loads(value)
    except ValueError:
        return key, value


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json_loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, like '{\"a\": 1}'")
    return value


def _json_value(text: str) -> Any:
    try:
        return json_loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None


def _connection_options(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "--url", default=default, help=f"server URL (env JOBSERVER_URL, default {DEFAULT_URL})"
    )
    parser.add_argument("--api-key", default=default, help="API key (env JOBSERVER_API_KEY)")
    parser.add_argument(
        "--json",
        action="store_true",
        default=False if default is None else default,
        help="print the API's JSON instead of tables (for scripts)",
    )


def _add_submit(p: argparse.ArgumentParser) -> None:
    """The options of `submit`: one per field of POST /jobs, and --wait."""
    p.add_argument("task", help="task name, e.g. jobserver.examples.add")
    given = p.add_mutually_exclusive_group()
    given.add_argument("--args", type=_json_object, help="the args as a JSON object")
    given.add_argument(
        "-a",
        "--arg",
        dest="arg",
        type=parse_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="one arg (repeatable); VALUE is JSON when it parses, else a string",
    )
    p.add_argument("--priority", type=int, help="higher runs first (default: the task's)")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--delay", type=seconds, metavar="S", help="run after S seconds")
    when.add_argument("--run-at", metavar="TIME", help="run at this RFC 3339 time")
    p.add_argument(
        "--max-attempts", type=int, metavar="N", help="attempts before it fails (default: the task's)"
    )
    p.add_argument("--timeout", type=seconds, metavar="S", help="time limit of one attempt")
    p.add_argument("--webhook-url", metavar="URL", help="POSTed to when the job finishes")
    p.add_argument(
        "--idempotency-key", metavar="KEY", help="submitting again with this key returns the same job"
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="wait until the job is finished, with a live progress line; the exit code says how it ended",
    )
    p.add_argument("--follow", action="store_true", help="as --wait, printing every log line of the job")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the client subcommands."""
    parser = Parser(prog=PROG, description="Talk to a running jobserver.")
    _connection_options(parser, None)
    common = Parser(add_help=False)
    # SUPPRESS: given after the subcommand, they win; absent there, the top-level value stays
    _connection_options(common, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_submit(sub.add_parser("submit", parents=[common], help="submit a job and print its id"))

    p = sub.add_parser("get", parents=[common], help="print a job")
    p.add_argument("job_id", metavar="ID")
    p.add_argument(
        "--wait", type=seconds, metavar="S", help="hold up to S seconds (at most 60) until it is finished"
    )

    for name, text in (
        ("wait", "wait until a job is finished; exit 0 completed, 1 failed, 3 cancelled, 4 timed out"),
        ("follow", "as wait, printing every log line of the job as it comes"),
    ):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("job_id", metavar="ID")
        p.add_argument(
            "--timeout", type=seconds, metavar="S", help="give up after S seconds (default: never)"
        )

    p = sub.add_parser("logs", parents=[common], help="print a job's log lines (ctx.log)")
    p.add_argument("job_id", metavar="ID")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new lines until the job ends")

    p = sub.add_parser("webhooks", parents=[common], help="a job's webhook delivery attempts")
    p.add_argument("job_id", metavar="ID")

    p = sub.add_parser("list", parents=[common], help="list jobs, newest first")
    p.add_argument("--status", choices=["pending", "running", "waiting", "completed", "failed", "cancelled"])
    p.add_argument("--task")
    p.add_argument("--parent", metavar="ID", help="only the children of job ID")
    p.add_argument("--limit", type=int, default=50, help=f"page size (default 50, at most {MAX_LIMIT})")
    p.add_argument("--cursor", help="next_cursor of the previous page")
    p.add_argument("--idempotency-key", metavar="KEY", help="the job submitted under KEY (with this API key)")

    for name, text, statuses in (
        ("cancel", "cancel a job, or every job a filter matches", ["pending", "waiting", "running"]),
        (
            "retry",
            "run a failed or cancelled job again, or every one a filter matches",
            ["failed", "cancelled"],
        ),
        ("delete", "forget a finished job, or every finished job a filter matches", list(FINISHED_NAMES)),
    ):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("job_id", metavar="ID", nargs="?", help="one job (or give filters instead)")
        p.add_argument("--status", choices=statuses, help="only jobs in this status")
        p.add_argument("--task", help="only jobs of this task")
        p.add_argument("--id", dest="ids", action="append", metavar="ID", help="only these jobs (repeatable)")
        p.add_argument("--all", action="store_true", help="every job the action applies to")

    p = sub.add_parser(
        "signal", parents=[common], help="send a signal to a job (a job waiting for it runs again)"
    )
    p.add_argument("job_id", metavar="ID")
    p.add_argument("name", metavar="NAME")
    p.add_argument(
        "payload",
        metavar="JSON",
        nargs="?",
        type=_json_value,
        default=None,
        help="default: null, which the waiting task gets as None, as it would a timed-out wait",
    )

    p = sub.add_parser("tasks", parents=[common], help="one line per task; `tasks NAME` for its args schema")
    p.add_argument("name", nargs="?", metavar="NAME", help="one task: its args schema and options")
    for name, text in (
        ("pause", "hold a task's pending jobs back"),
        ("resume", "let a paused task's jobs run"),
    ):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("task", metavar="TASK")
    p = sub.add_parser("schedules", parents=[common], help="list schedules, or pause, resume or delete one")
    p.add_argument(
        "action",
        nargs="?",
        metavar="ACTION",
        default="list",
        help=f"one of {', '.join(SCHEDULE_ACTIONS)} (default: list); `schedules NAME` lists that one",
    )
    p.add_argument("name", nargs="?", metavar="NAME", help="the schedule (list: only that one)")
    sub.add_parser("stats", parents=[common], help="counts by status and task; the last hour's throughput")
    sub.add_parser(
        "limits", parents=[common], help="each limit key: its limit, its use now, the jobs it holds back"
    )
    return parser


class Output:
    """Where answers go: JSON for scripts, tables for people; notes and progress on stderr."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.out, self.err = render.consoles()

    def json(self, value: Any) -> None:
        render.write_out(json.dumps(value, indent=2, ensure_ascii=False) + "\n")

    def show(self, value: Any, human: Any) -> None:
        """`value` as JSON, or `human` (a rich renderable or a line) for people."""
        if self.as_json:
            self.json(value)
        else:
            self.out.print(human, soft_wrap=not isinstance(human, str), highlight=False)

    def note(self, text: str) -> None:
        self.err.print(text, highlight=False, markup=False, soft_wrap=True)


def _ended_code(job: Mapping[str, Any], output: Output) -> int:
    """The exit code for a finished job, with one line on stderr when it did not complete."""
    status = job.get("status")
    if status == "completed":
        return EXIT_OK
    error = job.get("error") or {}
    reason = f": {error.get('type')}: {error.get('message')}" if error else ""
    output.note(f"jobserver: job {job.get('id')} {status}{reason}")
    return EXIT_CANCELLED if status == "cancelled" else EXIT_FAILED


def seconds(text: str) -> float:
    """A number of seconds from the command line: finite and not negative (a usage error else)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value < float("inf"):  # also NaN
        raise argparse.ArgumentTypeError(f"seconds must be a finite number, 0 or more: {text!r}")
    return value


def again(args: argparse.Namespace, *command: str) -> str:
    """The command that does it again, with the server named as it was on this command line
    (what the environment gives stays given; a key is not printed)."""
    parts = [*command]
    if args.url:
        parts += ["--url", args.url]
    line = f"{PROG} {shlex.join(parts)}"
    return f"{line} --api-key <key>" if args.api_key else line


def watch(
    client: Client,
    job_id: str,
    timeout: float | None,
    echo_logs: bool,
    output: Output,
    args: argparse.Namespace,
) -> int:
    """Wait for a job with a live progress line; print it, and the exit code for how it ended."""
    deadline = None if timeout is None else time.monotonic() + timeout
    last_event: str | None = None
    latest_log = ""
    job: Mapping[str, Any] = {}
    try:
        job = client.get(job_id)
        with Live(
            render.progress_line(job, ""), console=output.err, transient=True, auto_refresh=False
        ) as live:
            while True:
                for event in client.events(job_id, last_event, follow=False):
                    last_event = event.id
                    if event.event == "log" and isinstance(event.data, dict):
                        latest_log = str(event.data.get("message", ""))
                        if echo_logs:
                            live.console.print(_log_line(event.data), highlight=False, markup=False)
                live.update(render.progress_line(job, latest_log), refresh=True)
                if job["status"] in FINISHED:
                    break
                remaining = POLL_S if deadline is None else min(POLL_S, deadline - time.monotonic())
                if remaining <= 0:
                    if output.as_json:  # a script still gets the job as last read
                        output.json(job)
                    raise WaitTimeoutError(job, float(timeout or 0))
                job = _read_through_restart(client, job_id, round(min(remaining, float(MAX_WAIT_S)), 3))
    except KeyboardInterrupt:
        state = f"is still {job['status']}" if job else "goes on"
        output.note(
            f"jobserver: stopped watching; job {job_id} {state} on the server. "
            f"Watch it again: {again(args, 'follow' if echo_logs else 'wait', job_id)}"
        )
        return EXIT_INTERRUPTED
    output.show(job, render.job_table(job))
    return _ended_code(job, output)


def _read_through_restart(client: Client, job_id: str, wait_s: float) -> dict[str, Any]:
    """The job, read with `wait`. A server that goes away while it is watched (a restart: it
    drains, stops and starts again) is waited for, as the SDK's `wait()` and `events()` wait for
    it, with doubling pauses for up to DEFAULT_RECONNECT_FOR_S. The SDK's own window is bounded
    by each call's timeout, which here is the live line's poll interval: hence this loop."""
    failures, failing_since = 0, 0.0
    while True:
        try:
            return client.get(job_id, wait=wait_s)
        except ServerUnavailableError:
            failures += 1
            if failures == 1:
                failing_since = time.monotonic()
            pause_s = reconnect_pause_s(failures, DEFAULT_RECONNECT_FOR_S, time.monotonic() - failing_since)
            if pause_s is None:
                raise
            time.sleep(pause_s)


def _log_line(data: Mapping[str, Any]) -> str:
    return f"{str(data.get('at') or '')[:23].replace('T', ' ')}  {data.get('message', '')}"


def _submit(client: Client, args: argparse.Namespace, output: Output) -> int:
    job_args = args.args if args.args is not None else dict(args.arg)
    job = client.submit(
        args.task,
        job_args,
        priority=args.priority,
        delay=args.delay,
        run_at=args.run_at,
        max_attempts=args.max_attempts,
        timeout=args.timeout,
        webhook_url=args.webhook_url,
        idempotency_key=args.idempotency_key,
    )
    if job.replayed:
        output.note(f"jobserver: Idempotency-Key {args.idempotency_key!r} was used before; this is that job")
    waiting = args.wait or args.follow
    if output.as_json and not waiting:
        output.json(job)
        return EXIT_OK
    if not output.as_json:
        render.write_out(f"{job['id']}\n")  # at once, and alone on its line: `id=$(... submit ...)`
        if not waiting:
            if job["status"] in FINISHED_NAMES:  # a replayed key's job may be over: nothing to watch
                hint = f"see it: {again(args, 'get', job['id'])}"
            else:
                hint = f"watch it: {again(args, 'wait', job['id'])}"
            output.note(f"jobserver: {job['task']} is {job['status']}; {hint}")
            return EXIT_OK
    return watch(client, job["id"], None, args.follow, output, args)


def _logs(client: Client, args: argparse.Namespace, output: Output) -> int:
    """The job's log lines. With `--json`, one document; with `--follow --json`, one JSON object
    per line as each comes (JSON Lines): a follow has no end to wait for before printing."""
    lines = []
    try:
        for event in client.events(args.job_id, follow=args.follow):
            if event.event != "log" or not isinstance(event.data, dict):
                continue
            if output.as_json and args.follow:
                if not render.write_out(json.dumps(event.data, ensure_ascii=False) + "\n"):
                    return EXIT_OK  # the reader stopped reading (`| head`): so does --follow
            elif output.as_json:
                lines.append(event.data)
            else:
                output.out.print(_log_line(event.data), highlight=False, markup=False, soft_wrap=True)
                if output.out.quiet:  # the reader stopped reading (`| head`): so does --follow
                    return EXIT_OK
    except KeyboardInterrupt:
        output.note(f"jobserver: stopped; follow again: {again(args, 'logs', args.job_id, '--follow')}")
        return EXIT_INTERRUPTED
    if output.as_json and not args.follow:
        output.json({"logs": lines})
    return EXIT_OK


def run(client: Client, args: argparse.Namespace, output: Output) -> int:
    """Run one parsed subcommand; the exit code."""
    command = args.command
    if command == "submit":
        return _submit(client, args, output)
    if command in ("wait", "follow"):
        return watch(client, args.job_id, args.timeout, command == "follow", output, args)
    if command == "logs":
        return _logs(client, args, output)
    if command == "get":
        job = client.get(args.job_id, wait=args.wait)
        output.show(job, render.job_table(job))
    elif command == "list":
        page = client.list(
            status=args.status,
            task=args.task,
            limit=args.limit,
            cursor=args.cursor,
            parent=args.parent,
            idempotency_key=args.idempotency_key,
        )
        output.show(page, render.jobs_table(page["jobs"]))
        if not output.as_json and page.get("next_cursor"):
            output.note(f"more: --cursor {page['next_cursor']}")
    elif command in ("cancel", "retry", "delete"):
        return _one_or_many(client, args, output)
    elif command == "signal":
        job = client.signal(args.job_id, args.name, args.payload)
        if job.replayed:
            output.note(f"jobserver: signal {args.name!r} was already sent with this payload")
        output.show(job, f"signal {args.name} sent; job {job['id']} is {job['status']}")
    elif command == "webhooks":
        deliveries = client.webhooks(args.job_id)
        delivery_columns = ("TYPE", "ATTEMPT", "AT", "STATUS", "ERROR", "MS", "DELIVERY")
        rows = [
            [
                d.get("type"), d.get("attempt"), d.get("at"), d.get("status_code"), d.get("error"),
                d.get("duration_ms"), d.get("id"),
            ]
            for d in deliveries
        ]  # fmt: skip
        shown = render.rows_table(delivery_columns, rows) if rows else "no deliveries"
        output.show({"deliveries": deliveries}, shown)
    elif command == "tasks":
        return _tasks(client, args, output)
    elif command in ("pause", "resume"):
        state = client.pause_task(args.task) if command == "pause" else client.resume_task(args.task)
        output.show(state, f"task {args.task} {'paused' if state.get('paused') else 'resumed'}")
    elif command == "schedules":
        return _schedules(client, args, output)
    elif command == "stats":
        _stats(client.stats(), output)
    elif command == "limits":
        keys = client.limits()
        columns = ("KEY", "KIND", "LIMIT", "IN USE", "HELD BACK")
        rows = [[k["key"], k["kind"], _limit_text(k), f"{k['in_use']:g}", k["blocked"]] for k in keys]
        output.show({"limits": keys}, render.rows_table(columns, rows) if rows else "no limit keys in use")
    return EXIT_OK


def _limit_text(key: dict[str, Any]) -> str:
    """`3`, or for a rate key `10 per 0.5s`."""
    limit = f"{key['limit']:g}"
    return limit if key.get("per") is None else f"{limit} per {key['per']:g}s"


def _tasks(client: Client, args: argparse.Namespace, output: Output) -> int:
    overview = client.task_overview()
    tasks = overview["tasks"]
    if args.name is None:
        output.show(overview, render.tasks_table(tasks, overview.get("unknown_tasks", [])))
        return EXIT_OK
    found = [t for t in tasks if t["name"] == args.name]
    if not found:
        raise TaskNotFoundError(args.name)
    output.json(found[0])  # the schema is JSON for people too
    return EXIT_OK


def _stats(stats: dict[str, Any], output: Output) -> None:
    hour = stats.get("last_hour", {})
    rows = [
        [name, *(per.get(s, 0) for s in render.STATUS_STYLES)] for name, per in stats.get("tasks", {}).items()
    ]
    rows.append(["(all)", *(stats.get("counts", {}).get(s, 0) for s in render.STATUS_STYLES)])
    output.show(stats, render.rows_table(["TASK", *(s.upper() for s in render.STATUS_STYLES)], rows))
    if not output.as_json:
        rate = hour.get("failure_rate")
        output.out.print(
            f"last hour: {hour.get('completed', 0)} completed, {hour.get('failed', 0)} failed, "
            f"{hour.get('cancelled', 0)} cancelled, {hour.get('throughput_per_minute', 0)} finished/min, "
            "failure rate " + ("n/a" if rate is None else f"{rate:.1%}"),
            highlight=False,
        )


def _one_or_many(client: Client, args: argparse.Namespace, output: Output) -> int:
    """One job by id, or every job the filters match (`--all`: no filter)."""
    filters = args.status is not None or args.task is not None or args.ids is not None
    command = args.command
    if args.job_id is not None:
        if filters or args.all:
            return _usage(f"{command}: give a job ID or filters, not both")
        if command == "delete":
            client.delete(args.job_id)
            output.show({"id": args.job_id, "deleted": True}, f"job {args.job_id} deleted")
            return EXIT_OK
        job = client.cancel(args.job_id) if command == "cancel" else client.retry(args.job_id)
        said = f"job {job['id']} is {job['status']}"
        if command == "cancel" and job["status"] not in FINISHED_NAMES and job.get("cancel_requested"):
            # a running job stops when its task does: within seconds, and it may complete first
            said = (
                f"cancel requested; {said} until its task stops (watch it: {again(args, 'wait', job['id'])})"
            )
        output.show(job, said)
        return EXIT_OK
    if not filters and not args.all:
        return _usage(f"{command}: give a job ID, filters (--status, --task, --id), or --all")
    many = {"cancel": client.cancel_many, "retry": client.retry_many, "delete": client.delete_many}[command]
    count = many(status=args.status, task=args.task, ids=args.ids, all_jobs=args.all)
    past = {"cancel": "cancelled", "retry": "retried", "delete": "deleted"}[command]
    output.show({"count": count}, f"{past} {count} job{'' if count == 1 else 's'}")
    return EXIT_OK


def _schedules(client: Client, args: argparse.Namespace, output: Output) -> int:
    if args.action not in SCHEDULE_ACTIONS:
        if args.name is not None:
            return _usage(f"schedules: unknown action {args.action!r}: use {', '.join(SCHEDULE_ACTIONS)}")
        args.action, args.name = "list", args.action  # `schedules NAME`: that one
    if args.action == "list":
        schedules = client.schedules() if args.name is None else [client.schedule(args.name)]
        columns = ("NAME", "TASK", "CRON", "TIMEZONE", "STATE", "NEXT RUN", "LAST RUN")
        rows = [
            [
                s["name"],
                s["task"],
                s["cron"],
                s["timezone"],
                "paused" if s["paused"] else "active",
                s.get("next_run_at"),
                s.get("last_run_at"),
            ]
            for s in schedules
        ]
        output.show({"schedules": schedules}, render.rows_table(columns, rows) if rows else "no schedules")
        return EXIT_OK
    if args.name is None:
        return _usage(f"schedules {args.action}: name the schedule")
    if args.action == "delete":
        client.delete_schedule(args.name)
        output.show({"name": args.name, "deleted": True}, f"schedule {args.name} deleted")
        return EXIT_OK
    made = client.pause_schedule(args.name) if args.action == "pause" else client.resume_schedule(args.name)
    output.show(made, f"schedule {args.name} {'paused' if made['paused'] else 'active'}")
    return EXIT_OK


def _usage(message: str) -> int:
    print(f"{PROG}: error: {message} (see --help)", file=sys.stderr)
    return EXIT_USAGE


def describe(exc: JobServerError) -> str:
    """One line for an error, naming each bad field of a validation error."""
    text = str(exc)
    if isinstance(exc, ClientError):
        # a success that is not JSON comes from another server: no "error" that says 200
        title = (exc.problem or {}).get("title") or (
            "HTTP error" if (exc.status_code or 0) >= 300 else "Not JSON"
        )
        text = f"{title} ({exc.status_code}): {text}"
    errors = [e for e in getattr(exc, "errors", None) or [] if isinstance(e, dict)]
    fields = field_errors_text(errors)
    said = all(str(e.get("msg")) in text for e in errors)  # a detail that quotes its one error
    if fields and not said and not isinstance(exc, WebhookURLError):
        text += f" ({fields})"
    return " ".join(text.split())


def _exit_code(exc: JobServerError) -> int:
    status = getattr(exc, "status_code", None)
    if isinstance(exc, WaitTimeoutError):
        return EXIT_TIMED_OUT
    if isinstance(exc, UNAVAILABLE_ERRORS) or status == 503:
        return EXIT_UNREACHABLE
    return EXIT_USAGE if isinstance(exc, USAGE_ERRORS) or status in (400, 413, 422) else EXIT_FAILED


def main(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> int:
    """Entry point of the client subcommands (`argv` starts with the subcommand); the exit code."""
    env = os.environ if environ is None else environ
    try:
        args = build_parser().parse_args(list(argv))
    except SystemExit as exc:  # argparse has printed usage or help
        return exc.code if isinstance(exc.code, int) else 2
    url = args.url or env.get("JOBSERVER_URL") or DEFAULT_URL
    api_key = args.api_key or env.get("JOBSERVER_API_KEY") or None
    try:
        with Client(url, api_key=api_key) as client:
            return run(client, args, Output(args.json))
    except WaitTimeoutError as exc:
        print(f"jobserver: timed out; job {exc.job_id} is still {exc.job.get('status')}", file=sys.stderr)
        return EXIT_TIMED_OUT
    except JobServerError as exc:
        print(f"jobserver: {describe(exc)}", file=sys.stderr)
        return _exit_code(exc)
    except KeyboardInterrupt:  # before any answer came: what was asked may or may not be done
        print("jobserver: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
