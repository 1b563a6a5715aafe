"""MX check: a domain's MX records, their addresses, and optionally an SMTP probe of each."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

import dns.asyncresolver
import dns.flags
import dns.rdtypes.ANY.MX
import dns.reversename

from monitor.config.schema import MxCheckConfig, SmtpProbeConfig
from monitor.model.facts import (
    DaneFacts,
    DnsblFacts,
    FindingLevel,
    MtaStsFacts,
    MtaStsPolicyFacts,
    PolicyFinding,
    PolicyRecord,
)
from monitor.model.failures import LookupFailure, ProbeFailure, classify
from monitor.model.results import MxRecord, MxResult, Phase, Reason, ReverseDns, SmtpResult
from monitor.model.spoof import SpoofAttempt
from monitor.probes import ProbeEnv, dane, mta_sts, resolve, smtp, spoof
from monitor.probes.dane import TlsaLookup
from monitor.probes.dnsbl import check as dnsbl_check
from monitor.probes.policy_records import check_dmarc, check_spf, dmarc_depth, spf_depth, tls_rpt

_MAX_PTR_NAMES = 10


def _norm(name: str) -> str:
    return name.lower().rstrip(".")


@dataclass(frozen=True, slots=True)
class Alias:
    """An exchange that is a CNAME: the fully expanded name, and whether the chain was DNSSEC-authenticated."""

    target: str
    secure: bool


class _Progress:
    """One MX check's progress, shared by its checks: timings and what has been found so far."""

    def __init__(self, config: MxCheckConfig, env: ProbeEnv) -> None:
        self.config = config
        self.env = env
        self.timings: dict[str, float] = {}
        self.records: list[MxRecord] = []
        self.implicit_mx = False
        self.missing: tuple[str, ...] = ()
        self.unexpected: tuple[str, ...] = ()
        self.authenticated: bool | None = None
        self.mta_sts_facts: MtaStsFacts | None = None
        self.spf: PolicyRecord | None = None
        self.dmarc: PolicyRecord | None = None
        self.findings: list[PolicyFinding] = []  # policy depth and TLS-RPT
        self.dnsbl: DnsblFacts | None = None
        self.phase = Phase.MX
        # exchanges (normalised) that are CNAMEs: only those need TLSA at another name
        self.aliases: dict[str, Alias] = {}
        # the whole check's deadline (time.monotonic()): the spoof test watches its mailbox until shortly before
        self.deadline = time.monotonic() + (config.timeout or env.defaults.timeout)

    def timed(self, phase: Phase, started: float) -> None:
        self.timings[phase.value] = time.perf_counter() - started

    def address_resolver(self) -> dns.asyncresolver.Resolver:
        # DANE needs to know whether an alias's CNAME chain is secure (RFC 7672 2.2.3): ask for AD then
        if self.config.dane != "off" and self.config.dnssec != "off":
            return self.env.dnssec_resolver
        return self.env.resolver

    async def addresses(self, exchange: str) -> tuple[str, ...]:
        found = await resolve.lookup_addresses(self.address_resolver(), exchange)
        target = _norm(found.canonical_name)
        if target != _norm(exchange):
            self.aliases[_norm(exchange)] = Alias(target, found.authenticated)
        return found.addresses


async def lookup_mx(p: _Progress) -> list[tuple[int, str]]:
    p.phase = Phase.MX
    started = time.perf_counter()
    domain = p.config.domain
    resolver = p.env.resolver if p.config.dnssec == "off" else p.env.dnssec_resolver
    try:
        answer = await resolve.query(resolver, domain, "MX")
        if p.config.dnssec != "off":
            p.authenticated = bool(answer.response.flags & dns.flags.AD)
    except LookupFailure as exc:
        if exc.reason is not Reason.NO_ADDRESS:  # NoAnswer maps to NO_ADDRESS
            raise ProbeFailure(exc.reason, str(exc), phase=Phase.MX) from None
        if p.config.dnssec != "off":  # a validated "no MX" is as authenticated as an MX answer
            p.authenticated = bool(exc.authenticated)
        p.timed(Phase.MX, started)
        return []
    p.timed(Phase.MX, started)
    pairs = []
    for rdata in answer:
        assert isinstance(rdata, dns.rdtypes.ANY.MX.MX)
        pairs.append((int(rdata.preference), rdata.exchange.to_text(omit_final_dot=True)))
    # RFC 7505: a single "MX 0 ." says the domain accepts no mail at all.
    if any(exchange in ("", ".") for _, exchange in pairs):
        raise ProbeFailure(Reason.NULL_MX, f"{domain} has a null MX (RFC 7505): it accepts no mail", phase=Phase.MX)
    return sorted(pairs, key=lambda pair: (pair[0], _norm(pair[1])))


