"""Command line: argv -> Settings -> logging -> task modules -> runtime, or a client subcommand.

`python -m jobserver [--config PATH] [--host H] [--port P]` (or the installed
`jobserver` command) serves; the client subcommands (submit, get, wait, follow, logs,
list, cancel, retry, delete, webhooks, tasks, schedules, pause, resume, stats, limits) live in
`jobserver.client.commands`. A start that cannot work prints one `jobserver: ...`
line, never a traceback, and exits with the code of its cause (README, "Start-up
checks and exit codes"): 1 cannot start (port, data directory or lock file, a damaged database,
anything unforeseen), 2 bad configuration or task modules, 3 the SQLite file is
in use by another server. A drained stop exits 0; a second signal exits 1 at once.

The server's parts (config models, task registry, runtime) are imported only by the commands
that use them, so a client command starts in about half the time.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus, urlsplit, urlunsplit

from jobserver.core.version import package_version

if TYPE_CHECKING:
    from jobserver.core.config import Settings
    from jobserver.core.tasks import Registry

log = logging.getLogger(__name__)
CLIENT_COMMANDS = (
    "submit", "get", "wait", "follow", "logs", "list", "cancel", "retry", "delete", "webhooks", "signal",
    "tasks", "schedules", "pause", "resume", "stats", "limits",
)  # fmt: skip


def serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jobserver",
        description="Run the job server. Client commands: "
        + ", ".join(CLIENT_COMMANDS)
        + " (see `python -m jobserver submit --help`); `secret` prints the webhook signing secret.",
    )
    parser.add_argument("--config", help="path of config.toml (default: ./config.toml if present)")
    parser.add_argument("--host", help="address to listen on (overrides server.host)")
    parser.add_argument("--port", type=int, help="port to listen on (overrides server.port)")
    parser.add_argument("--version", action=_PrintVersion)
    return parser


class _PrintVersion(argparse.Action):
    """`--version`: the installed version is read only when asked (reading it costs every start)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit", **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        print(f"jobserver {package_version()}")
        parser.exit()


def _client_first(args: list[str]) -> list[str]:
    """Accept the client's global options before the command: `--url U submit ...`."""
    i = 0
    while i < len(args) and (
        args[i] in ("--url", "--api-key", "--json") or args[i].startswith(("--url=", "--api-key="))
    ):
        i += 2 if args[i] in ("--url", "--api-key") else 1
    if 0 < i < len(args) and args[i] in CLIENT_COMMANDS:
        return [args[i], *args[:i], *args[i + 1 :]]
    return args


def log_auth(settings: Settings) -> None:
    """Say at start whether auth is on and how many keys there are; never the keys."""
    count = len(settings.auth.api_keys)
    if count:
        log.info("auth on: %d API key%s", count, "" if count == 1 else "s", extra={"action": "auth"})
    else:
        log.info("auth off: no API keys are configured, every route is open", extra={"action": "auth"})


def database_for_log(url: str) -> str:
    """`database.url` as the start-up line shows it: a PostgreSQL URL without its user and
    password, and with the value of a password given as a query parameter (libpq takes
    `?password=` and `?sslpassword=` too) replaced by `REDACTED`."""
    parts = urlsplit(url)
    if not parts.scheme.startswith("postgres"):
        return url
    query = "&".join(
        f"{item.partition('=')[0]}=REDACTED"
        if unquote_plus(item.partition("=")[0]).strip().lower() in _PASSWORD_PARAMETERS
        else item
        for item in parts.query.split("&")
        if item
    )
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, query, parts.fragment))


_PASSWORD_PARAMETERS = ("password", "sslpassword")


def load_tasks(settings: Settings) -> Registry:
    """Import the task modules with the working directory first on sys.path, as `python -m` has it,
    so the installed `jobserver` command finds ./my_tasks.py too."""
    from jobserver.core.tasks import Registry

    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    return Registry.from_modules(settings.tasks.modules)


