"""SSRF guard for webhook URLs: which addresses a webhook may be sent to.

Owns URL screening (scheme, host, no userinfo), name resolution, and the rule
that a webhook must not reach an address that is not globally routable
(loopback, private, link-local, CGNAT, multicast, reserved, ... including
their IPv4-mapped, IPv4-compatible, 6to4 and NAT64 IPv6 forms) unless the
operator allowed it with `[webhooks] allow_private` or `allow_hosts`.

Callers check a URL when a job is submitted (fast refusal with 422) and again
right before each delivery attempt, then connect to one of the returned
addresses rather than resolving the name a second time (DNS rebinding).

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
from urllib.parse import urlsplit

from jobserver.core.errors import WebhookURLError

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOWED_SCHEMES = ("http", "https")
_DEFAULT_PORTS = {"http": 80, "https": 443}
# 100.64.0.0/10 (RFC 6598) is named here because older Pythons do not count it
# as private; `is_global` already excludes it, this keeps the rule explicit.
_SHARED_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, if it is one of the wrapping forms."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _SIX_TO_FOUR:
        return ip.sixtofour
    # IPv4-compatible (::a.b.c.d, deprecated); :: and ::1 are themselves, not wrappers.
    if int(ip) >> 32 == 0 and int(ip) > 1:
        return ipaddress.IPv4Address(int(ip))
    return None


def is_forbidden_ip(ip: IPAddress) -> bool:
    """True when `ip` is not a globally routable unicast address."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            if is_forbidden_ip(embedded):
                return True
            # Mapped and NAT64 forms reach exactly the embedded IPv4 host, so
            # a public one is as good as the IPv4 address itself. 6to4 and
            # IPv4-compatible forms fall through to the IPv6 rules below.
            if ip.ipv4_mapped is not None or ip in _NAT64:
                return False
        if ip.is_site_local:
            return True
    elif ip in _SHARED_CGNAT:
        return True
    return (
        not ip.is_global
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_unspecified
        or ip.is_reserved
    )


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to (IP literals too), in resolver order, without duplicates.

    Raises `socket.gaierror` (an `OSError`) or `UnicodeError` when it does not resolve.
    """
    host = host.removeprefix("[").removesuffix("]")
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    found: list[IPAddress] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]))
        if ip not in found:
            found.append(ip)
    return found


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


def _normalize_host(name: str) -> str:
    return name.strip().lower().removeprefix("[").removesuffix("]").rstrip(".")


def _allowed_by_list(host: str, ip: IPAddress, allow_hosts: Sequence[str]) -> bool:
    """True when `host` or `ip` is named in allow_hosts (a name, an IP, or a CIDR network)."""
    bare_ip = ipaddress.ip_address(str(ip).split("%", 1)[0])
    candidates: list[IPAddress] = [bare_ip]
    if isinstance(bare_ip, ipaddress.IPv6Address) and bare_ip.ipv4_mapped is not None:
        candidates.append(bare_ip.ipv4_mapped)  # ::ffff:127.0.0.1 is 127.0.0.1
    for entry in allow_hosts:
        name = _normalize_host(entry)
        if name == _normalize_host(host):
            return True
        try:
            network = ipaddress.ip_network(name, strict=False)
        except ValueError:
            continue
        if any(c.version == network.version and c in network for c in candidates):
            return True
    return False


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
        if is_forbidden_ip(ip) and not _allowed_by_list(host, ip, allow_hosts):
            log.debug("webhook URL refused: %s resolves to %s", host, ip, extra={"action": "webhook_refused"})
            raise WebhookURLError(url, _not_public_reason(host))
    return addresses
