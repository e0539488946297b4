"""Logging setup: plain text or one JSON object per line. Only the CLI calls it."""

from __future__ import annotations

import logging
import sys
import threading
from types import TracebackType

import orjson

from jobserver.core.clock import rfc3339

_EXTRA = ("job_id", "action")


class JSONFormatter(logging.Formatter):
    """One JSON object per line, with `job_id` and `action` when the record has them."""

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "at": rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in _EXTRA:
            value = getattr(record, key, None)
            if value is not None:
                data[key] = value
        if record.exc_info:
            data["traceback"] = self.formatException(record.exc_info)
        return orjson.dumps(data).decode()


class TextFormatter(logging.Formatter):
    """Readable lines; the job id goes in brackets when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        job = getattr(record, "job_id", None)
        record.job_part = f" [{job}]" if job else ""
        return super().format(record)


def configure(level: str, fmt: str) -> None:
    """Send our logs (and uvicorn's) to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s%(job_part)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("huey").setLevel(logging.WARNING)
    logging.getLogger("peewee").setLevel(logging.INFO)  # "debug" means ours, not every SQL statement
    # httpx logs every webhook request at INFO with its whole URL: a receiver's token in the query
    # would land in the log on every attempt. The sender logs each attempt itself, without the URL.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # warnings and uncaught exceptions go through the handler too, so every line has the chosen format
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_thread_uncaught


def _log_uncaught(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    logging.getLogger("jobserver").critical(
        "uncaught exception", exc_info=(exc_type, exc, tb), extra={"action": "uncaught"}
    )


def _log_thread_uncaught(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("jobserver").critical(
        "uncaught exception in thread %s",
        name,
        extra={"action": "uncaught"},
        exc_info=(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback),
    )