def print_secret(argv: list[str]) -> int:
    """`python -m jobserver secret [--config PATH]`: the webhook signing secret receivers need,
    from the config or, when it is generated, from the database (read, never created)."""
    parser = argparse.ArgumentParser(
        prog="python -m jobserver secret", description="Print the webhook signing secret."
    )
    parser.add_argument("--config", help="path of config.toml (default: ./config.toml if present)")
    args = parser.parse_args(argv)
    from jobserver.core.config import load_settings
    from jobserver.core.errors import ConfigError, StorageError

    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"jobserver: {exc}", file=sys.stderr)
        return 2
    if settings.webhooks.secret:
        print(settings.webhooks.secret)
        return 0
    import peewee as pw

    from jobserver.storage.models import open_database
    from jobserver.webhooks.sender import stored_secret

    path = settings.sqlite_path()
    if path is not None and not path.exists():
        print(f"jobserver: no database at {path} yet: the secret is made on the first start", file=sys.stderr)
        return 1
    d = settings.database
    try:
        db = open_database(d.url, path, d.synchronous, d.busy_timeout)
        # a database no server has started on yet has no tables: the same answer as a missing file
        secret = stored_secret(db, settings.is_postgres) if db.table_exists("meta") else None
        db.close()
    except (StorageError, pw.DatabaseError) as exc:
        print(f"jobserver: cannot read the secret: {exc}", file=sys.stderr)
        return 1
    if secret is None:
        print(
            "jobserver: no secret in the database yet: the secret is made on the first start", file=sys.stderr
        )
        return 1
    print(secret)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args_list = _client_first(list(sys.argv[1:] if argv is None else argv))
    if args_list and args_list[0] in CLIENT_COMMANDS:
        from jobserver.client.commands import main as client_main

        return client_main(args_list)
    if args_list and args_list[0] == "secret":
        return print_secret(args_list[1:])
    if args_list and args_list[0] == "serve":
        args_list = args_list[1:]
    return serve(args_list)


def serve(args_list: list[str]) -> int:
    """Serve until stopped; the exit code."""
    from jobserver.core.config import load_settings
    from jobserver.core.errors import ConfigError, DatabaseInUseError, StartStoppedError, StorageError
    from jobserver.core.schedules import check_configured

    args = serve_parser().parse_args(args_list)
    try:
        settings = load_settings(args.config, overrides={"server.host": args.host, "server.port": args.port})
    except ConfigError as exc:
        print(f"jobserver: {exc}", file=sys.stderr)
        return 2
    from jobserver import logs

    logs.configure(settings.server.log_level, settings.server.log_format)
    json_lines = settings.server.log_format == "json"

    def refuse(reason: str) -> None:
        """Say why the start ends in one line on stderr: `jobserver: ...`, or with JSON logs a
        log line like every other (ERROR, action `start_failed`), so a log shipper that parses
        each line as JSON reads this one too."""
        if json_lines:
            log.error("%s", reason, extra={"action": "start_failed"})
        else:
            print(f"jobserver: {reason}", file=sys.stderr)

    log_auth(settings)
    try:
        registry = load_tasks(settings)  # before the database is touched: a start that cannot work stops here
        check_configured(settings.schedules, registry, settings.server.max_args_bytes)
    except ConfigError as exc:
        log.debug("the task modules cannot be loaded", exc_info=exc.__cause__ or exc)
        refuse(str(exc))
        return 2
    from jobserver.runtime import Runtime, bind_listener

    host, port = settings.server.host, settings.server.port
    try:
        sock = bind_listener(host, port)  # a server that cannot serve never claims a job
    except OSError as exc:
        refuse(f"cannot start: cannot listen on {host}:{port}: {exc.strerror or exc}")
        return 1
    runtime = Runtime(settings, registry=registry)
    for sig in (signal.SIGTERM, signal.SIGINT):  # while starting; serving installs its own
        signal.signal(sig, lambda sig, frame: runtime.signal_received(sig))
    try:
        runtime.open()
    except StartStoppedError as exc:
        sock.close()
        log.info("%s: not started", exc, extra={"action": "stopped"})
        return 0
    except DatabaseInUseError as exc:
        sock.close()
        refuse(f"cannot start: {exc}")
        return 3
    except ConfigError as exc:
        sock.close()
        refuse(str(exc))
        return 2
    except (StorageError, ImportError) as exc:
        sock.close()
        refuse(f"cannot start: {exc}")
        return 1
    except Exception as exc:  # unforeseen, and still one line: the traceback goes to the DEBUG log
        sock.close()
        log.debug("the start failed", exc_info=exc)
        refuse(f"cannot start: {type(exc).__name__}: {exc}")
        return 1
    log.info(
        "serving on http://%s:%d (database %s)",
        f"[{settings.server.host}]" if ":" in settings.server.host else settings.server.host,  # IPv6
        settings.server.port,
        database_for_log(settings.database.url),
        extra={"action": "start"},
    )
    runtime.serve(sock)
    return 0
