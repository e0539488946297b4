"""jobserver: an embedded, durable job server (REST API + worker threads over SQLite).

The public names load on first use: the command-line client imports this package too, and
should start without the server's parts (pydantic models, the lifecycle, the task registry)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jobserver.core.addresses import AddressRefused, check_address, public_addresses
    from jobserver.core.context import JobContext
    from jobserver.core.errors import ChildFailed, Fail, JobServerError, Retry, Timeout
    from jobserver.core.limits import Concurrency, Rate
    from jobserver.core.tasks import task

__all__ = [
    "AddressRefused",
    "ChildFailed",
    "Concurrency",
    "Fail",
    "JobContext",
    "JobServerError",
    "Rate",
    "Retry",
    "Timeout",
    "check_address",
    "public_addresses",
    "task",
]
_HOMES = {
    "AddressRefused": "jobserver.core.addresses",
    "ChildFailed": "jobserver.core.errors",
    "Concurrency": "jobserver.core.limits",
    "Fail": "jobserver.core.errors",
    "JobContext": "jobserver.core.context",
    "JobServerError": "jobserver.core.errors",
    "Rate": "jobserver.core.limits",
    "Retry": "jobserver.core.errors",
    "Timeout": "jobserver.core.errors",
    "check_address": "jobserver.core.addresses",
    "public_addresses": "jobserver.core.addresses",
    "task": "jobserver.core.tasks",
}


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from jobserver.core.version import package_version

        value: Any = package_version()
    elif name in _HOMES:
        value = getattr(importlib.import_module(_HOMES[name]), name)
    else:
        raise AttributeError(f"module 'jobserver' has no attribute {name!r}")
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return [*__all__, "__version__"]
