"""Prometheus collector: metric families built from a store snapshot on every scrape."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from monitor.config import MxCheckConfig, SmtpProbeConfig
from monitor.health import AgentHealth
from monitor.results import MxResult, ProbeResult, SmtpResult, Status
from monitor.store import ProbeConfig, ProbeState, ResultsStore


def _g(name: str, doc: str, labels: list[str], unit: str = "") -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels, unit=unit)


class StoreCollector(Collector):
    """Reads the results store and agent health; writes nothing."""

    def __init__(self, store: ResultsStore, health: AgentHealth | None) -> None:
        self.store = store
        self.health = health  # None: probe metrics only (the /probe endpoint)

    def collect(self) -> Iterator[Metric]:
        snap = self.store.snapshot()
        states = list(snap.states.values())
        yield from self._smtp([s for s in states if s.kind == "smtp"])
        yield from self._mx([s for s in states if s.kind == "mx"])
        if self.health is not None:
            yield from self._agent()

    # -- SMTP probes ---------------------------------------------------------------
    def _smtp(self, states: list[ProbeState]) -> Iterator[Metric]:
        success = _g(
            "smtp_probe_success", "1 if the last SMTP probe succeeded, else 0", ["probe", "host", "port", "tls"],
        )
        status = _g("smtp_probe_status", "Alerting status of the probe (1 for the current one)", ["probe", "status"])
        duration = _g("smtp_probe_duration_seconds", "Duration of the last SMTP probe", ["probe"])
        phase = _g(
            "smtp_probe_phase_duration_seconds", "Duration of each phase of the last SMTP probe", ["probe", "phase"],
        )
        reply = _g("smtp_probe_reply_code", "SMTP reply code that failed the last probe (0 if none)", ["probe"])
        consecutive = _g("smtp_probe_consecutive_failures", "Failures since the last success", ["probe"])
        runs = CounterMetricFamily("smtp_probe_runs", "SMTP probe runs", labels=["probe"])
        failures = CounterMetricFamily(
            "smtp_probe_failures", "Failed SMTP probe runs by phase and reason", labels=["probe", "phase", "reason"],
        )
        last_success = _g("smtp_probe_last_success_timestamp_seconds", "When the probe last succeeded", ["probe"])
        last_change = _g(
            "smtp_probe_last_change_timestamp_seconds", "When the probe's status last changed", ["probe"],
        )
        not_after = _g(
            "smtp_tls_cert_not_after_timestamp_seconds",
            "Expiry of the server's certificate, also when it did not verify", ["probe"],
        )
        chain_not_after = _g(
            "smtp_tls_chain_not_after_timestamp_seconds",
            "Earliest expiry in the presented certificate chain", ["probe"],
        )
        tls_info = InfoMetricFamily(
            "smtp_tls", "Negotiated TLS version and cipher", labels=["probe", "version", "cipher"],
        )
        verified = _g("smtp_tls_verified", "1 if the certificate chain and host name verified", ["probe"])
        ehlo_ext = InfoMetricFamily(
            "smtp_ehlo_extension", "Extensions the server advertised in its last EHLO", labels=["probe", "extension"],
        )
        for state in states:
            cfg = state.config
            assert isinstance(cfg, SmtpProbeConfig)
            name = state.name
            result = state.last_result
            assert result is None or isinstance(result, SmtpResult)
            ok = 1.0 if result and result.ok else 0.0
            success.add_metric([name, cfg.host, str(cfg.effective_port), cfg.tls], ok)
            for st in Status:
                status.add_metric([name, st.value], 1.0 if state.status is st else 0.0)
            runs.add_metric([name], state.runs)
            for (ph, reason), count in state.failures_by_cause.items():
                failures.add_metric([name, ph, reason], count)
            consecutive.add_metric([name], state.consecutive_failures)
            if state.last_success is not None:
                last_success.add_metric([name], state.last_success)
            if state.last_change is not None:
                last_change.add_metric([name], state.last_change)
            if result is None:
                continue
            duration.add_metric([name], result.total)
            for ph, seconds in result.timings.items():
                phase.add_metric([name, ph], seconds)
            reply.add_metric([name], result.reply_code)
            for ext in result.extensions:
                ehlo_ext.add_metric([name, ext], {})
            tls = state.last_tls  # the latest handshake: expiry stays visible while the server is down
            if tls is not None:
                tls_info.add_metric([name, tls.version, tls.cipher], {})
                verified.add_metric([name], 1.0 if tls.verified else 0.0)
                if tls.cert is not None:
                    not_after.add_metric([name], tls.cert.not_after.timestamp())
                if tls.chain_not_after is not None:
                    chain_not_after.add_metric([name], tls.chain_not_after.timestamp())
        yield from (success, status, duration, phase, reply, consecutive, runs, failures, last_success,
                    last_change, not_after, chain_not_after, tls_info, verified, ehlo_ext)

    # -- MX checks -------------------------------------------------------------------
    def _mx(self, states: list[ProbeState]) -> Iterator[Metric]:
        success = _g("mx_check_success", "1 if the last MX check succeeded, else 0", ["check", "domain"])
        status = _g("mx_check_status", "Alerting status of the check (1 for the current one)", ["check", "status"])
        records = _g("mx_check_records", "Exchanges in the last MX answer", ["check"])
        duration = _g("mx_check_duration_seconds", "Duration of the last MX check", ["check"])
        phase = _g(
            "mx_check_phase_duration_seconds", "Duration of each phase of the last MX check", ["check", "phase"],
        )
        implicit = _g(
            "mx_check_implicit_mx", "1 if the domain has no MX and its address serves as exchange", ["check"],
        )
        up = _g(
            "mx_check_exchange_up",
            "1 if the exchange answered SMTP (only when hosts are probed)", ["check", "exchange"],
        )
        preference = _g("mx_check_exchange_preference", "MX preference of each exchange", ["check", "exchange"])
        addresses = _g("mx_check_exchange_addresses", "A and AAAA addresses of each exchange", ["check", "exchange"])
        runs = CounterMetricFamily("mx_check_runs", "MX check runs", labels=["check"])
        failures = CounterMetricFamily(
            "mx_check_failures", "Failed MX checks by phase and reason", labels=["check", "phase", "reason"],
        )
        last_success = _g("mx_check_last_success_timestamp_seconds", "When the check last succeeded", ["check"])
        last_change = _g("mx_check_last_change_timestamp_seconds", "When the check's status last changed", ["check"])
        address_up = _g(
            "mx_check_address_up",
            "1 if the exchange answered SMTP on this address (probe_hosts: all_addresses)",
            ["check", "exchange", "address"],
        )
        reverse = _g(
            "mx_check_reverse_dns_confirmed",
            "1 if the address has a PTR name that resolves back to it", ["check", "exchange", "address"],
        )
        dnssec = _g("mx_check_dnssec_authenticated", "1 if the resolver marked the MX answer authentic (AD)", ["check"])
        spf = _g("mx_check_spf_valid", "1 if the domain has exactly one well-formed SPF record", ["check"])
        dmarc = _g("mx_check_dmarc_valid", "1 if the domain has exactly one well-formed DMARC record", ["check"])
        dane = _g(
            "mx_check_dane_matched", "1 if the exchange's certificate matches a usable TLSA record",
            ["check", "exchange"],
        )
        sts_valid = _g(
            "mx_check_mta_sts_valid", "1 if the MTA-STS record and policy are valid and cover every exchange",
            ["check"],
        )
        sts_info = InfoMetricFamily("mx_check_mta_sts", "Mode of the domain's MTA-STS policy", labels=["check", "mode"])
        sts_cert = _g(
            "mx_check_mta_sts_cert_not_after_timestamp_seconds", "Expiry of the MTA-STS policy host's certificate",
            ["check"],
        )
        for state in states:
            cfg = state.config
            assert isinstance(cfg, MxCheckConfig)
            name = state.name
            result = state.last_result
            assert result is None or isinstance(result, MxResult)
            success.add_metric([name, cfg.domain], 1.0 if result and result.ok else 0.0)
            for st in Status:
                status.add_metric([name, st.value], 1.0 if state.status is st else 0.0)
            runs.add_metric([name], state.runs)
            for (ph, reason), count in state.failures_by_cause.items():
                failures.add_metric([name, ph, reason], count)
            if state.last_success is not None:
                last_success.add_metric([name], state.last_success)
            if state.last_change is not None:
                last_change.add_metric([name], state.last_change)
            if result is None:
                continue
            records.add_metric([name], len(result.records))
            duration.add_metric([name], result.total)
            implicit.add_metric([name], 1.0 if result.implicit_mx else 0.0)
            for ph, seconds in result.timings.items():
                phase.add_metric([name, ph], seconds)
            for record in result.records:
                preference.add_metric([name, record.exchange], record.preference)
                addresses.add_metric([name, record.exchange], len(record.addresses))
                if record.up is not None:
                    up.add_metric([name, record.exchange], 1.0 if record.up else 0.0)
                for probe in record.address_probes:
                    address_up.add_metric([name, record.exchange, probe.address], 1.0 if probe.ok else 0.0)
                for rev in record.reverse:
                    reverse.add_metric([name, record.exchange, rev.address], 1.0 if rev.confirmed else 0.0)
                facts = record.extra.get("dane")
                if facts is not None and facts.get("matched") is not None:
                    dane.add_metric([name, record.exchange], 1.0 if facts["matched"] else 0.0)
            sts = result.extra.get("mta_sts")
            if sts is not None:
                sts_valid.add_metric([name], 1.0 if sts.get("valid") else 0.0)
                if sts.get("mode"):
                    sts_info.add_metric([name, sts["mode"]], {})
                if sts.get("cert_not_after"):
                    sts_cert.add_metric([name], datetime.fromisoformat(sts["cert_not_after"]).timestamp())
            if result.authenticated is not None:
                dnssec.add_metric([name], 1.0 if result.authenticated else 0.0)
            for kind, family in (("spf", spf), ("dmarc", dmarc)):
                verdict = result.extra.get(kind)
                if verdict is not None:
                    family.add_metric([name], 1.0 if verdict["valid"] else 0.0)
        yield from (success, status, records, duration, phase, implicit, up, preference, addresses,
                    runs, failures, last_success, last_change, address_up, reverse, dnssec, spf, dmarc,
                    dane, sts_valid, sts_info, sts_cert)

    # -- the agent itself ----------------------------------------------------------------
    def _agent(self) -> Iterator[Metric]:
        h = self.health
        assert h is not None
        build = InfoMetricFamily("smtp_monitor_build", "Version of the running agent")
        build.add_metric([], {"version": h.version})
        yield build
        yield GaugeMetricFamily("smtp_monitor_start_time_seconds", "When the agent started", value=h.started_at)
        yield GaugeMetricFamily(
            "smtp_monitor_config_last_reload_successful", "1 if the last config load or reload succeeded",
            value=1.0 if h.config_load_success else 0.0,
        )
        yield GaugeMetricFamily(
            "smtp_monitor_config_last_reload_success_timestamp_seconds", "When the config was last loaded successfully",
            value=h.config_loaded_at,
        )
        reloads = CounterMetricFamily("smtp_monitor_config_reloads", "Config reloads by outcome", labels=["outcome"])
        for outcome in ("success", "failure"):
            reloads.add_metric([outcome], h.config_reloads.get(outcome, 0))
        yield reloads
        yield GaugeMetricFamily("smtp_monitor_probes_in_flight", "Probes running now", value=h.in_flight)
        yield CounterMetricFamily(
            "smtp_monitor_scheduler_skipped_runs", "Runs skipped because the previous run was still going",
            value=h.skipped_runs,
        )
        lateness = HistogramMetricFamily(
            "smtp_monitor_scheduler_lateness_seconds", "How late probe runs start after their scheduled time",
        )
        lateness.add_metric([], h.lateness.cumulative(), sum_value=h.lateness.total)
        yield lateness
        snmp = CounterMetricFamily(
            "smtp_monitor_snmp_requests", "SNMP requests answered by PDU type", labels=["type"],
        )
        # dict() copies in one step: the event loop may add a key while this thread reads.
        for pdu, count in sorted(dict(h.snmp_requests).items()):
            snmp.add_metric([pdu], count)
        yield snmp
        yield CounterMetricFamily(
            "smtp_monitor_snmp_auth_failures", "SNMP requests refused: unknown community or bad credentials",
            value=h.snmp_auth_failures,
        )
        yield CounterMetricFamily(
            "smtp_monitor_snmp_dropped_packets", "Malformed or unsupported SNMP datagrams dropped",
            value=h.snmp_dropped,
        )
        yield CounterMetricFamily(
            "smtp_monitor_state_write_errors", "Failed writes to the state database", value=h.state_write_errors,
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
                    "smtp_monitor_probe_process_cpu_seconds", "CPU time of the probe process",
                    value=facts["cpu_seconds"],
                )
        yield GaugeMetricFamily("smtp_monitor_tasks", "asyncio tasks in the agent process", value=h.agent_tasks)
        notes = CounterMetricFamily(
            "smtp_monitor_notifications", "SNMP notifications by receiver and outcome", labels=["receiver", "outcome"]
        )
        for (receiver, outcome), count in sorted(dict(h.notifications).items()):
            notes.add_metric([receiver, outcome], count)
        yield notes


def single_result_registry(probe: ProbeConfig, result: ProbeResult) -> CollectorRegistry:
    """The metrics of one ad-hoc probe, with the same names as the scheduled ones."""
    store = ResultsStore()
    store.configure([(probe, 1, 0)])
    store.record(probe.name, result)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store, None))
    return registry


def build_registry(store: ResultsStore, health: AgentHealth) -> CollectorRegistry:
    """A registry of our collector plus the process's own CPU, memory and descriptor metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store, health))
    ProcessCollector(registry=registry)
    return registry
