"""Who the client really is, and what to tell the upstream about it.

Client-supplied ``X-Forwarded-*`` and ``Forwarded`` headers are believed only when the
direct peer is a trusted proxy (``gateway.trusted_proxies``). Then the client address is the
rightmost address of X-Forwarded-For (or of Forwarded's ``for=``) that is not itself a
trusted proxy: everything left of it was written by the client and may be forged.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Final

from sampan.http.request import Request

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# X-Forwarded-For lists longer than this are cut (the leftmost, oldest hops are dropped).
MAX_HOPS: Final = 32


class TrustedProxies:
    """Parsed ``trusted_proxies`` CIDRs."""

    __slots__ = ("networks",)

    def __init__(self, cidrs: Iterable[str | Network]) -> None:
        self.networks: tuple[Network, ...] = tuple(
            net if not isinstance(net, str) else ipaddress.ip_network(net.strip(), strict=False)
            for net in cidrs
        )

    def __bool__(self) -> bool:
        return bool(self.networks)

    def contains(self, address: str) -> bool:
        ip = parse_ip(address)
        return ip is not None and _trusted(ip, self.networks)


def _trusted(ip: Address, networks: Sequence[Network]) -> bool:
    return any(ip.version == net.version and ip in net for net in networks)


def parse_ip(text: str) -> Address | None:
    """An address from a peer or a forwarded hop (``1.2.3.4``, ``1.2.3.4:80``, ``[::1]:80``,
    ``::1``), IPv4-mapped IPv6 unwrapped; None when it is not an address."""
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:  # IPv4 with a port
        text = text.split(":", 1)[0]
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _as_networks(trusted: TrustedProxies | Sequence[str | Network]) -> Sequence[Network]:
    if isinstance(trusted, TrustedProxies):
        return trusted.networks
    if all(not isinstance(net, str) for net in trusted):
        return trusted  # type: ignore[return-value]
    return TrustedProxies(trusted).networks


def forwarded_hops(request: Request) -> list[str]:
    """The client chain the previous proxies reported, oldest first: X-Forwarded-For, or
    else the ``for=`` values of Forwarded."""
    hops: list[str] = []
    for value in request.headers.get_all(b"x-forwarded-for"):
        hops.extend(h.strip() for h in value.decode("latin-1").split(","))
    if not hops:
        for value in request.headers.get_all(b"forwarded"):
            for element in value.decode("latin-1").split(","):
                for pair in element.split(";"):
                    key, _, val = pair.strip().partition("=")
                    if key.strip().lower() == "for":
                        hops.append(val.strip().strip('"'))
    return [h for h in hops if h][-MAX_HOPS:]


def client_ip(request: Request, trusted_networks: TrustedProxies | Sequence[str | Network]) -> str:
    """The real client address: the direct peer, unless the peer is a trusted proxy, in
    which case the rightmost untrusted hop of X-Forwarded-For (or Forwarded ``for=``).

    A hop that is not an IP address (``unknown``, a forged token) stops the walk: the last
    trusted hop before it is the best that can be proven."""
    peer = request.client[0]
    networks = _as_networks(trusted_networks)
    if not networks:
        return _normal(peer)
    peer_ip = parse_ip(peer)
    if peer_ip is None or not _trusted(peer_ip, networks):
        return str(peer_ip) if peer_ip is not None else peer
    best = str(peer_ip)
    for hop in reversed(forwarded_hops(request)):  # bounded by MAX_HOPS
        ip = parse_ip(hop)
        if ip is None:
            return best
        best = str(ip)
        if not _trusted(ip, networks):
            return best
    return best


def _normal(peer: str) -> str:
    if peer.startswith("::ffff:"):
        ip = parse_ip(peer)
        return str(ip) if ip is not None else peer
    return peer


def peer_is_trusted(request: Request, networks: Sequence[Network]) -> bool:
    if not networks:
        return False
    ip = parse_ip(request.client[0])
    return ip is not None and _trusted(ip, networks)


def forwarded_node(address: str) -> str:
    """An address as RFC 7239 writes it: IPv6 in brackets and quotes."""
    ip = parse_ip(address)
    if ip is None:
        return _quote(address) if address else "unknown"
    if ip.version == 6:
        return f'"[{ip}]"'
    return str(ip)


_TOKEN: Final = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


def _quote(value: str) -> str:
    if value and all(c in _TOKEN for c in value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def forwarded_element(address: str, proto: str, host: str | None) -> str:
    """One RFC 7239 ``Forwarded`` element for this hop."""
    parts = [f"for={forwarded_node(address)}", f"proto={_quote(proto)}"]
    if host:
        parts.append(f"host={_quote(host)}")
    return ";".join(parts)
