"""Which network addresses a request made on a client's behalf may reach.

A URL a client hands the server (a webhook's, a page a task fetches) must not
steer the server to itself, to the private network around it or to a cloud
metadata service: only globally routable unicast addresses are reachable
(loopback, private, link-local, CGNAT, multicast, reserved, ... are not,
including their IPv4-mapped, IPv4-compatible, 6to4 and NAT64 IPv6 forms),
unless an operator listed the host, the address or its network.

The policy lives here, below every layer, so the webhook guard and tasks (through
the public `jobserver` names) apply the same rule; each caller words its own refusal
and decides how to pin the connection to the checked address.

`AddressRefused` names only the host the client gave, never the address it
resolved to: the message goes back to the client, and echoing internal DNS
answers would let anyone map the private network. The address is kept on the
exception for the operator's logs.

Resolving a name blocks on DNS: call it from a worker thread, never the event loop.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# 100.64.0.0/10 (RFC 6598) is named here because older Pythons do not count it
# as private; `is_global` already excludes it, this keeps the rule explicit.
_SHARED_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")


class AddressRefused(ValueError):
    """A host is, or resolves to, an address that is not public and that no one allowed."""

    def __init__(self, host: str, address: IPAddress, advice: str = "") -> None:
        self.host = host
        self.address = address  # for the operator's logs only: never shown to the client
        message = f"{host} is not a public address (it is, or resolves to, a private or internal one)"
        super().__init__(f"{message}; {advice}" if advice else message)


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


def check_address(host: str, ip: IPAddress, allow_hosts: Sequence[str] = ()) -> None:
    """Raise AddressRefused unless `host`, at address `ip`, may be reached.

    Also the check of the address a connection was actually made to: a name can
    resolve to another address at connect time than it did when it was screened."""
    if is_forbidden_ip(ip) and not _allowed_by_list(host, ip, allow_hosts):
        raise AddressRefused(host, ip)


def public_addresses(host: str, port: int, allow_hosts: Sequence[str] = ()) -> list[IPAddress]:
    """Every address `host` resolves to, once each of them may be reached.

    A name with any refused address is refused (AddressRefused): which of its
    addresses a client library would pick is not ours to know. Raises `OSError`
    or `UnicodeError` when the host does not resolve.
    """
    addresses = resolve(host, port)
    for ip in addresses:
        check_address(host, ip, allow_hosts)
    return addresses
