"""SPF (RFC 7208) and DMARC (RFC 7489) record presence and syntax checks; their depth, as checkdmarc checks
it (SPF lookup limits and loops, DMARC policy and report destinations), and the TLS-RPT record (RFC 8460)."""

from __future__ import annotations

import asyncio
import ipaddress
import re
from dataclasses import dataclass, field

import dns.asyncresolver

from monitor.model.facts import MAX_FINDING_DETAIL, FindingLevel, PolicyFinding, PolicyRecord
from monitor.model.failures import LookupFailure
from monitor.model.results import Reason
from monitor.probes import resolve

_SPF_MECHANISM = re.compile(
    r"^[+\-~?]?(all|include:\S+|exists:\S+|ptr(:\S+)?|a(:[^/\s]+)?(/\d{1,2})?(//\d{1,3})?"
    r"|mx(:[^/\s]+)?(/\d{1,2})?(//\d{1,3})?|ip4:\S+|ip6:\S+)$",
    re.IGNORECASE,
)
_SPF_MODIFIER = re.compile(r"^[a-z][a-z0-9_.-]*=\S*$", re.IGNORECASE)
_DMARC_POLICIES = {"none", "quarantine", "reject"}
_DMARC_START = re.compile(r"^v\s*=\s*DMARC1\s*(;|$)", re.IGNORECASE)

__all__ = ["PolicyRecord", "check_dmarc", "check_spf", "dmarc_depth", "spf_depth", "tls_rpt"]


def _strings(txt_records: list[str], prefix: str) -> list[str]:
    return [t for t in txt_records if t.lower().startswith(prefix) and t[len(prefix) : len(prefix) + 1] in ("", " ")]


def check_spf(txt_records: list[str]) -> PolicyRecord:
    """The domain's TXT strings (each record's strings joined) to a verdict on its SPF record."""
    found = _strings(txt_records, "v=spf1")
    if not found:
        return PolicyRecord("spf", "", "no SPF record (v=spf1)")
    if len(found) > 1:
        return PolicyRecord("spf", found[0], f"{len(found)} SPF records: RFC 7208 makes that a permerror")
    record = found[0]
    if not record.isascii():
        return PolicyRecord("spf", record, "non-ASCII characters: RFC 7208 records are US-ASCII only")
    for term in record.split()[1:]:
        if _SPF_MECHANISM.match(term):
            kind, _, value = term.lstrip("+-~?").partition(":")
            if kind.lower() in ("ip4", "ip6"):
                try:
                    network = ipaddress.ip_network(value, strict=False)
                except ValueError:
                    return PolicyRecord("spf", record, f"bad network in {term!r}")
                if (kind.lower() == "ip4") != (network.version == 4):
                    return PolicyRecord("spf", record, f"wrong address family in {term!r}")
            continue
        if not _SPF_MODIFIER.match(term):
            return PolicyRecord("spf", record, f"unknown term {term!r}")
    return PolicyRecord("spf", record, "")


def check_dmarc(txt_records: list[str]) -> PolicyRecord:
    """The `_dmarc.<domain>` TXT strings to a verdict on the DMARC record."""
    found = [t for t in txt_records if _DMARC_START.match(t)]
    if not found:
        return PolicyRecord("dmarc", "", "no DMARC record (v=DMARC1)")
    if len(found) > 1:
        return PolicyRecord("dmarc", found[0], f"{len(found)} DMARC records: receivers ignore them all")
    record = found[0]
    if not record.isascii():
        return PolicyRecord("dmarc", record, "non-ASCII characters: RFC 7489 records are US-ASCII only")
    tags: dict[str, str] = {}
    for part in record.split(";"):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep:
            return PolicyRecord("dmarc", record, f"malformed tag {part!r}")
        tags[key.strip().lower()] = value.strip()
    if tags.get("p", "").lower() not in _DMARC_POLICIES:
        return PolicyRecord("dmarc", record, "p= must be none, quarantine or reject")
    if "sp" in tags and tags["sp"].lower() not in _DMARC_POLICIES:
        return PolicyRecord("dmarc", record, "sp= must be none, quarantine or reject")
    if "pct" in tags and not (tags["pct"].isdigit() and 0 <= int(tags["pct"]) <= 100):
        return PolicyRecord("dmarc", record, "pct= must be 0 to 100")
    for key in ("rua", "ruf"):
        for uri in filter(None, (u.strip() for u in tags.get(key, "").split(","))):
            if not uri.lower().startswith("mailto:"):
                return PolicyRecord("dmarc", record, f"{key}= URI {uri!r} is not mailto:")
    return PolicyRecord("dmarc", record, "")


