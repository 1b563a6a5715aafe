"""MX check: a domain's MX records, their addresses, and optionally an SMTP probe of each."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import dns.rdtypes.ANY.MX

from monitor.config import MxCheckConfig, SmtpProbeConfig
from monitor.probes import ProbeEnv, resolve, smtp
from monitor.results import MxRecord, MxResult, Phase, Reason, SmtpResult


def _norm(name: str) -> str:
    return name.lower().rstrip(".")


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
        self.phase = Phase.MX

    def _timed(self, phase: Phase, started: float) -> None:
        self.timings[phase.value] = time.perf_counter() - started

    async def lookup_mx(self) -> list[tuple[int, str]]:
        self.phase = Phase.MX
        started = time.perf_counter()
        domain = self.config.domain
        try:
            answer = await resolve.query(self.env.resolver, domain, "MX")
        except resolve.LookupFailed as exc:
            if exc.reason is not Reason.NO_ADDRESS:  # NoAnswer maps to NO_ADDRESS
                raise _Failed(Phase.MX, exc.reason, str(exc)) from None
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

    async def lookup_addresses(self, pairs: list[tuple[int, str]]) -> None:
        self.phase = Phase.ADDRESS
        started = time.perf_counter()
        found = await asyncio.gather(
            *(resolve.addresses(self.env.resolver, exchange) for _, exchange in pairs),
            return_exceptions=True,
        )
        for (preference, exchange), addrs in zip(pairs, found, strict=True):
            if isinstance(addrs, resolve.LookupFailed):
                self.records.append(MxRecord(preference, exchange, (), error=str(addrs)))
            elif isinstance(addrs, BaseException):
                raise addrs
            else:
                self.records.append(MxRecord(preference, exchange, tuple(addrs)))
        self._timed(Phase.ADDRESS, started)

    async def implicit(self) -> None:
        """No MX: RFC 5321 5.1 makes the domain's own address the exchange."""
        self.phase = Phase.ADDRESS
        started = time.perf_counter()
        domain = self.config.domain
        try:
            addrs = await resolve.addresses(self.env.resolver, domain)
        except resolve.LookupFailed as exc:
            if exc.reason is Reason.NO_ADDRESS:
                raise _Failed(Phase.MX, Reason.NO_MX, f"{domain} has no MX and no address") from None
            raise _Failed(Phase.ADDRESS, exc.reason, str(exc)) from None
        self._timed(Phase.ADDRESS, started)
        self.implicit_mx = True
        self.records.append(MxRecord(0, domain, tuple(addrs)))

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

    async def probe_hosts(self) -> None:
        self.phase = Phase.HOSTS
        started = time.perf_counter()
        targets = [i for i, r in enumerate(self.records) if r.addresses]
        results = await asyncio.gather(*(self._probe(self.records[i]) for i in targets))
        for i, result in zip(targets, results, strict=True):
            self.records[i] = replace(self.records[i], probe=result)
        self._timed(Phase.HOSTS, started)
        if not any(r.probe is not None and r.probe.ok for r in self.records):
            down = "; ".join(
                f"{r.exchange}: {r.probe.error if r.probe else r.error}" for r in self.records
            )
            raise _Failed(Phase.HOSTS, Reason.HOSTS_DOWN, f"no exchange answers SMTP ({down})")

    async def _probe(self, record: MxRecord) -> SmtpResult:
        spec = SmtpProbeConfig(
            name=f"{self.config.name}:{record.exchange}",
            host=record.addresses[0],
            port=self.config.port,
            tls=self.config.tls,
            timeout=self.config.timeout or self.env.defaults.timeout,
            ca_file=self.config.ca_file,
            servername=record.exchange,
            verify=self.config.verify,
        )
        result = await smtp.run(spec, self.env)
        return replace(result, host=record.exchange)


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
                    Phase.ADDRESS, Reason.NO_ADDRESS,
                    "exchange without address: " + "; ".join(r.error for r in no_address),
                )
            if config.probe_hosts:
                await check.probe_hosts()
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
    )
