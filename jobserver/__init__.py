"""jobserver: an embedded, durable job server (REST API + worker threads over SQLite)."""

from .context import JobContext
from .errors import Fail, JobServerError, Retry
from .tasks import task

__all__ = ["JobContext", "Fail", "JobServerError", "Retry", "task"]
__version__ = "0.1.0"
