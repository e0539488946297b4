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
answers, unless it points a name of its own at this machine (DNS rebinding): then the browser
sees the server as the page's own origin. So an open server (no API keys, which such a page
does not have) answers only a `Host` that names this machine or one of `server.allowed_hosts`,
for every method. Imports nothing of the app but the problem documents.
"""

from __future__ import annotations

import ipaddress

from starlette.types import ASGIApp, Receive, Scope, Send

from jobserver.http.problems import problem

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
SAME_ORIGIN = (b"same-origin", b"none")
HOSTS_REMEMBERED = 256  # distinct Host values whose verdict is kept (a client sending many gets none kept)


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


def host_name(host: bytes) -> str:
    """The name or address of a `Host` header, without its port or an IPv6 address's brackets."""
    text = host.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[1 : text.find("]")] if "]" in text else text[1:]
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


def names_this_machine(name: str) -> bool:
    """`localhost`, a name under `.localhost` (RFC 6761: always this machine), or a loopback address."""
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class CrossSiteGuard:
    """Refuses an unsafe request that a browser sent from another site's page (403), and, on an
    open server (`open_hosts` given), any request whose `Host` is neither this machine nor one
    of `open_hosts` (403)."""

    def __init__(self, app: ASGIApp, open_hosts: frozenset[str] | None = None) -> None:
        self.app = app
        self.open_hosts = None if open_hosts is None else frozenset(h.lower() for h in open_hosts)
        self._answered: dict[bytes, str | None] = {}  # a Host seen before: its verdict (few differ)

    def _host_refused(self, headers: list[tuple[bytes, bytes]]) -> str | None:
        if self.open_hosts is None or "*" in self.open_hosts:
            return None
        host = next((value for name, value in headers if name == b"host"), None)
        if host is None:
            return None  # not a browser's request: every browser sends Host
        try:
            return self._answered[host]
        except KeyError:
            pass
        name = host_name(host)
        refused = None if names_this_machine(name) or name in self.open_hosts else name
        if len(self._answered) < HOSTS_REMEMBERED:
            self._answered[host] = refused
        return refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refused_host = self._host_refused(scope["headers"])
            if refused_host is not None:
                detail = (
                    f"Host {refused_host[:200]!r} is not this machine: an open server (no API keys) "
                    "answers only localhost, 127.0.0.1, ::1 and the names in server.allowed_hosts"
                )
                await problem(403, "host-not-allowed", "Host not allowed", detail)(scope, receive, send)
                return
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
