"""Prometheus metrics: every probe's samples defined once, served by a collector and a cached renderer."""

from __future__ import annotations

import time
import weakref
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from monitor.config.schema import DeliveryProbeConfig, MxCheckConfig, SmtpProbeConfig
from monitor.model.delivery import LATENCY_BUCKETS, DeliveryLedger, DeliveryResult, Hop
from monitor.model.facts import DnsblFacts, DnsblOutcome
from monitor.model.probe_result import ProbeResult
from monitor.model.results import MxRecord, MxResult, SmtpResult, Status
from monitor.model.spoof import SpoofOutcome
from monitor.state.health import AgentHealth
from monitor.state.store import ProbeConfig, ProbeState, ResultsStore, kind_of

Labels = tuple[str, ...]
Sample = tuple[str, Labels, float]  # (family name, label values, value)


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family: its name (without _total/_info), type, help text and label names."""

    name: str
    kind: str  # gauge, counter, info, histogram
    doc: str
    labels: Labels

    @property
    def sample_name(self) -> str:
        return self.name + {"counter": "_total", "info": "_info"}.get(self.kind, "")

    @property
    def series(self) -> tuple[tuple[str, Labels], ...]:
        """A histogram's series (name, label names) in exposition order; samples name these, not the family."""
        if self.kind != "histogram":
            return ((self.name, self.labels),)
        bucket = (f"{self.name}_bucket", (*self.labels, "le"))
        return (bucket, (f"{self.name}_sum", self.labels), (f"{self.name}_count", self.labels))


def _families(*specs: tuple[str, str, str, Labels]) -> dict[str, Family]:
    return {name: Family(name, kind, doc, labels) for name, kind, doc, labels in specs}


