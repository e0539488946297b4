"""The client subcommands of `python -m jobserver`: submit, get, wait, list, cancel, retry, signal,
tasks, schedules, pause, resume, stats.

`cancel` and `retry` take one job id, or filters (`--status`, `--task`, `--id`, or
`--all`) for every matching job, answering `{"count": n}`.

Each talks to a running server through `client.Client`, found through `--url`
or JOBSERVER_URL (default http://127.0.0.1:8000), with the key from `--api-key`
or JOBSERVER_API_KEY. Answers are pretty JSON on stdout; an error is one line
on stderr. Exit codes: 0 done; 1 a failed or cancelled job (`wait`,
`submit --wait`), a timeout, or any other error; 2 a usage or validation error
(bad flags, bad JSON, a 400, 413 or 422 from the server).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

import httpx

from jobserver.client.sdk import DEFAULT_URL, Client, ClientError
from jobserver.core.errors import (
    IdempotencyMismatchError,
    InvalidRequestError,
    JobServerError,
    TaskNotFoundError,
    WebhookURLError,
)
from jobserver.core.schemas import MAX_LIMIT

PROG = "python -m jobserver"
USAGE_ERRORS = (InvalidRequestError, TaskNotFoundError, WebhookURLError, IdempotencyMismatchError)


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error reported as one line on stderr (exit code 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parse_key_value(text: str) -> tuple[str, Any]:
    """`key=value` with the value parsed as JSON when it is JSON, else kept as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, like '{\"a\": 1}'")
    return value


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None