async def lookup_addresses(p: _Progress, pairs: list[tuple[int, str]]) -> None:
    p.phase = Phase.ADDRESS
    started = time.perf_counter()
    found = await asyncio.gather(*(p.addresses(exchange) for _, exchange in pairs), return_exceptions=True)
    for (preference, exchange), addrs in zip(pairs, found, strict=True):
        if isinstance(addrs, LookupFailure):
            p.records.append(MxRecord(preference, exchange, (), error=str(addrs)))
        elif isinstance(addrs, BaseException):
            raise addrs
        else:
            p.records.append(MxRecord(preference, exchange, addrs))
    p.timed(Phase.ADDRESS, started)


async def implicit(p: _Progress) -> None:
    """No MX: RFC 5321 5.1 makes the domain's own address the exchange."""
    p.phase = Phase.ADDRESS
    started = time.perf_counter()
    domain = p.config.domain
    try:
        addrs = await p.addresses(domain)
    except LookupFailure as exc:
        if exc.reason is Reason.NO_ADDRESS:
            raise ProbeFailure(Reason.NO_MX, f"{domain} has no MX and no address", phase=Phase.MX) from None
        raise ProbeFailure(exc.reason, str(exc), phase=Phase.ADDRESS) from None
    p.timed(Phase.ADDRESS, started)
    p.implicit_mx = True
    p.records.append(MxRecord(0, domain, addrs))


def compare_expected(p: _Progress) -> None:
    if not p.config.expect:
        return
    expected = {_norm(e) for e in p.config.expect}
    actual = {_norm(r.exchange) for r in p.records}
    p.missing = tuple(sorted(expected - actual))
    p.unexpected = tuple(sorted(actual - expected))
    if p.missing or p.unexpected:
        parts = []
        if p.missing:
            parts.append("missing " + ", ".join(p.missing))
        if p.unexpected:
            parts.append("unexpected " + ", ".join(p.unexpected))
        raise ProbeFailure(Reason.UNEXPECTED_MX, "MX set differs from expected: " + "; ".join(parts), phase=Phase.MX)


def require_dnssec(p: _Progress) -> None:
    if p.config.dnssec == "require" and not p.authenticated:
        raise ProbeFailure(
            Reason.DNSSEC,
            f"the MX answer for {p.config.domain} is not DNSSEC-authenticated (no AD bit from the resolver)",
            phase=Phase.MX,
        )


async def probe_hosts(p: _Progress) -> None:
    """SMTP-probe each exchange: its first address, or every address (all_addresses)."""
    p.phase = Phase.HOSTS
    started = time.perf_counter()
    every = p.config.probe_hosts == "all_addresses"
    jobs = [
        (i, address)
        for i, record in enumerate(p.records)
        for address in (record.addresses if every else record.addresses[:1])
    ]
    results = await asyncio.gather(*(_probe(p, p.records[i], address) for i, address in jobs))
    by_record: dict[int, list[SmtpResult]] = {}
    for (i, _), result in zip(jobs, results, strict=True):
        by_record.setdefault(i, []).append(result)
    for i, probes in by_record.items():
        p.records[i] = replace(p.records[i], probe=probes[0], address_probes=tuple(probes) if every else ())
    p.timed(Phase.HOSTS, started)
    if not any(r.up for r in p.records):
        down = "; ".join(f"{r.exchange}: {r.probe.error if r.probe else r.error}" for r in p.records)
        raise ProbeFailure(Reason.HOSTS_DOWN, f"no exchange answers SMTP ({down})", phase=Phase.HOSTS)