P, C = ("probe",), ("check",)
# agent.location's label on every probe series (the last label): where the agent probes from.
LOCATION_LABEL = "location"
SMTP_FAMILIES = _families(
    ("smtp_probe_success", "gauge", "1 if the last SMTP probe succeeded, else 0", ("probe", "host", "port", "tls")),
    ("smtp_probe_status", "gauge", "Alerting status of the probe (1 for the current one)", ("probe", "status")),
    ("smtp_probe_duration_seconds", "gauge", "Duration of the last SMTP probe", P),
    ("smtp_probe_phase_duration_seconds", "gauge", "Duration of each phase of the last SMTP probe", ("probe", "phase")),
    ("smtp_probe_reply_code", "gauge", "SMTP reply code that failed the last probe (0 if none)", P),
    ("smtp_probe_consecutive_failures", "gauge", "Failures since the last success", P),
    ("smtp_probe_runs", "counter", "SMTP probe runs", P),
    ("smtp_probe_failures", "counter", "Failed SMTP probe runs by phase and reason", ("probe", "phase", "reason")),
    ("smtp_probe_last_success_timestamp_seconds", "gauge", "When the probe last succeeded", P),
    ("smtp_probe_last_change_timestamp_seconds", "gauge", "When the probe's status last changed", P),
    (
        "smtp_tls_cert_not_after_timestamp_seconds",
        "gauge",
        "Expiry of the server's certificate, also when it did not verify",
        P,
    ),
    ("smtp_tls_chain_not_after_timestamp_seconds", "gauge", "Earliest expiry in the presented certificate chain", P),
    ("smtp_tls", "info", "Negotiated TLS version and cipher", ("probe", "version", "cipher")),
    ("smtp_tls_verified", "gauge", "1 if the certificate chain and host name verified", P),
    ("smtp_ehlo_extension", "info", "Extensions the server advertised in its last EHLO", ("probe", "extension")),
    (
        "smtp_probe_address_success",
        "gauge",
        "1 if the probe succeeded on this address (address_family: both)",
        ("probe", "address"),
    ),
)
MX_FAMILIES = _families(
    ("mx_check_success", "gauge", "1 if the last MX check succeeded, else 0", ("check", "domain")),
    ("mx_check_status", "gauge", "Alerting status of the check (1 for the current one)", ("check", "status")),
    ("mx_check_records", "gauge", "Exchanges in the last MX answer", C),
    ("mx_check_duration_seconds", "gauge", "Duration of the last MX check", C),
    ("mx_check_phase_duration_seconds", "gauge", "Duration of each phase of the last MX check", ("check", "phase")),
    ("mx_check_implicit_mx", "gauge", "1 if the domain has no MX and its address serves as exchange", C),
    (
        "mx_check_exchange_up",
        "gauge",
        "1 if the exchange answered SMTP (only when hosts are probed)",
        ("check", "exchange"),
    ),
    ("mx_check_exchange_preference", "gauge", "MX preference of each exchange", ("check", "exchange")),
    ("mx_check_exchange_addresses", "gauge", "A and AAAA addresses of each exchange", ("check", "exchange")),
    ("mx_check_runs", "counter", "MX check runs", C),
    ("mx_check_failures", "counter", "Failed MX checks by phase and reason", ("check", "phase", "reason")),
    ("mx_check_last_success_timestamp_seconds", "gauge", "When the check last succeeded", C),
    ("mx_check_last_change_timestamp_seconds", "gauge", "When the check's status last changed", C),
    (
        "mx_check_address_up",
        "gauge",
        "1 if the exchange answered SMTP on this address (probe_hosts: all_addresses)",
        ("check", "exchange", "address"),
    ),
    (
        "mx_check_reverse_dns_confirmed",
        "gauge",
        "1 if the address has a PTR name that resolves back to it",
        ("check", "exchange", "address"),
    ),
    ("mx_check_dnssec_authenticated", "gauge", "1 if the resolver marked the MX answer authentic (AD)", C),
    ("mx_check_spf_valid", "gauge", "1 if the domain has exactly one well-formed SPF record", C),
    ("mx_check_dmarc_valid", "gauge", "1 if the domain has exactly one well-formed DMARC record", C),
    (
        "mx_check_dane_matched",
        "gauge",
        "1 if the exchange's certificate matches a usable TLSA record",
        ("check", "exchange"),
    ),
    ("mx_check_mta_sts_valid", "gauge", "1 if the MTA-STS record and policy are valid and cover every exchange", C),
    ("mx_check_mta_sts", "info", "Mode of the domain's MTA-STS policy", ("check", "mode")),
    (
        "mx_check_mta_sts_cert_not_after_timestamp_seconds",
        "gauge",
        "Expiry of the MTA-STS policy host's certificate",
        C,
    ),
    (
        "mx_check_dnsbl_listed",
        "gauge",
        "1 if the DNSBL zone lists the exchange address, 0 if not; absent when the lookup gave no verdict",
        ("check", "address", "zone"),
    ),
    (
        "mx_check_dnsbl_error",
        "gauge",
        "1 for a DNSBL lookup without verdict: refused (127.0.0.1 or an error code), unexpected (not 127/8), dns",
        ("check", "address", "zone", "error"),
    ),
    ("mx_check_dnsbl_queries", "gauge", "DNS queries of the last run's DNSBL lookups", C),
    (
        "mx_check_policy_finding",
        "gauge",
        "1 for each named verdict on the SPF, DMARC and TLS-RPT records, labelled with its level",
        ("check", "record", "finding", "level"),
    ),
    (
        "mx_check_spoof_accepted",
        "gauge",
        "1 if the exchange address accepted the spoof test's forged message, 0 if it refused it (else absent)",
        ("check", "exchange", "address"),
    ),
    (
        "mx_check_spoof_outcome",
        "gauge",
        "1 for the spoof test's outcome (refused, spoofable, inconclusive, error) and step at each exchange address",
        ("check", "exchange", "address", "outcome", "step"),
    ),
    (
        "mx_check_spoof_delivered",
        "gauge",
        "1 for an accepted forgery found in the spoof test's mailbox, labelled with the folder it landed in",
        ("check", "exchange", "address", "folder"),
    ),
    (
        "mx_check_spoof_auth_result",
        "gauge",
        "1 for each Authentication-Results verdict the receiving side gave an accepted forgery",
        ("check", "exchange", "address", "method", "result"),
    ),
)
DELIVERY_FAMILIES = _families(
    (
        "delivery_probe_success",
        "gauge",
        "1 if the last delivery run succeeded, else 0",
        ("probe", "via", "domain", "protocol"),
    ),
    ("delivery_probe_status", "gauge", "Alerting status of the probe (1 for the current one)", ("probe", "status")),
    ("delivery_probe_duration_seconds", "gauge", "Duration of the last delivery run", P),
    (
        "delivery_probe_phase_duration_seconds",
        "gauge",
        "Duration of each phase of the last delivery run",
        ("probe", "phase"),
    ),
    ("delivery_probe_consecutive_failures", "gauge", "Failures since the last success", P),
    ("delivery_probe_runs", "counter", "Delivery probe runs", P),
    ("delivery_probe_failures", "counter", "Failed delivery runs by phase and reason", ("probe", "phase", "reason")),
    (
        "delivery_probe_last_failure",
        "info",
        "Phase and reason that failed the last run (absent when it succeeded)",
        ("probe", "phase", "reason"),
    ),
    ("delivery_probe_last_success_timestamp_seconds", "gauge", "When the probe last succeeded", P),
    ("delivery_probe_last_change_timestamp_seconds", "gauge", "When the probe's status last changed", P),
    (
        "delivery_probe_latency_seconds",
        "histogram",
        "Seconds from the submission's 250 to the mailbox showing the message, late arrivals included",
        P,
    ),
    ("delivery_probe_last_latency_seconds", "gauge", "Latency of the message that arrived last", P),
    (
        "delivery_probe_hop_delay_seconds",
        "gauge",
        "Seconds each Received hop added, of the message that arrived last in the last run",
        ("probe", "hop", "by"),
    ),
    ("delivery_probe_pending_messages", "gauge", "Messages submitted and not yet seen in the mailbox", P),
    ("delivery_probe_late_messages", "counter", "Messages that arrived after deliver_within", P),
    ("delivery_probe_lost_messages", "counter", "Messages not arrived after lost_after", P),
    (
        "delivery_probe_auth",
        "info",
        "Authentication-Results verdicts on the last run's message (empty: no verdict)",
        ("probe", "spf", "dkim", "dmarc"),
    ),
    ("delivery_probe_folder", "info", "Folder the last run's message landed in", ("probe", "folder")),
    (
        "delivery_probe_dnsbl_listed",
        "gauge",
        "1 if the DNSBL zone lists a Received hop's sending address, 0 if not; absent without a verdict",
        ("probe", "address", "zone"),
    ),
    (
        "delivery_probe_dnsbl_error",
        "gauge",
        "1 for a DNSBL lookup of a hop's address without verdict: refused, unexpected (not 127/8), dns",
        ("probe", "address", "zone", "error"),
    ),
)
PROBE_FAMILIES = {**SMTP_FAMILIES, **MX_FAMILIES, **DELIVERY_FAMILIES}
# The series of histogram families (name -> family name, label names): samples name a series of theirs.
_HISTOGRAM_SERIES = {
    series: (family.name, labels)
    for family in PROBE_FAMILIES.values()
    if family.kind == "histogram"
    for series, labels in family.series
}


