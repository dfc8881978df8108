"""Turning a listen address into an address to connect to."""

from __future__ import annotations

#: Addresses that mean "every interface" when bound; they are replaced, never bound, here.
WILDCARD = frozenset({"", "0.0.0.0", "::"})  # nosec B104 # names wildcard addresses to replace them; binds nothing


def connect_host(listen: str, fallback: str = "127.0.0.1") -> str:
    """The host part of a URL that reaches a server bound to `listen` (IPv6 in brackets)."""
    host = fallback if listen in WILDCARD else listen
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
