"""RFC 7208 check_host(): whether a domain's SPF record authorises one IP address.

The spoof test asks it of the agent's own source address: a forged message from an address the
protected domain's SPF authorises tests nothing. Bounded as the RFC requires receivers to be: at most
10 terms that cause DNS lookups (include, a, mx, ptr, exists, redirect), at most 2 of them "void"
(NXDOMAIN or no answer), at most 10 names per mx and ptr; beyond that, permerror.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass, field

import dns.asyncresolver
import dns.rdtypes.ANY.MX

from monitor.model.failures import LookupFailure
from monitor.model.results import Reason
from monitor.probes import resolve

MAX_DNS_TERMS = 10  # RFC 7208 4.6.4
MAX_VOID_LOOKUPS = 2
MAX_NAMES = 10  # per mx or ptr term
_MACRO = re.compile(r"%\{([slodiphv])(\d*)(r?)([.\-+,/_=]*)\}|%%|%_|%-|%", re.IGNORECASE)
_CIDR = re.compile(r"^(?P<name>[^/]*)(?:/(?P<v4>\d{1,2}))?(?://(?P<v6>\d{1,3}))?$")
_QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}


class SpfResult(enum.Enum):
    PASS = "pass"  # noqa: S105 -- an SPF result, not a password
    FAIL = "fail"
    SOFTFAIL = "softfail"
    NEUTRAL = "neutral"
    NONE = "none"
    PERMERROR = "permerror"
    TEMPERROR = "temperror"


class _Abort(Exception):
    def __init__(self, result: SpfResult, why: str) -> None:
        super().__init__(why)
        self.result = result
        self.why = why


@dataclass(frozen=True, slots=True)
class SpfVerdict:
    result: SpfResult
    why: str  # the matching term, or what went wrong


@dataclass
class _Budget:
    terms: int = 0
    voids: int = 0
    seen: set[str] = field(default_factory=set)  # domains being evaluated: an include loop is a permerror

    def spend(self, term: str) -> None:
        self.terms += 1
        if self.terms > MAX_DNS_TERMS:
            raise _Abort(SpfResult.PERMERROR, f"more than {MAX_DNS_TERMS} DNS-querying terms (at {term})")

    def void(self, name: str) -> None:
        self.voids += 1
        if self.voids > MAX_VOID_LOOKUPS:
            raise _Abort(SpfResult.PERMERROR, f"more than {MAX_VOID_LOOKUPS} void lookups (at {name})")


class _Evaluation:
    def __init__(self, resolver: dns.asyncresolver.Resolver, ip: str, sender: str, helo: str) -> None:
        self.resolver = resolver
        self.ip = ipaddress.ip_address(ip)
        self.sender = sender
        self.helo = helo
        self.budget = _Budget()

    async def _lookup(self, name: str, rdtype: str) -> list[str]:
        """rdata texts; [] (a void lookup) for NXDOMAIN or no records; temperror for anything else."""
        try:
            answer = await resolve.query(self.resolver, name, rdtype)
        except LookupFailure as exc:
            if exc.reason in (Reason.NXDOMAIN, Reason.NO_ADDRESS):
                self.budget.void(name)
                return []
            raise _Abort(SpfResult.TEMPERROR, f"{name} {rdtype}: {exc}") from None
        if rdtype == "MX":
            return [r.exchange.to_text(omit_final_dot=True) for r in answer if isinstance(r, dns.rdtypes.ANY.MX.MX)]
        if rdtype == "TXT":
            return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]
        return [r.to_text().rstrip(".") for r in answer]

    async def record(self, domain: str) -> str | None:
        try:
            answer = await resolve.query(self.resolver, domain, "TXT")
        except LookupFailure as exc:
            if exc.reason in (Reason.NXDOMAIN, Reason.NO_ADDRESS):
                return None
            raise _Abort(SpfResult.TEMPERROR, f"{domain} TXT: {exc}") from None
        texts = [b"".join(r.strings).decode("utf-8", "replace") for r in answer]
        found = [t for t in texts if t.lower() == "v=spf1" or t.lower().startswith("v=spf1 ")]
        if len(found) > 1:
            raise _Abort(SpfResult.PERMERROR, f"{domain}: {len(found)} SPF records")
        return found[0] if found else None

    def expand(self, spec: str, domain: str) -> str:
        """Macro expansion (RFC 7208 7.3); transformers (digits, r, delimiters) are honoured."""
        local, _, sender_domain = self.sender.rpartition("@")
        values = {
            "s": self.sender,
            "l": local or "postmaster",
            "o": sender_domain or self.helo,
            "d": domain,
            "i": _dotted(self.ip),
            "p": "unknown",  # RFC 7208 7.3: "unknown" is allowed instead of a PTR lookup
            "v": "in-addr" if self.ip.version == 4 else "ip6",
            "h": self.helo,
        }

        def one(match: re.Match[str]) -> str:
            text = match.group(0)
            if text == "%%":
                return "%"
            if text == "%_":
                return " "
            if text == "%-":
                return "%20"
            if text == "%":
                raise _Abort(SpfResult.PERMERROR, f"bad macro in {spec!r}")
            letter, digits, reverse, delimiters = match.groups()
            parts = re.split("[" + re.escape(delimiters or ".") + "]", values[letter.lower()])
            if reverse:
                parts.reverse()
            if digits:
                if int(digits) == 0:
                    raise _Abort(SpfResult.PERMERROR, f"bad macro in {spec!r}")
                parts = parts[-int(digits) :]
            return ".".join(parts)

        return _MACRO.sub(one, spec)

    async def check_host(self, domain: str) -> SpfVerdict:
        key = domain.lower().rstrip(".")
        if key in self.budget.seen:
            raise _Abort(SpfResult.PERMERROR, f"include/redirect loop at {domain}")
        self.budget.seen.add(key)
        try:
            return await self._check(domain)
        finally:
            self.budget.seen.discard(key)

    async def _check(self, domain: str) -> SpfVerdict:
        record = await self.record(domain)
        if record is None:
            return SpfVerdict(SpfResult.NONE, f"{domain}: no SPF record")
        if not record.isascii():
            raise _Abort(SpfResult.PERMERROR, f"{domain}: non-ASCII SPF record")
        redirect: str | None = None
        for term in record.split()[1:]:
            name, eq, value = term.partition("=")
            if eq and re.fullmatch(r"[A-Za-z][A-Za-z0-9_.\-]*", name):
                if name.lower() == "redirect":
                    redirect = value
                continue  # exp= and unknown modifiers do not change the result
            qualifier = _QUALIFIERS.get(term[0])
            mechanism = term[1:] if qualifier else term
            if await self._matches(mechanism, domain):
                return SpfVerdict(SpfResult(qualifier or "pass"), f"{domain}: {term}")
        if redirect is not None:
            self.budget.spend("redirect")
            target = self.expand(redirect, domain)
            verdict = await self.check_host(target)
            if verdict.result is SpfResult.NONE:
                raise _Abort(SpfResult.PERMERROR, f"redirect to {target}: no SPF record")
            return verdict
        return SpfVerdict(SpfResult.NEUTRAL, f"{domain}: no term matched")

    async def _matches(self, mechanism: str, domain: str) -> bool:
        kind, colon, argument = mechanism.partition(":")
        kind = kind.lower()
        if kind == "all" and not colon:
            return True
        if kind in ("ip4", "ip6"):
            try:
                network = ipaddress.ip_network(argument, strict=False)
            except ValueError:
                raise _Abort(SpfResult.PERMERROR, f"bad {mechanism}") from None
            return self.ip.version == network.version and self.ip in network
        if kind == "include":
            self.budget.spend(mechanism)
            verdict = await self.check_host(self.expand(argument, domain))
            if verdict.result in (SpfResult.TEMPERROR, SpfResult.PERMERROR):
                raise _Abort(verdict.result, verdict.why)
            if verdict.result is SpfResult.NONE:
                raise _Abort(SpfResult.PERMERROR, f"include:{argument}: no SPF record")
            return verdict.result is SpfResult.PASS
        if kind == "exists":
            self.budget.spend(mechanism)
            return bool(await self._lookup(self.expand(argument, domain), "A"))
        if kind == "ptr":
            self.budget.spend(mechanism)
            return False  # RFC 7208 5.5 "SHOULD NOT be published"; no PTR lookups are made for it here
        base_kind, _, _ = mechanism.partition("/")
        if base_kind.lower() in ("a", "mx") or kind in ("a", "mx"):
            return await self._a_or_mx(mechanism, domain)
        raise _Abort(SpfResult.PERMERROR, f"unknown mechanism {mechanism!r}")

    async def _a_or_mx(self, mechanism: str, domain: str) -> bool:
        self.budget.spend(mechanism)
        kind = re.split("[:/]", mechanism, maxsplit=1)[0].lower()
        rest = mechanism[len(kind) :]
        match = _CIDR.match(rest.removeprefix(":"))
        if match is None:
            raise _Abort(SpfResult.PERMERROR, f"bad {mechanism}")
        target = self.expand(match["name"], domain) if match["name"] else domain
        prefix = int(match["v4"] or 32) if self.ip.version == 4 else int(match["v6"] or 128)
        if prefix > (32 if self.ip.version == 4 else 128):
            raise _Abort(SpfResult.PERMERROR, f"bad prefix in {mechanism}")
        hosts = [target]
        if kind == "mx":
            hosts = await self._lookup(target, "MX")
            if len(hosts) > MAX_NAMES:
                raise _Abort(SpfResult.PERMERROR, f"{target}: more than {MAX_NAMES} MX names")
        rdtype = "A" if self.ip.version == 4 else "AAAA"
        for host in hosts:
            for address in await self._lookup(host, rdtype):
                network = ipaddress.ip_network(f"{address}/{prefix}", strict=False)
                if self.ip in network:
                    return True
        return False


def _dotted(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if ip.version == 4:
        return str(ip)
    return ".".join(ip.exploded.replace(":", ""))


async def check_host(
    resolver: dns.asyncresolver.Resolver, ip: str, domain: str, sender: str, helo: str = ""
) -> SpfVerdict:
    """The SPF result of `domain` for a message from `ip` with MAIL FROM `sender`; never raises."""
    evaluation = _Evaluation(resolver, ip, sender, helo or domain)
    try:
        return await evaluation.check_host(domain)
    except _Abort as abort:
        return SpfVerdict(abort.result, abort.why)
