"""SSRF guard for webhook URLs: which addresses a webhook may be sent to.

Owns URL screening (scheme, host, no userinfo) and the webhook settings'
exceptions: `[webhooks] allow_private` lifts the rule, `allow_hosts` names
exceptions. The rule itself (a webhook must not reach an address that is not
globally routable) is `jobserver.core.addresses`, shared with tasks that fetch
URLs a client gave.

Callers check a URL when a job is submitted (fast refusal with 422) and again
right before each delivery attempt, then connect to one of the returned
addresses rather than resolving the name a second time (DNS rebinding). Both
go through one `WebhookGuard`, built with the settings' exceptions and the
server's own listening address: a webhook never calls the server's own API
(a delivery that cancels another job), whatever the exceptions allow.

A refusal names only the host the client gave, never the address it resolved
to: the problem document goes back to the client, and echoing internal DNS
answers would let anyone map the private network through the API. The address
is logged at DEBUG for the operator.

Resolving a name blocks on DNS: call it from a worker thread, never the event loop.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from jobserver.core.addresses import AddressRefused, check_address, resolve
from jobserver.core.addresses import IPAddress as IPAddress  # the type of what check_webhook_url returns
from jobserver.core.errors import WebhookURLError

log = logging.getLogger(__name__)

ALLOWED_SCHEMES = ("http", "https")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def split_webhook_url(url: str) -> tuple[str, str, int]:
    """Screen a URL's form and return (scheme, host, port); raises WebhookURLError.

    `host` is lower-case, without brackets for IPv6; `port` defaults by scheme.
    """
    if url != url.strip():
        raise WebhookURLError(url, "spaces around the URL")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookURLError(url, f"malformed URL ({exc})") from exc
    if port == 0:
        raise WebhookURLError(url, "port 0 cannot be connected to")
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise WebhookURLError(url, f"scheme must be http or https, not {scheme or 'missing'!r}")
    if "@" in parts.netloc:
        raise WebhookURLError(url, "credentials in the URL (user:pass@) are not allowed")
    host = parts.hostname
    if not host:
        raise WebhookURLError(url, "the URL has no host")
    return scheme, host, port if port is not None else _DEFAULT_PORTS[scheme]


def _not_public_reason(host: str) -> str:
    """Why a host is refused, naming the host as given and never an address it resolved to."""
    return (
        f"{host} is not a public address (it is, or resolves to, a private or internal one); "
        "an operator can permit it with [webhooks] allow_hosts or allow_private"
    )


def check_webhook_url(url: str, allow_private: bool, allow_hosts: Sequence[str]) -> list[IPAddress]:
    """Screen `url` and resolve its host; return its addresses or raise WebhookURLError.

    The URL is refused when any address it resolves to is forbidden, unless
    `allow_private` is set or the host or that address is in `allow_hosts`.
    """
    _scheme, host, port = split_webhook_url(url)
    try:
        addresses = resolve(host, port)
    except (OSError, UnicodeError) as exc:
        raise WebhookURLError(url, "host does not resolve") from exc
    if not addresses:
        raise WebhookURLError(url, "host does not resolve")
    if allow_private:
        return addresses
    for ip in addresses:
        try:
            check_address(host, ip, allow_hosts)
        except AddressRefused:
            log.debug("webhook URL refused: %s resolves to %s", host, ip, extra={"action": "webhook_refused"})
            raise WebhookURLError(url, _not_public_reason(host)) from None
    return addresses


@dataclass(frozen=True)
class WebhookGuard:
    """Where webhooks may go: `check_webhook_url` with the settings' exceptions, and never the
    server's own API, at `api_host`:`api_port` (a host of 0.0.0.0 or ::: every local address);
    None for either: no API to keep out (a sender without a server)."""

    allow_private: bool
    allow_hosts: tuple[str, ...]
    api_host: str | None = None
    api_port: int | None = None

    def check(self, url: str) -> list[IPAddress]:
        """Screen `url` and resolve its host; return its addresses or raise WebhookURLError."""
        addresses = check_webhook_url(url, self.allow_private, self.allow_hosts)
        _scheme, host, port = split_webhook_url(url)
        if port == self.api_port and any(self._reaches_api(ip) for ip in addresses):
            authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            log.debug("webhook URL refused: %s is this server's API", authority,
                      extra={"action": "webhook_refused"})  # fmt: skip
            raise WebhookURLError(url, f"{authority} is this server's own API, which a webhook may not call")
        return addresses

    def _reaches_api(self, ip: IPAddress) -> bool:
        """True when a connection to `ip` on the API's port would reach the API."""
        target = _plain(ip)
        if target.is_unspecified:
            return True  # connecting to 0.0.0.0 or :: reaches this machine
        if self.api_host is None or self.api_port is None:
            return False
        try:
            listening = [_plain(a) for a in resolve(self.api_host, self.api_port)]
        except (OSError, UnicodeError):
            return False
        if any(a.is_unspecified for a in listening):
            return _is_local(target)
        return target in listening


def _plain(ip: IPAddress) -> IPAddress:
    """`ip` without an IPv6 zone, and an IPv4-mapped address as its IPv4 address."""
    bare = ipaddress.ip_address(str(ip).split("%", 1)[0])
    if isinstance(bare, ipaddress.IPv6Address) and bare.ipv4_mapped is not None:
        return bare.ipv4_mapped
    return bare


def _is_local(ip: IPAddress) -> bool:
    """True when `ip` is an address of this machine: only those can be bound to."""
    if ip.is_loopback:
        return True
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((str(ip), 0))
    except OSError:
        return False
    return True