def _common(prefix: str, state: ProbeState) -> list[Sample]:
    name = state.name
    out: list[Sample] = [(f"{prefix}_status", (name, st.value), 1.0 if state.status is st else 0.0) for st in Status]
    out.append((f"{prefix}_runs", (name,), state.runs))
    out += [(f"{prefix}_failures", (name, ph, reason), n) for (ph, reason), n in state.failures_by_cause.items()]
    if state.last_success is not None:
        out.append((f"{prefix}_last_success_timestamp_seconds", (name,), state.last_success))
    if state.last_change is not None:
        out.append((f"{prefix}_last_change_timestamp_seconds", (name,), state.last_change))
    return out


def smtp_samples(state: ProbeState) -> list[Sample]:
    """Every sample of one SMTP probe's state (the one definition both exposition paths use)."""
    cfg = state.config
    assert isinstance(cfg, SmtpProbeConfig)
    name = state.name
    result = state.last_result
    assert result is None or isinstance(result, SmtpResult)
    out: list[Sample] = [
        ("smtp_probe_success", (name, cfg.host, str(cfg.effective_port), cfg.tls), 1.0 if result and result.ok else 0.0)
    ]
    out += _common("smtp_probe", state)
    out.append(("smtp_probe_consecutive_failures", (name,), state.consecutive_failures))
    if result is not None:
        out.append(("smtp_probe_duration_seconds", (name,), result.total))
        out += [("smtp_probe_phase_duration_seconds", (name, ph), sec) for ph, sec in result.timings.items()]
        out.append(("smtp_probe_reply_code", (name,), result.reply_code))
        out += [("smtp_ehlo_extension", (name, ext), 1.0) for ext in result.extensions]
        out += [("smtp_probe_address_success", (name, r.address), 1.0 if r.ok else 0.0) for r in result.address_results]
    tls = state.last_tls  # the latest handshake: expiry stays visible while the server is down
    if tls is not None:
        out.append(("smtp_tls", (name, tls.version, tls.cipher), 1.0))
        out.append(("smtp_tls_verified", (name,), 1.0 if tls.verified else 0.0))
        if tls.cert is not None:
            out.append(("smtp_tls_cert_not_after_timestamp_seconds", (name,), tls.cert.not_after.timestamp()))
        if tls.chain_not_after is not None:
            out.append(("smtp_tls_chain_not_after_timestamp_seconds", (name,), tls.chain_not_after.timestamp()))
    return out


