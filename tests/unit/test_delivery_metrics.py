"""prometheus/metrics.py for delivery probes: the last run, the ledger kept across runs (histogram, pending,
late, lost) and what the receiving side wrote (hops, verdicts, folder), the same through both exposition paths.

promtool's verdict on this text is in tests/integration/test_delivery_metrics_promtool.py.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from monitor.config.schema import DeliveryProbeConfig
from monitor.exporters.prometheus.metrics import (
    MAX_HOP_SERIES,
    MAX_SERVER_LABEL,
    ProbeExposition,
    StoreCollector,
    single_result_registry,
)
from monitor.model.delivery import (
    LATENCY_BUCKETS,
    AuthVerdict,
    DeliveryPhase,
    DeliveryReason,
    DeliveryResult,
    EarlierMessage,
    Hop,
)
from monitor.model.results import Reason
from monitor.state.health import AgentHealth
from monitor.state.store import ResultsStore
from tests.unit.test_metrics import MX, SMTP, mx_result, smtp_ok

T0 = 1_800_000_000.0
PASSWORD = "mailbox-secret-7"
QUEUE_ID = "4XyZq1Abc0z"


def delivery_config(name: str = "loop", **overrides: Any) -> DeliveryProbeConfig:
    document: dict[str, Any] = {
        "name": name,
        "submit": {"host": "msa.example", "port": 587, "tls": "starttls"},
        "from": "probe@example.org",
        "to": "probe@example.net",
        "mailbox": {"host": "imap.example.net", "username": "probe", "password": PASSWORD},
        "deliver_within": "60s",
        "lost_after": "1h",
    }
    return DeliveryProbeConfig.model_validate({**document, **overrides})


LOOP = delivery_config()
SEC_SUBMIT = 0.25
HOPS = (
    Hop("client.example", "msa.example", "ESMTPSA", "Q1", None, 0.0),
    Hop("msa.example", "mx.example.net", "ESMTPS", "Q2", None, 2.0),
    Hop("mx.example.net", "imap.example.net", "LMTP", "Q3", None, 1.0),
)


def on_time(latency: float = 1.5, **overrides: Any) -> DeliveryResult:
    result = DeliveryResult(
        name="loop",
        started_at=T0,
        ok=True,
        token="a" * 32,
        queue_id=QUEUE_ID,
        submitted_to="msa.example:587",
        submitted_at=T0 + 0.1,
        arrived_at=T0 + 0.1 + latency,
        latency=latency,
        hops=HOPS,
        verdicts=(
            AuthVerdict("spf", "pass", "mx.example.net"),
            AuthVerdict("dkim", "pass", "mx.example.net"),
            AuthVerdict("dmarc", "fail", "mx.example.net"),
        ),
        folder="inbox",
        folder_name="INBOX",
        deleted=True,
        timings={"submit": SEC_SUBMIT, "deliver": latency, "fetch": 0.05},
        total=latency + 0.4,
    )
    return replace(result, **overrides)


def late_run(token: str = "b" * 32) -> DeliveryResult:
    return DeliveryResult(
        name="loop",
        started_at=T0,
        ok=False,
        phase=DeliveryPhase.DELIVER,
        reason=DeliveryReason.LATE,
        error="not in the mailbox within 60s of submission",
        token=token,
        queue_id=QUEUE_ID,
        submitted_at=T0 + 0.1,
        pending=True,
        late=True,
        timings={"submit": SEC_SUBMIT, "deliver": 60.0},
        total=60.3,
    )


def refused_login() -> DeliveryResult:
    return DeliveryResult(
        name="loop",
        started_at=T0,
        ok=False,
        phase=DeliveryPhase.FETCH,
        reason=Reason.AUTH_FAILED,
        error="LOGIN refused",
        timings={"submit": SEC_SUBMIT, "fetch": 0.1},
        total=0.4,
    )


def delivery_store(*results: DeliveryResult, alert_after: int = 1) -> ResultsStore:
    store = ResultsStore(announce=False)
    store.configure([(LOOP, alert_after, 14)])
    for result in results:
        store.record("loop", result)
    return store


def mixed_store() -> ResultsStore:
    """SMTP, MX and delivery probes together, the delivery probe with one late and one lost message."""
    store = ResultsStore(announce=False)
    store.configure([(SMTP, 1, 14), (MX, 1, 14), (LOOP, 1, 14), (delivery_config("never-ran"), 1, 14)])
    store.record("relay", smtp_ok())
    store.record("domain-mx", mx_result(ok=True))
    store.record("loop", late_run("b" * 32))
    store.record("loop", late_run("c" * 32))
    late = EarlierMessage("b" * 32, T0, "late", arrived_at=T0 + 75.0, latency=75.0, hops=HOPS)
    store.record("loop", on_time(0.7, earlier=(late, EarlierMessage("c" * 32, T0, "lost"))))
    return store


def registry_for(store: ResultsStore) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(StoreCollector(store, AgentHealth()))
    return registry


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def rendered(store: ResultsStore) -> str:
    return ProbeExposition().render(store.snapshot().states.values()).decode()


def series_named(text: str, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: value for (sample, labels), value in samples(text).items() if sample == name}


PROBE = {"probe": "loop"}


class TestRunsAndStatus:
    def test_success_status_runs_and_failures_by_phase_and_reason(self) -> None:
        reg = registry_for(delivery_store(refused_login(), late_run(), on_time()))
        labels = {"probe": "loop", "via": "submission", "domain": "example.net", "protocol": "imap"}
        assert reg.get_sample_value("delivery_probe_success", labels) == 1.0
        assert reg.get_sample_value("delivery_probe_status", {**PROBE, "status": "ok"}) == 1.0
        assert reg.get_sample_value("delivery_probe_status", {**PROBE, "status": "failed"}) == 0.0
        assert reg.get_sample_value("delivery_probe_runs_total", PROBE) == 3.0
        fetch = {**PROBE, "phase": "fetch", "reason": "auth_failed"}
        assert reg.get_sample_value("delivery_probe_failures_total", fetch) == 1.0
        late = {**PROBE, "phase": "deliver", "reason": "late"}
        assert reg.get_sample_value("delivery_probe_failures_total", late) == 1.0
        assert reg.get_sample_value("delivery_probe_consecutive_failures", PROBE) == 0.0
        assert reg.get_sample_value("delivery_probe_duration_seconds", PROBE) == 1.9
        phase = {**PROBE, "phase": "submit"}
        assert reg.get_sample_value("delivery_probe_phase_duration_seconds", phase) == SEC_SUBMIT

    def test_a_failed_run_is_failed_and_unsuccessful(self) -> None:
        reg = registry_for(delivery_store(refused_login()))
        labels = {"probe": "loop", "via": "submission", "domain": "example.net", "protocol": "imap"}
        assert reg.get_sample_value("delivery_probe_success", labels) == 0.0
        assert reg.get_sample_value("delivery_probe_status", {**PROBE, "status": "failed"}) == 1.0
        assert reg.get_sample_value("delivery_probe_consecutive_failures", PROBE) == 1.0
        failure = {**PROBE, "phase": "fetch", "reason": "auth_failed"}
        assert reg.get_sample_value("delivery_probe_last_failure_info", failure) == 1.0

    def test_the_last_failure_follows_the_last_run(self) -> None:
        store = delivery_store(refused_login(), late_run())
        assert series_named(rendered(store), "delivery_probe_last_failure_info") == {
            frozenset({("probe", "loop"), ("phase", "deliver"), ("reason", "late")}): 1.0
        }
        store.record("loop", on_time())
        assert series_named(rendered(store), "delivery_probe_last_failure_info") == {}

    def test_via_mx_and_pop3_are_labelled_as_configured(self) -> None:
        pop3 = delivery_config(
            submit={"via": "mx"},
            mailbox={"protocol": "pop3", "host": "pop.example.net", "username": "p", "password": PASSWORD},
        )
        store = ResultsStore(announce=False)
        store.configure([(pop3, 1, 14)])
        labels = {"probe": "loop", "via": "mx", "domain": "example.net", "protocol": "pop3"}
        assert registry_for(store).get_sample_value("delivery_probe_success", labels) == 0.0

    def test_a_probe_that_never_ran_is_unknown_with_an_empty_ledger(self) -> None:
        reg = registry_for(delivery_store())
        assert reg.get_sample_value("delivery_probe_status", {**PROBE, "status": "unknown"}) == 1.0
        assert reg.get_sample_value("delivery_probe_runs_total", PROBE) == 0.0
        assert reg.get_sample_value("delivery_probe_pending_messages", PROBE) == 0.0
        assert reg.get_sample_value("delivery_probe_latency_seconds_count", PROBE) == 0.0
        assert reg.get_sample_value("delivery_probe_latency_seconds_bucket", {**PROBE, "le": "+Inf"}) == 0.0
        assert reg.get_sample_value("delivery_probe_last_latency_seconds", PROBE) is None
        assert reg.get_sample_value("delivery_probe_duration_seconds", PROBE) is None


class TestLedger:
    def test_latency_histogram_is_cumulative_with_inf_last_and_counts_late_arrivals(self) -> None:
        reg = registry_for(mixed_store())
        expected = {"0.5": 0, "1.0": 1, "2.0": 1, "60.0": 1, "120.0": 2, "3600.0": 2, "+Inf": 2}
        for le, count in expected.items():
            assert reg.get_sample_value("delivery_probe_latency_seconds_bucket", {**PROBE, "le": le}) == count, le
        assert reg.get_sample_value("delivery_probe_latency_seconds_count", PROBE) == 2.0
        assert reg.get_sample_value("delivery_probe_latency_seconds_sum", PROBE) == 75.7

    def test_histogram_buckets_come_in_order_with_inf_last(self) -> None:
        family = next(
            f
            for f in text_string_to_metric_families(rendered(mixed_store()))
            if f.name == "delivery_probe_latency_seconds"
        )
        assert family.type == "histogram"
        loop = [s for s in family.samples if s.labels["probe"] == "loop"]
        bounds = [s.labels["le"] for s in loop if s.name.endswith("_bucket")]
        assert bounds[-1] == "+Inf"
        assert [float(b) for b in bounds] == sorted(float(b) for b in bounds)
        assert [s.name.rpartition("_")[2] for s in loop[-2:]] == ["sum", "count"]

    def test_pending_late_and_lost(self) -> None:
        reg = registry_for(mixed_store())
        assert reg.get_sample_value("delivery_probe_pending_messages", PROBE) == 0.0
        assert reg.get_sample_value("delivery_probe_late_messages_total", PROBE) == 1.0
        assert reg.get_sample_value("delivery_probe_lost_messages_total", PROBE) == 1.0
        pending = registry_for(delivery_store(late_run("b" * 32), late_run("c" * 32)))
        assert pending.get_sample_value("delivery_probe_pending_messages", PROBE) == 2.0
        assert pending.get_sample_value("delivery_probe_late_messages_total", PROBE) == 0.0

    def test_last_latency_is_absent_until_a_message_arrives_and_then_kept(self) -> None:
        store = delivery_store(late_run())
        assert registry_for(store).get_sample_value("delivery_probe_last_latency_seconds", PROBE) is None
        store.record("loop", on_time(1.25))
        store.record("loop", refused_login())  # nothing arrived: the last known latency stays
        assert registry_for(store).get_sample_value("delivery_probe_last_latency_seconds", PROBE) == 1.25


class TestWhatTheReceivingSideWrote:
    def test_each_hop_delay_by_number_and_host(self) -> None:
        reg = registry_for(delivery_store(on_time()))
        for number, hop in enumerate(HOPS, 1):
            labels = {**PROBE, "hop": str(number), "by": hop.by_host}
            assert reg.get_sample_value("delivery_probe_hop_delay_seconds", labels) == hop.delay

    def test_hop_delays_of_a_late_message_found_by_the_run_show_where_it_waited(self) -> None:
        held = (
            Hop("client", "msa.example", "ESMTPSA", "Q1", None, 0.0),
            Hop("msa", "mx.example.net", "ESMTPS", "Q2", None, 21.0),
        )
        late = EarlierMessage("b" * 32, T0, "late", arrived_at=T0 + 22.0, latency=22.0, hops=held)
        reg = registry_for(delivery_store(late_run(), on_time(0.5, earlier=(late,))))
        assert (
            reg.get_sample_value("delivery_probe_hop_delay_seconds", {**PROBE, "hop": "2", "by": "mx.example.net"})
            == 21.0
        )
        assert (
            reg.get_sample_value("delivery_probe_hop_delay_seconds", {**PROBE, "hop": "3", "by": "imap.example.net"})
            is None
        )
        assert reg.get_sample_value("delivery_probe_last_latency_seconds", PROBE) == 22.0

    def test_unknown_hop_delays_are_absent(self) -> None:
        hops = (Hop("client", "msa.example", "ESMTPSA", "Q1", None, None), HOPS[1])
        text = rendered(delivery_store(on_time(hops=hops)))
        assert set(series_named(text, "delivery_probe_hop_delay_seconds")) == {
            frozenset({("probe", "loop"), ("hop", "2"), ("by", "mx.example.net")})
        }
        assert series_named(rendered(delivery_store(late_run())), "delivery_probe_hop_delay_seconds") == {}

    def test_hop_series_and_server_written_label_values_are_bounded(self) -> None:
        loop_hops = tuple(Hop("a", f"relay{i}.example", "ESMTP", "", None, 1.0) for i in range(50))
        text = rendered(delivery_store(on_time(hops=loop_hops)))
        assert len(series_named(text, "delivery_probe_hop_delay_seconds")) == MAX_HOP_SERIES
        odd = (Hop("a", "x" * 5000, "ESMTP", "", None, 1.0), Hop("a", 'bad\udcff\x00"\\\nhost', "ESMTP", "", None, 2.0))
        text = rendered(delivery_store(on_time(hops=odd)))
        hosts = {dict(labels)["by"] for labels in series_named(text, "delivery_probe_hop_delay_seconds")}
        assert hosts == {"x" * MAX_SERVER_LABEL, 'bad??"\\?host'}

    def test_verdicts_and_folder_as_info_series(self) -> None:
        reg = registry_for(delivery_store(on_time()))
        auth = {**PROBE, "spf": "pass", "dkim": "pass", "dmarc": "fail"}
        assert reg.get_sample_value("delivery_probe_auth_info", auth) == 1.0
        assert reg.get_sample_value("delivery_probe_folder_info", {**PROBE, "folder": "inbox"}) == 1.0

    def test_a_verdict_the_receiving_side_did_not_give_is_empty(self) -> None:
        result = on_time(verdicts=(AuthVerdict("dkim", "none", "mx.example.net"),), folder="junk")
        text = rendered(delivery_store(result))
        assert series_named(text, "delivery_probe_auth_info") == {
            frozenset({("probe", "loop"), ("spf", ""), ("dkim", "none"), ("dmarc", "")}): 1.0
        }
        assert series_named(text, "delivery_probe_folder_info") == {
            frozenset({("probe", "loop"), ("folder", "junk")}): 1.0
        }

    def test_no_verdicts_folder_or_hops_when_nothing_arrived(self) -> None:
        text = rendered(delivery_store(on_time(), refused_login()))
        for family in ("delivery_probe_auth_info", "delivery_probe_folder_info", "delivery_probe_hop_delay_seconds"):
            assert series_named(text, family) == {}, family

    def test_queue_id_token_and_passwords_never_appear(self) -> None:
        store = mixed_store()
        for text in (rendered(store), generate_latest(registry_for(store)).decode()):
            assert "loop" in text
            for secret in (PASSWORD, QUEUE_ID, "b" * 32):
                assert secret not in text


class TestBothPaths:
    def test_the_renderer_gives_the_collector_samples(self) -> None:
        store = mixed_store()
        registry = CollectorRegistry()
        registry.register(StoreCollector(store, None))
        expected = samples(generate_latest(registry).decode())
        assert samples(rendered(store)) == expected
        assert ("delivery_probe_latency_seconds_bucket", frozenset({("probe", "loop"), ("le", "+Inf")})) in expected
        assert (
            "delivery_probe_auth_info",
            frozenset({("probe", "loop"), ("spf", "pass"), ("dkim", "pass"), ("dmarc", "fail")}),
        ) in expected

    def test_histogram_header_once_and_each_probe_lines_together(self) -> None:
        text = rendered(mixed_store())
        assert text.count("# TYPE delivery_probe_latency_seconds histogram\n") == 1
        lines = [line for line in text.splitlines() if line.startswith("delivery_probe_latency_seconds")]
        probes = [line.partition('probe="')[2].partition('"')[0] for line in lines]
        assert probes == sorted(probes, key=probes.index)  # one probe's series, then the next's
        assert len(lines) == 2 * (len(LATENCY_BUCKETS) + 1 + 2)  # two probes: buckets, +Inf, sum, count

    def test_a_changed_ledger_is_rendered_again(self) -> None:
        store = delivery_store(late_run())
        exposition = ProbeExposition()
        first = exposition.render(store.snapshot().states.values()).decode()
        assert 'delivery_probe_pending_messages{probe="loop"} 1.0\n' in first
        store.record("loop", on_time(0.5, earlier=(EarlierMessage("b" * 32, T0, "lost"),)))
        after = exposition.render(store.snapshot().states.values()).decode()
        assert 'delivery_probe_pending_messages{probe="loop"} 0.0\n' in after
        assert 'delivery_probe_lost_messages_total{probe="loop"} 1.0\n' in after

    def test_an_ad_hoc_delivery_run_has_its_ledger(self) -> None:
        reg = single_result_registry(LOOP, late_run())
        assert reg.get_sample_value("delivery_probe_pending_messages", PROBE) == 1.0
        assert reg.get_sample_value("delivery_probe_status", {**PROBE, "status": "failed"}) == 1.0
        reg = single_result_registry(LOOP, on_time(2.5))
        assert reg.get_sample_value("delivery_probe_latency_seconds_bucket", {**PROBE, "le": "5.0"}) == 1.0
        assert reg.get_sample_value("delivery_probe_last_latency_seconds", PROBE) == 2.5
