"""Which webhook URLs Conveyor may call: the server-side request forgery guard.

A URL is checked when an endpoint is registered and again before every
attempt, because what a name resolves to can change between the two (DNS
rebinding). The attempt then connects to an address this check approved, never
to a second, fresh resolution of the name.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

MAX_URL_LENGTH = 2048
# Cloud metadata services: refused even when private targets are allowed, since
# no legitimate receiver lives there and they hand out credentials.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(address) for address in ("169.254.169.254", "fd00:ec2::254")
)


class UnsafeWebhookUrl(ValueError):
    """The URL may not be called; `reason` says why (shown to the user)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ApprovedTarget:
    """A URL and the addresses it resolved to that passed the check."""

    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[IPAddress, ...]


def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (the system resolver)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeWebhookUrl(f"the host {host!r} does not resolve") from exc
    return [str(info[4][0]) for info in infos]


def is_public(address: IPAddress) -> bool:
    """Whether `address` is a globally routable unicast address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is loopback, not "global"
    return address.is_global and not address.is_multicast


def check_url(url: str, *, allow_private: bool, resolver: Resolver = resolve) -> ApprovedTarget:
    """The URL's target if Conveyor may call it, else UnsafeWebhookUrl naming the reason."""
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeWebhookUrl(f"the URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UnsafeWebhookUrl("the URL cannot be parsed") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeWebhookUrl("the URL must start with http:// or https://")
    if not parts.hostname:
        raise UnsafeWebhookUrl("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise UnsafeWebhookUrl("credentials in the URL are not allowed; verify the signature")
    if parts.fragment:
        raise UnsafeWebhookUrl("the URL must not have a #fragment")
    host = parts.hostname
    port = port or (443 if parts.scheme == "https" else 80)
    addresses = tuple(ipaddress.ip_address(a.split("%")[0]) for a in resolver(host, port))
    if not addresses:
        raise UnsafeWebhookUrl(f"the host {host!r} does not resolve")
    for address in addresses:
        if address in METADATA_ADDRESSES:
            raise UnsafeWebhookUrl("the URL points at a cloud metadata address")
        if not allow_private and not is_public(address):
            raise UnsafeWebhookUrl(
                f"the URL resolves to a loopback, private or link-local address ({address})"
            )
    return ApprovedTarget(url, parts.scheme, host, port, addresses)