# -- depth: the record as receivers evaluate it ---------------------------------------------------

SPF_LOOKUP_LIMIT = 10  # RFC 7208 4.6.4: include, a, mx, ptr, exists and redirect
SPF_VOID_LIMIT = 2  # RFC 7208 4.6.4: lookups answered NXDOMAIN or NODATA
SPF_MX_LIMIT = 10  # RFC 7208 4.6.4: exchanges of one mx mechanism
# What one SPF evaluation may cost us, whatever the record says: past the limits the verdict is already
# "error", so going on would only spend queries on a record every receiver rejects.
MAX_SPF_QUERIES = 2 * SPF_LOOKUP_LIMIT + 5
MAX_REPORT_DESTINATIONS = 8  # distinct rua/ruf domains checked for authorisation and MX
_TLSRPT_START = re.compile(r"^v=TLSRPTv1\s*(;|$)")
_TLSRPT_EXT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
_MACRO = "%{"


def _finding(record: str, name: str, level: FindingLevel, detail: str = "") -> PolicyFinding:
    text = detail if detail.isprintable() else "".join(c if c.isprintable() else "?" for c in detail)
    return PolicyFinding(record, name, level, text[:MAX_FINDING_DETAIL])


@dataclass(frozen=True, slots=True)
class _Txt:
    """A name's TXT records, each record's strings joined; failure set when the lookup failed (not NXDOMAIN)."""

    texts: tuple[str, ...] = ()
    failure: str = ""


async def txt_records(resolver: dns.asyncresolver.Resolver, name: str) -> _Txt:
    try:
        answer = await resolve.query(resolver, name, "TXT")
    except LookupFailure as exc:
        if exc.reason in (Reason.NXDOMAIN, Reason.NO_ADDRESS):
            return _Txt()
        return _Txt(failure=str(exc))
    return _Txt(tuple(b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer))


async def _exists(resolver: dns.asyncresolver.Resolver, name: str, rdtypes: tuple[str, ...]) -> int | str:
    """How many records of these types the name has (0: a void lookup), or why the lookup failed."""
    results = await asyncio.gather(*(resolve.query(resolver, name, t) for t in rdtypes), return_exceptions=True)
    count, failures = 0, []
    for result in results:
        if isinstance(result, LookupFailure):
            if result.reason not in (Reason.NXDOMAIN, Reason.NO_ADDRESS):
                failures.append(str(result))
        elif isinstance(result, BaseException):
            raise result
        else:
            count += len(result)
    return count if count or not failures else failures[0]


@dataclass
class _SpfWalk:
    """One recursive SPF evaluation: the counts RFC 7208 4.6.4 limits, and what was found on the way."""

    resolver: dns.asyncresolver.Resolver
    lookups: int = 0
    voids: int = 0
    queries: int = 0
    loops: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    multiple: list[str] = field(default_factory=list)
    ptr: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    void_names: list[str] = field(default_factory=list)
    big_mx: list[str] = field(default_factory=list)

    def spent(self) -> bool:
        return self.queries >= MAX_SPF_QUERIES or self.lookups > SPF_LOOKUP_LIMIT + 5

    async def count(self, name: str, rdtypes: tuple[str, ...]) -> int | None:
        """Records of `name` (None: failed or not asked), counting a void lookup."""
        if _MACRO in name or self.spent():
            return None  # a macro depends on the sender: nothing to look up without one
        self.queries += len(rdtypes)
        found = await _exists(self.resolver, name, rdtypes)
        if isinstance(found, str):
            self.failed.append(found)
            return None
        if found == 0:
            self.voids += 1
            self.void_names.append(name)
        return found

    async def record(self, domain: str, chain: tuple[str, ...]) -> None:
        """Evaluate the SPF record of an include or redirect target (the top-level one has chain ())."""
        if self.spent():
            return
        self.queries += 1
        txt = await txt_records(self.resolver, domain)
        if txt.failure:
            self.failed.append(txt.failure)
            return
        found = _strings(list(txt.texts), "v=spf1")
        if not found:
            if chain:
                self.missing.append(f"{chain[-1]} -> {domain}")
            return
        if len(found) > 1:
            self.multiple.append(domain)
        await self.terms(domain, found[0], (*chain, domain.lower().rstrip(".")))

    async def terms(self, domain: str, record: str, chain: tuple[str, ...]) -> None:
        redirect = ""
        has_all = False
        for term in record.split()[1:]:
            kind, _, value = term.lstrip("+-~?").partition(":")
            kind = kind.lower().split("/", 1)[0]  # "a/24", "mx//64": the prefix lengths are no part of the name
            if "=" in kind:
                modifier, _, target = term.partition("=")
                if modifier.lower() == "redirect":
                    redirect = target
                continue
            if kind == "all":
                has_all = True
            elif kind == "include":
                await self.include(value, chain)
            elif kind in ("a", "mx"):
                self.lookups += 1
                target = (value.split("/", 1)[0] if value else domain) or domain
                if kind == "a":
                    await self.count(target, ("A", "AAAA"))
                else:
                    exchanges = await self.count(target, ("MX",))
                    if exchanges is not None and exchanges > SPF_MX_LIMIT:
                        self.big_mx.append(f"mx:{target} has {exchanges} exchanges")
            elif kind == "ptr":
                self.lookups += 1
                self.ptr.append(domain)
            elif kind == "exists":
                self.lookups += 1
                await self.count(value, ("A",))
        if redirect and not has_all:  # RFC 7208 6.1: redirect is ignored when the record has an all
            await self.include(redirect, chain)

    async def include(self, target: str, chain: tuple[str, ...]) -> None:
        self.lookups += 1
        if _MACRO in target:
            return
        if target.lower().rstrip(".") in chain:
            self.loops.append(" -> ".join((*chain, target)))
            return
        await self.record(target, chain)


