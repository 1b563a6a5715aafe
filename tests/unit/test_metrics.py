"""prometheus/metrics.py: Prometheus families from a store snapshot and agent health.

promtool's verdict on the same text is in tests/integration/test_metrics_promtool.py.
"""

from __future__ import annotations

import gc
import math
import time
import weakref
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from monitor.config.schema import MxCheckConfig, SmtpProbeConfig
from monitor.exporters.prometheus.metrics import ProbeExposition, StoreCollector
from monitor.model.facts import DaneFacts, MtaStsFacts, MtaStsPolicyFacts, PolicyRecord
from monitor.model.results import CertInfo, MxRecord, MxResult, Phase, Reason, Reply, ReverseDns, SmtpResult, TlsInfo
from monitor.state.health import LATENESS_BUCKETS, AgentHealth
from monitor.state.store import ResultsStore

NOT_AFTER = datetime(2031, 5, 17, 12, 0, tzinfo=UTC)
CHAIN_NOT_AFTER = datetime(2030, 1, 1, tzinfo=UTC)

SMTP = SmtpProbeConfig(name="relay", host="mail.example", port=587, tls="starttls")
SMTP_IMPLICIT = SmtpProbeConfig(name="smtps", host="smtps.example", tls="implicit")
MX = MxCheckConfig(name="domain-mx", domain="example.com", probe_hosts=True)


def tls(verified: bool) -> TlsInfo:
    cert = CertInfo(
        subject="CN=mail.example",
        issuer="CN=Test CA",
        sans=("DNS:mail.example",),
        not_before=datetime(2024, 1, 1, tzinfo=UTC),
        not_after=NOT_AFTER,
        serial="1f",
        sha256="ab" * 32,
    )
    return TlsInfo(
        version="TLSv1.3",
        cipher="TLS_AES_256_GCM_SHA384",
        verified=verified,
        verify_error="" if verified else "self-signed certificate",
        cert=cert,
        chain_not_after=CHAIN_NOT_AFTER,
    )


def smtp_ok(verified: bool = True) -> SmtpResult:
    return SmtpResult(
        host="mail.example",
        port=587,
        tls_mode="starttls",
        started_at=time.time(),
        ok=True,
        timings={
            "resolve": 0.001,
            "connect": 0.002,
            "banner": 0.01,
            "ehlo": 0.003,
            "starttls": 0.004,
            "tls": 0.02,
            "ehlo_tls": 0.003,
            "quit": 0.001,
        },
        total=0.05,
        banner="220 mail.example ESMTP",
        extensions={"STARTTLS": "", "SIZE": "10240000"},
        tls=tls(verified),
    )


def smtp_failed(phase: Phase, reason: Reason, code: int = 0) -> SmtpResult:
    return SmtpResult(
        host="mail.example",
        port=587,
        tls_mode="starttls",
        started_at=time.time(),
        ok=False,
        phase=phase,
        reason=reason,
        error="no",
        reply=Reply(code, ("go away",)) if code else None,
        timings={"resolve": 0.001},
        total=0.003,
    )


def mx_result(ok: bool, up: tuple[bool, ...] = (True, False)) -> MxResult:
    records = tuple(
        MxRecord(
            preference=10 * (i + 1),
            exchange=f"mx{i + 1}.example.com",
            addresses=("192.0.2.1", "2001:db8::1"),
            probe=smtp_failed(Phase.CONNECT, Reason.REFUSED) if not is_up else smtp_ok(),
        )
        for i, is_up in enumerate(up)
    )
    return MxResult(
        domain="example.com",
        started_at=time.time(),
        ok=ok,
        phase=None if ok else Phase.HOSTS,
        reason=None if ok else Reason.HOSTS_DOWN,
        error="" if ok else "all down",
        records=records,
        timings={"mx": 0.004, "address": 0.002, "hosts": 0.05},
        total=0.06,
    )


def registry_for(store: ResultsStore, health: AgentHealth | None = None) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(StoreCollector(store, health or AgentHealth()))
    return registry