def mx_samples(state: ProbeState) -> list[Sample]:
    """Every sample of one MX check's state."""
    cfg = state.config
    assert isinstance(cfg, MxCheckConfig)
    name = state.name
    result = state.last_result
    assert result is None or isinstance(result, MxResult)
    out: list[Sample] = [("mx_check_success", (name, cfg.domain), 1.0 if result and result.ok else 0.0)]
    out += _common("mx_check", state)
    if result is None:
        return out
    out.append(("mx_check_records", (name,), len(result.records)))
    out.append(("mx_check_duration_seconds", (name,), result.total))
    out.append(("mx_check_implicit_mx", (name,), 1.0 if result.implicit_mx else 0.0))
    out += [("mx_check_phase_duration_seconds", (name, ph), sec) for ph, sec in result.timings.items()]
    for record in result.records:
        at = (name, record.exchange)
        out.append(("mx_check_exchange_preference", at, record.preference))
        out.append(("mx_check_exchange_addresses", at, len(record.addresses)))
        if record.up is not None:
            out.append(("mx_check_exchange_up", at, 1.0 if record.up else 0.0))
        out += [("mx_check_address_up", (*at, p.address), 1.0 if p.ok else 0.0) for p in record.address_probes]
        out += [
            ("mx_check_reverse_dns_confirmed", (*at, r.address), 1.0 if r.confirmed else 0.0) for r in record.reverse
        ]
        if record.dane is not None and record.dane.matched is not None:
            out.append(("mx_check_dane_matched", at, 1.0 if record.dane.matched else 0.0))
        out += _spoof_samples(name, record)
    sts = result.mta_sts
    if sts is not None:
        out.append(("mx_check_mta_sts_valid", (name,), 1.0 if sts.valid else 0.0))
        if sts.policy is not None and sts.policy.mode:
            out.append(("mx_check_mta_sts", (name, sts.policy.mode), 1.0))
        if sts.policy is not None and sts.policy.cert_not_after is not None:
            not_after = sts.policy.cert_not_after.timestamp()
            out.append(("mx_check_mta_sts_cert_not_after_timestamp_seconds", (name,), not_after))
    if result.authenticated is not None:
        out.append(("mx_check_dnssec_authenticated", (name,), 1.0 if result.authenticated else 0.0))
    if result.spf is not None:
        out.append(("mx_check_spf_valid", (name,), 1.0 if result.spf.valid else 0.0))
    if result.dmarc is not None:
        out.append(("mx_check_dmarc_valid", (name,), 1.0 if result.dmarc.valid else 0.0))
    findings = result.policy_findings
    out += [("mx_check_policy_finding", (name, f.record, f.finding, f.level.value), 1.0) for f in findings]
    if result.dnsbl is not None:
        out.append(("mx_check_dnsbl_queries", (name,), result.dnsbl.queries))
        out += _dnsbl_samples("mx_check", name, result.dnsbl)
    return out


_DNSBL_ERRORS = {DnsblOutcome.REFUSED: "refused", DnsblOutcome.UNEXPECTED: "unexpected", DnsblOutcome.ERROR: "dns"}


def _spoof_samples(name: str, record: MxRecord) -> list[Sample]:
    """The spoof test's samples of one exchange: one set per address it was sent to."""
    out: list[Sample] = []
    for attempt in record.spoof:
        at = (name, record.exchange, attempt.address)
        if attempt.outcome in (SpoofOutcome.REFUSED, SpoofOutcome.SPOOFABLE):
            out.append(("mx_check_spoof_accepted", at, 1.0 if attempt.spoofable else 0.0))
        out.append(("mx_check_spoof_outcome", (*at, attempt.outcome.value, attempt.step.value), 1.0))
        mailbox = attempt.mailbox
        if mailbox is not None and mailbox.found:
            out.append(("mx_check_spoof_delivered", (*at, mailbox.folder), 1.0))
            out += [("mx_check_spoof_auth_result", (*at, v.method, v.result), 1.0) for v in mailbox.verdicts]
    return out


# Hop series per probe: a mail loop adds a Received header per pass (the probe reads up to 50).
MAX_HOP_SERIES = 20
MAX_SERVER_LABEL = 253  # a label value a server wrote (a hop's host, a verdict): a DNS name fits whole
# `le` as prometheus_client writes it (repr of the float; +Inf), for both exposition paths.
_LATENCY_LE = (*(repr(float(bound)) for bound in LATENCY_BUCKETS), "+Inf")


def server_label(text: str, limit: int = MAX_SERVER_LABEL) -> str:
    """A label value taken from a server's header: at most `limit` characters, each printable (a
    surrogate from undecodable bytes, a control character becomes "?"), so neither a long nor a
    broken header reaches the exposition as such."""
    text = text[:limit]
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else "?" for c in text)


def _arrival_hops(result: DeliveryResult) -> tuple[Hop, ...]:
    """The hops of the message whose latency the run recorded last: an earlier run's late message
    (where it waited) before the run's own; as DeliveryLedger takes latencies, so that the hop
    delays and delivery_probe_last_latency_seconds describe one message."""
    for earlier in reversed(result.earlier):
        if earlier.outcome == "late" and earlier.latency is not None:
            return earlier.hops
    return result.hops if result.latency is not None and not result.pending else ()


