"""The exception tree of jobserver.

    JobServerError
    ├── ConfigError                 a config value is missing or malformed (names the key)
    │   └── TaskDefinitionError     a @task function cannot be registered (names the task and parameter)
    ├── StorageError                the database failed; the driver error is kept as __cause__
    │   └── DatabaseInUseError      another server holds this SQLite file
    ├── JobNotFoundError            404: no job with that id
    ├── TaskNotFoundError           422: no task with that name
    ├── ScheduleNotFoundError       404: no schedule with that name
    ├── InvalidRequestError         422: a field of the request is wrong (carries `errors`)
    ├── MalformedRequestError       400: the request cannot be read at all (carries its problem `code`)
    ├── ConflictError               409: the job is not in a state that allows it
    │   ├── JobFinishedError        cancel of a finished job
    │   ├── JobNotFinishedError     delete of an unfinished job
    │   ├── JobNotRetryableError    retry of a job that is neither failed nor cancelled
    │   ├── IdempotencyInFlightError the first request with this key is still being handled
    │   ├── SignalConflictError     the signal was already sent to the job with another body
    │   └── SignalNotAwaitedError   the job's wait for the signal is over (timed out): it would never be read
    ├── IdempotencyMismatchError    422: the key was used with another body
    ├── DrainingError               503: the server is shutting down
    ├── StaleAttemptError           a write from an attempt that was already given up (fencing)
    ├── NotJSONSerializableError    a task returned or stepped a value that is not JSON
    ├── WebhookURLError             422: a webhook URL is refused (scheme, or a private address)
    ├── ServerUnavailableError      client side: no answer from the server (refused, reset, timed out)
    └── WaitTimeoutError            client side: a waited-on job is not finished in time (carries `job`)

Signals a task raises on purpose do not end in Error: `Retry`, `Fail`. `ChildFailed`
is raised by `ctx.gather` for a job it waited on that failed or was cancelled. `Cancelled`
is raised inside a task by `ctx.check_cancelled()` or injected into a sync task's
thread; `Timeout` is injected the same way when the deadline passes.
"""

from __future__ import annotations

from typing import Any

from jobserver.core.bounds import duration_s


class JobServerError(Exception):
    """Something went wrong in jobserver."""

    # set by the client on an error built from an HTTP answer
    status_code: int | None = None
    problem: dict[str, Any] | None = None
    retry_after: float | None = None

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as its message and attributes, rebuilt without calling `__init__` (whose
        arguments differ by class): an error crosses a process boundary whole
        (multiprocessing, concurrent.futures, a task queue), with its class and fields."""
        return (_rebuilt, (type(self), self.args), self.__dict__)


def _rebuilt(cls: type[JobServerError], args: tuple[Any, ...]) -> JobServerError:
    """An unpickled error: its class and message; pickle then restores its attributes."""
    return cls.__new__(cls, *args)


class ConfigError(JobServerError):
    """A configuration value is invalid."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"config {key}: {message}")


class TaskDefinitionError(ConfigError):
    """A @task function cannot be registered."""

    def __init__(self, task: str, param: str | None, message: str) -> None:
        self.task = task
        self.param = param
        where = f"task {task}" if param is None else f"task {task}: parameter {param}"
        JobServerError.__init__(self, f"{where}: {message}")
        self.key = "tasks.modules"


class StorageError(JobServerError):
    """The database failed."""


class StartStoppedError(JobServerError):
    """A signal asked the server to stop while it was still starting (waiting for its database)."""


class DatabaseInUseError(StorageError):
    """Another jobserver process already serves this SQLite file."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(
            f"another jobserver process is already using {path}; "
            "run one server per SQLite file (use PostgreSQL for several nodes)"
        )


class JobNotFoundError(JobServerError):
    """No job has this id."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"no job with id {job_id!r}")


class TaskNotFoundError(JobServerError):
    """No task is registered under this name."""

    def __init__(self, task: str) -> None:
        self.task = task
        super().__init__(f"no task named {task!r} is registered")