def populated_store() -> ResultsStore:
    store = ResultsStore()
    store.configure([(SMTP, 2, 14), (SMTP_IMPLICIT, 2, 14), (MX, 1, 14)])
    store.record("relay", smtp_failed(Phase.CONNECT, Reason.REFUSED))
    store.record("relay", smtp_failed(Phase.CONNECT, Reason.REFUSED))
    store.record("relay", smtp_failed(Phase.EHLO, Reason.REPLY, 554))
    store.record("relay", smtp_ok(verified=False))
    store.record("domain-mx", mx_result(ok=False, up=(False, False)))
    store.record("domain-mx", mx_result(ok=True))
    return store


class TestSmtpProbeMetrics:
    def test_success_status_runs_and_failures(self) -> None:
        store = populated_store()
        reg = registry_for(store)
        labels = {"probe": "relay", "host": "mail.example", "port": "587", "tls": "starttls"}
        assert reg.get_sample_value("smtp_probe_success", labels) == 1.0
        assert reg.get_sample_value("smtp_probe_status", {"probe": "relay", "status": "ok"}) == 1.0
        assert reg.get_sample_value("smtp_probe_status", {"probe": "relay", "status": "failed"}) == 0.0
        assert reg.get_sample_value("smtp_probe_status", {"probe": "relay", "status": "unknown"}) == 0.0
        assert reg.get_sample_value("smtp_probe_runs_total", {"probe": "relay"}) == 4.0
        cause = {"probe": "relay", "phase": "connect", "reason": "refused"}
        assert reg.get_sample_value("smtp_probe_failures_total", cause) == 2.0
        cause = {"probe": "relay", "phase": "ehlo", "reason": "reply"}
        assert reg.get_sample_value("smtp_probe_failures_total", cause) == 1.0
        assert reg.get_sample_value("smtp_probe_consecutive_failures", {"probe": "relay"}) == 0.0

    def test_phase_durations_and_total(self) -> None:
        reg = registry_for(populated_store())
        for phase, seconds in smtp_ok().timings.items():
            labels = {"probe": "relay", "phase": phase}
            assert reg.get_sample_value("smtp_probe_phase_duration_seconds", labels) == seconds
        assert reg.get_sample_value("smtp_probe_duration_seconds", {"probe": "relay"}) == 0.05

    def test_failed_probe_reports_reply_code_and_zero_success(self) -> None:
        store = ResultsStore()
        store.configure([(SMTP, 1, 14)])
        store.record("relay", smtp_failed(Phase.EHLO, Reason.REPLY, 554))
        reg = registry_for(store)
        labels = {"probe": "relay", "host": "mail.example", "port": "587", "tls": "starttls"}
        assert reg.get_sample_value("smtp_probe_success", labels) == 0.0
        assert reg.get_sample_value("smtp_probe_reply_code", {"probe": "relay"}) == 554.0
        assert reg.get_sample_value("smtp_probe_status", {"probe": "relay", "status": "failed"}) == 1.0
        assert reg.get_sample_value("smtp_probe_consecutive_failures", {"probe": "relay"}) == 1.0
        assert reg.get_sample_value("smtp_tls_verified", {"probe": "relay"}) is None

    def test_probe_without_result_is_unknown_and_unsuccessful(self) -> None:
        reg = registry_for(populated_store())
        labels = {"probe": "smtps", "host": "smtps.example", "port": "465", "tls": "implicit"}
        assert reg.get_sample_value("smtp_probe_success", labels) == 0.0
        assert reg.get_sample_value("smtp_probe_status", {"probe": "smtps", "status": "unknown"}) == 1.0
        assert reg.get_sample_value("smtp_probe_runs_total", {"probe": "smtps"}) == 0.0
        assert reg.get_sample_value("smtp_probe_duration_seconds", {"probe": "smtps"}) is None
        assert reg.get_sample_value("smtp_probe_last_success_timestamp_seconds", {"probe": "smtps"}) is None

    @pytest.mark.parametrize("verified", [True, False])
    def test_certificate_expiry_also_when_not_verified(self, verified: bool) -> None:
        store = ResultsStore()
        store.configure([(SMTP, 1, 14)])
        store.record("relay", smtp_ok(verified=verified))
        reg = registry_for(store)
        probe = {"probe": "relay"}
        assert reg.get_sample_value("smtp_tls_cert_not_after_timestamp_seconds", probe) == NOT_AFTER.timestamp()
        assert reg.get_sample_value("smtp_tls_chain_not_after_timestamp_seconds", probe) == CHAIN_NOT_AFTER.timestamp()
        assert reg.get_sample_value("smtp_tls_verified", probe) == (1.0 if verified else 0.0)

    def test_tls_info_and_ehlo_extensions(self) -> None:
        reg = registry_for(populated_store())
        info = {"probe": "relay", "version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384"}
        assert reg.get_sample_value("smtp_tls_info", info) == 1.0
        for ext in ("STARTTLS", "SIZE"):
            assert reg.get_sample_value("smtp_ehlo_extension_info", {"probe": "relay", "extension": ext}) == 1.0

    def test_last_success_and_last_change_timestamps(self) -> None:
        before = time.time()
        store = populated_store()
        state = store.snapshot().states["relay"]
        reg = registry_for(store)
        last_success = reg.get_sample_value("smtp_probe_last_success_timestamp_seconds", {"probe": "relay"})
        last_change = reg.get_sample_value("smtp_probe_last_change_timestamp_seconds", {"probe": "relay"})
        assert last_success == state.last_success
        assert last_change == state.last_change
        assert last_success is not None
        assert before <= last_success <= time.time()

    def test_metrics_follow_later_writes(self) -> None:
        store = populated_store()
        reg = registry_for(store)
        assert reg.get_sample_value("smtp_probe_runs_total", {"probe": "relay"}) == 4.0
        store.record("relay", smtp_ok())
        assert reg.get_sample_value("smtp_probe_runs_total", {"probe": "relay"}) == 5.0