async def reverse_dns(p: _Progress) -> None:
    """PTR of every exchange address, forward-confirmed (the name resolves back to it)."""
    p.phase = Phase.REVERSE
    started = time.perf_counter()
    pairs = [(i, a) for i, r in enumerate(p.records) for a in r.addresses]
    found = await asyncio.gather(*(_reverse(p, a) for _, a in pairs))
    by_record: dict[int, list[ReverseDns]] = {}
    for (i, _), rev in zip(pairs, found, strict=True):
        by_record.setdefault(i, []).append(rev)
    for i, revs in by_record.items():
        p.records[i] = replace(p.records[i], reverse=tuple(revs))
    p.timed(Phase.REVERSE, started)
    bad = [rev for revs in by_record.values() for rev in revs if not rev.confirmed]
    if bad and p.config.reverse_dns == "require":
        detail = "; ".join(f"{r.address}: {r.error}" for r in bad)
        raise ProbeFailure(Reason.REVERSE_DNS, f"reverse DNS not forward-confirmed: {detail}", phase=Phase.REVERSE)


async def _reverse(p: _Progress, address: str) -> ReverseDns:
    name = dns.reversename.from_address(address).to_text(omit_final_dot=True)
    try:
        answer = await resolve.query(p.env.resolver, name, "PTR")
    except LookupFailure as exc:
        if exc.reason in (Reason.NXDOMAIN, Reason.NO_ADDRESS):
            return ReverseDns(address, (), False, f"no PTR record ({exc})")
        return ReverseDns(address, (), False, f"PTR lookup failed: {exc}")
    names = tuple(sorted({rdata.to_text().rstrip(".") for rdata in answer}))
    # RFC 7208 4.6.4 bounds the names an SPF "ptr" check looks up to 10; so do we
    checked = names[:_MAX_PTR_NAMES]
    forward = await asyncio.gather(*(_forward(p, name, address) for name in checked))
    if any(why == "" for why in forward):
        return ReverseDns(address, names, True)
    skipped = f" ({len(names) - len(checked)} more PTR names not checked)" if len(names) > len(checked) else ""
    return ReverseDns(address, names, False, "; ".join(forward) + skipped)


async def _forward(p: _Progress, name: str, address: str) -> str:
    """Why `name` does not resolve back to `address` ("" when it does)."""
    try:
        # literals=False: a PTR target spelled like an IP address is a name like any other
        found = await resolve.addresses(p.env.resolver, name, literals=False)
    except LookupFailure as exc:
        return f"PTR {name}: {exc}"
    wanted = ipaddress.ip_address(address)
    if any(ipaddress.ip_address(a) == wanted for a in found):
        return ""
    return f"PTR {name} resolves to {', '.join(found)}, not {address}"


async def policy_records(p: _Progress) -> None:
    """SPF and DMARC: presence and syntax, then their depth (policy_depth); the TLS-RPT record (tls_rpt).

    An error-level finding fails the check as a malformed record does; a warning (p=none, an unauthorised
    report destination, no TLS-RPT record) is reported but does not."""
    p.phase = Phase.POLICY
    started = time.perf_counter()
    checks: list[tuple[str, str, Callable[[list[str]], PolicyRecord]]] = []
    if p.config.spf:
        checks.append(("spf", p.config.domain, check_spf))
    if p.config.dmarc:
        checks.append(("dmarc", f"_dmarc.{p.config.domain}", check_dmarc))
    found = await asyncio.gather(*(_txt(p, name) for _, name, _ in checks))
    problems = []
    failed: Reason | None = None
    for (kind, _, judge), texts in zip(checks, found, strict=True):
        if isinstance(texts, LookupFailure):
            # no verdict: a failed lookup says nothing about the record (receivers call it a temperror)
            failed = failed or texts.reason
            problems.append(f"{kind.upper()}: lookup failed: {texts}")
            continue
        verdict = judge(texts)
        if kind == "spf":
            p.spf = verdict
        else:
            p.dmarc = verdict
        if verdict.problem:
            problems.append(f"{kind.upper()}: {verdict.problem}")
    await _policy_depth(p)
    p.timed(Phase.POLICY, started)
    problems += [f"{f.record.upper()} {f.finding}: {f.detail}" for f in p.findings if f.level is FindingLevel.ERROR]
    if problems:
        raise ProbeFailure(failed or Reason.POLICY_RECORD, "; ".join(problems), phase=Phase.POLICY)


