"""The SSRF guard: which webhook URLs are refused, and the operator's exceptions.

IP literals go through the real resolver (no network needed); host names are
answered by a fake `getaddrinfo`, so no test depends on outside DNS.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import socket
from collections.abc import Callable, Iterator

import pytest

from jobserver.core import addresses
from jobserver.core.addresses import AddressRefused
from jobserver.core.errors import WebhookURLError
from jobserver.webhooks import netguard
from tests.fakedns import fake_getaddrinfo

PUBLIC_V4 = "93.184.216.34"


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, list[str]]]:
    """A fake resolver: names map to address lists; literals resolve for real; others fail."""
    names: dict[str, list[str]] = {}

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo(names, localhost=True))
    yield names


FORBIDDEN_URLS = [
    "http://127.0.0.1/",
    "http://127.0.0.1:8000/hook",
    "http://localhost/",
    "http://LOCALHOST/",
    "http://[::1]/",
    "http://10.0.0.1/",
    "http://172.16.0.1/",
    "http://172.31.255.254/",
    "http://192.168.1.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://0.0.0.0/",
    "http://[::]/",
    "http://[::ffff:127.0.0.1]/",  # IPv4-mapped
    "http://[::ffff:169.254.169.254]/",
    "http://[::7f00:1]/",  # IPv4-compatible 127.0.0.1
    "http://[64:ff9b::a00:1]/",  # NAT64 of 10.0.0.1
    "http://[2002:c0a8:101::1]/",  # 6to4 of 192.168.1.1
    "http://2130706433/",  # decimal 127.0.0.1
    "http://0177.0.0.1/",  # octal
    "http://0x7f.1/",  # hex, short form
    "http://[fe80::1]/",
    "http://[fc00::1]/",
    "http://[fd12:3456::1]/",
    "http://[fec0::1]/",  # site-local
    "http://100.64.0.1/",  # shared CGNAT
    "http://224.0.0.1/",
    "http://[ff02::1]/",
    "http://240.0.0.1/",
    "http://255.255.255.255/",
    "https://127.0.0.1:8443/",
]


@pytest.mark.parametrize("url", FORBIDDEN_URLS)
def test_non_public_addresses_are_refused(dns: dict[str, list[str]], url: str) -> None:
    with pytest.raises(WebhookURLError) as info:
        netguard.check_webhook_url(url, allow_private=False, allow_hosts=[])
    assert info.value.url == url
    assert "not a public address" in info.value.reason


@pytest.mark.parametrize(
    "url",
    [
        f"http://{PUBLIC_V4}/",
        f"https://{PUBLIC_V4}:8443/hooks?x=1",
        "http://[2606:4700::1111]/",
        f"http://[::ffff:{PUBLIC_V4}]/",  # mapped public address reaches the public host
        "http://[64:ff9b::5db8:d822]/",  # NAT64 of 93.184.216.34
    ],
)
def test_public_addresses_are_allowed(dns: dict[str, list[str]], url: str) -> None:
    found = netguard.check_webhook_url(url, allow_private=False, allow_hosts=[])
    assert found and not any(addresses.is_forbidden_ip(ip) for ip in found)


def test_decimal_host_resolves_to_loopback() -> None:
    assert addresses.resolve("2130706433", 80) == [ipaddress.ip_address("127.0.0.1")]
    assert addresses.resolve("[::1]", 80) == [ipaddress.ip_address("::1")]


@pytest.mark.parametrize(
    ("address", "forbidden"),
    [
        ("127.0.0.1", True),
        ("10.255.0.1", True),
        ("100.127.255.255", True),
        ("100.128.0.1", False),
        ("169.254.169.254", True),
        ("192.0.2.1", True),  # documentation range
        ("8.8.8.8", False),
        ("::1", True),
        ("fe80::1", True),
        ("::ffff:10.0.0.1", True),
        ("::ffff:8.8.8.8", False),
        ("64:ff9b::7f00:1", True),
        ("64:ff9b::808:808", False),
        ("2002:a00:1::", True),
        ("2001:db8::1", True),  # documentation range
        ("2606:4700::1111", False),
    ],
)
def test_is_forbidden_ip(address: str, forbidden: bool) -> None:
    assert addresses.is_forbidden_ip(ipaddress.ip_address(address)) is forbidden


def test_allow_private_permits_everything_resolvable(dns: dict[str, list[str]]) -> None:
    for url in ["http://127.0.0.1:9000/", "http://localhost/", "http://[::1]/", "http://10.0.0.1/"]:
        assert netguard.check_webhook_url(url, allow_private=True, allow_hosts=[])


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9000/hook",
        "http://localhost:9000/hook",
        "http://LocalHost/",
        "http://2130706433/",  # matched by the literal IP it resolves to
        "http://[::ffff:127.0.0.1]/",
    ],
)
def test_allow_hosts_exceptions(dns: dict[str, list[str]], url: str) -> None:
    allow_hosts = ["127.0.0.1", "localhost"]
    assert netguard.check_webhook_url(url, allow_private=False, allow_hosts=allow_hosts)


@pytest.mark.parametrize(
    "url",
    ["http://10.0.0.1/", "http://[::1]/", "http://192.168.1.1/", "http://169.254.169.254/"],
)
def test_allow_hosts_does_not_open_other_addresses(dns: dict[str, list[str]], url: str) -> None:
    with pytest.raises(WebhookURLError):
        netguard.check_webhook_url(url, allow_private=False, allow_hosts=["127.0.0.1", "localhost"])


def test_allow_hosts_accepts_bracketed_ipv6_and_networks(dns: dict[str, list[str]]) -> None:
    assert netguard.check_webhook_url("http://[::1]/", False, ["[::1]"])
    assert netguard.check_webhook_url("http://10.1.2.3/", False, ["10.0.0.0/8"])
    with pytest.raises(WebhookURLError):
        netguard.check_webhook_url("http://192.168.0.1/", False, ["10.0.0.0/8"])


def test_host_name_matched_case_insensitively(dns: dict[str, list[str]]) -> None:
    dns["hooks.internal"] = ["10.0.0.7"]
    assert netguard.check_webhook_url("http://Hooks.Internal/x", False, ["HOOKS.internal"])
    with pytest.raises(WebhookURLError):
        netguard.check_webhook_url("http://hooks.internal/x", False, [])


def test_name_with_any_private_address_is_refused(dns: dict[str, list[str]]) -> None:
    dns["mixed.example.com"] = [PUBLIC_V4, "10.0.0.1"]
    dns["public.example.com"] = [PUBLIC_V4, "2606:4700::1111"]
    with pytest.raises(WebhookURLError, match=r"mixed\.example\.com is not a public address"):
        netguard.check_webhook_url("https://mixed.example.com/", False, [])
    assert netguard.check_webhook_url("https://public.example.com/", False, []) == [
        ipaddress.ip_address(PUBLIC_V4),
        ipaddress.ip_address("2606:4700::1111"),
    ]


def test_refusal_names_the_host_but_not_the_internal_address(
    dns: dict[str, list[str]], caplog: pytest.LogCaptureFixture
) -> None:
    dns["rel-internal.test"] = ["10.1.2.3"]
    with (
        caplog.at_level(logging.DEBUG, logger="jobserver.webhooks.netguard"),
        pytest.raises(WebhookURLError) as info,
    ):
        netguard.check_webhook_url("https://rel-internal.test/hook", False, [])
    assert "rel-internal.test" in info.value.reason
    assert "10.1.2.3" not in str(info.value)
    assert any("10.1.2.3" in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)


def test_unresolvable_host_is_refused(dns: dict[str, list[str]]) -> None:
    with pytest.raises(WebhookURLError) as info:
        netguard.check_webhook_url("https://no-such-host.invalid/", False, [])
    assert info.value.reason == "host does not resolve"


BAD_FORM: list[tuple[str, str]] = [
    (f"ftp://{PUBLIC_V4}/", "scheme"),
    ("file:///etc/passwd", "scheme"),
    ("gopher://93.184.216.34:70/", "scheme"),
    ("javascript:alert(1)", "scheme"),
    (f"{PUBLIC_V4}/hook", "scheme"),
    ("http:///hook", "no host"),
    (f"http://user:pass@{PUBLIC_V4}/", "credentials"),
    (f"http://user@{PUBLIC_V4}/", "credentials"),
    (f"http://{PUBLIC_V4}\\@127.0.0.1/", "credentials"),
    (f"http://{PUBLIC_V4}:99999/", "malformed"),
    (f"http://{PUBLIC_V4}:port/", "malformed"),
    (f" http://{PUBLIC_V4}/hook", "spaces"),
    (f"http://{PUBLIC_V4}:0/", "port 0"),
]


@pytest.mark.parametrize(("url", "reason"), BAD_FORM)
def test_malformed_urls_are_refused(url: str, reason: str) -> None:
    with pytest.raises(WebhookURLError) as info:
        netguard.check_webhook_url(url, allow_private=True, allow_hosts=[])
    assert reason in info.value.reason


def test_split_webhook_url_defaults_ports() -> None:
    split: Callable[[str], tuple[str, str, int]] = netguard.split_webhook_url
    assert split("HTTPS://Example.COM/x") == ("https", "example.com", 443)
    assert split("http://example.com/x") == ("http", "example.com", 80)
    assert split("http://[::1]:8080/") == ("http", "::1", 8080)


def test_the_shared_address_policy_names_only_the_host(dns: dict[str, list[str]]) -> None:
    """The rule tasks use (public `jobserver.public_addresses` / `check_address`) is the webhooks' rule."""
    dns["intranet.test"] = ["10.1.2.3"]
    with pytest.raises(AddressRefused) as info:
        addresses.public_addresses("intranet.test", 80)
    assert info.value.host == "intranet.test" and info.value.address == ipaddress.ip_address("10.1.2.3")
    assert "10.1.2.3" not in str(info.value)
    assert addresses.public_addresses("intranet.test", 80, ["intranet.test"]) == [
        ipaddress.ip_address("10.1.2.3")
    ]
    assert addresses.public_addresses(PUBLIC_V4, 443) == [ipaddress.ip_address(PUBLIC_V4)]
    addresses.check_address("localhost", ipaddress.ip_address("127.0.0.1"), ["localhost"])
    advised = AddressRefused("localhost", ipaddress.ip_address("127.0.0.1"), "how to allow it")
    assert str(advised).startswith("localhost is not a public address") and str(advised).endswith(
        "; how to allow it"
    )
    with pytest.raises(AddressRefused):
        addresses.check_address("127.0.0.2", ipaddress.ip_address("127.0.0.2"), ["127.0.0.1"])