def delivery_samples(state: ProbeState) -> list[Sample]:
    """Every sample of one delivery probe's state: the last run, and the ledger kept across runs."""
    cfg = state.config
    assert isinstance(cfg, DeliveryProbeConfig)
    name = state.name
    result = state.last_result
    assert result is None or isinstance(result, DeliveryResult)
    success_labels = (name, cfg.submit.via, cfg.recipient_domain, cfg.mailbox.protocol)
    out: list[Sample] = [("delivery_probe_success", success_labels, 1.0 if result and result.ok else 0.0)]
    out += _common("delivery_probe", state)
    out.append(("delivery_probe_consecutive_failures", (name,), state.consecutive_failures))
    ledger = state.delivery or DeliveryLedger()
    out.append(("delivery_probe_pending_messages", (name,), len(ledger.pending)))
    out.append(("delivery_probe_late_messages", (name,), ledger.late))
    out.append(("delivery_probe_lost_messages", (name,), ledger.lost))
    buckets = zip(_LATENCY_LE, ledger.latency_buckets, strict=True)
    out += [("delivery_probe_latency_seconds_bucket", (name, le), count) for le, count in buckets]
    out.append(("delivery_probe_latency_seconds_sum", (name,), ledger.latency_sum))
    out.append(("delivery_probe_latency_seconds_count", (name,), ledger.latency_count))
    if ledger.last_latency is not None:
        out.append(("delivery_probe_last_latency_seconds", (name,), ledger.last_latency))
    if result is None:
        return out
    out.append(("delivery_probe_duration_seconds", (name,), result.total))
    if not result.ok:  # what an alert names: the counters by cause do not say which came last
        cause = (
            result.phase.value if result.phase else "internal",
            result.reason.value if result.reason else "internal",
        )
        out.append(("delivery_probe_last_failure", (name, *cause), 1.0))
    out += [("delivery_probe_phase_duration_seconds", (name, ph), sec) for ph, sec in result.timings.items()]
    for number, hop in enumerate(_arrival_hops(result)[:MAX_HOP_SERIES], 1):
        if hop.delay is not None:
            out.append(("delivery_probe_hop_delay_seconds", (name, str(number), server_label(hop.by_host)), hop.delay))
    if result.arrived_at is not None:  # the run read its own message's headers
        verdicts = tuple(server_label(result.verdict(method) or "") for method in ("spf", "dkim", "dmarc"))
        out.append(("delivery_probe_auth", (name, *verdicts), 1.0))
        if result.folder:
            out.append(("delivery_probe_folder", (name, result.folder), 1.0))
    if result.dnsbl is not None:
        out += _dnsbl_samples("delivery_probe", name, result.dnsbl)
    return out


def _dnsbl_samples(prefix: str, name: str, facts: DnsblFacts) -> list[Sample]:
    """<prefix>_dnsbl_listed for each verdict, <prefix>_dnsbl_error for each lookup without one."""
    out: list[Sample] = []
    for answer in facts.answers:
        looked_up = (name, answer.address, answer.zone)
        if answer.outcome in (DnsblOutcome.LISTED, DnsblOutcome.NOT_LISTED):
            listed = 1.0 if answer.outcome is DnsblOutcome.LISTED else 0.0
            out.append((f"{prefix}_dnsbl_listed", looked_up, listed))
        else:
            out.append((f"{prefix}_dnsbl_error", (*looked_up, _DNSBL_ERRORS[answer.outcome]), 1.0))
    return out


_SAMPLES_OF_KIND = {"smtp": smtp_samples, "mx": mx_samples, "delivery": delivery_samples}


def state_samples(state: ProbeState) -> list[Sample]:
    return _SAMPLES_OF_KIND[state.kind](state)


def _metric_family(family: Family, extra: Labels = ()) -> Metric:
    labels = [*family.labels, *extra]
    if family.kind == "counter":
        return CounterMetricFamily(family.name, family.doc, labels=labels)
    if family.kind == "info":
        return InfoMetricFamily(family.name, family.doc, labels=labels)
    if family.kind == "histogram":
        return HistogramMetricFamily(family.name, family.doc, labels=labels)
    return GaugeMetricFamily(family.name, family.doc, labels=labels)


class StoreCollector(Collector):
    """Reads the results store and agent health; writes nothing."""

    def __init__(self, store: ResultsStore, health: AgentHealth | None, *, location: str = "") -> None:
        self.store = store
        self.health = health  # None: probe metrics only (the /probe endpoint)
        self.location = location  # agent.location: the `location` label of every probe series ("" none)

    def collect(self) -> Iterator[Metric]:
        yield from probe_metric_families(self.store.snapshot().states.values(), location=self.location)
        if self.health is not None:
            yield from agent_metric_families(self.health)


