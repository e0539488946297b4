"""The Python clients of a jobserver: `Client` (sync) and `AsyncClient`, and the CLI's commands."""

from jobserver.client.sdk import AsyncClient, Client

__all__ = ["AsyncClient", "Client"]
