"""A fake resolver for tests: no test reaches real DNS."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

_real_getaddrinfo = socket.getaddrinfo


def fake_getaddrinfo(names: dict[str, list[str]], localhost: bool = False) -> Callable[..., list[Any]]:
    """getaddrinfo where `names` map to address lists, numeric hosts resolve for real (no
    network), `localhost` comes from /etc/hosts when allowed, and any other name fails."""

    def resolve(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        if host in names:
            return [
                (
                    socket.AF_INET6 if ":" in ip else socket.AF_INET,
                    socket.SOCK_STREAM,
                    socket.IPPROTO_TCP,
                    "",
                    (ip, port, 0, 0) if ":" in ip else (ip, port),
                )
                for ip in names[host]
            ]
        if localhost and host == "localhost":
            return _real_getaddrinfo(host, port, *args, **kwargs)
        kwargs["flags"] = kwargs.get("flags", 0) | socket.AI_NUMERICHOST
        return _real_getaddrinfo(host, port, *args, **kwargs)

    return resolve