async def spf_depth(resolver: dns.asyncresolver.Resolver, domain: str, record: str) -> tuple[PolicyFinding, ...]:
    """The domain's SPF record (well formed, already found) evaluated recursively, as checkdmarc does: the
    10-lookup and 2-void-lookup limits, include/redirect loops and missing targets, multiple records on the
    way, ptr. Sender-dependent terms (macros) are counted but not looked up."""
    walk = _SpfWalk(resolver)
    await walk.terms(domain, record, (domain.lower().rstrip("."),))
    ok, warning, error = FindingLevel.OK, FindingLevel.WARNING, FindingLevel.ERROR
    over = walk.lookups > SPF_LOOKUP_LIMIT or bool(walk.big_mx)
    lookups = f"{walk.lookups}{'+' if walk.spent() else ''}/{SPF_LOOKUP_LIMIT} DNS lookups"
    if walk.big_mx:
        lookups += "; " + ", ".join(walk.big_mx) + f" (at most {SPF_MX_LIMIT})"
    void = f"{walk.voids}/{SPF_VOID_LIMIT} void lookups"
    if walk.void_names:
        void += " (" + ", ".join(walk.void_names) + ")"
    return (
        _finding("spf", "dns_lookups", error if over else ok, lookups + (": a permerror" if over else "")),
        _finding("spf", "void_lookups", error if walk.voids > SPF_VOID_LIMIT else ok, void),
        _finding("spf", "include_loop", error if walk.loops else ok, "; ".join(walk.loops)),
        _finding("spf", "include_missing", error if walk.missing else ok, _no_spf(walk.missing)),
        _finding("spf", "multiple_records", error if walk.multiple else ok, _several(walk.multiple)),
        _finding("spf", "ptr", warning if walk.ptr else ok, _ptr(walk.ptr)),
        _finding("spf", "lookup", warning if walk.failed else ok, "; ".join(walk.failed)),
    )


def _no_spf(missing: list[str]) -> str:
    return "no SPF record at " + ", ".join(missing) + " (a permerror)" if missing else ""


def _several(domains: list[str]) -> str:
    return "more than one SPF record at " + ", ".join(domains) + " (a permerror)" if domains else ""


def _ptr(domains: list[str]) -> str:
    return "ptr in the record of " + ", ".join(domains) + " (RFC 7208 5.5: do not use)" if domains else ""