def _connection_options(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "--url", default=default, help=f"server URL (env JOBSERVER_URL, default {DEFAULT_URL})"
    )
    parser.add_argument("--api-key", default=default, help="API key (env JOBSERVER_API_KEY)")


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
    when.add_argument("--delay", type=float, metavar="S", help="run after S seconds")
    when.add_argument("--run-at", metavar="TIME", help="run at this RFC 3339 time")
    p.add_argument("--max-attempts", type=int, metavar="N")
    p.add_argument("--timeout", type=float, metavar="S", help="time limit of one attempt")
    p.add_argument("--webhook-url", metavar="URL", help="POSTed to when the job finishes")
    p.add_argument(
        "--idempotency-key", metavar="KEY", help="submitting again with this key returns the same job"
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="wait until the job is finished; exit 1 if it failed or was cancelled",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the client subcommands."""
    parser = Parser(prog=PROG, description="Talk to a running jobserver.")
    _connection_options(parser, None)
    common = Parser(add_help=False)
    # SUPPRESS: given after the subcommand, they win; absent there, the top-level value stays
    _connection_options(common, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_submit(sub.add_parser("submit", parents=[common], help="submit a job and print it"))

    p = sub.add_parser("get", parents=[common], help="print a job")
    p.add_argument("job_id", metavar="ID")
    p.add_argument(
        "--wait", type=float, metavar="S", help="hold up to S seconds (at most 60) until it is finished"
    )

    p = sub.add_parser(
        "wait",
        parents=[common],
        help="wait until a job is finished; exit 0 completed, 1 failed, cancelled or timed out",
    )
    p.add_argument("job_id", metavar="ID")
    p.add_argument("--timeout", type=float, metavar="S", help="give up after S seconds (default: never)")

    p = sub.add_parser("list", parents=[common], help="list jobs, newest first")
    p.add_argument("--status", choices=["pending", "running", "waiting", "completed", "failed", "cancelled"])
    p.add_argument("--task")
    p.add_argument("--parent", metavar="ID", help="only the children of job ID")
    p.add_argument("--limit", type=int, default=50, help=f"page size (default 50, at most {MAX_LIMIT})")
    p.add_argument("--cursor", help="next_cursor of the previous page")

    for name, text, statuses in (
        ("cancel", "cancel a job, or every job a filter matches", ["pending", "running"]),
        (
            "retry",
            "run a failed or cancelled job again, or every one a filter matches",
            ["failed", "cancelled"],
        ),
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
    p.add_argument("payload", metavar="JSON", nargs="?", type=_json_value, default=None, help="default: null")

    sub.add_parser("tasks", parents=[common], help="list the registered tasks")
    for name, text in (
        ("pause", "hold a task's pending jobs back"),
        ("resume", "let a paused task's jobs run"),
    ):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("task", metavar="TASK")
    p = sub.add_parser("schedules", parents=[common], help="list schedules, or pause, resume or delete one")
    p.add_argument("action", nargs="?", choices=["list", "pause", "resume", "delete"], default="list")
    p.add_argument("name", nargs="?", metavar="NAME", help="the schedule (for pause, resume, delete)")
    sub.add_parser("stats", parents=[common], help="counts by status and task; the last hour's throughput")
    return parser


def _print(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _finished_code(job: Mapping[str, Any]) -> int:
    """Exit code for a waited-on job: 0 completed, 1 failed, cancelled or still unfinished."""
    status = job.get("status")
    if status == "completed":
        return 0
    if status in ("failed", "cancelled"):
        error = job.get("error") or {}
        reason = f": {error.get('type')}: {error.get('message')}" if error else ""
        print(f"jobserver: job {job.get('id')} {status}{reason}", file=sys.stderr)
    else:
        print(f"jobserver: timed out; job {job.get('id')} is still {status}", file=sys.stderr)
    return 1


def _submit(client: Client, args: argparse.Namespace) -> int:
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
        print(
            f"jobserver: Idempotency-Key {args.idempotency_key!r} was used before; this is that job",
            file=sys.stderr,
        )
    if not args.wait:
        _print(job)
        return 0
    done = client.wait(job["id"])
    _print(done)
    return _finished_code(done)


def run(client: Client, args: argparse.Namespace) -> int:
    """Run one parsed subcommand; the exit code."""
    command = args.command
    if command == "submit":
        return _submit(client, args)
    if command == "get":
        _print(client.get(args.job_id, wait=args.wait))
    elif command == "wait":
        job = client.wait(args.job_id, timeout=args.timeout)
        _print(job)
        return _finished_code(job)
    elif command == "list":
        _print(
            client.list(
                status=args.status, task=args.task, limit=args.limit, cursor=args.cursor, parent=args.parent
            )
        )
    elif command in ("cancel", "retry"):
        return _cancel_or_retry(client, args)
    elif command == "signal":
        job = client.signal(args.job_id, args.name, args.payload)
        if job.replayed:
            print(f"jobserver: signal {args.name!r} was already sent with this payload", file=sys.stderr)
        _print(job)
    elif command == "tasks":
        _print({"tasks": client.tasks()})
    elif command in ("pause", "resume"):
        _print(client.pause_task(args.task) if command == "pause" else client.resume_task(args.task))
    elif command == "schedules":
        return _schedules(client, args)
    elif command == "stats":
        _print(client.stats())
    return 0


def _cancel_or_retry(client: Client, args: argparse.Namespace) -> int:
    """One job by id, or every job the filters match (`--all`: no filter)."""
    filters = args.status is not None or args.task is not None or args.ids is not None
    if args.job_id is not None:
        if filters or args.all:
            return _usage(f"{args.command}: give a job ID or filters, not both")
        _print(client.cancel(args.job_id) if args.command == "cancel" else client.retry(args.job_id))
        return 0
    if not filters and not args.all:
        return _usage(f"{args.command}: give a job ID, filters (--status, --task, --id), or --all")
    many = client.cancel_many if args.command == "cancel" else client.retry_many
    _print({"count": many(status=args.status, task=args.task, ids=args.ids)})
    return 0


def _schedules(client: Client, args: argparse.Namespace) -> int:
    if args.action == "list":
        _print({"schedules": client.schedules()})
        return 0
    if args.name is None:
        return _usage(f"schedules {args.action}: name the schedule")
    if args.action == "delete":
        client.delete_schedule(args.name)
        print(f"jobserver: schedule {args.name} deleted", file=sys.stderr)
    elif args.action == "pause":
        _print(client.pause_schedule(args.name))
    else:
        _print(client.resume_schedule(args.name))
    return 0


def _usage(message: str) -> int:
    print(f"{PROG}: error: {message} (see --help)", file=sys.stderr)
    return 2


def describe(exc: JobServerError) -> str:
    """One line for an error, naming each bad field of a validation error."""
    text = str(exc)
    if isinstance(exc, ClientError):
        text = f"{(exc.problem or {}).get('title') or 'HTTP error'} ({exc.status_code}): {text}"
    errors = getattr(exc, "errors", None) or []
    fields = [
        f"{'.'.join(str(p) for p in e.get('loc', []) if p != 'body')}: {e.get('msg')}"
        for e in errors
        if isinstance(e, dict)
    ]
    if fields and not isinstance(exc, WebhookURLError):
        text += " (" + "; ".join(fields) + ")"
    return " ".join(text.split())


def _exit_code(exc: JobServerError) -> int:
    status = getattr(exc, "status_code", None)
    return 2 if isinstance(exc, USAGE_ERRORS) or status in (400, 413, 422) else 1


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
            return run(client, args)
    except JobServerError as exc:
        print(f"jobserver: {describe(exc)}", file=sys.stderr)
        return _exit_code(exc)
    except httpx.TransportError as exc:
        print(f"jobserver: cannot reach the server at {url}: {exc or type(exc).__name__}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
