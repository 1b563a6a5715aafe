"""MX check: a domain's MX records, their addresses, and optionally an SMTP probe of each."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import dns.asyncresolver
import dns.flags
import dns.rdtypes.ANY.MX
import dns.reversename

from monitor.config.schema import MxCheckConfig, SmtpProbeConfig
from monitor.model.facts import DaneFacts, MtaStsFacts, MtaStsPolicyFacts, PolicyRecord
from monitor.model.results import MxRecord, MxResult, Phase, Reason, ReverseDns, SmtpResult
from monitor.probes import ProbeEnv, dane, mta_sts, resolve, smtp
from monitor.probes.dane import TlsaLookup  # by name: _Check.dane hides the module in the class body
from monitor.probes.policy_records import check_dmarc, check_spf

_MAX_PTR_NAMES = 10


def _norm(name: str) -> str:
    return name.lower().rstrip(".")


@dataclass(frozen=True, slots=True)
class Alias:
    """An exchange that is a CNAME: the fully expanded name, and whether the chain was DNSSEC-authenticated."""

    target: str
    secure: bool


class _Failed(Exception):
    def __init__(self, phase: Phase, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.phase = phase
        self.reason = reason


class _Check:
    """One MX check's progress: timings and what has been found so far."""

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
        self.phase = Phase.MX
        # exchanges (normalised) that are CNAMEs: only those need TLSA at another name
        self.aliases: dict[str, Alias] = {}

    def _timed(self, phase: Phase, started: float) -> None:
        self.timings[phase.value] = time.perf_counter() - started

    async def lookup_mx(self) -> list[tuple[int, str]]:
        self.phase = Phase.MX
        started = time.perf_counter()
        domain = self.config.domain
        resolver = self.env.resolver if self.config.dnssec == "off" else self.env.dnssec_resolver
        try:
            answer = await resolve.query(resolver, domain, "MX")
            if self.config.dnssec != "off":
                self.authenticated = bool(answer.response.flags & dns.flags.AD)
        except resolve.LookupFailed as exc:
            if exc.reason is not Reason.NO_ADDRESS:  # NoAnswer maps to NO_ADDRESS
                raise _Failed(Phase.MX, exc.reason, str(exc)) from None
            if self.config.dnssec != "off":  # a validated "no MX" is as authenticated as an MX answer
                self.authenticated = bool(exc.authenticated)
            self._timed(Phase.MX, started)
            return []
        self._timed(Phase.MX, started)
        pairs = []
        for rdata in answer:
            assert isinstance(rdata, dns.rdtypes.ANY.MX.MX)
            pairs.append((int(rdata.preference), rdata.exchange.to_text(omit_final_dot=True)))
        # RFC 7505: a single "MX 0 ." says the domain accepts no mail at all.
        if any(exchange in ("", ".") for _, exchange in pairs):
            raise _Failed(Phase.MX, Reason.NULL_MX, f"{domain} has a null MX (RFC 7505): it accepts no mail")
        return sorted(pairs, key=lambda p: (p[0], _norm(p[1])))

    def _address_resolver(self) -> dns.asyncresolver.Resolver:
        # DANE needs to know whether an alias's CNAME chain is secure (RFC 7672 2.2.3): ask for AD then
        if self.config.dane != "off" and self.config.dnssec != "off":
            return self.env.dnssec_resolver
        return self.env.resolver

    async def _addresses(self, exchange: str) -> tuple[str, ...]:
        found = await resolve.lookup_addresses(self._address_resolver(), exchange)
        target = _norm(found.canonical_name)
        if target != _norm(exchange):
            self.aliases[_norm(exchange)] = Alias(target, found.authenticated)
        return found.addresses

    async def lookup_addresses(self, pairs: list[tuple[int, str]]) -> None:
        self.phase = Phase.ADDRESS
        started = time.perf_counter()
        found = await asyncio.gather(*(self._addresses(exchange) for _, exchange in pairs), return_exceptions=True)
        for (preference, exchange), addrs in zip(pairs, found, strict=True):
            if isinstance(addrs, resolve.LookupFailed):
                self.records.append(MxRecord(preference, exchange, (), error=str(addrs)))
            elif isinstance(addrs, BaseException):
                raise addrs
            else:
                self.records.append(MxRecord(preference, exchange, addrs))
        self._timed(Phase.ADDRESS, started)

    async def implicit(self) -> None:
        """No MX: RFC 5321 5.1 makes the domain's own address the exchange."""
        self.phase = Phase.ADDRESS
        started = time.perf_counter()
        domain = self.config.domain
        try:
            addrs = await self._addresses(domain)
        except resolve.LookupFailed as exc:
            if exc.reason is Reason.NO_ADDRESS:
                raise _Failed(Phase.MX, Reason.NO_MX, f"{domain} has no MX and no address") from None
            raise _Failed(Phase.ADDRESS, exc.reason, str(exc)) from None
        self._timed(Phase.ADDRESS, started)
        self.implicit_mx = True
        self.records.append(MxRecord(0, domain, addrs))

    def compare_expected(self) -> None:
        if not self.config.expect:
            return
        expected = {_norm(e) for e in self.config.expect}
        actual = {_norm(r.exchange) for r in self.records}
        self.missing = tuple(sorted(expected - actual))
        self.unexpected = tuple(sorted(actual - expected))
        if self.missing or self.unexpected:
            parts = []
            if self.missing:
                parts.append("missing " + ", ".join(self.missing))
            if self.unexpected:
                parts.append("unexpected " + ", ".join(self.unexpected))
            raise _Failed(Phase.MX, Reason.UNEXPECTED_MX, "MX set differs from expected: " + "; ".join(parts))

    def require_dnssec(self) -> None:
        if self.config.dnssec == "require" and not self.authenticated:
            raise _Failed(
                Phase.MX,
                Reason.DNSSEC,
                f"the MX answer for {self.config.domain} is not DNSSEC-authenticated (no AD bit from the resolver)",
            )

    async def probe_hosts(self) -> None:
        """SMTP-probe each exchange: its first address, or every address (all_addresses)."""
        self.phase = Phase.HOSTS
        started = time.perf_counter()
        every = self.config.probe_hosts == "all_addresses"
        jobs = [
            (i, address)
            for i, record in enumerate(self.records)
            for address in (record.addresses if every else record.addresses[:1])
        ]
        results = await asyncio.gather(*(self._probe(self.records[i], address) for i, address in jobs))
        by_record: dict[int, list[SmtpResult]] = {}
        for (i, _), result in zip(jobs, results, strict=True):
            by_record.setdefault(i, []).append(result)
        for i, probes in by_record.items():
            self.records[i] = replace(self.records[i], probe=probes[0], address_probes=tuple(probes) if every else ())
        self._timed(Phase.HOSTS, started)
        if not any(r.up for r in self.records):
            down = "; ".join(f"{r.exchange}: {r.probe.error if r.probe else r.error}" for r in self.records)
            raise _Failed(Phase.HOSTS, Reason.HOSTS_DOWN, f"no exchange answers SMTP ({down})")

    async def reverse_dns(self) -> None:
        """PTR of every exchange address, forward-confirmed (the name resolves back to it)."""
        self.phase = Phase.REVERSE
        started = time.perf_counter()
        pairs = [(i, a) for i, r in enumerate(self.records) for a in r.addresses]
        found = await asyncio.gather(*(self._reverse(a) for _, a in pairs))
        by_record: dict[int, list[ReverseDns]] = {}
        for (i, _), rev in zip(pairs, found, strict=True):
            by_record.setdefault(i, []).append(rev)
        for i, revs in by_record.items():
            self.records[i] = replace(self.records[i], reverse=tuple(revs))
        self._timed(Phase.REVERSE, started)
        bad = [rev for revs in by_record.values() for rev in revs if not rev.confirmed]
        if bad and self.config.reverse_dns == "require":
            detail = "; ".join(f"{r.address}: {r.error}" for r in bad)
            raise _Failed(Phase.REVERSE, Reason.REVERSE_DNS, f"reverse DNS not forward-confirmed: {detail}")

    async def _reverse(self, address: str) -> ReverseDns:
        name = dns.reversename.from_address(address).to_text(omit_final_dot=True)
        try:
            answer = await resolve.query(self.env.resolver, name, "PTR")
        except resolve.LookupFailed as exc:
            if exc.reason in (Reason.NXDOMAIN, Reason.NO_ADDRESS):
                return ReverseDns(address, (), False, f"no PTR record ({exc})")
            return ReverseDns(address, (), False, f"PTR lookup failed: {exc}")
        names = tuple(sorted({rdata.to_text().rstrip(".") for rdata in answer}))
        # RFC 7208 4.6.4 bounds the names an SPF "ptr" check looks up to 10; so do we
        checked = names[:_MAX_PTR_NAMES]
        forward = await asyncio.gather(*(self._forward(name, address) for name in checked))
        if any(why == "" for why in forward):
            return ReverseDns(address, names, True)
        skipped = f" ({len(names) - len(checked)} more PTR names not checked)" if len(names) > len(checked) else ""
        return ReverseDns(address, names, False, "; ".join(forward) + skipped)

    async def _forward(self, name: str, address: str) -> str:
        """Why `name` does not resolve back to `address` ("" when it does)."""
        try:
            # literals=False: a PTR target spelled like an IP address is a name like any other
            found = await resolve.addresses(self.env.resolver, name, literals=False)
        except resolve.LookupFailed as exc:
            return f"PTR {name}: {exc}"
        wanted = ipaddress.ip_address(address)
        if any(ipaddress.ip_address(a) == wanted for a in found):
            return ""
        return f"PTR {name} resolves to {', '.join(found)}, not {address}"

    async def policy_records(self) -> None:
        """SPF and DMARC: presence and syntax."""
        self.phase = Phase.POLICY
        started = time.perf_counter()
        checks: list[tuple[str, str, Callable[[list[str]], PolicyRecord]]] = []
        if self.config.spf:
            checks.append(("spf", self.config.domain, check_spf))
        if self.config.dmarc:
            checks.append(("dmarc", f"_dmarc.{self.config.domain}", check_dmarc))
        found = await asyncio.gather(*(self._txt(name) for _, name, _ in checks))
        problems = []
        failed: Reason | None = None
        for (kind, _, judge), texts in zip(checks, found, strict=True):
            if isinstance(texts, resolve.LookupFailed):
                # no verdict: a failed lookup says nothing about the record (receivers call it a temperror)
                failed = failed or texts.reason
                problems.append(f"{kind.upper()}: lookup failed: {texts}")
                continue
            verdict = judge(texts)
            if kind == "spf":
                self.spf = verdict
            else:
                self.dmarc = verdict
            if verdict.problem:
                problems.append(f"{kind.upper()}: {verdict.problem}")
        self._timed(Phase.POLICY, started)
        if problems:
            raise _Failed(Phase.POLICY, failed or Reason.POLICY_RECORD, "; ".join(problems))

    async def _txt(self, name: str) -> list[str] | resolve.LookupFailed:
        """The TXT records of a name, each record's strings joined (RFC 7208 3.3); [] when there are none."""
        try:
            answer = await resolve.query(self.env.resolver, name, "TXT")
        except resolve.LookupFailed as exc:
            if exc.reason in (Reason.NXDOMAIN, Reason.NO_ADDRESS):
                return []
            return exc
        # undecodable bytes become U+FFFD: check_spf/check_dmarc then see a non-ASCII record
        return [b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer]

    async def dane(self) -> None:
        """RFC 7672: the TLSA records of each exchange against the chain its STARTTLS presented."""
        self.phase = Phase.DANE
        started = time.perf_counter()
        found = await asyncio.gather(*(self._tlsa(r.exchange) for r in self.records))
        problems = []
        for i, (record, (lookup, alias)) in enumerate(zip(list(self.records), found, strict=True)):
            facts, problem = _dane_verdict(record, lookup, alias=alias)
            self.records[i] = replace(record, dane=facts)
            if problem:
                problems.append(f"{record.exchange}: {problem}")
        self._timed(Phase.DANE, started)
        if problems and self.config.dane == "verify":
            raise _Failed(Phase.DANE, Reason.DANE_MISMATCH, "DANE: " + "; ".join(problems))

    async def _tlsa(self, exchange: str) -> tuple[TlsaLookup, Alias | None]:
        """The TLSA lookup that applies to an exchange, and its alias when it is one (RFC 7672 2.2.3).

        A secure alias has its TLSA records at the fully CNAME-expanded name first, at the
        original name when the expanded one has none; an insecure alias only at the original.
        """
        port = self.config.port
        alias = self.aliases.get(_norm(exchange))
        if alias is not None and alias.secure:
            expanded = await dane.lookup_tlsa(self.env.resolver, alias.target, port)
            if expanded.records or expanded.error:
                return expanded, alias
        return await dane.lookup_tlsa(self.env.resolver, exchange, port), alias

    async def mta_sts(self) -> None:
        """RFC 8461: the _mta-sts TXT record, the HTTPS policy, and the exchanges it covers."""
        self.phase = Phase.MTA_STS
        started = time.perf_counter()
        domain = self.config.domain
        txt = await mta_sts.lookup_txt(self.env.resolver, domain)
        present = txt.error_kind != mta_sts.TXT_ABSENT  # no record is no MTA-STS, not a problem
        problem = f"TXT record: {txt.error}" if present and not txt.ok else ""
        policy_facts: MtaStsPolicyFacts | None = None
        if txt.ok:
            timeout = self.config.timeout or self.env.defaults.timeout
            policy = await mta_sts.fetch_policy(
                domain,
                self.env.resolver,
                port=self.config.mta_sts_port,
                ca_file=self.config.mta_sts_ca_file,
                timeout=timeout,
            )
            uncovered = mta_sts.check_exchanges(policy, [r.exchange for r in self.records]) if policy.ok else []
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
        self.mta_sts_facts = MtaStsFacts(
            txt_id=txt.id,
            txt_error=txt.error,
            txt_error_kind=txt.error_kind,
            present=present,
            policy=policy_facts,
            valid=not problem,
        )
        self._timed(Phase.MTA_STS, started)
        if problem and self.config.mta_sts == "verify":
            raise _Failed(Phase.MTA_STS, Reason.MTA_STS_MISMATCH, f"MTA-STS: {problem}")

    async def _probe(self, record: MxRecord, address: str) -> SmtpResult:
        spec = SmtpProbeConfig(
            name=f"{self.config.name}:{record.exchange}",
            keep_chain=self.config.dane != "off",
            host=address,
            port=self.config.port,
            tls=self.config.tls,
            timeout=self.config.timeout or self.env.defaults.timeout,
            ca_file=self.config.ca_file,
            servername=record.exchange,
            verify=self.config.verify,
        )
        result = await smtp.run(spec, self.env)
        return replace(result, host=record.exchange)