def _dmarc_tags(record: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for part in record.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep:
            tags[key.strip().lower()] = value.strip()
    return tags


def _destinations(tags: dict[str, str]) -> list[str]:
    """The domains of the mailto: rua and ruf addresses, in order, without duplicates."""
    found: list[str] = []
    for key in ("rua", "ruf"):
        for uri in filter(None, (u.strip() for u in tags.get(key, "").split(","))):
            if uri.lower().startswith("mailto:"):
                address = uri[len("mailto:") :].split("!", 1)[0]  # "!10m": a size limit
                host = address.rpartition("@")[2].lower().rstrip(".")
                if host and host not in found:
                    found.append(host)
    return found


def _external(domain: str, destination: str) -> bool:
    """RFC 7489 7.1: a destination outside the domain needs the domain's authorisation. The organizational
    domain (a public suffix list) is not known here: a parent or subdomain of the domain counts as inside."""
    domain = domain.lower().rstrip(".")
    return not (destination == domain or destination.endswith("." + domain) or domain.endswith("." + destination))


async def dmarc_depth(resolver: dns.asyncresolver.Resolver, domain: str, record: str) -> tuple[PolicyFinding, ...]:
    """A well-formed DMARC record's policy and report destinations: p=none and sp=none, pct, external rua/ruf
    destinations without the `<domain>._report._dmarc.<destination>` record (RFC 7489 7.1), destinations
    without MX records."""
    ok, warning = FindingLevel.OK, FindingLevel.WARNING
    tags = _dmarc_tags(record)
    policy = tags.get("p", "").lower()
    subdomains = tags.get("sp", policy).lower()
    pct = tags.get("pct", "100")
    findings = [
        _finding("dmarc", "policy", warning if policy == "none" else ok, f"p={policy}" + _unenforced(policy)),
        _finding("dmarc", "subdomain_policy", warning if subdomains == "none" else ok, f"sp={subdomains}"),
        _finding("dmarc", "pct", warning if pct != "100" else ok, f"pct={pct}" if pct != "100" else ""),
    ]
    destinations = _destinations(tags)[:MAX_REPORT_DESTINATIONS]
    base = domain.lower().rstrip(".")
    external = [d for d in destinations if _external(base, d)]
    authorised, mx = await asyncio.gather(
        asyncio.gather(*(_authorised(resolver, base, d) for d in external)),
        asyncio.gather(*(_exists(resolver, d, ("MX",)) for d in destinations)),
    )
    unauthorised = [f"{d}: {why}" for d, why in zip(external, authorised, strict=True) if why]
    findings.append(_finding("dmarc", "report_authorization", warning if unauthorised else ok, "; ".join(unauthorised)))
    without_mx = [
        f"{d}: {'no MX record' if n == 0 else n}"
        for d, n in zip(destinations, mx, strict=True)
        if n == 0 or isinstance(n, str)
    ]
    findings.append(_finding("dmarc", "report_mx", warning if without_mx else ok, "; ".join(without_mx)))
    return tuple(findings)


def _unenforced(policy: str) -> str:
    return ": receivers report forged mail but neither reject nor quarantine it" if policy == "none" else ""


async def _authorised(resolver: dns.asyncresolver.Resolver, domain: str, destination: str) -> str:
    """Why reports for `domain` may not go to `destination` ("" when its record authorises them)."""
    name = f"{domain}._report._dmarc.{destination}"
    txt = await txt_records(resolver, name)
    if txt.failure:
        return f"lookup failed: {txt.failure}"
    if any(_DMARC_START.match(t) for t in txt.texts):
        return ""
    return f"no v=DMARC1 record at {name}: receivers do not send it reports"


def check_tls_rpt(txt_records: list[str]) -> PolicyFinding:
    """The `_smtp._tls.<domain>` TXT strings to a verdict on the TLS-RPT record (RFC 8460 3)."""
    found = [t for t in txt_records if t.startswith("v=TLSRPTv1")]
    if not found:
        return _finding("tls_rpt", "record", FindingLevel.WARNING, "no TLS-RPT record (v=TLSRPTv1)")
    if len(found) > 1:
        return _finding("tls_rpt", "record", FindingLevel.ERROR, f"{len(found)} TLS-RPT records: senders use none")
    record = found[0]
    problem = _tls_rpt_problem(record)
    return _finding("tls_rpt", "record", FindingLevel.ERROR if problem else FindingLevel.OK, problem or record)


def _tls_rpt_problem(record: str) -> str:
    if not _TLSRPT_START.match(record) or not record.isascii():
        return "the record must start with v=TLSRPTv1; and be US-ASCII"
    fields = [part.strip() for part in record.split(";")[1:]]
    rua: list[str] = []
    for part in filter(None, fields):
        key, sep, value = part.partition("=")
        if not sep or not _TLSRPT_EXT.match(key.strip()):
            return f"malformed field {part!r}"
        if key.strip() == "rua":
            rua = [u.strip() for u in value.split(",")]
    if not rua:
        return "no rua= field: senders have nowhere to report"
    for uri in rua:
        scheme = uri.partition(":")[0].lower()
        if scheme not in ("mailto", "https") or len(uri) <= len(scheme) + 1:
            return f"rua URI {uri!r} is neither mailto: nor https:"
    return ""


async def tls_rpt(resolver: dns.asyncresolver.Resolver, domain: str) -> PolicyFinding:
    txt = await txt_records(resolver, f"_smtp._tls.{domain}")
    if txt.failure:
        return _finding("tls_rpt", "lookup", FindingLevel.WARNING, txt.failure)
    return check_tls_rpt(list(txt.texts))