class ScheduleNotFoundError(JobServerError):
    """No schedule has this name."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no schedule named {name!r}")


class InvalidRequestError(JobServerError):
    """The request has invalid fields."""

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        self.errors = errors or []
        super().__init__(message)


def field_errors_text(errors: list[dict[str, Any]]) -> str:
    """`args.a: Input should be a valid integer; args.b: Field required` for the `errors` of an
    InvalidRequestError (the body's own errors by their message alone)."""
    parts = []
    for error in errors:
        where = ".".join(str(p) for p in error.get("loc", []) if p != "body")
        parts.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
    return "; ".join(parts)


class MalformedRequestError(JobServerError):
    """The request cannot be read: not JSON, or a header that is not what it must be."""

    def __init__(self, code: str, title: str, message: str) -> None:
        self.code = code
        self.title = title
        super().__init__(message)


class ConflictError(JobServerError):
    """The job is not in a state that allows this."""

    def __init__(self, job_id: str, status: str, message: str | None = None) -> None:
        self.job_id = job_id
        # as the API names it: a job delayed or held back by a limit is stored otherwise
        self.status = "pending" if status in ("scheduled", "blocked") else status
        super().__init__(message or f"job {job_id} is {self.status}: {(self.__doc__ or '').strip()}")


class JobFinishedError(ConflictError):
    """the job is already finished."""


class JobNotFinishedError(ConflictError):
    """only a finished job can be deleted."""


class JobNotRetryableError(ConflictError):
    """only a failed or cancelled job can be retried."""


class IdempotencyInFlightError(ConflictError):
    """A request with this Idempotency-Key is still being handled."""

    def __init__(self, key: str) -> None:
        self.key = key
        JobServerError.__init__(
            self, f"a request with Idempotency-Key {key!r} is still being handled; retry shortly"
        )
        self.job_id = ""
        self.status = "in_flight"


class SignalConflictError(ConflictError):
    """The signal was already sent to this job with a different body."""

    def __init__(self, job_id: str, status: str, name: str) -> None:
        self.name = name
        super().__init__(
            job_id, status, f"signal {name!r} was already sent to job {job_id} with another body"
        )


class SignalNotAwaitedError(ConflictError):
    """The job no longer waits for this signal: the call of that name already finished (a
    `wait_for` that timed out), so the signal would be kept and never read."""

    def __init__(self, job_id: str, status: str, name: str) -> None:
        self.name = name
        shown = "pending" if status in ("scheduled", "blocked") else status
        super().__init__(
            job_id,
            status,
            f"job {job_id} is {shown}: it no longer waits for signal {name!r} (its wait for it "
            "ended, timed out), so the signal would never be read",
        )


class IdempotencyMismatchError(JobServerError):
    """The Idempotency-Key was already used with a different request body."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"Idempotency-Key {key!r} was already used with a different request body")


class DrainingError(JobServerError):
    """The server is shutting down and accepts no new jobs."""


class StaleAttemptError(JobServerError):
    """This attempt was already given up; its write is refused."""

    def __init__(self, job_id: str, run_seq: int) -> None:
        self.job_id = job_id
        self.run_seq = run_seq
        super().__init__(f"attempt {run_seq} of job {job_id} is no longer current; write refused")


class NotJSONSerializableError(JobServerError):
    """A task result or step result is not JSON-serializable."""


class WebhookURLError(JobServerError):
    """The webhook URL is refused."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"webhook_url {url!r} is refused: {reason}")


class ServerUnavailableError(JobServerError):
    """The server could not be reached, or stopped answering; the transport error is kept as __cause__."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"cannot reach the jobserver at {url}: {reason}")


class WaitTimeoutError(JobServerError):
    """A job was not finished when the wait gave up; `job` is the job as last read."""

    def __init__(self, job: dict[str, Any], timeout_s: float) -> None:
        self.job = job
        self.job_id = str(job.get("id", ""))
        self.timeout_s = timeout_s
        super().__init__(f"job {self.job_id} is still {job.get('status')} after {timeout_s:g} s")


class Retry(Exception):
    """Raised by a task to ask for another attempt, after `delay` seconds if given."""

    def __init__(self, delay: float | None = None, message: str = "retry requested") -> None:
        self.delay = None if delay is None else duration_s(delay, "Retry's delay")
        super().__init__(message)


class Fail(Exception):
    """Raised by a task to fail the job at once, without further attempts."""


class Cancelled(BaseException):
    """The job was cancelled; raised inside the task. A BaseException so bare
    `except Exception` in task code does not swallow it."""


class Timeout(BaseException):
    """The attempt ran past its time limit; raised inside the task."""


class ChildFailed(Exception):
    """A job that `ctx.gather` waited on failed or was cancelled; `error` is its error object."""

    def __init__(self, job_id: str, error: dict[str, Any] | None, status: str = "failed") -> None:
        self.job_id = job_id
        self.error = error
        self.status = status
        message = (error or {}).get("message") or status
        super().__init__(f"job {job_id} {status}: {message}")
