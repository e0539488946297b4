"""Who may call what: bearer API keys, and the paths open without one.

The rule for open paths (`is_open`) is the one the auth layer applies and the one
`/openapi.json` states, so the document marks exactly the routes that answer
without a key. Imports nothing of the app but the problem documents.
"""

from __future__ import annotations

import hmac
from collections.abc import Collection

from starlette.types import ASGIApp, Receive, Scope, Send

from jobserver.http.problems import problem

DASHBOARD_PAGE = "/"  # the static page is always open: it asks for a key itself
OPEN_PREFIXES = ("/problems/",)  # pages that explain the problem types: documentation, no data


def is_open(open_paths: Collection[str], path: str) -> bool:
    """True when a request for `path` needs no key: one of `auth.open_paths` (exactly, not
    as a prefix), the dashboard's page, or a problem type's page."""
    return path in open_paths or path == DASHBOARD_PAGE or path.startswith(OPEN_PREFIXES)


class AuthMiddleware:
    """Bearer API keys, compared in constant time; `auth.open_paths`, the dashboard page and the
    problem pages stay open."""

    def __init__(self, app: ASGIApp, api_keys: tuple[str, ...], open_paths: tuple[str, ...]) -> None:
        self.app = app
        self.keys = [k.encode() for k in api_keys]
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not self.keys or is_open(self.open_paths, path):
            await self.app(scope, receive, send)
            return
        # HTTP allows one Authorization header: with two, a proxy may have checked the other
        # one, so neither counts (a 401) rather than the last silently winning
        sent = [value for name, value in scope["headers"] if name == b"authorization"]
        header = sent[0] if len(sent) == 1 else b""
        token = header[7:].strip() if header[:7].lower() == b"bearer " else b""
        matched = False
        for key in self.keys:  # compare against every key: timing does not reveal which matched
            matched |= hmac.compare_digest(token, key)
        if not matched:
            response = problem(
                401, "unauthorized", "Unauthorized", "send a valid API key as 'Authorization: Bearer <key>'"
            )
            response.headers["WWW-Authenticate"] = 'Bearer realm="jobserver"'
            await response(scope, receive, send)
            return
        scope["jobserver.api_key"] = token.decode()
        await self.app(scope, receive, send)