class TestMxCheckMetrics:
    def test_success_records_and_exchanges(self) -> None:
        reg = registry_for(populated_store())
        assert reg.get_sample_value("mx_check_success", {"check": "domain-mx", "domain": "example.com"}) == 1.0
        assert reg.get_sample_value("mx_check_status", {"check": "domain-mx", "status": "ok"}) == 1.0
        assert reg.get_sample_value("mx_check_records", {"check": "domain-mx"}) == 2.0
        mx1 = {"check": "domain-mx", "exchange": "mx1.example.com"}
        mx2 = {"check": "domain-mx", "exchange": "mx2.example.com"}
        assert reg.get_sample_value("mx_check_exchange_up", mx1) == 1.0
        assert reg.get_sample_value("mx_check_exchange_up", mx2) == 0.0
        assert reg.get_sample_value("mx_check_exchange_preference", mx2) == 20.0
        assert reg.get_sample_value("mx_check_exchange_addresses", mx1) == 2.0
        assert reg.get_sample_value("mx_check_implicit_mx", {"check": "domain-mx"}) == 0.0
        assert reg.get_sample_value("mx_check_phase_duration_seconds", {"check": "domain-mx", "phase": "mx"}) == 0.004

    def test_runs_failures_and_timestamps(self) -> None:
        store = populated_store()
        state = store.snapshot().states["domain-mx"]
        reg = registry_for(store)
        assert reg.get_sample_value("mx_check_runs_total", {"check": "domain-mx"}) == 2.0
        cause = {"check": "domain-mx", "phase": "hosts", "reason": "hosts_down"}
        assert reg.get_sample_value("mx_check_failures_total", cause) == 1.0
        check = {"check": "domain-mx"}
        assert reg.get_sample_value("mx_check_last_success_timestamp_seconds", check) == state.last_success
        assert reg.get_sample_value("mx_check_last_change_timestamp_seconds", check) == state.last_change

    def test_exchange_up_absent_when_hosts_are_not_probed(self) -> None:
        store = ResultsStore()
        store.configure([(MX, 1, 14)])
        records = (MxRecord(10, "mx1.example.com", ("192.0.2.1",)),)
        store.record("domain-mx", MxResult(domain="example.com", started_at=0.0, ok=True, records=records))
        reg = registry_for(store)
        exchange = {"check": "domain-mx", "exchange": "mx1.example.com"}
        assert reg.get_sample_value("mx_check_exchange_up", exchange) is None
        assert reg.get_sample_value("mx_check_exchange_preference", exchange) == 10.0
        assert reg.get_sample_value("mx_check_records", {"check": "domain-mx"}) == 1.0

    def test_every_address_reverse_dns_dnssec_and_policy_records(self) -> None:
        store = ResultsStore()
        store.configure([(MX, 1, 14)])
        down = replace(smtp_failed(Phase.CONNECT, Reason.REFUSED), address="2001:db8::1")
        up = replace(smtp_ok(), address="192.0.2.1")
        record = MxRecord(
            10,
            "mx1.example.com",
            ("192.0.2.1", "2001:db8::1"),
            probe=up,
            address_probes=(up, down),
            reverse=(ReverseDns("192.0.2.1", ("mx1.example.com",), True), ReverseDns("2001:db8::1", (), False)),
        )
        store.record(
            "domain-mx",
            MxResult(
                domain="example.com",
                started_at=0.0,
                ok=True,
                records=(record,),
                authenticated=False,
                spf=PolicyRecord("spf", "v=spf1 -all", ""),
                dmarc=PolicyRecord("dmarc", "", "no DMARC record"),
            ),
        )
        reg = registry_for(store)
        at = {"check": "domain-mx", "exchange": "mx1.example.com"}
        assert reg.get_sample_value("mx_check_exchange_up", at) == 1.0
        assert reg.get_sample_value("mx_check_address_up", {**at, "address": "192.0.2.1"}) == 1.0
        assert reg.get_sample_value("mx_check_address_up", {**at, "address": "2001:db8::1"}) == 0.0
        assert reg.get_sample_value("mx_check_reverse_dns_confirmed", {**at, "address": "2001:db8::1"}) == 0.0
        assert reg.get_sample_value("mx_check_dnssec_authenticated", {"check": "domain-mx"}) == 0.0
        assert reg.get_sample_value("mx_check_spf_valid", {"check": "domain-mx"}) == 1.0
        assert reg.get_sample_value("mx_check_dmarc_valid", {"check": "domain-mx"}) == 0.0

    def test_dane_and_mta_sts_verdicts(self) -> None:
        store = ResultsStore()
        store.configure([(MX, 1, 14)])
        record = MxRecord(
            10,
            "mx1.example.com",
            ("192.0.2.1",),
            probe=smtp_ok(),
            dane=DaneFacts("_25._tcp.mx1.example.com", ("3 1 1 " + "00" * 32,), matched=False, usable=1),
        )
        policy = MtaStsPolicyFacts(
            mode="enforce",
            max_age=86400,
            mx_patterns=("*.example.com",),
            verified=True,
            error="",
            error_kind="",
            http_status=200,
            uncovered=(),
            cert_not_after=datetime.fromisoformat("2031-01-01T00:00:00+00:00"),
        )
        store.record(
            "domain-mx",
            MxResult(
                domain="example.com",
                started_at=0.0,
                ok=False,
                records=(record,),
                mta_sts=MtaStsFacts("20261122", "", "", present=True, policy=policy, valid=True),
            ),
        )
        reg = registry_for(store)
        check = {"check": "domain-mx"}
        assert reg.get_sample_value("mx_check_dane_matched", {**check, "exchange": "mx1.example.com"}) == 0.0
        assert reg.get_sample_value("mx_check_mta_sts_valid", check) == 1.0
        assert reg.get_sample_value("mx_check_mta_sts_info", {**check, "mode": "enforce"}) == 1.0
        assert reg.get_sample_value("mx_check_mta_sts_cert_not_after_timestamp_seconds", check) == 1924992000.0


