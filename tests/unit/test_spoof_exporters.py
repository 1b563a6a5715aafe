"""The spoof test's facts in the saved JSON, /metrics, the MIB (mxAddressSpoof, mxAddressSpoofReply) and the
mxCheckFailed notification (phase spoof, reason spoofable)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from monitor.config.schema import MxCheckConfig, SpoofTestConfig
from monitor.exporters.prometheus.metrics import ProbeExposition, StoreCollector
from monitor.exporters.snmp import mib_oids as mib
from monitor.exporters.snmp.mib_oids import MxAddressColumn, MxCheckColumn
from monitor.exporters.snmp.mibview import MibView
from monitor.exporters.snmp.notify import build_notification
from monitor.model.probe_result import result_from_json, result_to_json
from monitor.model.results import MxRecord, MxResult, Phase, Reason
from monitor.model.spoof import SpoofAttempt, SpoofMailbox, SpoofOutcome, SpoofStep, SpoofVerdict
from monitor.state.health import AgentHealth
from monitor.state.store import ResultsStore, StoreEvent

CHECK = MxCheckConfig(name="spoofed", domain="example.com", spoof_test=SpoofTestConfig(recipient="probe@example.com"))
SENDER = "spoof-test@example.com"
ACCEPTED = SpoofAttempt(
    "mx2.example.com",
    "192.0.2.2",
    SpoofOutcome.SPOOFABLE,
    SpoofStep.DATA,
    SENDER,
    reply_code=250,
    reply="250 2.0.0 Ok: queued as 4XyZ",
    source_address="198.51.100.7",
    source_spf="fail",
    message_id="<smtp-monitor.ab@example.com>",
    mailbox=SpoofMailbox(
        found=True,
        folder="junk",
        folder_name="Junk",
        verdicts=(
            SpoofVerdict("spf", "fail", "mx2.example.com"),
            SpoofVerdict("dmarc", "fail", "mx2.example.com"),
        ),
        deleted=True,
    ),
)
REFUSED = SpoofAttempt(
    "mx1.example.com",
    "192.0.2.1",
    SpoofOutcome.REFUSED,
    SpoofStep.RCPT,
    SENDER,
    reply_code=550,
    reply="550 5.7.23 SPF fail",
    source_address="198.51.100.7",
    source_spf="fail",
)
INCONCLUSIVE = SpoofAttempt(
    "mx1.example.com",
    "2001:db8::1",
    SpoofOutcome.INCONCLUSIVE,
    SpoofStep.SESSION,
    SENDER,
    error="the SPF of example.com authorises the agent's own address",
    source_spf="pass",
)


def spoofable_result() -> MxResult:
    return MxResult(
        domain="example.com",
        started_at=1_700_000_000.0,
        ok=False,
        phase=Phase.SPOOF,
        reason=Reason.SPOOFABLE,
        error=f"accepted a message forged from {SENDER}: mx2.example.com (192.0.2.2): 250 2.0.0 Ok",
        records=(
            MxRecord(10, "mx1.example.com", ("192.0.2.1", "2001:db8::1"), spoof=(REFUSED, INCONCLUSIVE)),
            MxRecord(20, "mx2.example.com", ("192.0.2.2",), spoof=(ACCEPTED,)),
        ),
    )


def store_with(result: MxResult) -> tuple[ResultsStore, list[StoreEvent]]:
    store = ResultsStore()
    store.configure([(CHECK, 1, 14)])
    events: list[StoreEvent] = []
    store.subscribe(events.append)
    store.record(CHECK.name, result)
    return store, events


def samples(store: ResultsStore) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    registry = CollectorRegistry()
    registry.register(StoreCollector(store, AgentHealth()))
    from prometheus_client.parser import text_string_to_metric_families

    text = generate_latest(registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("mx_check_spoof")
    }


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset({"check": CHECK.name, **labels}.items())


class TestJson:
    def test_the_attempts_survive_saving_and_restoring(self) -> None:
        result = spoofable_result()
        restored = result_from_json(result_to_json(result))
        assert restored == result
        wire: dict[str, Any] = result.as_dict()
        assert (wire["phase"], wire["reason"]) == ("spoof", "spoofable")
        attempt = wire["mx"][1]["spoof"][0]
        assert (attempt["outcome"], attempt["step"], attempt["reply_code"]) == ("spoofable", "data", 250)
        assert attempt["mailbox"]["folder"] == "junk"
        assert attempt["mailbox"]["verdicts"][1] == {
            "method": "dmarc",
            "result": "fail",
            "authserv_id": "mx2.example.com",
        }

    def test_a_check_without_spoof_test_writes_no_spoof_key(self) -> None:
        result = MxResult(domain="example.com", started_at=0.0, ok=True, records=(MxRecord(10, "mx", ("192.0.2.1",)),))
        assert "spoof" not in result.as_dict()["mx"][0]


class TestMetrics:
    def test_accepted_refused_outcomes_folder_and_verdicts(self) -> None:
        store, _ = store_with(spoofable_result())
        found = samples(store)
        mx1 = {"exchange": "mx1.example.com"}
        mx2 = {"exchange": "mx2.example.com", "address": "192.0.2.2"}
        assert found[key("mx_check_spoof_accepted", **mx2)] == 1.0
        assert found[key("mx_check_spoof_accepted", **mx1, address="192.0.2.1")] == 0.0
        # no verdict, no accepted sample: an alert on == 1 or == 0 never fires on it
        assert key("mx_check_spoof_accepted", **mx1, address="2001:db8::1") not in found
        assert found[key("mx_check_spoof_outcome", **mx2, outcome="spoofable", step="data")] == 1.0
        assert found[key("mx_check_spoof_outcome", **mx1, address="192.0.2.1", outcome="refused", step="rcpt")] == 1.0
        inconclusive = key(
            "mx_check_spoof_outcome", **mx1, address="2001:db8::1", outcome="inconclusive", step="session"
        )
        assert found[inconclusive] == 1.0
        assert found[key("mx_check_spoof_delivered", **mx2, folder="junk")] == 1.0
        assert found[key("mx_check_spoof_auth_result", **mx2, method="dmarc", result="fail")] == 1.0
        assert len(found) == 8

    def test_the_cached_exposition_has_the_same_spoof_samples(self) -> None:
        store, _ = store_with(spoofable_result())
        from prometheus_client.parser import text_string_to_metric_families

        text = ProbeExposition().render(store.snapshot().states.values()).decode()
        rendered = {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name.startswith("mx_check_spoof")
        }
        assert rendered == samples(store)


class TestSnmp:
    def test_address_rows_carry_the_outcome_and_the_deciding_reply(self) -> None:
        store, _ = store_with(spoofable_result())
        view = MibView(store, AgentHealth(), sys_name="monitor-host")

        def cell(column: MxAddressColumn, exchange: int, address: int) -> Any:
            value = view.get(mib.mx_address_oid(column, CHECK.name, exchange, address))
            assert value is not None
            return value

        assert int(cell(MxAddressColumn.SPOOF, 1, 1)) == mib.SPOOF_VALUES["refused"]
        assert bytes(cell(MxAddressColumn.SPOOF_REPLY, 1, 1)) == b"550 5.7.23 SPF fail"
        assert int(cell(MxAddressColumn.SPOOF, 1, 2)) == mib.SPOOF_VALUES["inconclusive"]
        assert b"authorises the agent's own address" in bytes(cell(MxAddressColumn.SPOOF_REPLY, 1, 2))
        assert int(cell(MxAddressColumn.SPOOF, 2, 1)) == mib.SPOOF_VALUES["spoofable"]
        failed_phase = view.get(mib.mx_check_oid(MxCheckColumn.FAILED_PHASE, CHECK.name))
        assert failed_phase is not None
        assert int(failed_phase) == mib.PHASE_VALUES["spoof"]
        failed_reason = view.get(mib.mx_check_oid(MxCheckColumn.FAILED_REASON, CHECK.name))
        assert failed_reason is not None
        assert int(failed_reason) == 37

    def test_an_address_without_attempt_is_not_tested(self) -> None:
        plain = MxResult(domain="example.com", started_at=0.0, ok=True, records=(MxRecord(10, "mx", ("192.0.2.1",)),))
        store, _ = store_with(plain)
        view = MibView(store, AgentHealth(), sys_name="monitor-host")
        value = view.get(mib.mx_address_oid(MxAddressColumn.SPOOF, CHECK.name, 1, 1))
        assert value is not None
        assert int(value) == mib.SPOOF_VALUES["not_tested"]

    def test_mx_check_failed_names_phase_spoof_and_reason_spoofable(self) -> None:
        _, events = store_with(spoofable_result())
        (failed,) = [e for e in events if e.kind == "failed"]
        notification = build_notification(failed, failed.at - 10)
        assert notification is not None
        assert notification.label == "mxCheckFailed"
        values = dict(notification.varbinds)
        assert int(values[mib.notification_object_oid(MxCheckColumn.FAILED_PHASE, CHECK.name)]) == 26
        assert int(values[mib.notification_object_oid(MxCheckColumn.FAILED_REASON, CHECK.name)]) == 37
        error = bytes(values[mib.notification_object_oid(MxCheckColumn.LAST_ERROR, CHECK.name)])
        assert b"mx2.example.com (192.0.2.2)" in error
