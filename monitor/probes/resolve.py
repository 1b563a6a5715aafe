"""DNS lookups shared by probes, with dnspython errors turned into result reasons."""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.rdatatype
import dns.resolver

from monitor.model.failures import LookupFailure
from monitor.model.results import Reason

_LOCAL_NAMES = {"localhost": ["127.0.0.1", "::1"], "localhost.": ["127.0.0.1", "::1"]}


def authenticated(response: dns.message.Message | None) -> bool:
    """Whether a response carries the AD bit (only a validating resolver asked for it sets it)."""
    return response is not None and bool(response.flags & dns.flags.AD)


def denial_response(exc: dns.exception.DNSException) -> dns.message.Message | None:
    """The response carrying an NXDOMAIN/NODATA, to read its AD bit (best effort)."""
    kwargs = exc.kwargs or {}
    if isinstance(exc, dns.resolver.NXDOMAIN):
        # NXDOMAIN keeps {qname: response}; the search list is off, so there is one qname
        response = next(iter((kwargs.get("responses") or {}).values()), None)
    else:
        response = kwargs.get("response")
    return response if isinstance(response, dns.message.Message) else None


def classify(exc: BaseException, name: str, rdtype: str) -> LookupFailure:
    if isinstance(exc, dns.resolver.NXDOMAIN):
        ad = authenticated(denial_response(exc))
        return LookupFailure(Reason.NXDOMAIN, f"{name}: no such domain (NXDOMAIN)", ad)
    if isinstance(exc, dns.resolver.NoAnswer):
        return LookupFailure(Reason.NO_ADDRESS, f"{name}: no {rdtype} record", authenticated(denial_response(exc)))
    if isinstance(exc, dns.resolver.LifetimeTimeout | dns.exception.Timeout | TimeoutError):
        # dnspython drops malformed or mismatched UDP replies as possible forgeries: they end here too
        return LookupFailure(Reason.TIMEOUT, f"{name} {rdtype}: DNS timeout (no valid reply)")
    if isinstance(exc, dns.resolver.NoNameservers):
        return _no_nameservers(exc, name, rdtype)
    if isinstance(exc, dns.exception.DNSException):
        return LookupFailure(Reason.DNS, f"{name} {rdtype}: {_first_line(exc)}")
    return LookupFailure(Reason.DNS, f"{name} {rdtype}: {type(exc).__name__}: {exc}")


def _no_nameservers(exc: dns.resolver.NoNameservers, name: str, rdtype: str) -> LookupFailure:
    """SERVFAIL when a server said so (or REFUSED, or was unreachable); DNS when every answer was unusable."""
    errors = (exc.kwargs or {}).get("errors") or []
    said: list[tuple[str, str | BaseException]] = [(str(error[0]).removeprefix("Do53:"), error[3]) for error in errors]
    parts = [
        f"{server} answered {what}{_extended_errors(error[4] if len(error) > 4 else None)}"
        if isinstance(what, str)
        else f"{server}: {_first_line(what)}"
        for (server, what), error in zip(said, errors, strict=True)
    ]
    detail = "; ".join(parts)[:250] or _first_line(exc)
    if said and all(isinstance(what, dns.exception.DNSException) for _, what in said):
        # malformed answers, CNAME loops: servers answered, but nothing usable
        return LookupFailure(Reason.DNS, f"{name} {rdtype}: unusable answer ({detail})")
    return LookupFailure(Reason.SERVFAIL, f"{name} {rdtype}: {detail}")


def _extended_errors(response: object) -> str:
    """The RFC 8914 extended errors of a refusal, e.g. " (EDE 7 (Signature Expired))": why a validator said SERVFAIL."""
    if not isinstance(response, dns.message.Message):
        return ""
    texts = [option.to_text() for option in response.extended_errors()[:3]]
    return f" ({'; '.join(texts)})" if texts else ""


def _first_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


async def query(resolver: dns.asyncresolver.Resolver, name: str, rdtype: str) -> dns.resolver.Answer:
    try:
        return await resolver.resolve(name, rdtype, search=False)
    except (dns.exception.DNSException, OSError, TimeoutError) as exc:
        raise classify(exc, name, rdtype) from None


@dataclass(frozen=True, slots=True)
class Addresses:
    """A name's addresses, the name they were found at, and whether the answers were authenticated."""

    addresses: tuple[str, ...]
    canonical_name: str  # the fully CNAME-expanded name, without the final dot; the name itself if no alias
    authenticated: bool  # AD bit on every answer that had addresses (needs a resolver that asks for it)


async def addresses(resolver: dns.asyncresolver.Resolver, name: str, *, literals: bool = True) -> list[str]:
    """A then AAAA addresses of a name (an IP literal is its own address unless `literals` is False).

    NXDOMAIN from either lookup ends it; a name with neither record type fails
    with NO_ADDRESS.
    """
    return list((await lookup_addresses(resolver, name, literals=literals)).addresses)


async def lookup_addresses(resolver: dns.asyncresolver.Resolver, name: str, *, literals: bool = True) -> Addresses:
    """addresses(), with the canonical name and AD bit of the answers (RFC 7672 2.2.3 needs both)."""
    if literals:
        try:
            ipaddress.ip_address(name)
            return Addresses((name,), name, False)
        except ValueError:
            pass
        if name.lower() in _LOCAL_NAMES:
            return Addresses(tuple(_LOCAL_NAMES[name.lower()]), name.rstrip("."), False)
    results = await asyncio.gather(query(resolver, name, "A"), query(resolver, name, "AAAA"), return_exceptions=True)
    found: list[str] = []
    answers: list[dns.resolver.Answer] = []
    failures: list[LookupFailure] = []
    for result in results:
        if isinstance(result, LookupFailure):
            failures.append(result)
        elif isinstance(result, BaseException):
            raise result
        else:
            answers.append(result)
            found += [rdata.to_text() for rdata in result]
    if found:
        with_data = [a for a in answers if len(a)]
        canonical = with_data[0].canonical_name.to_text(omit_final_dot=True)
        authenticated = all(a.response.flags & dns.flags.AD for a in with_data)
        return Addresses(tuple(found), canonical, authenticated)
    for reason in (Reason.NXDOMAIN, Reason.TIMEOUT, Reason.SERVFAIL, Reason.DNS):
        for failure in failures:
            if failure.reason is reason:
                raise failure
    raise LookupFailure(Reason.NO_ADDRESS, f"{name}: no A or AAAA record")
