"""jobserver: an embedded, durable job server (REST API + worker threads over SQLite)."""

from jobserver.core.context import JobContext
from jobserver.core.errors import ChildFailed, Fail, JobServerError, Retry
from jobserver.core.tasks import task
from jobserver.core.version import package_version

__all__ = ["ChildFailed", "Fail", "JobContext", "JobServerError", "Retry", "task"]
__version__ = package_version()
