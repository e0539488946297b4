"""The Python clients of a jobserver: `Client` (sync) and `AsyncClient`, the errors they raise,
and the CLI's commands. The errors are the server's own classes, importable from here so that a
client needs one import path."""

from jobserver.client.protocol import ClientError, UnauthorizedError
from jobserver.client.sdk import AsyncClient, Client
from jobserver.core.errors import (
    ConflictError,
    DrainingError,
    IdempotencyInFlightError,
    IdempotencyMismatchError,
    InvalidRequestError,
    JobFinishedError,
    JobNotFinishedError,
    JobNotFoundError,
    JobNotRetryableError,
    JobServerError,
    ScheduleNotFoundError,
    ServerUnavailableError,
    SignalConflictError,
    SignalNotAwaitedError,
    StorageError,
    TaskNotFoundError,
    WaitTimeoutError,
    WebhookURLError,
)

__all__ = [
    "AsyncClient",
    "Client",
    "ClientError",
    "ConflictError",
    "DrainingError",
    "IdempotencyInFlightError",
    "IdempotencyMismatchError",
    "InvalidRequestError",
    "JobFinishedError",
    "JobNotFinishedError",
    "JobNotFoundError",
    "JobNotRetryableError",
    "JobServerError",
    "ScheduleNotFoundError",
    "ServerUnavailableError",
    "SignalConflictError",
    "SignalNotAwaitedError",
    "StorageError",
    "TaskNotFoundError",
    "UnauthorizedError",
    "WaitTimeoutError",
    "WebhookURLError",
]