def probe_metric_families(states: Iterable[ProbeState], *, location: str = "") -> list[Metric]:
    """The probe families of `states`; with a `location`, every series carries it as its last label."""
    extra: Labels = (LOCATION_LABEL,) if location else ()
    families = {name: _metric_family(f, extra) for name, f in PROBE_FAMILIES.items()}
    for state in states:
        for family, labels, value in state_samples(state):
            if location:
                labels = (*labels, location)
            histogram = _HISTOGRAM_SERIES.get(family)
            if histogram is not None:  # one of its series, with its own sample name and label names
                owner, names = histogram
                families[owner].add_sample(family, dict(zip((*names, *extra), labels, strict=True)), value)
                continue
            metric = families[family]
            if isinstance(metric, InfoMetricFamily):
                metric.add_metric(list(labels), {})
            else:
                metric.add_metric(list(labels), value)  # type: ignore[attr-defined]  # each family's own, not Metric's
    return list(families.values())


class ProbeExposition:
    """The text exposition of every probe, each probe's lines cached until its state changes.

    Same samples as StoreCollector (both come from state_samples), formatted once per state
    instead of once per scrape: a scrape of 10,000 probes re-formats only the probes that ran
    since the last one (none, when MetricsServer warmed the cache between scrapes). Lines are
    kept encoded, one bytes object per probe and family, in a tuple aligned with the families of
    the probe's kind: 10,000 probes hold ~20 MB of text; one string per line cost three times that
    in object headers, and a dict per probe 3 MB more than the tuple. States are held weakly: between
    two scrapes the store replaces every state that ran, and the previous ones (with their results)
    must not live on here until the next scrape."""

    def __init__(self, location: str = "") -> None:
        self._cache: dict[str, tuple[weakref.ref[ProbeState], tuple[bytes, ...]]] = {}
        self.formatted = 0  # states formatted so far, by render or warm
        # agent.location, fixed for the process (a change needs a restart): in the line templates once.
        self._templates = _line_templates(location)

    def warm(self, states: Iterator[ProbeState], deadline: float) -> bool:
        """Format the states from `states` whose lines are not cached, until `perf_counter()`
        passes `deadline`; True once `states` is exhausted. Called in slices between other work,
        so that a scrape finds every probe's lines ready instead of formatting 10,000 at once."""
        cache = self._cache
        for state in states:
            hit = cache.get(state.name)
            if hit is None or hit[0]() is not state:
                cache[state.name] = (weakref.ref(state), _format_state(state, self._templates))
                self.formatted += 1
                if time.perf_counter() >= deadline:
                    return False
        return True

    def retain(self, names: Collection[str]) -> None:
        """Forget the lines of probes not in `names`: those a reload removed, once warming has
        covered every current probe (a render forgets them too)."""
        if len(self._cache) > len(names):
            self._cache = {name: hit for name, hit in self._cache.items() if name in names}

    @property
    def cached_probes(self) -> int:
        return len(self._cache)

    def render(self, states: Iterable[ProbeState], tail: bytes = b"") -> bytes:
        """The exposition of `states` followed by `tail` (other collectors' text)."""
        return b"".join(self.render_chunks(states, tail))

    def render_chunks(self, states: Iterable[ProbeState], tail: bytes = b"") -> list[bytes]:
        """The exposition as the cached pieces, in order: written out one by one, a scrape of 10,000
        probes never needs a 20 MB buffer (glibc keeps such buffers once a worker thread freed one)."""
        by_family: list[list[bytes]] = [[] for _ in PROBE_FAMILIES]
        cache: dict[str, tuple[weakref.ref[ProbeState], tuple[bytes, ...]]] = {}
        for state in states:
            hit = self._cache.get(state.name)
            if hit is None or hit[0]() is not state:
                hit = (weakref.ref(state), _format_state(state, self._templates))
                self.formatted += 1
            cache[state.name] = hit
            for slot, text in zip(_FAMILY_SLOTS[state.kind], hit[1], strict=True):
                if text:
                    by_family[slot].append(text)
        self._cache = cache  # drops removed probes
        out: list[bytes] = []
        for name, texts in zip(PROBE_FAMILIES, by_family, strict=True):
            out.append(_HEADERS[name])
            out += texts
        out.append(tail)
        return out