async def _policy_depth(p: _Progress) -> None:
    """The findings of the depth checks of the well-formed records, and of the TLS-RPT record."""
    resolver, domain = p.env.resolver, p.config.domain
    jobs: list[Awaitable[tuple[PolicyFinding, ...]]] = []
    if p.config.policy_depth and p.spf is not None and p.spf.valid:
        jobs.append(spf_depth(resolver, domain, p.spf.record))
    if p.config.policy_depth and p.dmarc is not None and p.dmarc.valid:
        jobs.append(dmarc_depth(resolver, domain, p.dmarc.record))
    if p.config.tls_rpt:
        jobs.append(_one(tls_rpt(resolver, domain)))
    for found in await asyncio.gather(*jobs):
        p.findings += found


async def _one(finding: Awaitable[PolicyFinding]) -> tuple[PolicyFinding, ...]:
    return (await finding,)


async def check_dnsbl(p: _Progress) -> None:
    """Every exchange address in every configured DNSBL zone: a listing fails the check; a refused query,
    an answer outside 127.0.0.0/8 or a failed lookup is kept as a warning (no verdict, not a listing)."""
    p.phase = Phase.DNSBL
    started = time.perf_counter()
    addresses = [address for record in p.records for address in record.addresses]
    p.dnsbl = await dnsbl_check(p.env.resolver, addresses, p.config.dnsbl, query_timeout=p.config.dnsbl_timeout)
    p.timed(Phase.DNSBL, started)
    listed = p.dnsbl.listed
    if listed:
        detail = "; ".join(
            f"{a.address} in {a.zone} ({', '.join(a.codes)}{': ' + a.reason if a.reason else ''})" for a in listed[:5]
        )
        more = f" and {len(listed) - 5} more" if len(listed) > 5 else ""
        raise ProbeFailure(Reason.LISTED, f"listed on a DNSBL: {detail}{more}", phase=Phase.DNSBL)


async def _txt(p: _Progress, name: str) -> list[str] | LookupFailure:
    """The TXT records of a name, each record's strings joined (RFC 7208 3.3); [] when there are none."""
    try:
        answer = await resolve.query(p.env.resolver, name, "TXT")
    except LookupFailure as exc:
        if exc.reason in (Reason.NXDOMAIN, Reason.NO_ADDRESS):
            return []
        return exc
    # undecodable bytes become U+FFFD: check_spf/check_dmarc then see a non-ASCII record
    return [b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer]


async def check_dane(p: _Progress) -> None:
    """RFC 7672: the TLSA records of each exchange against the chain its STARTTLS presented."""
    p.phase = Phase.DANE
    started = time.perf_counter()
    found = await asyncio.gather(*(_tlsa(p, r.exchange) for r in p.records))
    problems = []
    for i, (record, (lookup, alias)) in enumerate(zip(list(p.records), found, strict=True)):
        facts, problem = _dane_verdict(record, lookup, alias=alias)
        p.records[i] = replace(record, dane=facts)
        if problem:
            problems.append(f"{record.exchange}: {problem}")
    p.timed(Phase.DANE, started)
    if problems and p.config.dane == "verify":
        raise ProbeFailure(Reason.DANE_MISMATCH, "DANE: " + "; ".join(problems), phase=Phase.DANE)


async def _tlsa(p: _Progress, exchange: str) -> tuple[TlsaLookup, Alias | None]:
    """The TLSA lookup that applies to an exchange, and its alias when it is one (RFC 7672 2.2.3).

    A secure alias has its TLSA records at the fully CNAME-expanded name first, at the
    original name when the expanded one has none; an insecure alias only at the original.
    """
    port = p.config.port
    alias = p.aliases.get(_norm(exchange))
    if alias is not None and alias.secure:
        expanded = await dane.lookup_tlsa(p.env.resolver, alias.target, port)
        if expanded.records or expanded.error:
            return expanded, alias
    return await dane.lookup_tlsa(p.env.resolver, exchange, port), alias


