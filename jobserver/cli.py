"""Command line: argv -> Settings -> logging -> runtime, or a client subcommand.

`python -m jobserver [--config PATH] [--host H] [--port P]` serves; the client
subcommands (submit, get, wait, list, cancel, retry, tasks) live in `cli_client`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from jobserver.core.config import load_settings
from jobserver.core.errors import ConfigError, DatabaseInUseError, StorageError

log = logging.getLogger(__name__)
CLIENT_COMMANDS = ("submit", "get", "wait", "list", "cancel", "retry", "tasks")


def serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jobserver",
        description="Run the job server. Client commands: "
        + ", ".join(CLIENT_COMMANDS)
        + " (see `python -m jobserver submit --help`).",
    )
    parser.add_argument("--config", help="path of config.toml (default: ./config.toml if present)")
    parser.add_argument("--host", help="address to listen on (overrides server.host)")
    parser.add_argument("--port", type=int, help="port to listen on (overrides server.port)")
    return parser


def _client_first(args: list[str]) -> list[str]:
    """Accept the client's global options before the command: `--url U submit ...`."""
    i = 0
    while i + 1 < len(args) and args[i] in ("--url", "--api-key"):
        i += 2
    if 0 < i < len(args) and args[i] in CLIENT_COMMANDS:
        return [args[i], *args[:i], *args[i + 1 :]]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args_list = _client_first(list(sys.argv[1:] if argv is None else argv))
    if args_list and args_list[0] in CLIENT_COMMANDS:
        from jobserver.client.commands import main as client_main

        return client_main(args_list)
    if args_list and args_list[0] == "serve":
        args_list = args_list[1:]
    args = serve_parser().parse_args(args_list)
    try:
        settings = load_settings(args.config, overrides={"server.host": args.host, "server.port": args.port})
    except ConfigError as exc:
        print(f"jobserver: {exc}", file=sys.stderr)
        return 2
    from jobserver import logs
    from jobserver.runtime import Runtime, bind_listener

    logs.configure(settings.server.log_level, settings.server.log_format)
    host, port = settings.server.host, settings.server.port
    try:
        sock = bind_listener(host, port)  # first: a server that cannot serve never claims a job
    except OSError as exc:
        print(
            f"jobserver: cannot start: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr
        )
        return 1
    runtime = Runtime(settings)
    try:
        runtime.open()
    except DatabaseInUseError as exc:
        sock.close()
        print(f"jobserver: {exc}", file=sys.stderr)
        return 3
    except (StorageError, ImportError) as exc:
        sock.close()
        print(f"jobserver: cannot start: {exc}", file=sys.stderr)
        return 1
    log.info(
        "serving on http://%s:%d (database %s)",
        settings.server.host,
        settings.server.port,
        settings.database.url.split("@")[-1],
        extra={"action": "start"},
    )
    runtime.serve(sock)
    return 0