def _format_state(state: ProbeState, templates: dict[str, str]) -> tuple[bytes, ...]:
    """The state's lines, one bytes object per family of its kind, in _FAMILY_ORDER (b"" for none)."""
    lines: dict[str, list[str]] = {}
    for family_name, labels, value in state_samples(state):
        number = repr(float(value))  # exact, and much cheaper than the library's formatting
        if number[-1] in "nf":  # nan, inf, -inf
            number = _SPECIAL_NUMBERS[number]
        joined = "".join(labels)  # one test for the whole line: label values rarely need escaping
        if "\\" in joined or '"' in joined or "\n" in joined:
            labels = tuple(map(_escape_label, labels))
        lines.setdefault(family_name, []).append(templates[family_name] % (*labels, number))
    for family_name, series in _MERGED_SERIES.items():  # a histogram's series make one family's text
        merged = [line for name in series for line in lines.pop(name, ())]
        if merged:
            lines[family_name] = merged
    return tuple("".join(lines[name]).encode() if name in lines else b"" for name in _FAMILY_ORDER[state.kind])


# A probe's cached lines follow its kind's families; each goes to its family's place in PROBE_FAMILIES.
_FAMILY_ORDER = {"smtp": tuple(SMTP_FAMILIES), "mx": tuple(MX_FAMILIES), "delivery": tuple(DELIVERY_FAMILIES)}
_MERGED_SERIES = {
    family.name: tuple(series for series, _ in family.series)
    for family in PROBE_FAMILIES.values()
    if family.kind == "histogram"
}
_FAMILY_SLOTS = {
    kind: tuple(list(PROBE_FAMILIES).index(name) for name in names) for kind, names in _FAMILY_ORDER.items()
}


def _line_templates(location: str) -> dict[str, str]:
    """'name{label="%s",...} %s\\n' per family and histogram series: one %-format per line instead of
    joining label pairs. A `location` is written into every template as the last label, costing
    nothing per line; without one the series have no location label (Prometheus reads an empty
    label as none)."""
    fixed = f',{LOCATION_LABEL}="{_escape_label(location).replace("%", "%%")}"' if location else ""

    def template(name: str, labels: Labels) -> str:
        return name.replace("%", "%%") + "{" + ",".join(f'{label}="%s"' for label in labels) + fixed + "} %s\n"

    return {
        name: template(family.sample_name, family.labels)
        for name, family in PROBE_FAMILIES.items()
        if family.kind != "histogram"
    } | {series: template(series, labels) for series, (_, labels) in _HISTOGRAM_SERIES.items()}


_SPECIAL_NUMBERS = {"nan": "NaN", "inf": "+Inf", "-inf": "-Inf"}


