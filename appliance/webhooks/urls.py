"""Which webhook URLs may be called: public addresses only, unless `webhooks.allow_private` names them.

A URL is checked when it is registered and again at every delivery: its host is resolved and every address it
resolves to must be public, and the connection goes to exactly the addresses that were checked (GuardedResolver),
so a name that resolves to a public address at registration and to 127.0.0.1 later (DNS rebinding) is refused
then. Resolving through getaddrinfo also turns the odd spellings of an address (`2130706433`, `0177.0.0.1`,
`0x7f.1`) into the address they mean before it is judged.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from appliance.webhooks.errors import WebhookRefused

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: NAT64 (RFC 6052) carries an IPv4 address in its last 32 bits: judged by that address.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class AllowList:
    """`webhooks.allow_private`: networks (and single addresses) and host names permitted although not public."""

    def __init__(self, entries: Sequence[str]) -> None:
        self.networks: list[Network] = []
        self.hosts: set[str] = set()
        for entry in entries:
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.hosts.add(entry.lower().rstrip("."))

    def permits(self, host: str, address: Address) -> bool:
        if host.lower().rstrip(".") in self.hosts:
            return True
        inner = _effective(address)
        return any(a in n for a in (address, inner) for n in self.networks if a.version == n.version)


def _effective(address: Address) -> Address:
    """The IPv4 address an IPv6 one stands for (IPv4-mapped, NAT64, 6to4), else the address itself."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if address.sixtofour is not None:
            return address.sixtofour
    return address


def why_not_public(address: Address) -> str | None:
    """Why an address is not a public unicast one (None when it is)."""
    inner = _effective(address)
    for candidate in dict.fromkeys((address, inner)):
        for kind in ("unspecified", "loopback", "link_local", "multicast", "private", "reserved"):
            if getattr(candidate, f"is_{kind}"):
                return kind.replace("_", "-")
        if not candidate.is_global:
            return "not public"
    return None


def split_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a webhook URL; WebhookRefused for anything but plain http(s) to a host."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookRefused(f"webhook URL is not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise WebhookRefused(f"webhook URL scheme {parts.scheme!r} is not http or https")
    if parts.username is not None or parts.password is not None:
        raise WebhookRefused("webhook URL carries credentials (user:password@); sign-in is by signature")
    host = parts.hostname or ""
    if not host:
        raise WebhookRefused("webhook URL has no host")
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise WebhookRefused("webhook URL contains spaces or control characters")
    return scheme, host, port or (443 if scheme == "https" else 80)


async def resolve(host: str, port: int) -> list[tuple[int, Address]]:
    """Every (family, address) `host` resolves to; WebhookRefused when it does not resolve."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise WebhookRefused(f"webhook host {host!r} does not resolve ({exc})") from None
    out: list[tuple[int, Address]] = []
    for family, *_rest, sockaddr in infos:
        # A scoped IPv6 address (fe80::1%eth0) is link-local whatever its scope: judge the address part.
        out.append((int(family), ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])))
    return out


def judge(host: str, addresses: Sequence[Address], allow: AllowList) -> None:
    """WebhookRefused unless every address is public or permitted (one bad address refuses the host: the
    client could connect to any of them)."""
    if not addresses:
        raise WebhookRefused(f"webhook host {host!r} resolves to no address")
    for address in addresses:
        reason = why_not_public(address)
        if reason is not None and not allow.permits(host, address):
            shown = f"{address} ({_effective(address)})" if _effective(address) != address else str(address)
            raise WebhookRefused(
                f"webhook host {host!r} resolves to {shown}, a {reason} address "
                "(allow it with webhooks.allow_private)"
            )


async def check_url(url: str, allow: AllowList) -> None:
    """WebhookRefused with a one-line reason unless `url` may be called now."""
    _scheme, host, port = split_url(url)
    judge(host, [a for _f, a in await resolve(host, port)], allow)


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, refusing hosts whose addresses are not allowed: the connection goes to the addresses
    judged here, so nothing can change between the check and the connect. (aiohttp does not ask a resolver about
    a host that is an IP literal: senders check the URL first, see check_url.)"""

    def __init__(self, allow: AllowList) -> None:
        self.allow = allow
        self._inner = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        judge(host, [ipaddress.ip_address(str(r["host"]).split("%", 1)[0]) for r in results], self.allow)
        return results

    async def close(self) -> None:
        await self._inner.close()


def describe(exc: BaseException) -> str:
    """A one-line reason for a failed attempt (never a traceback)."""
    text: Any = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__
