"""The cross-site request guard: a request a browser sends from another site's page
changes nothing here (cross-site request forgery).

A web page can make its visitor's browser send a POST to any address with no preflight
(`fetch(url, {method: "POST", mode: "no-cors"})`, a form), and an open server (no API keys)
would act on it. So a request with an unsafe method (POST, PUT, PATCH, DELETE) is refused
with a 403 problem when the browser says it comes from elsewhere:

- `Sec-Fetch-Site` (set by the browser, never by the page) other than `same-origin` or
  `none` (`cross-site`, `same-site`): refused; `same-origin` or `none`: taken, whatever
  `Origin` says (a reverse proxy may change the scheme and `Host` a browser saw);
- without it (older browsers; a plain-http address that is not this machine's), an `Origin`
  of `null` (a sandboxed or `file:` page) or whose host and port are not the request's
  `Host`: refused (the scheme is not compared: behind a proxy terminating TLS, https pages
  reach the server over http);
- neither header: not a browser (curl, the SDK, the CLI): taken.

Reads (GET, HEAD, OPTIONS) are never refused here: a cross-site page cannot read their
answers. Imports nothing of the app but the problem documents.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from jobserver.http.problems import problem

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
SAME_ORIGIN = (b"same-origin", b"none")


def cross_site(headers: list[tuple[bytes, bytes]]) -> str | None:
    """Why a request with these (lower-cased) headers comes from another site's page, or None."""
    site = origin = host = None
    for name, value in headers:
        if name == b"sec-fetch-site":
            site = value
        elif name == b"origin":
            origin = value
        elif name == b"host":
            host = value
    if site is not None:
        if site.strip().lower() in SAME_ORIGIN:
            return None
        return f"the browser sent it from another site's page (Sec-Fetch-Site: {_text(site)})"
    if origin is None:
        return None
    origin = origin.strip().lower()
    if origin == b"null":
        return "the browser sent it from a page with no origin (Origin: null)"
    _, sep, authority = origin.partition(b"://")
    if not sep or host is None or authority != host.strip().lower():
        return f"the browser sent it from another site's page (Origin: {_text(origin)})"
    return None


def _text(value: bytes) -> str:
    return value[:200].decode("latin-1")


class CrossSiteGuard:
    """Refuses an unsafe request that a browser sent from another site's page (403)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
            reason = cross_site(scope["headers"])
            if reason is not None:
                detail = (
                    f"{scope['method']} refused: {reason}; only this server's own pages, and clients "
                    "that are not browsers, may change anything"
                )
                response = problem(403, "cross-site-request", "Cross-site request refused", detail)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