def _escape_label(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


_HEADERS = {
    name: (
        f"# HELP {family.sample_name} {_escape_help(family.doc)}\n"
        f"# TYPE {family.sample_name} {'gauge' if family.kind == 'info' else family.kind}\n"
    ).encode()
    for name, family in PROBE_FAMILIES.items()
}


class AgentCollector(Collector):
    """The agent's own health facts."""

    def __init__(self, health: AgentHealth) -> None:
        self.health = health

    def collect(self) -> Iterator[Metric]:
        yield from agent_metric_families(self.health)


def agent_metric_families(h: AgentHealth) -> Iterator[Metric]:
    build = InfoMetricFamily("smtp_monitor_build", "Version of the running agent")
    build.add_metric([], {"version": h.version})
    yield build
    yield GaugeMetricFamily("smtp_monitor_start_time_seconds", "When the agent started", value=h.started_at)
    yield GaugeMetricFamily(
        "smtp_monitor_config_last_reload_successful",
        "1 if the last config load or reload succeeded",
        value=1.0 if h.config_load_success else 0.0,
    )
    yield GaugeMetricFamily(
        "smtp_monitor_config_last_reload_success_timestamp_seconds",
        "When the config was last loaded successfully",
        value=h.config_loaded_at,
    )
    reloads = CounterMetricFamily("smtp_monitor_config_reloads", "Config reloads by outcome", labels=["outcome"])
    for outcome in ("success", "failure"):
        reloads.add_metric([outcome], h.config_reloads.get(outcome, 0))
    yield reloads
    yield GaugeMetricFamily("smtp_monitor_probes_in_flight", "Probes running now", value=h.in_flight)
    yield CounterMetricFamily(
        "smtp_monitor_scheduler_skipped_runs",
        "Runs skipped because the previous run was still going",
        value=h.skipped_runs,
    )
    lateness = HistogramMetricFamily(
        "smtp_monitor_scheduler_lateness_seconds",
        "How late probe runs start after their scheduled time",
    )
    lateness.add_metric([], h.lateness.cumulative(), sum_value=h.lateness.total)
    yield lateness
    snmp = CounterMetricFamily(
        "smtp_monitor_snmp_requests",
        "SNMP requests answered by PDU type",
        labels=["type"],
    )
    # dict() copies in one step: the event loop may add a key while this thread reads.
    for pdu, count in sorted(dict(h.snmp_requests).items()):
        snmp.add_metric([pdu], count)
    yield snmp
    yield CounterMetricFamily(
        "smtp_monitor_snmp_auth_failures",
        "SNMP requests refused: unknown community or bad credentials",
        value=h.snmp_auth_failures,
    )
    yield CounterMetricFamily(
        "smtp_monitor_snmp_dropped_packets",
        "Malformed or unsupported SNMP datagrams dropped",
        value=h.snmp_dropped,
    )
    dropped = CounterMetricFamily(
        "smtp_monitor_snmp_dropped_by_reason_packets",
        "SNMP datagrams dropped without an answer, by reason (Responses, Reports and Traps; rate limits)",
        labels=["reason"],
    )
    for reason, count in sorted(dict(h.snmp_dropped_reasons).items()):
        dropped.add_metric([reason], count)
    yield dropped
    reports = CounterMetricFamily(
        "smtp_monitor_snmp_reports",
        "SNMPv3 Reports sent, by the usmStats counter they carry",
        labels=["counter"],
    )
    for counter, count in sorted(dict(h.snmp_reports).items()):
        reports.add_metric([counter], count)
    yield reports
    yield CounterMetricFamily(
        "smtp_monitor_state_write_errors",
        "Failed writes to the state database",
        value=h.state_write_errors,
    )
    facts = dict(h.probe_process)
    if facts:
        for key, name, doc in (
            ("tasks", "smtp_monitor_probe_process_tasks", "asyncio tasks in the probe process"),
            ("open_fds", "smtp_monitor_probe_process_open_fds", "Open descriptors of the probe process"),
            ("rss_bytes", "smtp_monitor_probe_process_resident_memory_bytes", "Resident memory, probe process"),
        ):
            if key in facts:
                yield GaugeMetricFamily(name, doc, value=facts[key])
        if "cpu_seconds" in facts:
            yield CounterMetricFamily(
                "smtp_monitor_probe_process_cpu_seconds",
                "CPU time of the probe process",
                value=facts["cpu_seconds"],
            )
    yield GaugeMetricFamily("smtp_monitor_tasks", "asyncio tasks in the agent process", value=h.agent_tasks)
    notes = CounterMetricFamily(
        "smtp_monitor_notifications", "SNMP notifications by receiver and outcome", labels=["receiver", "outcome"]
    )
    for (receiver, outcome), count in sorted(dict(h.notifications).items()):
        notes.add_metric([receiver, outcome], count)
    yield notes


class _StatesCollector(Collector):
    """Probe metrics of states held by the caller (no store, no agent health)."""

    def __init__(self, states: Iterable[ProbeState]) -> None:
        self.states = tuple(states)

    def collect(self) -> Iterator[Metric]:
        yield from probe_metric_families(self.states)


def single_result_state(probe: ProbeConfig, result: ProbeResult, now: float) -> ProbeState:
    """A probe's state after its one and only run, as ResultsStore.record leaves a new probe's with
    alert_after 1: an ad-hoc probe has no history, and no status to announce."""
    cause = (
        result.phase.value if result.phase else "internal",
        result.reason.value if result.reason else "internal",
    )
    tls = result.tls if isinstance(result, SmtpResult) else None
    ledger = DeliveryLedger().after(result) if isinstance(result, DeliveryResult) else None
    return ProbeState(
        probe.name,
        kind_of(probe),
        probe,
        alert_after=1,
        cert_warn_days=0,
        status=Status.OK if result.ok else Status.FAILED,
        last_result=result,
        consecutive_failures=0 if result.ok else 1,
        runs=1,
        failures=0 if result.ok else 1,
        failures_by_cause={} if result.ok else {cause: 1},
        last_success=now if result.ok else None,
        last_change=now,  # from unknown to ok or failed
        last_tls=tls,
        last_tls_at=result.started_at if tls is not None else None,
        delivery=ledger,
    )


def single_result_registry(probe: ProbeConfig, result: ProbeResult) -> CollectorRegistry:
    """The metrics of one ad-hoc probe, with the same names as the scheduled ones."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StatesCollector([single_result_state(probe, result, time.time())]))
    return registry


def build_registry(store: ResultsStore, health: AgentHealth, *, location: str = "") -> CollectorRegistry:
    """A registry of our collector plus the process's own CPU, memory and descriptor metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store, health, location=location))
    ProcessCollector(registry=registry)
    return registry


def build_agent_registry(health: AgentHealth) -> CollectorRegistry:
    """The agent's own metrics and the process collector, for /metrics next to ProbeExposition."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(health))
    ProcessCollector(registry=registry)
    return registry