API = netguard.WebhookGuard(
    allow_private=False, allow_hosts=("127.0.0.1", "localhost"), api_host="127.0.0.1", api_port=8000
)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/jobs/x/cancel",
        "http://localhost:8000/tasks/t/pause",
        "http://[::ffff:127.0.0.1]:8000/",
    ],
)
def test_the_servers_own_api_is_refused_whatever_the_exceptions_allow(
    dns: dict[str, list[str]], url: str
) -> None:
    host = url.split("/")[2].removesuffix(":8000")
    for guard in (API, dataclasses.replace(API, allow_private=True)):
        with pytest.raises(WebhookURLError) as info:
            guard.check(url)
        assert info.value.reason.startswith(f"{host}:8000 is this server's own API"), info.value.reason
    allowed = dataclasses.replace(API, allow_private=True)
    assert allowed.check("http://127.0.0.1:8001/hook")  # another port of the host: a receiver
    assert allowed.check("http://127.0.0.2:8000/hook")  # another address: the API does not listen there
    assert allowed.check("http://[::1]:8000/hook")


def test_an_api_on_every_address_keeps_out_every_local_address(dns: dict[str, list[str]]) -> None:
    dns["rebound.test"] = [PUBLIC_V4, "127.0.0.5"]
    for any_address in ("0.0.0.0", "::"):
        guard = netguard.WebhookGuard(True, (), any_address, 8000)
        for url in (
            "http://127.0.0.5:8000/",
            "http://[::1]:8000/",
            "http://0.0.0.0:8000/",
            "http://rebound.test:8000/",
        ):
            with pytest.raises(WebhookURLError, match="own API"):
                guard.check(url)
        assert guard.check(f"http://{PUBLIC_V4}:8000/")  # not an address of this machine
        assert guard.check("http://127.0.0.5:8001/")
    assert netguard.WebhookGuard(True, ()).check("http://127.0.0.1:8000/")  # no API to keep out
