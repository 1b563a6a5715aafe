"""DNS blocklist lookups (RFC 5782): each address against each zone, through the configured resolver.

Only an A answer in 127.0.0.0/8 is a listing; 127.0.0.1 and a zone's error codes (Spamhaus's
127.255.255.252-255: typo, public resolver, over quota) are the zone refusing to answer, and an
answer outside 127.0.0.0/8 is no DNSBL answer at all (RFC 5782 2.1: a wildcard, a hijacking
resolver): both are errors of the check, never "listed".
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence

import dns.asyncresolver
import dns.rdtypes.IN.A

from monitor.config.schema import DnsblZoneConfig
from monitor.model.facts import MAX_DNSBL_CODES, MAX_DNSBL_TEXT, DnsblAnswer, DnsblFacts, DnsblOutcome
from monitor.model.failures import LookupFailure
from monitor.model.results import Reason
from monitor.probes import resolve

# Queries in flight per check: 32 addresses x 20 zones stay a few round trips, and a zone that
# rate-limits sees no burst of hundreds (the figure: 640 lookups at 5 ms each take 0.2 s, not 3.2 s).
CONCURRENCY = 16
MAX_ADDRESSES = 32  # distinct addresses looked up per run
MAX_NAME = 253  # characters of a DNS name in text form, without the final dot (RFC 1035 2.3.4: 255 octets)
_LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
_REFUSED = ipaddress.IPv4Address("127.0.0.1")  # RFC 5782 5: never a listing


def query_name(address: str, zone: str) -> str:
    """The DNSBL name of an address: IPv4 reversed by octet, IPv6 by nibble (RFC 5782 2.1, 2.4), then the zone.

    An IPv4-mapped IPv6 address is looked up as its IPv4 address. ValueError for anything else."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if isinstance(ip, ipaddress.IPv4Address):
        reversed_part = ".".join(reversed(str(ip).split(".")))
    else:
        reversed_part = ".".join(reversed(ip.exploded.replace(":", "")))
    return f"{reversed_part}.{zone.rstrip('.')}"


def _bounded_resolver(resolver: dns.asyncresolver.Resolver, timeout: float) -> dns.asyncresolver.Resolver:
    """The same servers with the per-query timeout: one slow zone does not eat the check's whole timeout."""
    bounded = dns.asyncresolver.Resolver(configure=False)
    bounded.nameservers = resolver.nameservers
    bounded.lifetime = bounded.timeout = min(timeout, resolver.lifetime)
    bounded.cache = None
    return bounded


def _printable(text: str, limit: int = MAX_DNSBL_TEXT) -> str:
    text = text[:limit]
    return text if text.isprintable() else "".join(c if c.isprintable() else "?" for c in text)


def classify_codes(codes: Sequence[str], zone: DnsblZoneConfig) -> tuple[DnsblOutcome, str]:
    """The outcome of a zone's A answer, and why when it is no verdict."""
    addresses = [ipaddress.IPv4Address(code) for code in codes]
    outside = [str(a) for a in addresses if a not in _LOOPBACK]
    if outside:
        return DnsblOutcome.UNEXPECTED, f"answer {', '.join(outside)} outside 127.0.0.0/8 (RFC 5782 2.1)"
    errors = set(zone.error_codes) | {_REFUSED}
    refused = [str(a) for a in addresses if a in errors]
    if refused:
        return DnsblOutcome.REFUSED, f"query refused by {zone.zone} (return code {', '.join(refused)})"
    return DnsblOutcome.LISTED, ""


class _Lookups:
    def __init__(self, resolver: dns.asyncresolver.Resolver, timeout: float) -> None:
        self.resolver = _bounded_resolver(resolver, timeout)
        self.slots = asyncio.Semaphore(CONCURRENCY)
        self.queries = 0

    async def query(self, name: str, rdtype: str) -> dns.resolver.Answer:
        async with self.slots:
            self.queries += 1
            return await resolve.query(self.resolver, name, rdtype)

    async def answer(self, address: str, zone: DnsblZoneConfig) -> DnsblAnswer:
        try:
            name = query_name(address, zone.zone)
        except ValueError:
            return DnsblAnswer(address, zone.zone, DnsblOutcome.ERROR, error="not an IP address")
        if len(name) > MAX_NAME:
            why = f"the query name has {len(name)} characters, over the {MAX_NAME} of a DNS name"
            return DnsblAnswer(address, zone.zone, DnsblOutcome.ERROR, error=why)
        try:
            answer = await self.query(name, "A")
        except LookupFailure as exc:
            if exc.reason in (Reason.NXDOMAIN, Reason.NO_ADDRESS):
                return DnsblAnswer(address, zone.zone, DnsblOutcome.NOT_LISTED)
            # the name is in the answer's address and zone already: the error keeps room for the why
            why = str(exc).removeprefix(f"{name} A: ").removeprefix(f"{name}: ")
            return DnsblAnswer(address, zone.zone, DnsblOutcome.ERROR, error=_printable(f"{exc.reason.value}: {why}"))
        codes = sorted({rdata.address for rdata in answer if isinstance(rdata, dns.rdtypes.IN.A.A)})
        if not codes:
            return DnsblAnswer(address, zone.zone, DnsblOutcome.NOT_LISTED)
        outcome, why = classify_codes(codes, zone)
        kept = tuple(codes[:MAX_DNSBL_CODES])
        if outcome is not DnsblOutcome.LISTED:
            return DnsblAnswer(address, zone.zone, outcome, kept, error=why)
        return DnsblAnswer(address, zone.zone, outcome, kept, reason=await self.reason(name))

    async def reason(self, name: str) -> str:
        """The listing's TXT reason (RFC 5782 2.1), bounded; "" when the zone publishes none or the lookup fails."""
        try:
            answer = await self.query(name, "TXT")
        except LookupFailure:
            return ""
        texts = [b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer]
        return _printable("; ".join(sorted(texts)))


def distinct_addresses(addresses: Sequence[str]) -> tuple[str, ...]:
    """The addresses in order of first appearance, each once, at most MAX_ADDRESSES."""
    return tuple(dict.fromkeys(addresses))[:MAX_ADDRESSES]


async def check(
    resolver: dns.asyncresolver.Resolver,
    addresses: Sequence[str],
    zones: Sequence[DnsblZoneConfig],
    *,
    query_timeout: float,
) -> DnsblFacts:
    """Every address against every zone, at most CONCURRENCY queries at a time, each within `query_timeout`."""
    lookups = _Lookups(resolver, query_timeout)
    wanted = distinct_addresses(addresses)
    answers = await asyncio.gather(*(lookups.answer(address, zone) for address in wanted for zone in zones))
    return DnsblFacts(
        zones=tuple(zone.zone for zone in zones),
        addresses=wanted,
        answers=tuple(answers),
        queries=lookups.queries,
    )
