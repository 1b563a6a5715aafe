"""DNS lookups shared by probes, with dnspython errors turned into result reasons."""

from __future__ import annotations

import asyncio
import ipaddress

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

from monitor.results import Reason

_LOCAL_NAMES = {"localhost": ["127.0.0.1", "::1"], "localhost.": ["127.0.0.1", "::1"]}


class LookupFailed(Exception):
    """A DNS lookup that produced no usable answer, with its classified reason."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def classify(exc: BaseException, name: str, rdtype: str) -> LookupFailed:
    if isinstance(exc, dns.resolver.NXDOMAIN):
        return LookupFailed(Reason.NXDOMAIN, f"{name}: no such domain (NXDOMAIN)")
    if isinstance(exc, dns.resolver.NoAnswer):
        return LookupFailed(Reason.NO_ADDRESS, f"{name}: no {rdtype} record")
    if isinstance(exc, dns.resolver.LifetimeTimeout | dns.exception.Timeout | TimeoutError):
        return LookupFailed(Reason.TIMEOUT, f"{name} {rdtype}: DNS timeout")
    if isinstance(exc, dns.resolver.NoNameservers):
        # Every server answered SERVFAIL/REFUSED or could not be reached.
        return LookupFailed(Reason.SERVFAIL, f"{name} {rdtype}: no server answered ({_first_line(exc)})")
    if isinstance(exc, dns.exception.DNSException):
        return LookupFailed(Reason.DNS, f"{name} {rdtype}: {_first_line(exc)}")
    return LookupFailed(Reason.DNS, f"{name} {rdtype}: {type(exc).__name__}: {exc}")


def _first_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


async def query(
    resolver: dns.asyncresolver.Resolver, name: str, rdtype: str
) -> dns.resolver.Answer:
    try:
        return await resolver.resolve(name, rdtype, search=False)
    except (dns.exception.DNSException, OSError, TimeoutError) as exc:
        raise classify(exc, name, rdtype) from None


async def addresses(resolver: dns.asyncresolver.Resolver, name: str) -> list[str]:
    """A then AAAA addresses of a name (an IP literal is its own address).

    NXDOMAIN from either lookup ends it; a name with neither record type fails
    with NO_ADDRESS.
    """
    try:
        ipaddress.ip_address(name)
        return [name]
    except ValueError:
        pass
    if name.lower() in _LOCAL_NAMES:
        return list(_LOCAL_NAMES[name.lower()])
    results = await asyncio.gather(
        query(resolver, name, "A"), query(resolver, name, "AAAA"), return_exceptions=True
    )
    found: list[str] = []
    failures: list[LookupFailed] = []
    for result in results:
        if isinstance(result, LookupFailed):
            failures.append(result)
        elif isinstance(result, BaseException):
            raise result
        else:
            found += [rdata.to_text() for rdata in result]
    if found:
        return found
    for reason in (Reason.NXDOMAIN, Reason.TIMEOUT, Reason.SERVFAIL, Reason.DNS):
        for failure in failures:
            if failure.reason is reason:
                raise failure
    raise LookupFailed(Reason.NO_ADDRESS, f"{name}: no A or AAAA record")
