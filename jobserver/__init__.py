"""jobserver: an embedded, durable job server (REST API + worker threads over SQLite)."""

from jobserver.core.context import JobContext
from jobserver.core.errors import ChildFailed, Fail, JobServerError, Retry
from jobserver.core.tasks import task

__all__ = ["ChildFailed", "Fail", "JobContext", "JobServerError", "Retry", "task"]
__version__ = "0.1.0"
