"""Callback URL policy: which URLs pushbridge will POST to, and at which address.

The name is resolved here, every address is checked, and the caller connects to
a checked address (Host header and TLS SNI keep the name), so a name that
later resolves elsewhere (DNS rebinding) is checked again at every attempt.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import unicodedata
from collections.abc import Awaitable, Callable
from typing import NamedTuple
from urllib.parse import urlsplit

import httpx
import idna

from bridge.config import CallbacksConfig

MAX_URL_LENGTH = 2048
MAX_CHECKED_URLS = 4096  # accepted URLs remembered (the same callback URL is checked once)
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]
# Hosts that some resolvers read as IPv4 numbers: 2130706433, 0x7f000001, 0177.0.0.1, 127.1
CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NUMERIC_HOST = re.compile(r"^(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}\.?$", re.I)
# control, format, space and separator characters: never part of a URL as sent
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})


class Target(NamedTuple):
    """Where a callback goes: its host (A-label), the checked addresses, the port."""

    host: str
    addresses: list[Address]
    port: int


class CallbackRejected(Exception):
    def __init__(self, rule: str, detail: str) -> None:
        super().__init__(f"{rule}: {detail}")
        self.rule = rule
        self.detail = detail


async def system_resolver(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))  # (address, port, ...)


def address_class(ip: Address) -> str | None:
    """Why an address is not public, or None if it is."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and int(ip) >> 32 == 0 and int(ip) > 1:
            embedded = ipaddress.IPv4Address(int(ip))  # IPv4-compatible ::a.b.c.d
        if embedded is not None:
            return address_class(embedded) or None
    checks = [
        ("loopback", ip.is_loopback),
        ("unspecified", ip.is_unspecified),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("site-local", isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local),
        ("cgnat", ip in CGNAT),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("not-global", not ip.is_global),
    ]
    return next((name for name, hit in checks if hit), None)


class UrlPolicy:
    def __init__(self, config: CallbacksConfig, resolver: Resolver | None = None) -> None:
        self.config = config
        self.resolver = resolver or system_resolver
        self.allowed = [ipaddress.ip_network(n, strict=False) for n in config.allowed_networks]
        # accepted URLs: (scheme, host, port) and, for an IP literal host, its checked Target
        self._accepted: dict[str, tuple[tuple[str, str, int], Target | None]] = {}

    def check_syntax(self, url: str) -> tuple[str, str, int]:
        """(scheme, host as A-label, port) of an acceptable URL, or CallbackRejected.

        The URL must read the same to the parser that sends it (httpx) as to this one."""
        known = self._accepted.get(url)
        return known[0] if known is not None else self._check_syntax(url)

    def _check(self, url: str) -> tuple[tuple[str, str, int], Target | None]:
        """check_syntax, remembered for accepted URLs (a pure function of the URL and the
        config): with the checked Target of an IP literal host, which needs no lookup.
        A name is resolved and its addresses checked at every call (DNS rebinding)."""
        known = self._accepted.get(url)
        if known is None:
            parts = self._check_syntax(url)
            literal = _literal_address(parts[1])
            for ip in literal:
                self.check_address(ip)
            if len(self._accepted) >= MAX_CHECKED_URLS:
                self._accepted.clear()
            known = self._accepted[url] = (
                parts,
                Target(parts[1], literal, parts[2]) if literal else None,
            )
        return known

    def _check_syntax(self, url: str) -> tuple[str, str, int]:
        if len(url) > MAX_URL_LENGTH:
            raise CallbackRejected("too-long", f"callback_url exceeds {MAX_URL_LENGTH} characters")
        _refuse_invisible(url)
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as e:
            raise CallbackRejected("malformed", f"callback_url is not a valid URL: {e}") from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise CallbackRejected("scheme", f"scheme {scheme or '(none)'!r} is not http(s)")
        if scheme == "http" and not self.config.allow_http:
            raise CallbackRejected("http-not-allowed", "plain http callbacks are not allowed")
        if parts.username is not None or parts.password is not None:
            raise CallbackRejected("credentials", "credentials in the URL are not allowed")
        host = a_label((parts.hostname or "").rstrip("."))
        if not host:
            raise CallbackRejected("no-host", "callback_url has no host")
        if _NUMERIC_HOST.match(host) and not _is_dotted_quad(host):
            raise CallbackRejected("ambiguous-address", f"{host!r} is an unusual IPv4 spelling")
        port = port or (443 if scheme == "https" else 80)
        _same_for_sender(url, host, port)
        return scheme, host, port

    def check_address(self, ip: Address) -> None:
        if any(ip in net for net in self.allowed):
            return
        why = address_class(ip)
        if why and not self.config.allow_private_networks:
            raise CallbackRejected(f"{why}-address", f"{ip} is a {why} address")

    async def _lookup(self, host: str, port: int) -> list[Address]:
        try:
            found = await self.resolver(host, port)
        except (OSError, UnicodeError) as e:
            raise CallbackRejected("unresolvable", f"cannot resolve {host!r}: {e}") from None
        if not found:
            raise CallbackRejected("unresolvable", f"{host!r} has no addresses")
        return [ipaddress.ip_address(a.split("%")[0]) for a in found]

    async def resolve(self, url: str) -> Target:
        """Check the URL and every address its host resolves to."""
        (_, host, port), literal = self._check(url)
        if literal is not None:
            return literal
        addresses = await self._lookup(host, port)
        for ip in addresses:
            self.check_address(ip)
        return Target(host, addresses, port)


def _refuse_invisible(url: str) -> None:
    """Control characters and whitespace (a pasted trailing newline, a tab, a zero-width
    space) are refused wherever they are: parsers differ in stripping or keeping them."""
    for i, ch in enumerate(url):
        if ch <= " " or unicodedata.category(ch) in _INVISIBLE_CATEGORIES:
            raise CallbackRejected(
                "control-character",
                f"callback_url contains U+{ord(ch):04X} at position {i}; "
                "control characters and whitespace are not allowed",
            )


def a_label(host: str) -> str:
    """The host as sent in the Host header, TLS SNI and DNS: lower case, IDNA 2008 A-labels
    for a non-ASCII name (CallbackRejected "idna" if it is not a valid IDNA 2008 name)."""
    host = host.lower()
    try:
        if not host.isascii():
            return idna.encode(host).decode("ascii")
        if any(label.startswith("xn--") for label in host.split(".")):
            idna.decode(host)  # an A-label must decode to a valid name
    except idna.IDNAError as e:
        raise CallbackRejected(
            "idna", f"host {host!r} is not a valid internationalised domain name: {e}"
        ) from None
    return host


def _same_for_sender(url: str, host: str, port: int) -> None:
    """The sending client (httpx) must parse the URL to the same host and port."""
    try:
        sent = httpx.URL(url)
        sent_host = sent.raw_host.decode("ascii").rstrip(".")
        sent_port = sent.port or (443 if sent.scheme == "https" else 80)
    except (httpx.InvalidURL, UnicodeError, ValueError) as e:
        raise CallbackRejected("malformed", f"callback_url cannot be sent: {e}") from None
    if (sent_host, sent_port) != (host, port):
        raise CallbackRejected(
            "malformed", "callback_url is ambiguous: its host or port is unclear"
        )


def _literal_address(host: str) -> list[Address]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        return []


def _is_dotted_quad(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True