async def check_mta_sts(p: _Progress) -> None:
    """RFC 8461: the _mta-sts TXT record, the HTTPS policy, and the exchanges it covers."""
    p.phase = Phase.MTA_STS
    started = time.perf_counter()
    domain = p.config.domain
    txt = await mta_sts.lookup_txt(p.env.resolver, domain)
    present = txt.error_kind != mta_sts.TXT_ABSENT  # no record is no MTA-STS, not a problem
    problem = f"TXT record: {txt.error}" if present and not txt.ok else ""
    policy_facts: MtaStsPolicyFacts | None = None
    if txt.ok:
        timeout = p.config.timeout or p.env.defaults.timeout
        policy = await mta_sts.fetch_policy(
            domain,
            p.env.resolver,
            port=p.config.mta_sts_port,
            ca_file=p.config.mta_sts_ca_file,
            timeout=timeout,
        )
        uncovered = mta_sts.check_exchanges(policy, [r.exchange for r in p.records]) if policy.ok else []
        policy_facts = MtaStsPolicyFacts(
            mode=policy.mode,
            max_age=policy.max_age,
            mx_patterns=policy.mx_patterns,
            verified=policy.verified,
            error=policy.error,
            error_kind=policy.error_kind,
            http_status=policy.http_status,
            uncovered=tuple(uncovered),
            cert_not_after=policy.cert_not_after,
        )
        if not policy.ok:
            problem = f"policy: {policy.error}"
        elif uncovered and policy.mode == "enforce":
            problem = "exchanges not covered by the enforced policy: " + ", ".join(uncovered)
    p.mta_sts_facts = MtaStsFacts(
        txt_id=txt.id,
        txt_error=txt.error,
        txt_error_kind=txt.error_kind,
        present=present,
        policy=policy_facts,
        valid=not problem,
    )
    p.timed(Phase.MTA_STS, started)
    if problem and p.config.mta_sts == "verify":
        raise ProbeFailure(Reason.MTA_STS_MISMATCH, f"MTA-STS: {problem}", phase=Phase.MTA_STS)


async def spoof_test(p: _Progress) -> None:
    """A message forged in the domain to every address of every exchange: each must refuse it."""
    p.phase = Phase.SPOOF
    started = time.perf_counter()
    found = await spoof.run(p.config, p.env, p.records, p.deadline)
    for i, attempts in enumerate(found):
        p.records[i] = replace(p.records[i], spoof=attempts)
    p.timed(Phase.SPOOF, started)
    accepted = [a for r in p.records for a in r.spoof if a.spoofable]
    if accepted:
        detail = "; ".join(f"{a.exchange} ({a.address}): {a.reply}{_landed(a)}" for a in accepted)
        raise ProbeFailure(
            Reason.SPOOFABLE,
            f"accepted a message forged from {p.config.spoof_sender}: {detail}",
            phase=Phase.SPOOF,
        )


def _landed(attempt: SpoofAttempt) -> str:
    """What the failure message says of a forgery found in the mailbox: " (landed in inbox: spf=fail ...)"."""
    mailbox = attempt.mailbox
    if mailbox is None or not mailbox.found:
        return ""
    verdicts = " ".join(f"{v.method}={v.result}" for v in mailbox.verdicts)
    return f" (landed in {mailbox.folder}" + (f": {verdicts})" if verdicts else ")")


async def _probe(p: _Progress, record: MxRecord, address: str) -> SmtpResult:
    spec = SmtpProbeConfig(
        name=f"{p.config.name}:{record.exchange}",
        keep_chain=p.config.dane != "off",
        host=address,
        port=p.config.port,
        tls=p.config.tls,
        timeout=p.config.timeout or p.env.defaults.timeout,
        ca_file=p.config.ca_file,
        servername=record.exchange,
        verify=p.config.verify,
    )
    result = await smtp.run(spec, p.env)
    return replace(result, host=record.exchange)