class TestAgentHealthMetrics:
    def test_lateness_histogram_buckets_are_cumulative(self) -> None:
        health = AgentHealth()
        for seconds in (0.0005, 0.003, 0.003, 0.2, 7.0, 120.0):
            health.lateness.observe(seconds)
        reg = registry_for(ResultsStore(), health)
        name = "smtp_monitor_scheduler_lateness_seconds"
        expected = {"0.001": 1, "0.005": 3, "0.01": 3, "0.25": 4, "5.0": 4, "10.0": 5, "30.0": 5, "+Inf": 6}
        for le, count in expected.items():
            assert reg.get_sample_value(f"{name}_bucket", {"le": le}) == count, le
        assert reg.get_sample_value(f"{name}_count") == 6.0
        assert reg.get_sample_value(f"{name}_sum") == pytest.approx(127.2065)
        assert len(health.lateness.cumulative()) == len(LATENESS_BUCKETS) + 1

    def test_negative_lateness_counts_as_zero(self) -> None:
        health = AgentHealth()
        health.lateness.observe(-0.5)
        reg = registry_for(ResultsStore(), health)
        assert reg.get_sample_value("smtp_monitor_scheduler_lateness_seconds_bucket", {"le": "0.001"}) == 1.0
        assert reg.get_sample_value("smtp_monitor_scheduler_lateness_seconds_sum") == 0.0

    def test_agent_counters_and_gauges(self) -> None:
        health = AgentHealth(config_loaded_at=1700000000.0, config_load_success=False, in_flight=3, skipped_runs=4)
        health.config_reloads["success"] += 2
        health.config_reloads["failure"] += 1
        health.snmp_requests["get"] += 5
        health.snmp_auth_failures = 6
        health.notifications[("nms", "sent")] += 7
        reg = registry_for(ResultsStore(), health)
        assert reg.get_sample_value("smtp_monitor_build_info", {"version": health.version}) == 1.0
        assert reg.get_sample_value("smtp_monitor_start_time_seconds") == health.started_at
        assert reg.get_sample_value("smtp_monitor_config_last_reload_successful") == 0.0
        assert reg.get_sample_value("smtp_monitor_config_last_reload_success_timestamp_seconds") == 1700000000.0
        assert reg.get_sample_value("smtp_monitor_config_reloads_total", {"outcome": "success"}) == 2.0
        assert reg.get_sample_value("smtp_monitor_config_reloads_total", {"outcome": "failure"}) == 1.0
        assert reg.get_sample_value("smtp_monitor_probes_in_flight") == 3.0
        assert reg.get_sample_value("smtp_monitor_scheduler_skipped_runs_total") == 4.0
        assert reg.get_sample_value("smtp_monitor_snmp_requests_total", {"type": "get"}) == 5.0
        assert reg.get_sample_value("smtp_monitor_snmp_auth_failures_total") == 6.0
        assert reg.get_sample_value("smtp_monitor_notifications_total", {"receiver": "nms", "outcome": "sent"}) == 7.0


