"""Endpoints from DNS: A/AAAA records (the port comes from the config) or SRV records.

The discoverer resolves once at ``start()`` and then again when the answer's TTL runs out,
the TTL clamped to ``[min_ttl, max_ttl]`` (a TTL of 0 would otherwise re-resolve in a
loop; a day-long TTL would never notice a moved instance). Each successful answer becomes
the service's whole ``dns`` list through ``EndpointSet.replace``, so endpoints that stay
keep their statistics.

SRV: each record gives a target, a port and a weight. Targets are turned into addresses
from the answer's additional section when the server sent them (glue), else by asking the
same resolver for A (then AAAA) records. Only the group with the lowest priority value that
has at least one usable target is used, as RFC 2782 asks; higher groups are a fallback
for *resolution*, not for health (an unhealthy primary group does not fail over). The SRV
weight becomes the endpoint weight (0 counts as 1, the smallest share); a target listed
twice adds up its weights. The smallest TTL of every record used decides when to re-resolve.

Failures — timeouts, SERVFAIL, NXDOMAIN, an answer without records — keep the last good
set: a DNS incident must not empty a service that is running fine. The discoverer retries
with exponential backoff (from ``min_ttl``, doubling, at most ``max_ttl`` or 30 s) and
reports the error in ``status``. A service therefore cannot be scaled to zero through DNS;
take it out of the config instead.

The URL of a discovered endpoint holds the address, not the name; with ``scheme: https``
the certificate is then checked against the address.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
import dns.rrset

from sampan.mesh.config import DnsDiscovery
from sampan.mesh.endpoint_set import EndpointSet, EndpointSpec

__all__ = ["DnsDiscoverer", "DnsDiscoveryError", "DnsStatus", "parse_nameserver"]

log = logging.getLogger(__name__)

BACKOFF_CAP = 30.0
"""Longest wait between retries after failures (unless ``max_ttl`` is shorter)."""


class DnsDiscoveryError(Exception):
    """A resolution gave no usable endpoints; the last good set stays."""


@dataclass(slots=True)
class DnsStatus:
    """How discovery is going (for the admin API and logs)."""

    resolutions: int = 0
    """Successful resolutions."""
    failures: int = 0
    """Failed resolutions in all."""
    consecutive_failures: int = 0
    last_success_at: float | None = None
    last_error: str | None = None
    ttl: float | None = None
    """The clamped TTL of the last good answer (seconds)."""
    next_at: float | None = None
    """When the next resolution is due (clock seconds)."""


def parse_nameserver(value: str) -> tuple[str, int]:
    """``ip``, ``ip:port`` or ``[ipv6]:port`` -> (ip, port); ValueError otherwise."""
    host, port = value.strip(), 53
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            raise ValueError(f"nameserver {value!r}: missing ']'")
        rest = host[end + 1 :]
        host = host[1:end]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"nameserver {value!r}: expected ':port' after ']'")
            port = _port(value, rest[1:])
    elif host.count(":") == 1:
        host, port_text = host.split(":")
        port = _port(value, port_text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"nameserver {value!r}: give an IP address, not a name") from None
    return host, port


def _port(value: str, text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"nameserver {value!r}: bad port {text!r}")
    return int(text)


def _url(scheme: str, address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"{scheme}://{host}:{port}"


class DnsDiscoverer:
    """Keeps the ``dns`` source of ``endpoint_set`` in line with DNS."""

    def __init__(
        self,
        config: DnsDiscovery,
        endpoint_set: EndpointSet,
        *,
        clock: Callable[[], float] = time.monotonic,
        timeout: float = 2.0,
        source: str = "dns",
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.endpoint_set = endpoint_set
        self.clock = clock
        self.timeout = timeout
        self.source = source
        self.status = DnsStatus()
        self._name = dns.name.from_text(config.name)
        self._nameserver = (
            parse_nameserver(config.nameserver) if config.nameserver is not None else None
        )
        self._resolver: dns.asyncresolver.Resolver | None = None
        self._rng = rng if rng is not None else random.Random()
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Resolve once (so the set is filled before traffic), then keep re-resolving.

        A failed first resolution is logged, not raised: the node starts, the service has no
        DNS endpoints yet, and the retry loop keeps trying."""
        if self._task is not None:
            return
        delay = await self._attempt()
        self._task = asyncio.create_task(
            self._run(delay), name=f"dns-discovery:{self.endpoint_set.service}"
        )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, delay: float) -> None:
        while self._task is not None:  # ends with stop()
            await asyncio.sleep(delay)
            delay = await self._attempt()

    async def _attempt(self) -> float:
        """One resolution; returns the delay until the next one."""
        status = self.status
        try:
            delay = await self.resolve_once()
        except DnsDiscoveryError as exc:
            status.failures += 1
            status.consecutive_failures += 1
            status.last_error = str(exc)
            delay = self._backoff(status.consecutive_failures)
            log.warning(
                "service %s: DNS discovery of %s failed (%s); keeping %d endpoints, retry in %.2fs",
                self.endpoint_set.service,
                self.config.name,
                exc,
                len(self.endpoint_set.specs(self.source)),
                delay,
            )
        status.next_at = self.clock() + delay
        return delay

    def _backoff(self, failures: int) -> float:
        low, high = self._bounds()
        cap = min(high, max(low, BACKOFF_CAP))
        delay = min(low * 2.0 ** min(failures - 1, 30), cap)
        return delay * self._rng.uniform(0.8, 1.0)

    def _bounds(self) -> tuple[float, float]:
        low = float(self.config.min_ttl)
        return low, max(low, float(self.config.max_ttl))

    # -- resolution ---------------------------------------------------------------------------

    async def resolve_once(self) -> float:
        """Resolve now and replace the ``dns`` endpoints; returns the clamped TTL (seconds
        until the next resolution). Raises ``DnsDiscoveryError`` and changes nothing when
        the answer gives no usable endpoint."""
        try:
            if self.config.record == "SRV":
                specs, ttl = await self._resolve_srv()
            else:
                specs, ttl = await self._resolve_addresses()
        except DnsDiscoveryError:
            raise
        except (dns.exception.DNSException, OSError) as exc:
            raise DnsDiscoveryError(_describe(exc)) from exc
        low, high = self._bounds()
        clamped = min(max(float(ttl), low), high)
        changed = self.endpoint_set.replace(self.source, specs)
        if changed:
            log.info(
                "service %s: DNS %s %s -> %s",
                self.endpoint_set.service,
                self.config.record,
                self.config.name,
                ", ".join(spec.url for spec in specs),
            )
        status = self.status
        status.resolutions += 1
        status.consecutive_failures = 0
        status.last_success_at = self.clock()
        status.last_error = None
        status.ttl = clamped
        return clamped

    def _get_resolver(self) -> dns.asyncresolver.Resolver:
        resolver = self._resolver
        if resolver is None:
            if self._nameserver is None:
                resolver = dns.asyncresolver.Resolver()  # the system's configuration
            else:
                resolver = dns.asyncresolver.Resolver(configure=False)
                resolver.nameservers = [self._nameserver[0]]
                resolver.port = self._nameserver[1]
            resolver.timeout = self.timeout
            resolver.lifetime = self.timeout
            resolver.cache = None  # the TTL logic here is the cache
            self._resolver = resolver
        return resolver

    async def _query(self, name: dns.name.Name, rdtype: str) -> dns.resolver.Answer:
        resolver = self._get_resolver()
        return await resolver.resolve(name, rdtype, search=False, lifetime=self.timeout)

    async def _resolve_addresses(self) -> tuple[list[EndpointSpec], int]:
        config = self.config
        assert config.port is not None  # the config model requires it for A/AAAA
        rdtypes = ["A", "AAAA"] if config.record == "A+AAAA" else [config.record]
        results = await asyncio.gather(
            *(self._query(self._name, rdtype) for rdtype in rdtypes), return_exceptions=True
        )
        specs: list[EndpointSpec] = []
        ttls: list[int] = []
        errors: list[BaseException] = []
        for result in results:
            if isinstance(result, BaseException):
                if not isinstance(result, dns.exception.DNSException | OSError):
                    raise result
                errors.append(result)
                continue
            rrset = result.rrset
            if rrset is None or len(rrset) == 0:
                continue
            ttls.append(rrset.ttl)
            specs.extend(
                EndpointSpec(_url(config.scheme, rdata.address, config.port), source=self.source)
                for rdata in rrset
            )
        if not specs:
            if errors:
                raise DnsDiscoveryError("; ".join(_describe(e) for e in errors))
            raise DnsDiscoveryError(f"no {config.record} records for {config.name}")
        return specs, min(ttls)

    async def _resolve_srv(self) -> tuple[list[EndpointSpec], int]:
        answer = await self._query(self._name, "SRV")
        rrset = answer.rrset
        if rrset is None or len(rrset) == 0:
            raise DnsDiscoveryError(f"no SRV records for {self.config.name}")
        glue = _glue(answer.response.additional)
        by_priority: dict[int, list[tuple[dns.name.Name, int, int]]] = {}
        for rdata in rrset:
            if rdata.target == dns.name.root:
                continue  # "service decidedly not available at this domain"
            by_priority.setdefault(rdata.priority, []).append(
                (rdata.target, rdata.port, rdata.weight)
            )
        problems: list[str] = []
        for priority in sorted(by_priority):
            group = by_priority[priority]
            lookups = await asyncio.gather(*(self._target(target, glue) for target, _, _ in group))
            weights: dict[str, int] = {}
            ttls = [rrset.ttl]
            for (target, port, weight), lookup in zip(group, lookups, strict=True):
                if isinstance(lookup, str):
                    problems.append(f"{target}: {lookup}")
                    continue
                addresses, ttl = lookup
                ttls.append(ttl)
                for address in addresses:
                    url = _url(self.config.scheme, address, port)
                    weights[url] = weights.get(url, 0) + max(weight, 1)
            if weights:
                specs = [
                    EndpointSpec(url, weight=weight, source=self.source)
                    for url, weight in weights.items()
                ]
                return specs, min(ttls)
        detail = f" ({'; '.join(problems)})" if problems else ""
        raise DnsDiscoveryError(f"no usable SRV target for {self.config.name}{detail}")

    async def _target(
        self, target: dns.name.Name, glue: dict[dns.name.Name, tuple[list[str], int]]
    ) -> tuple[list[str], int] | str:
        """Addresses of an SRV target and their TTL, or why there are none."""
        found = glue.get(target)
        if found is not None:
            return found
        problems: list[str] = []
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self._query(target, rdtype)
            except (dns.exception.DNSException, OSError) as exc:
                problems.append(_describe(exc))
                continue
            rrset = answer.rrset
            if rrset is not None and len(rrset):
                return [rdata.address for rdata in rrset], rrset.ttl
        return "; ".join(problems) or "no address records"


def _glue(section: list[dns.rrset.RRset]) -> dict[dns.name.Name, tuple[list[str], int]]:
    """A/AAAA records sent along with an SRV answer: name -> (addresses, smallest TTL)."""
    glue: dict[dns.name.Name, tuple[list[str], int]] = {}
    for rrset in section:
        if rrset.rdtype not in (dns.rdatatype.A, dns.rdatatype.AAAA) or not len(rrset):
            continue
        addresses, ttl = glue.get(rrset.name, ([], rrset.ttl))
        addresses.extend(rdata.address for rdata in rrset)
        glue[rrset.name] = (addresses, min(ttl, rrset.ttl))
    return glue


def _describe(exc: BaseException) -> str:
    if isinstance(exc, dns.resolver.NXDOMAIN):
        return "NXDOMAIN (no such name)"
    if isinstance(exc, dns.resolver.NoAnswer):
        return "no records of that type"
    if isinstance(exc, dns.exception.Timeout):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text
