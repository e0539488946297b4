"""jobserver: an embedded, durable job server (REST API + worker threads over SQLite)."""

from jobserver.core.context import JobContext
from jobserver.core.errors import Fail, JobServerError, Retry
from jobserver.core.limits import Concurrency, Rate
from jobserver.core.tasks import task

__all__ = ["Concurrency", "Fail", "JobContext", "JobServerError", "Rate", "Retry", "task"]
__version__ = "0.1.0"