def _dane_verdict(record: MxRecord, lookup: dane.TlsaLookup, *, alias: Alias | None = None) -> tuple[DaneFacts, str]:
    """Facts for the report and the problem ("" when none) of one exchange's DANE state."""
    # RFC 7672 3.2.2: through a secure alias the certificate may name either the expanded or the original name
    names = (alias.target, record.exchange) if alias is not None and alias.secure else (record.exchange,)
    facts = DaneFacts(
        tlsa_name=lookup.name,
        records=tuple(str(r) for r in lookup.records),
        authenticated=lookup.authenticated,
        lookup_error=lookup.error,
        cname_target=alias.target if alias else "",
        cname_secure=alias.secure if alias else None,
        reference_names=names,
    )
    if lookup.error:
        return facts, f"TLSA lookup failed: {lookup.error}"
    if not lookup.records:
        return replace(facts, detail="no TLSA records: DANE not in use"), ""
    probe = record.probe
    chain = probe.tls.chain_der if probe is not None and probe.tls is not None else ()
    if not chain:
        usable = sum(1 for r in lookup.records if r.usable)
        if usable == 0:
            return replace(facts, usable=usable), ""
        why = probe.error if probe is not None and probe.error else "no STARTTLS handshake"
        detail = f"TLSA published but no certificate to match ({why})"
        return replace(facts, usable=usable, matched=False, detail=detail), detail
    outcome = dane.verify(lookup.records, chain, names=names)
    facts = replace(
        facts,
        usable=outcome.usable,
        matched=outcome.matched if outcome.usable else None,
        matched_record=str(outcome.matched_record) if outcome.matched_record else "",
        detail=outcome.detail,
    )
    if outcome.usable and not outcome.matched:
        # Enforced even without AD: the records will bite as soon as the zone is signed.
        return facts, f"certificate matches none of {outcome.usable} usable TLSA records ({outcome.detail})"
    return facts, ""


async def _required_checks(p: _Progress) -> None:
    """The MX set and its addresses: what every check does before the optional ones."""
    config = p.config
    pairs = await lookup_mx(p)
    if pairs:
        await lookup_addresses(p, pairs)
    else:
        await implicit(p)
        if config.require_mx:
            raise ProbeFailure(Reason.NO_MX, f"{config.domain} has no MX record", phase=Phase.MX)
    compare_expected(p)
    no_address = [r for r in p.records if not r.addresses]
    if no_address:
        raise ProbeFailure(
            Reason.NO_ADDRESS,
            "exchange without address: " + "; ".join(r.error for r in no_address),
            phase=Phase.ADDRESS,
        )
    require_dnssec(p)


# The checks an MX check's config switches on, in the order they run (DANE needs the probes' chains).
_OPTIONAL_CHECKS: tuple[tuple[Callable[[MxCheckConfig], bool], Callable[[_Progress], Awaitable[None]]], ...] = (
    (lambda c: bool(c.probe_hosts), probe_hosts),
    (lambda c: c.dane != "off", check_dane),
    (lambda c: c.mta_sts != "off", check_mta_sts),
    (lambda c: c.reverse_dns != "off", reverse_dns),
    (lambda c: bool(c.dnsbl), check_dnsbl),  # a listing is deferred: the checks after it still run
    (lambda c: bool(c.spf or c.dmarc or c.tls_rpt), policy_records),
    (lambda c: c.spoof_test is not None, spoof_test),
)


async def run(config: MxCheckConfig, env: ProbeEnv) -> MxResult:
    """Check one domain's MX; every outcome, good or bad, is a result value."""
    started_at = time.time()
    t0 = time.perf_counter()
    check = _Progress(config, env)
    timeout = config.timeout or env.defaults.timeout
    failure: ProbeFailure | None = None
    try:
        async with asyncio.timeout(timeout):
            await _required_checks(check)
            listed: ProbeFailure | None = None
            for wanted, optional in _OPTIONAL_CHECKS:
                if not wanted(config):
                    continue
                try:
                    await optional(check)
                except ProbeFailure as exc:
                    if listed is not None:
                        raise listed from None  # the first failure names the run's phase and reason
                    if optional is not check_dnsbl:
                        raise
                    # a listed address must not hide a broken SPF record or an MX that accepts forgeries
                    listed = exc
            if listed is not None:
                raise listed
    except (ProbeFailure, TimeoutError) as exc:
        failure = classify(exc, timeout)
    phase = (failure.phase or check.phase) if failure is not None else None
    reason = failure.reason if failure is not None else None
    error = failure.message if failure is not None else ""
    return MxResult(
        domain=config.domain,
        started_at=started_at,
        ok=reason is None,
        phase=phase,
        reason=reason,
        error=error,
        records=tuple(check.records),
        implicit_mx=check.implicit_mx,
        missing=check.missing,
        unexpected=check.unexpected,
        timings=check.timings,
        total=time.perf_counter() - t0,
        authenticated=check.authenticated,
        mta_sts=check.mta_sts_facts,
        spf=check.spf,
        dmarc=check.dmarc,
        policy_findings=tuple(check.findings),
        dnsbl=check.dnsbl,
    )
