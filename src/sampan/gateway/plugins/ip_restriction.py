"""ip-restriction: allow or deny client addresses by CIDR (IPv4 and IPv6; deny wins)."""

from __future__ import annotations

import ipaddress
from typing import Annotated, ClassVar

from pydantic import AfterValidator, Field, model_validator

from sampan.gateway.plugins.base import Plugin, PluginEnvironment, PluginOptions
from sampan.http.request import Request
from sampan.http.response import Response, problem

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _cidr(value: str) -> str:
    try:
        ipaddress.ip_network(value.strip(), strict=False)
    except ValueError as exc:
        raise ValueError(f"not an IP address or CIDR: {exc}") from None
    return value.strip()


Cidr = Annotated[str, AfterValidator(_cidr)]


class IpRestrictionOptions(PluginOptions):
    allow: list[Cidr] = Field(
        default_factory=list,
        description="Addresses or CIDRs let in (when given, every other address is refused).",
    )
    deny: list[Cidr] = Field(
        default_factory=list,
        description="Addresses or CIDRs refused, even when also inside an allowed range.",
    )
    message: str = Field(
        "Your IP address is not allowed to use this route.", description="Problem `detail`."
    )

    @model_validator(mode="after")
    def _some(self) -> IpRestrictionOptions:
        if not self.allow and not self.deny:
            raise ValueError("give allow, deny or both")
        return self


class _Ranges:
    """CIDRs as (network int, mask int) pairs per IP version: a membership test is a couple
    of integer operations per range, with no ``ipaddress`` objects on the hot path."""

    __slots__ = ("v4", "v6")

    def __init__(self, cidrs: list[str]) -> None:
        self.v4: list[tuple[int, int]] = []
        self.v6: list[tuple[int, int]] = []
        for text in cidrs:
            net: Network = ipaddress.ip_network(text, strict=False)
            pair = (int(net.network_address), int(net.netmask))
            (self.v4 if net.version == 4 else self.v6).append(pair)

    def contains(self, version: int, address: int) -> bool:
        ranges = self.v4 if version == 4 else self.v6
        return any(address & mask == network for network, mask in ranges)


def parse_ip(text: str) -> tuple[int, int] | None:
    """(version, integer) of an address; IPv4-mapped IPv6 counts as IPv4; zone ids dropped."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if address.version == 6:
        assert isinstance(address, ipaddress.IPv6Address)
        mapped = address.ipv4_mapped
        if mapped is not None:
            return 4, int(mapped)
    return address.version, int(address)


class IpRestrictionPlugin(Plugin):
    """Judges ``request.state["client_ip"]`` (the address the gateway computed from trusted
    proxies' X-Forwarded-For/Forwarded) when set, else the socket peer ``request.client[0]``.
    An address that cannot be parsed is refused."""

    name: ClassVar[str] = "ip-restriction"
    priority: ClassVar[int] = 1990
    Options: ClassVar[type[PluginOptions]] = IpRestrictionOptions

    def __init__(self, options: IpRestrictionOptions, env: PluginEnvironment) -> None:
        super().__init__(options, env)
        self._allow = _Ranges(options.allow) if options.allow else None
        self._deny = _Ranges(options.deny)
        self._message = options.message

    def allowed(self, text: str) -> bool:
        parsed = parse_ip(text)
        if parsed is None:
            return False
        version, address = parsed
        if self._deny.contains(version, address):
            return False
        return self._allow is None or self._allow.contains(version, address)

    async def on_request(self, request: Request) -> Response | None:
        client = request.state.get("client_ip")
        if not isinstance(client, str) or not client:
            client = request.client[0]
        if self.allowed(client):
            return None
        return problem(403, "Forbidden", self._message)