def _dane_verdict(
    record: MxRecord, lookup: dane.TlsaLookup, *, alias: Alias | None = None
) -> tuple[DaneFacts, str]:
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


async def run(config: MxCheckConfig, env: ProbeEnv) -> MxResult:
    """Check one domain's MX; every outcome, good or bad, is a result value."""
    started_at = time.time()
    t0 = time.perf_counter()
    check = _Check(config, env)
    timeout = config.timeout or env.defaults.timeout
    phase: Phase | None = None
    reason: Reason | None = None
    error = ""
    try:
        async with asyncio.timeout(timeout):
            pairs = await check.lookup_mx()
            if pairs:
                await check.lookup_addresses(pairs)
            else:
                await check.implicit()
                if config.require_mx:
                    raise _Failed(Phase.MX, Reason.NO_MX, f"{config.domain} has no MX record")
            check.compare_expected()
            no_address = [r for r in check.records if not r.addresses]
            if no_address:
                raise _Failed(
                    Phase.ADDRESS,
                    Reason.NO_ADDRESS,
                    "exchange without address: " + "; ".join(r.error for r in no_address),
                )
            check.require_dnssec()
            if config.probe_hosts:
                await check.probe_hosts()
            if config.dane != "off":
                await check.dane()
            if config.mta_sts != "off":
                await check.mta_sts()
            if config.reverse_dns != "off":
                await check.reverse_dns()
            if config.spf or config.dmarc:
                await check.policy_records()
    except _Failed as exc:
        phase, reason, error = exc.phase, exc.reason, str(exc)
    except TimeoutError:
        phase, reason, error = check.phase, Reason.TIMEOUT, f"no answer within {timeout:g}s"
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
    )