class TestExposition:
    def test_empty_store_exposes_only_agent_metrics(self) -> None:
        exposition = generate_latest(registry_for(ResultsStore())).decode()
        samples = [line for line in exposition.splitlines() if line and not line.startswith("#")]
        assert samples
        assert all(line.startswith("smtp_monitor_") for line in samples)


def parsed(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


class TestProbeExposition:
    def test_same_samples_as_the_collector(self) -> None:
        store = populated_store()
        registry = CollectorRegistry()
        registry.register(StoreCollector(store, None))
        expected = parsed(generate_latest(registry).decode())
        text = ProbeExposition().render(store.snapshot().states.values()).decode()
        assert parsed(text) == expected
        assert len(expected) > 30

    def test_unchanged_probes_reuse_their_lines_and_changed_ones_are_redone(self) -> None:
        store = populated_store()
        exposition = ProbeExposition()
        first = exposition.render(store.snapshot().states.values())
        assert exposition.render(store.snapshot().states.values()) == first
        store.record("relay", smtp_failed(Phase.BANNER, Reason.TIMEOUT))
        after = parsed(exposition.render(store.snapshot().states.values()).decode())
        labels = frozenset({("probe", "relay"), ("phase", "banner"), ("reason", "timeout")})
        key = ("smtp_probe_failures_total", labels)
        assert after[key] == 1.0

    def test_a_replaced_state_is_not_kept_alive_until_the_next_scrape(self) -> None:
        store = populated_store()
        exposition = ProbeExposition()
        exposition.render(store.snapshot().states.values())
        previous = weakref.ref(store.snapshot().states["relay"])
        store.record("relay", smtp_failed(Phase.BANNER, Reason.TIMEOUT))  # no scrape follows
        gc.collect()
        assert previous() is None
        after = parsed(exposition.render(store.snapshot().states.values()).decode())
        labels = frozenset({("probe", "relay"), ("phase", "banner"), ("reason", "timeout")})
        assert after[("smtp_probe_failures_total", labels)] == 1.0

    def test_removed_probes_disappear(self) -> None:
        store = populated_store()
        exposition = ProbeExposition()
        exposition.render(store.snapshot().states.values())
        store.configure([(SMTP, 2, 14)])
        text = exposition.render(store.snapshot().states.values()).decode()
        assert 'probe="smtps"' not in text
        assert 'check="domain-mx"' not in text

    def test_label_values_are_escaped(self) -> None:
        store = ResultsStore()
        store.configure([(SMTP, 2, 14)])
        result = replace(smtp_ok(), extensions={'X-"ODD"\\EXT': ""})
        store.record("relay", result)
        text = ProbeExposition().render(store.snapshot().states.values()).decode()
        labels = frozenset({("probe", "relay"), ("extension", 'X-"ODD"\\EXT')})
        assert parsed(text)[("smtp_ehlo_extension_info", labels)] == 1.0

    @pytest.mark.parametrize(
        ("value", "text"), [(float("inf"), "+Inf"), (float("-inf"), "-Inf"), (float("nan"), "NaN")]
    )
    def test_non_finite_values_are_written_as_prometheus_reads_them(self, value: float, text: str) -> None:
        store = ResultsStore()
        store.configure([(SMTP, 2, 14)])
        store.record("relay", replace(smtp_ok(), total=value))
        rendered = ProbeExposition().render(store.snapshot().states.values()).decode()
        assert 'smtp_probe_duration_seconds{probe="relay"} ' + text + "\n" in rendered

    def test_warmed_probes_are_not_formatted_again_by_the_next_render(self) -> None:
        states = list(populated_store().snapshot().states.values())
        exposition = ProbeExposition()
        assert exposition.warm(iter(states), deadline=math.inf)
        assert exposition.formatted == len(states)
        text = exposition.render(states)
        assert exposition.formatted == len(states)
        assert text == ProbeExposition().render(states)

    def test_warming_stops_at_its_deadline_and_resumes_where_it_stopped(self) -> None:
        states = list(populated_store().snapshot().states.values())
        exposition = ProbeExposition()
        remaining = iter(states)
        assert not exposition.warm(remaining, deadline=0.0)  # a deadline already passed: one state per call
        assert exposition.formatted == 1
        while not exposition.warm(remaining, deadline=0.0):
            pass
        assert exposition.formatted == len(states)

    def test_warming_formats_only_the_probes_that_changed(self) -> None:
        store = populated_store()
        exposition = ProbeExposition()
        exposition.warm(iter(store.snapshot().states.values()), deadline=math.inf)
        store.record("relay", smtp_ok())
        before = exposition.formatted
        exposition.warm(iter(store.snapshot().states.values()), deadline=math.inf)
        assert exposition.formatted == before + 1

    def test_retain_forgets_the_lines_of_removed_probes(self) -> None:
        store = populated_store()
        exposition = ProbeExposition()
        exposition.warm(iter(store.snapshot().states.values()), deadline=math.inf)
        assert exposition.cached_probes == 3
        store.configure([(SMTP, 2, 14)])
        current = store.snapshot().states
        exposition.warm(iter(current.values()), deadline=math.inf)
        exposition.retain(current)
        assert exposition.cached_probes == 1
