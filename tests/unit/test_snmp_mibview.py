"""monitor.exporters.snmp.mibview: OID order, GETNEXT across boundaries, snapshot changes and value encodings."""

from __future__ import annotations

import gc
import hashlib
import time
import weakref
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pysnmp.proto import rfc1902

from monitor.config.schema import MxCheckConfig, SmtpProbeConfig
from monitor.exporters.snmp import mib_oids
from monitor.exporters.snmp.mib_oids import (
    MxAddressColumn,
    MxCheckColumn,
    MxExchangeColumn,
    Oid,
    Scalar,
    SmtpAddressColumn,
    SmtpProbeColumn,
)
from monitor.exporters.snmp.mibview import (
    MX_ADDRESS_TYPES,
    MX_CHECK_TYPES,
    MX_EXCHANGE_TYPES,
    SMTP_ADDRESS_TYPES,
    SMTP_PROBE_TYPES,
    SYS_DESCR,
    SYS_OBJECT_ID,
    SYS_UPTIME,
    Asn1Value,
    MibTable,
    MibView,
    date_and_time,
    smtp_probe_row,
)
from monitor.model.facts import DaneFacts, MtaStsFacts, MtaStsPolicyFacts, PolicyRecord
from monitor.model.results import CertInfo, MxRecord, MxResult, Phase, Reason, Reply, ReverseDns, SmtpResult, TlsInfo
from monitor.probes.dane import Tlsa, TlsaLookup
from monitor.probes.mx import _dane_verdict
from monitor.probes.policy_records import check_dmarc, check_spf
from monitor.state.health import AgentHealth
from monitor.state.store import ProbeConfig, ResultsStore
from tests.support.certs import make_self_signed_cert

NEVER = mib_oids.DATE_AND_TIME_NEVER


def smtp(
    name: str, host: str = "mail.example", tls: str = "starttls", interval: float | None = None
) -> SmtpProbeConfig:
    return SmtpProbeConfig.model_validate({"name": name, "host": host, "tls": tls, "interval": interval})


def mx(name: str, domain: str = "example.com") -> MxCheckConfig:
    return MxCheckConfig(name=name, domain=domain)


def store_with(*configs: ProbeConfig, alert_after: int = 1) -> ResultsStore:
    store = ResultsStore()
    store.configure([(cfg, alert_after, 14) for cfg in configs])
    return store


def ok_smtp(tls: TlsInfo | None = None, total: float = 0.0505, timings: dict[str, float] | None = None) -> SmtpResult:
    return SmtpResult(
        host="mail.example",
        port=25,
        tls_mode="starttls",
        started_at=time.time(),
        ok=True,
        address="192.0.2.7",
        total=total,
        timings=timings or {},
        tls=tls,
    )


def failed_smtp(phase: Phase = Phase.CONNECT, reason: Reason = Reason.REFUSED, error: str = "refused") -> SmtpResult:
    return SmtpResult(
        host="mail.example",
        port=25,
        tls_mode="starttls",
        started_at=time.time(),
        ok=False,
        phase=phase,
        reason=reason,
        error=error,
        address="192.0.2.7",
        total=0.002,
    )


def tls_info(days_left: float = 30.0, verified: bool = True) -> TlsInfo:
    now = datetime.now(UTC)
    cert = CertInfo(
        subject="CN=mail.example",
        issuer="CN=Test CA",
        sans=("DNS:mail.example",),
        not_before=now - timedelta(days=10),
        not_after=now + timedelta(days=days_left, hours=1),
        serial="1f",
        sha256="ab" * 32,
    )
    return TlsInfo(version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384", verified=verified, cert=cert)


def view_of(store: ResultsStore, health: AgentHealth | None = None) -> MibView:
    return MibView(store, health or AgentHealth(), default_interval=60.0, sys_name="monitor-host")


def walk(table: MibTable, start: Oid = (0,)) -> list[Oid]:
    """Every OID a manager's GETNEXT walk from `start` visits, stopping at endOfMibView."""
    oids: list[Oid] = []
    oid = start
    while (found := table.next(oid)) is not None:
        oid = found[0]
        oids.append(oid)
    return oids


def column_rows(table: MibTable, entry: Oid, column: int) -> list[Oid]:
    """The row indexes of one column, in the order a walk returns them."""
    prefix = (*entry, column)
    return [oid[len(prefix) :] for oid in walk(table) if oid[: len(prefix)] == prefix]


def read(source: MibView | MibTable, oid: Oid) -> Asn1Value:
    """The value of an instance that must exist."""
    value = source.get(oid)
    assert value is not None, f"no instance {oid}"
    return value


def smtp_cell(view: MibView, column: SmtpProbeColumn, name: str) -> Asn1Value:
    return read(view, mib_oids.smtp_probe_oid(column, name))


class TestIndexOrder:
    def test_string_index_is_length_then_octets(self) -> None:
        assert mib_oids.name_index("ab") == (2, 97, 98)
        view = view_of(store_with(smtp("ab")))
        assert view.get((*mib_oids.SMTP_PROBE_ENTRY, int(SmtpProbeColumn.NAME), 2, 97, 98)) == b"ab"

    def test_rows_sort_by_length_before_content(self) -> None:
        names = ["zz", "b", "aaa", "B", "ab", "a"]
        view = view_of(store_with(*(smtp(n) for n in names)))
        rows = column_rows(view.current(), mib_oids.SMTP_PROBE_ENTRY, int(SmtpProbeColumn.NAME))
        assert [bytes(index[1:]).decode() for index in rows] == ["B", "a", "b", "ab", "zz", "aaa"]

    def test_exchange_rows_sort_by_check_then_position(self) -> None:
        store = store_with(mx("long-name"), mx("m"))
        records = (MxRecord(10, "b.example", ("192.0.2.2",)), MxRecord(5, "a.example", ("192.0.2.1",)))
        for name in ("long-name", "m"):
            store.record(name, MxResult("example.com", time.time(), True, records=records))
        rows = column_rows(view_of(store).current(), mib_oids.MX_EXCHANGE_ENTRY, int(MxExchangeColumn.NAME))
        assert rows == [
            (*mib_oids.name_index("m"), 1),
            (*mib_oids.name_index("m"), 2),
            (*mib_oids.name_index("long-name"), 1),
            (*mib_oids.name_index("long-name"), 2),
        ]

    def test_full_walk_is_strictly_increasing_and_matches_items(self) -> None:
        store = store_with(smtp("a"), smtp("bb"), mx("m"))
        store.record("m", MxResult("example.com", time.time(), True, records=(MxRecord(5, "a.example", ()),)))
        table = view_of(store).current()
        oids = walk(table)
        assert oids == sorted(oids)
        assert len(set(oids)) == len(oids)
        assert oids == [oid for oid, _ in table.items()]
        assert len(table) == len(oids)


class TestGetNext:
    def test_walk_starts_at_sys_descr(self) -> None:
        table = view_of(store_with()).current()
        assert table.next((0,)) is not None
        found = table.next((1, 3))
        assert found is not None
        assert found[0] == SYS_DESCR

    def test_last_row_of_a_column_continues_with_first_row_of_the_next(self) -> None:
        view = view_of(store_with(smtp("a"), smtp("bb")))
        last_name = mib_oids.smtp_probe_oid(SmtpProbeColumn.NAME, "bb")
        found = view.next(last_name)
        assert found is not None
        assert found[0] == mib_oids.smtp_probe_oid(SmtpProbeColumn.HOST, "a")

    def test_last_column_of_a_table_continues_with_the_next_table(self) -> None:
        view = view_of(store_with(smtp("a"), mx("m")))
        found = view.next(mib_oids.smtp_probe_oid(max(SmtpProbeColumn), "a"))
        assert found is not None
        assert found[0] == mib_oids.mx_check_oid(MxCheckColumn.NAME, "m")

    def test_empty_tables_are_skipped(self) -> None:
        view = view_of(store_with(mx("m")))  # no SMTP probes
        found = view.next(mib_oids.scalar_oid(max(Scalar)))
        assert found is not None
        assert found[0] == mib_oids.mx_check_oid(MxCheckColumn.NAME, "m")

    @pytest.mark.parametrize(
        ("start", "expected"),
        [
            pytest.param(mib_oids.MIB_ROOT, mib_oids.scalar_oid(Scalar.PROBE_COUNT), id="mib-root"),
            pytest.param(mib_oids.SMTP_PROBE_TABLE, ("a", SmtpProbeColumn.NAME), id="table"),
            pytest.param((*mib_oids.SMTP_PROBE_ENTRY, 1), ("a", SmtpProbeColumn.NAME), id="index-column"),
            pytest.param((*mib_oids.SMTP_PROBE_ENTRY, 2, 1), ("a", SmtpProbeColumn.NAME), id="length-only"),
            pytest.param((*mib_oids.SMTP_PROBE_ENTRY, 2, 1, 97, 0), ("bb", SmtpProbeColumn.NAME), id="past-row"),
            pytest.param((*mib_oids.SMTP_PROBE_ENTRY, 2, 3), ("a", SmtpProbeColumn.HOST), id="past-column"),
            pytest.param((*mib_oids.SCALARS, 99), ("a", SmtpProbeColumn.NAME), id="past-scalars"),
            pytest.param((1, 3, 6, 1, 2, 1, 1, 3), SYS_UPTIME, id="scalar-object"),
            pytest.param((1, 3, 6, 1, 2, 1, 1, 2, 0, 5), SYS_UPTIME, id="below-instance"),
        ],
    )
    def test_next_from_between_objects(self, start: Oid, expected: Oid | tuple[str, SmtpProbeColumn]) -> None:
        view = view_of(store_with(smtp("a"), smtp("bb")))
        if isinstance(expected[0], str):
            name, column = expected
            assert isinstance(name, str)
            assert isinstance(column, SmtpProbeColumn)
            expected = mib_oids.smtp_probe_oid(column, name)
        found = view.next(start)
        assert found is not None
        assert found[0] == expected

    @pytest.mark.parametrize(
        "start",
        [
            pytest.param(None, id="last-instance"),
            pytest.param((*mib_oids.MIB_ROOT[:-1], mib_oids.MIB_ROOT[-1] + 1), id="next-enterprise"),
            pytest.param((2,), id="joint-iso-ccitt"),
            pytest.param((*mib_oids.MX_ADDRESS_ENTRY, 9), id="past-last-column"),
        ],
    )
    def test_end_of_mib_view_after_the_last_instance(self, start: Oid | None) -> None:
        store = record_mx("m", MxRecord(5, "a.example", ("192.0.2.1",)))
        table = view_of(store).current()
        last = mib_oids.mx_address_oid(MxAddressColumn.SPOOF_REPLY, "m", 1, 1)
        assert walk(table)[-1] == last
        assert table.next(start or last) is None

    def test_walk_in_one_column_never_repeats(self) -> None:
        names = [f"p{i}" for i in range(50)]
        table = view_of(store_with(*(smtp(n) for n in names))).current()
        rows = column_rows(table, mib_oids.SMTP_PROBE_ENTRY, int(SmtpProbeColumn.STATUS))
        assert len(rows) == len(set(rows)) == 50


class TestGet:
    def test_instance_values_and_missing_instances(self) -> None:
        table = view_of(store_with(smtp("a"))).current()
        assert table.get(mib_oids.smtp_probe_oid(SmtpProbeColumn.NAME, "a")) == b"a"
        missing = mib_oids.smtp_probe_oid(SmtpProbeColumn.NAME, "zz")
        assert table.get(missing) is None
        assert table.is_object(missing)  # noSuchInstance, not noSuchObject

    def test_scalar_without_instance_suffix_is_an_object_without_instance(self) -> None:
        table = view_of(store_with()).current()
        assert table.get(SYS_DESCR[:-1]) is None
        assert table.is_object(SYS_DESCR[:-1])
        assert table.get(SYS_DESCR) is not None

    def test_index_column_and_unknown_subtrees_are_no_objects(self) -> None:
        table = view_of(store_with(smtp("a"))).current()
        index_column = mib_oids.smtp_probe_oid(SmtpProbeColumn.INDEX_NAME, "a")
        assert table.get(index_column) is None
        assert not table.is_object(index_column)
        assert not table.is_object((1, 3, 6, 1, 2, 1, 2, 1, 0))  # IF-MIB ifNumber

    def test_system_group(self) -> None:
        view = MibView(store_with(), AgentHealth(version="9.8.7"), sys_name="host-1", sys_location="rack 4")
        assert b"9.8.7" in bytes(read(view, SYS_DESCR))
        # smtpMonitorAgentOID: the agent's own registration under its enterprise, not the MIB module's OID.
        assert tuple(read(view, SYS_OBJECT_ID)) == mib_oids.AGENT_OID == (*mib_oids.ENTERPRISE_OID, 4, 1)
        assert isinstance(view.get(SYS_UPTIME), rfc1902.TimeTicks)
        assert view.get((1, 3, 6, 1, 2, 1, 1, 5, 0)) == b"host-1"
        assert view.get((1, 3, 6, 1, 2, 1, 1, 6, 0)) == b"rack 4"

    def test_sys_uptime_is_computed_at_each_read(self) -> None:
        now = [100.0]
        view = MibView(store_with(), AgentHealth(), clock=lambda: now[0])
        assert int(read(view, SYS_UPTIME)) == 0
        now[0] += 12.34
        assert int(read(view, SYS_UPTIME)) == 1234
        view.restart_uptime()
        assert int(read(view, SYS_UPTIME)) == 0


class TestSnapshotChanges:
    def test_max_staleness_serves_the_last_table_until_it_is_old_enough(self) -> None:
        now = [100.0]
        store = store_with(smtp("a"))
        view = MibView(store, AgentHealth(), clock=lambda: now[0], max_staleness=0.5)
        first = view.current()
        store.record("a", failed_smtp())
        now[0] += 0.2
        assert view.current() is first  # a busy store does not force a rebuild per request
        now[0] += 0.4
        fresh = view.current()
        assert fresh.version > first.version
        status = read(fresh, mib_oids.smtp_probe_oid(SmtpProbeColumn.STATUS, "a"))
        assert int(status) == mib_oids.STATUS_VALUES["failed"]

    def test_rows_appear_and_disappear_with_configuration(self) -> None:
        store = store_with(smtp("a"), smtp("b"))
        view = view_of(store)
        before = view.current()
        store.configure([(smtp("b"), 1, 14), (smtp("cc"), 1, 14), (mx("m"), 1, 14)])
        after = view.current()
        names = column_rows(after, mib_oids.SMTP_PROBE_ENTRY, int(SmtpProbeColumn.NAME))
        assert names == [mib_oids.name_index("b"), mib_oids.name_index("cc")]
        assert after.get(mib_oids.smtp_probe_oid(SmtpProbeColumn.NAME, "a")) is None
        assert after.get(mib_oids.mx_check_oid(MxCheckColumn.NAME, "m")) == b"m"
        assert int(read(after, mib_oids.scalar_oid(Scalar.PROBE_COUNT))) == 2
        assert int(read(after, mib_oids.scalar_oid(Scalar.MX_CHECK_COUNT))) == 1
        # A table handed out before is a consistent picture of its version.
        assert before.get(mib_oids.smtp_probe_oid(SmtpProbeColumn.NAME, "a")) == b"a"
        assert before.version < after.version

    def test_a_result_changes_only_its_row(self) -> None:
        store = store_with(smtp("a"), smtp("b"))
        view = view_of(store)
        before = view.current()
        store.record("b", failed_smtp())
        after = view.current()
        status = SmtpProbeColumn.STATUS
        assert int(read(after, mib_oids.smtp_probe_oid(status, "b"))) == mib_oids.STATUS_VALUES["failed"]
        assert int(read(after, mib_oids.smtp_probe_oid(status, "a"))) == mib_oids.STATUS_VALUES["unknown"]
        assert int(read(before, mib_oids.smtp_probe_oid(status, "b"))) == mib_oids.STATUS_VALUES["unknown"]
        assert int(read(after, mib_oids.scalar_oid(Scalar.PROBES_FAILED))) == 1

    def test_failed_counts_follow_recoveries_and_removals(self) -> None:
        store = store_with(smtp("a"), smtp("b"), mx("m"))
        view = view_of(store)
        store.record("a", failed_smtp())
        store.record("b", failed_smtp())
        store.record("m", MxResult("example.com", time.time(), False, phase=Phase.MX, reason=Reason.NXDOMAIN))
        assert int(read(view, mib_oids.scalar_oid(Scalar.PROBES_FAILED))) == 2
        assert int(read(view, mib_oids.scalar_oid(Scalar.MX_CHECKS_FAILED))) == 1
        store.record("a", ok_smtp())
        assert int(read(view, mib_oids.scalar_oid(Scalar.PROBES_FAILED))) == 1
        store.configure([(smtp("a"), 1, 14), (mx("m"), 1, 14)])
        assert int(read(view, mib_oids.scalar_oid(Scalar.PROBES_FAILED))) == 0
        assert int(read(view, mib_oids.scalar_oid(Scalar.MX_CHECKS_FAILED))) == 1

    def test_a_replaced_state_and_its_result_are_not_kept_alive_until_the_next_request(self) -> None:
        store = store_with(smtp("a"))
        view = view_of(store)
        store.record("a", ok_smtp(tls=tls_info()))
        view.current()  # the row is made from the state holding this result
        previous = weakref.ref(store.snapshot().states["a"])
        store.record("a", failed_smtp())  # no SNMP request follows: the view is not rebuilt
        gc.collect()
        assert previous() is None
        assert int(read(view, mib_oids.smtp_probe_oid(SmtpProbeColumn.STATUS, "a"))) == mib_oids.STATUS_VALUES["failed"]

    def test_a_reload_that_keeps_config_and_result_keeps_the_row(self) -> None:
        config = smtp("a")
        store = store_with(config, smtp("b"))
        view = view_of(store)
        store.record("a", ok_smtp())
        before = view.current()
        row = view._smtp.rows["a"].cells
        store.configure([(config, 1, 14)])  # a reload without "b": "a" gets a new state, same inputs
        after = view.current()
        assert after.version > before.version
        assert view._smtp.rows["a"].cells is row
        assert after.get(mib_oids.smtp_probe_oid(SmtpProbeColumn.NAME, "b")) is None

    def test_same_version_same_table(self) -> None:
        store = store_with(smtp("a"))
        view = view_of(store)
        assert view.current() is view.current()
        store.record("a", ok_smtp())
        assert view.current().version == store.version

    def test_health_scalars_are_read_at_request_time(self) -> None:
        health = AgentHealth()
        view = view_of(store_with(), health)
        table = view.current()
        oid = mib_oids.scalar_oid(Scalar.CONFIG_LOAD_SUCCESS)
        assert int(read(table, oid)) == mib_oids.TRUTH_VALUES[True]
        health.config_load_success = False
        health.config_loaded_at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()
        assert int(read(table, oid)) == mib_oids.TRUTH_VALUES[False]
        load_time = bytes(read(table, mib_oids.scalar_oid(Scalar.CONFIG_LOAD_TIME)))
        assert load_time == bytes([0x07, 0xEA, 1, 2, 3, 4, 5, 0]) + b"+\x00\x00"

    def test_ten_thousand_rows_rebuild_after_one_result_in_well_under_100_ms(self) -> None:
        configs = [smtp(f"probe-{i}", host=f"mx{i}.example") for i in range(10_000)]
        store = store_with(*configs)
        for i in range(0, 10_000, 3):
            store.record(f"probe-{i}", ok_smtp(timings={"connect": 0.001}))
        view = view_of(store)
        view.current()
        timings = []
        for i in range(5):
            store.record(f"probe-{i}", failed_smtp())
            started = time.perf_counter()
            table = view.current()
            timings.append(time.perf_counter() - started)
            assert int(read(table, mib_oids.scalar_oid(Scalar.PROBES_FAILED))) == i + 1
        assert min(timings) < 0.1, f"rebuilds took {[round(t * 1000, 1) for t in timings]} ms"


class TestDateAndTime:
    def test_utc_with_offset_in_eleven_octets(self) -> None:
        moment = datetime(2026, 11, 22, 20, 53, 53, 912_000, tzinfo=UTC)
        assert date_and_time(moment.timestamp()) == bytes([0x07, 0xEA, 11, 22, 20, 53, 53, 9]) + b"+\x00\x00"

    def test_aware_datetimes_are_converted_to_utc_and_naive_ones_taken_as_utc(self) -> None:
        cet = timezone(timedelta(hours=1))
        assert date_and_time(datetime(2026, 1, 1, 0, 30, tzinfo=cet)) == date_and_time(datetime(2025, 12, 31, 23, 30))

    @pytest.mark.parametrize("value", [None, 0.0], ids=["none", "zero"])
    def test_never_is_the_mibs_eight_octet_value(self, value: float | None) -> None:
        assert date_and_time(value) == NEVER == bytes.fromhex("0000010100000000")

    def test_probe_times_never_before_they_happen(self) -> None:
        store = store_with(smtp("a"))
        view = view_of(store)
        assert bytes(smtp_cell(view, SmtpProbeColumn.LAST_SUCCESS, "a")) == NEVER
        assert bytes(smtp_cell(view, SmtpProbeColumn.LAST_CHANGE, "a")) == NEVER
        assert bytes(smtp_cell(view, SmtpProbeColumn.CERT_EXPIRY, "a")) == NEVER
        store.record("a", ok_smtp())
        state = store.snapshot().states["a"]
        assert bytes(smtp_cell(view, SmtpProbeColumn.LAST_SUCCESS, "a")) == date_and_time(state.last_success)
        assert len(bytes(smtp_cell(view, SmtpProbeColumn.LAST_SUCCESS, "a"))) == 11


class TestSmtpProbeValues:
    def test_failed_probe_maps_status_phase_and_reason(self) -> None:
        store = store_with(smtp("a"))
        store.record("a", failed_smtp(Phase.TLS, Reason.TLS_VERIFY, "certificate expired"))
        view = view_of(store)
        assert int(smtp_cell(view, SmtpProbeColumn.STATUS, "a")) == mib_oids.STATUS_VALUES["failed"]
        assert int(smtp_cell(view, SmtpProbeColumn.FAILED_PHASE, "a")) == mib_oids.PHASE_VALUES["tls"]
        assert int(smtp_cell(view, SmtpProbeColumn.FAILED_REASON, "a")) == mib_oids.REASON_VALUES["tls_verify"]
        assert bytes(smtp_cell(view, SmtpProbeColumn.LAST_ERROR, "a")) == b"certificate expired"

    @pytest.mark.parametrize("phase", list(Phase), ids=lambda p: p.value)
    def test_every_phase_has_its_own_mib_value(self, phase: Phase) -> None:
        store = store_with(smtp("a"))
        store.record("a", failed_smtp(phase=phase))
        assert int(smtp_cell(view_of(store), SmtpProbeColumn.FAILED_PHASE, "a")) == mib_oids.PHASE_VALUES[phase.value]

    @pytest.mark.parametrize("reason", list(Reason), ids=lambda r: r.value)
    def test_every_reason_has_its_own_mib_value(self, reason: Reason) -> None:
        store = store_with(smtp("a"))
        store.record("a", failed_smtp(reason=reason))
        value = int(smtp_cell(view_of(store), SmtpProbeColumn.FAILED_REASON, "a"))
        assert value == mib_oids.REASON_VALUES[reason.value]

    def test_successful_probe_reports_none_and_an_empty_error(self) -> None:
        store = store_with(smtp("a"))
        store.record("a", failed_smtp())
        store.record("a", ok_smtp())
        view = view_of(store)
        assert int(smtp_cell(view, SmtpProbeColumn.STATUS, "a")) == mib_oids.STATUS_VALUES["ok"]
        assert int(smtp_cell(view, SmtpProbeColumn.FAILED_PHASE, "a")) == mib_oids.PHASE_VALUES["none"]
        assert int(smtp_cell(view, SmtpProbeColumn.FAILED_REASON, "a")) == mib_oids.REASON_VALUES["none"]
        assert bytes(smtp_cell(view, SmtpProbeColumn.LAST_ERROR, "a")) == b""

    @pytest.mark.parametrize(("mode", "port"), [("none", 25), ("starttls", 25), ("implicit", 465)])
    def test_tls_mode_and_default_port(self, mode: str, port: int) -> None:
        view = view_of(store_with(smtp("a", tls=mode)))
        assert int(smtp_cell(view, SmtpProbeColumn.TLS_MODE, "a")) == mib_oids.TLS_MODE_VALUES[mode]
        assert int(smtp_cell(view, SmtpProbeColumn.PORT, "a")) == port

    def test_latencies_in_milliseconds_and_interval_in_whole_seconds(self) -> None:
        store = store_with(smtp("a", interval=90.2), smtp("b"))
        timings = {"connect": 0.0012, "banner": 0.25, "ehlo": 0.003, "tls": 0.04}
        store.record("a", ok_smtp(total=0.0505, timings=timings))
        view = view_of(store)
        cells = {
            column: int(smtp_cell(view, column, "a"))
            for column in (
                SmtpProbeColumn.LATENCY,
                SmtpProbeColumn.CONNECT_LATENCY,
                SmtpProbeColumn.BANNER_LATENCY,
                SmtpProbeColumn.EHLO_LATENCY,
                SmtpProbeColumn.TLS_LATENCY,
                SmtpProbeColumn.INTERVAL,
            )
        }
        assert cells == {
            SmtpProbeColumn.LATENCY: 50,
            SmtpProbeColumn.CONNECT_LATENCY: 1,
            SmtpProbeColumn.BANNER_LATENCY: 250,
            SmtpProbeColumn.EHLO_LATENCY: 3,
            SmtpProbeColumn.TLS_LATENCY: 40,
            SmtpProbeColumn.INTERVAL: 91,
        }
        assert int(smtp_cell(view, SmtpProbeColumn.INTERVAL, "b")) == 60  # the agent's default

    def test_counters_are_counter64_and_columns_have_the_mib_syntax(self) -> None:
        store = store_with(smtp("a"), mx("m"))
        store.record("a", failed_smtp())
        store.record("a", ok_smtp(tls=tls_info()))
        records = (MxRecord(5, "a.example", ("192.0.2.1",)),)
        store.record("m", MxResult("example.com", time.time(), True, records=records))
        view = view_of(store)
        assert int(smtp_cell(view, SmtpProbeColumn.RUNS, "a")) == 2
        assert int(smtp_cell(view, SmtpProbeColumn.FAILURES, "a")) == 1
        for column, syntax in SMTP_PROBE_TYPES.items():
            assert type(view.get(mib_oids.smtp_probe_oid(column, "a"))) is syntax, column.name
        for mx_column, syntax in MX_CHECK_TYPES.items():
            assert type(view.get(mib_oids.mx_check_oid(mx_column, "m"))) is syntax, mx_column.name
        for exchange_column, syntax in MX_EXCHANGE_TYPES.items():
            assert type(view.get(mib_oids.mx_exchange_oid(exchange_column, "m", 1))) is syntax
        for address_column, syntax in MX_ADDRESS_TYPES.items():
            assert type(view.get(mib_oids.mx_address_oid(address_column, "m", 1, 1))) is syntax
        assert type(smtp_cell(view, SmtpProbeColumn.RUNS, "a")) is rfc1902.Counter64

    def test_certificate_columns(self) -> None:
        store = store_with(smtp("a"))
        store.record("a", ok_smtp(tls=tls_info(days_left=20, verified=False)))
        view = view_of(store)
        state = store.snapshot().states["a"]
        assert isinstance(state.last_result, SmtpResult)
        assert state.last_result.tls is not None
        assert state.last_result.tls.cert is not None
        assert bytes(smtp_cell(view, SmtpProbeColumn.TLS_VERSION, "a")) == b"TLSv1.3"
        assert bytes(smtp_cell(view, SmtpProbeColumn.CERT_SUBJECT, "a")) == b"CN=mail.example"
        assert int(smtp_cell(view, SmtpProbeColumn.CERT_DAYS_LEFT, "a")) == 20
        assert int(smtp_cell(view, SmtpProbeColumn.CERT_VERIFIED, "a")) == mib_oids.TRUTH_VALUES[False]
        expiry = bytes(smtp_cell(view, SmtpProbeColumn.CERT_EXPIRY, "a"))
        assert expiry == date_and_time(state.last_result.tls.cert.not_after)

    def test_strings_are_cut_to_255_octets_on_a_character_boundary(self) -> None:
        store = store_with(smtp("a"))
        store.record("a", failed_smtp(error="é" * 300))  # two octets each
        text = bytes(smtp_cell(view_of(store), SmtpProbeColumn.LAST_ERROR, "a"))
        assert len(text) == 254
        assert text.decode("utf-8") == "é" * 127

    def test_row_has_one_cell_per_readable_column(self) -> None:
        state = store_with(smtp("a")).snapshot().states["a"]
        assert len(smtp_probe_row(state, 60.0)) == len(SMTP_PROBE_TYPES) == len(SmtpProbeColumn) - 1


class TestMxValues:
    def test_exchanges_in_preference_then_name_order(self) -> None:
        store = store_with(mx("m"))
        probe_ok, probe_down = ok_smtp(), failed_smtp()
        records = (
            MxRecord(20, "c.example", ("192.0.2.3",), probe=probe_down),
            MxRecord(10, "b.example", ("192.0.2.2", "2001:db8::2"), probe=probe_ok),
            MxRecord(10, "a.example", (), error="no address"),
        )
        store.record("m", MxResult("example.com", time.time(), True, records=records, total=0.0123))
        view = view_of(store)
        names = [bytes(read(view, mib_oids.mx_exchange_oid(MxExchangeColumn.NAME, "m", i))) for i in (1, 2, 3)]
        assert names == [b"a.example", b"b.example", b"c.example"]
        up = [int(read(view, mib_oids.mx_exchange_oid(MxExchangeColumn.UP, "m", i))) for i in (1, 2, 3)]
        values = mib_oids.MX_EXCHANGE_UP_VALUES
        assert up == [values["not_probed"], values["up"], values["down"]]
        addresses = bytes(read(view, mib_oids.mx_exchange_oid(MxExchangeColumn.ADDRESSES, "m", 2)))
        assert addresses == b"192.0.2.2,2001:db8::2"
        assert int(read(view, mib_oids.mx_check_oid(MxCheckColumn.RECORDS, "m"))) == 3
        assert int(read(view, mib_oids.mx_check_oid(MxCheckColumn.LATENCY, "m"))) == 12

    def test_implicit_mx_has_no_records_and_no_exchange_rows(self) -> None:
        store = store_with(mx("m"))
        records = (MxRecord(0, "example.com", ("192.0.2.1",)),)
        store.record("m", MxResult("example.com", time.time(), True, records=records, implicit_mx=True))
        view = view_of(store)
        assert int(read(view, mib_oids.mx_check_oid(MxCheckColumn.IMPLICIT_MX, "m"))) == mib_oids.TRUTH_VALUES[True]
        assert int(read(view, mib_oids.mx_check_oid(MxCheckColumn.RECORDS, "m"))) == 0
        assert view.get(mib_oids.mx_exchange_oid(MxExchangeColumn.NAME, "m", 1)) is None

    def test_exchange_rows_follow_each_new_answer(self) -> None:
        store = store_with(mx("m"))
        view = view_of(store)
        two = (MxRecord(5, "a.example", ()), MxRecord(10, "b.example", ()))
        store.record("m", MxResult("example.com", time.time(), True, records=two))
        assert view.get(mib_oids.mx_exchange_oid(MxExchangeColumn.NAME, "m", 2)) == b"b.example"
        store.record("m", MxResult("example.com", time.time(), False, phase=Phase.MX, reason=Reason.SERVFAIL))
        assert view.get(mib_oids.mx_exchange_oid(MxExchangeColumn.NAME, "m", 1)) is None
        failed_reason = int(read(view, mib_oids.mx_check_oid(MxCheckColumn.FAILED_REASON, "m")))
        assert failed_reason == mib_oids.REASON_VALUES["servfail"]


# -- the columns and table added for issue 6: every outcome of a check visible in the MIB ---------


def probe_of(address: str, ok: bool = True, error: str = "") -> SmtpResult:
    """An exchange's SMTP probe of one address, as monitor.probes.mx._probe returns it."""
    if ok:
        return SmtpResult(
            host="mx.example", port=25, tls_mode="starttls", started_at=time.time(), ok=True, address=address
        )
    return SmtpResult(
        host="mx.example",
        port=25,
        tls_mode="starttls",
        started_at=time.time(),
        ok=False,
        phase=Phase.CONNECT,
        reason=Reason.REFUSED,
        error=error,
        address=address,
    )


def record_mx(name: str, *records: MxRecord, **fields: Any) -> ResultsStore:
    """A store with one MX check `name` whose latest result has these records and fields."""
    store = store_with(mx(name))
    store.record(name, MxResult("example.com", time.time(), True, records=records, **fields))
    return store


def check_cell(store: ResultsStore, column: MxCheckColumn, name: str = "m") -> Asn1Value:
    return read(view_of(store), mib_oids.mx_check_oid(column, name))


def exchange_cell(store: ResultsStore, column: MxExchangeColumn, order: int = 1, name: str = "m") -> Asn1Value:
    return read(view_of(store), mib_oids.mx_exchange_oid(column, name, order))


def address_cells(store: ResultsStore, column: MxAddressColumn, name: str = "m") -> dict[Oid, Asn1Value]:
    """(exchange order, address order) -> value of one mxAddressTable column, from a walk."""
    prefix = (*mib_oids.MX_ADDRESS_ENTRY, int(column), *mib_oids.name_index(name))
    return {
        oid[len(prefix) :]: value for oid, value in view_of(store).current().items() if oid[: len(prefix)] == prefix
    }


def mta_sts_facts(
    *,
    present: bool = True,
    txt_error: str = "",
    mode: str = "enforce",
    uncovered: tuple[str, ...] = (),
    policy_error: str = "",
) -> MtaStsFacts:
    """MTA-STS facts as monitor.probes.mx.check_mta_sts makes them."""
    policy = None
    problem = ""
    if present and txt_error:
        problem = f"TXT record: {txt_error}"
    elif present:
        policy = MtaStsPolicyFacts(
            mode="" if policy_error else mode,
            max_age=0 if policy_error else 86400,
            mx_patterns=() if policy_error else ("*.example.com",),
            verified=not policy_error,
            error=policy_error,
            error_kind="http" if policy_error else "",
            http_status=404 if policy_error else 200,
            uncovered=uncovered,
            cert_not_after=None,
        )
        if policy_error:
            problem = f"policy: {policy_error}"
        elif uncovered and mode == "enforce":
            problem = "exchanges not covered by the enforced policy: " + ", ".join(uncovered)
    return MtaStsFacts(
        txt_id="" if txt_error or not present else "20261122",
        txt_error=txt_error,
        txt_error_kind="absent" if not present else ("malformed" if txt_error else ""),
        present=present,
        policy=policy,
        valid=not problem,
    )


@pytest.fixture(scope="module")
def cert_der(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A self-signed certificate in DER, the chain an exchange's STARTTLS presents."""
    cert_pem, _ = make_self_signed_cert(
        tmp_path_factory.mktemp("dane-cert"), common_name="mx.example", dns_names=("mx.example",), ip_addresses=()
    )
    return x509.load_pem_x509_certificate(cert_pem.read_bytes()).public_bytes(serialization.Encoding.DER)


def dane_facts(tlsa: tuple[Tlsa, ...], chain: tuple[bytes, ...] = (), lookup_error: str = "") -> DaneFacts:
    """DANE facts as monitor.probes.mx._dane_verdict makes them from a TLSA lookup and a chain."""
    tls = TlsInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", False, chain_der=chain) if chain else None
    probe = SmtpResult("mx.example", 25, "starttls", time.time(), True, address="192.0.2.1", tls=tls)
    record = MxRecord(10, "mx.example", ("192.0.2.1",), probe=probe)
    lookup = TlsaLookup("_25._tcp.mx.example", tlsa, error=lookup_error)
    return _dane_verdict(record, lookup)[0]


class TestSmtpProbeTlsSeen:
    def test_never_until_a_run_completes_a_handshake(self) -> None:
        store = store_with(smtp("a"))
        assert bytes(smtp_cell(view_of(store), SmtpProbeColumn.TLS_SEEN, "a")) == NEVER
        store.record("a", failed_smtp())  # refused: no handshake
        assert bytes(smtp_cell(view_of(store), SmtpProbeColumn.TLS_SEEN, "a")) == NEVER

    def test_is_the_start_of_the_run_that_completed_the_handshake(self) -> None:
        store = store_with(smtp("a"))
        result = ok_smtp(tls=tls_info())
        store.record("a", result)
        seen = bytes(smtp_cell(view_of(store), SmtpProbeColumn.TLS_SEEN, "a"))
        assert seen == date_and_time(result.started_at)
        assert len(seen) == 11

    def test_tls_columns_and_their_time_stay_while_later_runs_fail_before_the_handshake(self) -> None:
        store = store_with(smtp("a"))
        handshake = ok_smtp(tls=tls_info(days_left=20))
        store.record("a", handshake)
        view = view_of(store)
        before = {column: smtp_cell(view, column, "a") for column in SmtpProbeColumn if 22 <= column <= 27}
        store.record("a", failed_smtp())
        assert int(smtp_cell(view, SmtpProbeColumn.STATUS, "a")) == mib_oids.STATUS_VALUES["failed"]
        after = {column: smtp_cell(view, column, "a") for column in SmtpProbeColumn if 22 <= column <= 27}
        assert after == before
        assert bytes(after[SmtpProbeColumn.TLS_VERSION]) == b"TLSv1.3"
        assert bytes(smtp_cell(view, SmtpProbeColumn.TLS_SEEN, "a")) == date_and_time(handshake.started_at)

    def test_a_newer_handshake_moves_the_time(self) -> None:
        store = store_with(smtp("a"))
        store.record("a", ok_smtp(tls=tls_info()))
        view = view_of(store)
        view.current()
        later = replace(ok_smtp(tls=tls_info()), started_at=time.time() + 3600)
        store.record("a", later)
        assert bytes(smtp_cell(view, SmtpProbeColumn.TLS_SEEN, "a")) == date_and_time(later.started_at)

    def test_cert_expiry_is_the_earliest_in_the_presented_chain(self) -> None:
        leaf = tls_info(days_left=60)
        intermediate_expiry = datetime.now(UTC) + timedelta(days=10, hours=1)
        store = store_with(smtp("a"))
        store.record("a", ok_smtp(tls=replace(leaf, chain_not_after=intermediate_expiry)))
        view = view_of(store)
        assert bytes(smtp_cell(view, SmtpProbeColumn.CERT_EXPIRY, "a")) == date_and_time(intermediate_expiry)
        assert int(smtp_cell(view, SmtpProbeColumn.CERT_DAYS_LEFT, "a")) == 10


class TestMxCheckDnssec:
    @pytest.mark.parametrize(
        ("authenticated", "label"),
        [(None, "not_checked"), (True, "authenticated"), (False, "unauthenticated")],
        ids=["not-asked", "ad-bit", "no-ad-bit"],
    )
    def test_ad_bit_of_the_mx_answer(self, authenticated: bool | None, label: str) -> None:
        store = record_mx("m", MxRecord(10, "mx.example", ("192.0.2.1",)), authenticated=authenticated)
        assert int(check_cell(store, MxCheckColumn.DNSSEC)) == mib_oids.DNSSEC_VALUES[label]

    def test_not_checked_before_the_first_run(self) -> None:
        store = store_with(mx("m"))
        assert int(check_cell(store, MxCheckColumn.DNSSEC)) == mib_oids.DNSSEC_VALUES["not_checked"]


class TestMxCheckMtaSts:
    @pytest.mark.parametrize(
        ("facts", "label", "mode"),
        [
            pytest.param(None, "not_checked", b"", id="mta-sts-off"),
            pytest.param(mta_sts_facts(present=False), "absent", b"", id="no-txt-record"),
            pytest.param(mta_sts_facts(), "valid", b"enforce", id="enforced-and-covering"),
            pytest.param(
                mta_sts_facts(mode="testing", uncovered=("mx.example",)),
                "valid",
                b"testing",
                id="testing-with-uncovered",
            ),
            pytest.param(mta_sts_facts(uncovered=("mx.example",)), "invalid", b"enforce", id="enforced-uncovered"),
            pytest.param(mta_sts_facts(txt_error="does not start with v=STSv1"), "invalid", b"", id="bad-txt"),
            pytest.param(mta_sts_facts(policy_error="HTTP 404"), "invalid", b"", id="policy-not-fetched"),
        ],
    )
    def test_state_and_mode_of_the_policy(self, facts: MtaStsFacts | None, label: str, mode: bytes) -> None:
        store = record_mx("m", MxRecord(10, "mx.example", ("192.0.2.1",)), mta_sts=facts)
        assert int(check_cell(store, MxCheckColumn.MTA_STS)) == mib_oids.MTA_STS_VALUES[label]
        assert bytes(check_cell(store, MxCheckColumn.MTA_STS_MODE)) == mode


class TestMxCheckSpfAndDmarc:
    @pytest.mark.parametrize(
        ("verdicts", "spf", "dmarc"),
        [
            pytest.param({}, "not_checked", "not_checked", id="neither-checked"),
            pytest.param({"spf": check_spf(["v=spf1 mx -all"])}, "valid", "not_checked", id="spf-only"),
            pytest.param(
                {"spf": check_spf(["v=spf1 -all", "v=spf1 mx -all"]), "dmarc": check_dmarc(["v=DMARC1; p=reject"])},
                "invalid",
                "valid",
                id="two-spf-records",
            ),
            pytest.param({"spf": check_spf([]), "dmarc": check_dmarc([])}, "invalid", "invalid", id="both-missing"),
        ],
    )
    def test_verdicts_of_the_policy_records(self, verdicts: dict[str, PolicyRecord], spf: str, dmarc: str) -> None:
        store = record_mx("m", MxRecord(10, "mx.example", ("192.0.2.1",)), **verdicts)
        assert int(check_cell(store, MxCheckColumn.SPF)) == mib_oids.VERDICT_VALUES[spf]
        assert int(check_cell(store, MxCheckColumn.DMARC)) == mib_oids.VERDICT_VALUES[dmarc]


class TestMxExchangeDane:
    def test_not_checked_without_dane_facts(self) -> None:
        store = record_mx("m", MxRecord(10, "mx.example", ("192.0.2.1",)))
        assert int(exchange_cell(store, MxExchangeColumn.DANE)) == mib_oids.DANE_VALUES["not_checked"]

    def test_each_verdict_of_the_tlsa_match(self, cert_der: bytes) -> None:
        other = hashlib.sha256(b"another certificate").digest()
        cases = {
            "no_records": dane_facts(()),
            "matched": dane_facts((Tlsa(3, 0, 0, cert_der),), chain=(cert_der,)),
            "mismatched": dane_facts((Tlsa(3, 0, 1, other),), chain=(cert_der,)),
            "error": dane_facts((), lookup_error="SERVFAIL"),
            "unusable": dane_facts((Tlsa(1, 0, 1, other),), chain=(cert_der,)),
        }
        records = [
            MxRecord(i, f"mx{i}.example", (f"192.0.2.{i}",), dane=facts)
            for i, facts in enumerate(cases.values(), start=1)
        ]
        store = record_mx("m", *records)
        got = [int(exchange_cell(store, MxExchangeColumn.DANE, order)) for order in range(1, len(cases) + 1)]
        assert got == [mib_oids.DANE_VALUES[label] for label in cases]

    def test_published_records_without_a_handshake_are_mismatched(self) -> None:
        facts = dane_facts((Tlsa(3, 1, 1, bytes(32)),))  # usable record, nothing presented
        store = record_mx("m", MxRecord(10, "mx.example", ("192.0.2.1",), dane=facts))
        assert int(exchange_cell(store, MxExchangeColumn.DANE)) == mib_oids.DANE_VALUES["mismatched"]


class TestMxExchangeMtaSts:
    def test_covered_and_not_covered_by_the_fetched_policy(self) -> None:
        records = (MxRecord(10, "mx1.example.com", ("192.0.2.1",)), MxRecord(20, "backup.example.net.", ()))
        store = record_mx("m", *records, mta_sts=mta_sts_facts(mode="testing", uncovered=("backup.example.net",)))
        values = mib_oids.MTA_STS_COVERAGE_VALUES
        assert int(exchange_cell(store, MxExchangeColumn.MTA_STS, 1)) == values["covered"]
        assert int(exchange_cell(store, MxExchangeColumn.MTA_STS, 2)) == values["not_covered"]

    @pytest.mark.parametrize(
        "facts",
        [
            pytest.param(None, id="mta-sts-off"),
            pytest.param(mta_sts_facts(present=False), id="no-txt-record"),
            pytest.param(mta_sts_facts(txt_error="more than one id"), id="bad-txt"),
            pytest.param(mta_sts_facts(policy_error="certificate verify failed"), id="policy-not-fetched"),
        ],
    )
    def test_not_checked_without_a_fetched_policy(self, facts: MtaStsFacts | None) -> None:
        store = record_mx("m", MxRecord(10, "mx1.example.com", ("192.0.2.1",)), mta_sts=facts)
        value = int(exchange_cell(store, MxExchangeColumn.MTA_STS))
        assert value == mib_oids.MTA_STS_COVERAGE_VALUES["not_checked"]


class TestMxAddressTable:
    def test_one_row_per_address_in_exchange_then_address_order(self) -> None:
        records = (
            MxRecord(20, "b.example", ("192.0.2.3",)),
            MxRecord(10, "a.example", ("192.0.2.1", "2001:db8::1")),
            MxRecord(30, "c.example", ()),  # no address: no row
        )
        values = address_cells(record_mx("m", *records), MxAddressColumn.VALUE)
        assert {index: bytes(value) for index, value in values.items()} == {
            (1, 1): b"192.0.2.1",
            (1, 2): b"2001:db8::1",
            (2, 1): b"192.0.2.3",
        }
        assert list(values) == sorted(values)

    def test_rows_of_several_checks_walk_in_index_order(self) -> None:
        store = store_with(mx("long-name"), mx("m"))
        records = (MxRecord(5, "a.example", ("192.0.2.1", "192.0.2.2")),)
        for name in ("long-name", "m"):
            store.record(name, MxResult("example.com", time.time(), True, records=records))
        table = view_of(store).current()
        rows = column_rows(table, mib_oids.MX_ADDRESS_ENTRY, int(MxAddressColumn.VALUE))
        assert rows == [
            (*mib_oids.name_index("m"), 1, 1),
            (*mib_oids.name_index("m"), 1, 2),
            (*mib_oids.name_index("long-name"), 1, 1),
            (*mib_oids.name_index("long-name"), 1, 2),
        ]
        oids = walk(table)
        assert oids == sorted(oids) == [oid for oid, _ in table.items()]

    def test_every_address_takes_its_own_probe_with_all_addresses(self) -> None:
        down, up = probe_of("192.0.2.1", ok=False, error="connection refused"), probe_of("2001:db8::1")
        record = MxRecord(10, "a.example", ("192.0.2.1", "2001:db8::1"), probe=down, address_probes=(down, up))
        store = record_mx("m", record)
        values = mib_oids.MX_ADDRESS_UP_VALUES
        up_cells = address_cells(store, MxAddressColumn.UP)
        assert {index: int(v) for index, v in up_cells.items()} == {(1, 1): values["down"], (1, 2): values["up"]}
        errors = address_cells(store, MxAddressColumn.LAST_ERROR)
        assert {index: bytes(v) for index, v in errors.items()} == {(1, 1): b"connection refused", (1, 2): b""}
        # The exchange counts as up on any address; its own column shows the first address.
        assert int(exchange_cell(store, MxExchangeColumn.UP)) == values["down"]

    def test_probe_hosts_true_probes_only_the_first_address(self) -> None:
        record = MxRecord(10, "a.example", ("192.0.2.1", "192.0.2.2"), probe=probe_of("192.0.2.1"))
        up_cells = address_cells(record_mx("m", record), MxAddressColumn.UP)
        values = mib_oids.MX_ADDRESS_UP_VALUES
        assert {index: int(v) for index, v in up_cells.items()} == {(1, 1): values["up"], (1, 2): values["not_probed"]}

    def test_not_probed_and_no_error_without_probes(self) -> None:
        store = record_mx("m", MxRecord(10, "a.example", ("192.0.2.1",)))
        assert int(address_cells(store, MxAddressColumn.UP)[(1, 1)]) == mib_oids.MX_ADDRESS_UP_VALUES["not_probed"]
        assert bytes(address_cells(store, MxAddressColumn.LAST_ERROR)[(1, 1)]) == b""

    def test_ptr_names_and_forward_confirmation(self) -> None:
        reverse = (
            ReverseDns("192.0.2.1", ("a.example", "mail.example"), True),
            ReverseDns("192.0.2.2", ("dyn-2.isp.example",), False),
            ReverseDns("192.0.2.3", (), False, error="NXDOMAIN"),
        )
        record = MxRecord(10, "a.example", ("192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"), reverse=reverse)
        store = record_mx("m", record)
        names = {index: bytes(v) for index, v in address_cells(store, MxAddressColumn.PTR_NAME).items()}
        assert names == {(1, 1): b"a.example,mail.example", (1, 2): b"dyn-2.isp.example", (1, 3): b"", (1, 4): b""}
        ptr = {index: int(v) for index, v in address_cells(store, MxAddressColumn.PTR).items()}
        values = mib_oids.PTR_VALUES
        assert ptr == {
            (1, 1): values["confirmed"],
            (1, 2): values["not_confirmed"],
            (1, 3): values["not_confirmed"],
            (1, 4): values["not_checked"],  # reverse DNS ended before this address
        }

    def test_ptr_names_are_cut_at_a_whole_name(self) -> None:
        names = tuple(f"host-{i:03d}.reverse.example" for i in range(20))  # 24 octets each
        record = MxRecord(10, "a.example", ("192.0.2.1",), reverse=(ReverseDns("192.0.2.1", names, True),))
        text = bytes(address_cells(record_mx("m", record), MxAddressColumn.PTR_NAME)[(1, 1)])
        assert len(text) <= 255
        assert text.split(b",") == [name.encode() for name in names[: len(text.split(b","))]]

    def test_implicit_mx_has_no_address_rows(self) -> None:
        record = MxRecord(0, "example.com", ("192.0.2.1",))
        assert address_cells(record_mx("m", record, implicit_mx=True), MxAddressColumn.VALUE) == {}

    def test_rows_follow_each_new_answer(self) -> None:
        store = record_mx("m", MxRecord(10, "a.example", ("192.0.2.1", "192.0.2.2")))
        view = view_of(store)
        assert view.get(mib_oids.mx_address_oid(MxAddressColumn.VALUE, "m", 1, 2)) == b"192.0.2.2"
        moved = (MxRecord(10, "a.example", ("192.0.2.9",)),)
        store.record("m", MxResult("example.com", time.time(), True, records=moved))
        assert view.get(mib_oids.mx_address_oid(MxAddressColumn.VALUE, "m", 1, 1)) == b"192.0.2.9"
        assert view.get(mib_oids.mx_address_oid(MxAddressColumn.VALUE, "m", 1, 2)) is None
        store.record("m", MxResult("example.com", time.time(), False, phase=Phase.MX, reason=Reason.SERVFAIL))
        assert view.get(mib_oids.mx_address_oid(MxAddressColumn.VALUE, "m", 1, 1)) is None

    def test_a_result_of_another_probe_leaves_the_rows_as_they_were(self) -> None:
        store = store_with(mx("m"), smtp("a"))
        store.record(
            "m",
            MxResult(
                "example.com",
                time.time(),
                True,
                records=(MxRecord(10, "a.example", ("192.0.2.1",), probe=probe_of("192.0.2.1")),),
            ),
        )
        view = view_of(store)
        before = [
            (oid, bytes(v) if isinstance(v, rfc1902.OctetString) else int(v))
            for oid, v in view.current().items()
            if oid[: len(mib_oids.MX_ADDRESS_ENTRY)] == mib_oids.MX_ADDRESS_ENTRY
        ]
        store.record("a", failed_smtp())
        after = [
            (oid, bytes(v) if isinstance(v, rfc1902.OctetString) else int(v))
            for oid, v in view.current().items()
            if oid[: len(mib_oids.MX_ADDRESS_ENTRY)] == mib_oids.MX_ADDRESS_ENTRY
        ]
        assert after == before
        assert len(after) == len(MX_ADDRESS_TYPES)


def both_families(*per_address: SmtpResult) -> SmtpResult:
    """A probe result with address_family: both, as monitor.probes.smtp returns it: the first failing address leads."""
    main = next((r for r in per_address if not r.ok), per_address[0])
    return replace(main, address_results=per_address, total=sum(r.total for r in per_address))


def smtp_address_cells(store: ResultsStore, column: SmtpAddressColumn, name: str = "a") -> dict[int, Any]:
    """Address order -> plain value (bytes or int) of one smtpAddressTable column, from a walk."""
    prefix = (*mib_oids.SMTP_ADDRESS_ENTRY, int(column), *mib_oids.name_index(name))
    return {
        oid[len(prefix)]: bytes(value) if isinstance(value, rfc1902.OctetString) else int(value)
        for oid, value in view_of(store).current().items()
        if oid[: len(prefix)] == prefix
    }


class TestSmtpAddressTable:
    def test_every_address_of_a_both_families_probe_has_its_own_row(self) -> None:
        v4 = replace(ok_smtp(total=0.012), address="192.0.2.7")
        v6 = replace(failed_smtp(Phase.BANNER, Reason.REPLY, "554 go away"), address="2001:db8::7")
        v6 = replace(v6, reply=Reply(554, ("go away",)), total=0.034)
        store = store_with(smtp("a"))
        store.record("a", both_families(v4, v6))
        assert smtp_address_cells(store, SmtpAddressColumn.VALUE) == {1: b"192.0.2.7", 2: b"2001:db8::7"}
        up = mib_oids.SMTP_ADDRESS_UP_VALUES
        assert smtp_address_cells(store, SmtpAddressColumn.UP) == {1: up["up"], 2: up["down"]}
        assert smtp_address_cells(store, SmtpAddressColumn.LAST_ERROR) == {1: b"", 2: b"554 go away"}
        phases = smtp_address_cells(store, SmtpAddressColumn.FAILED_PHASE)
        assert phases == {1: mib_oids.PHASE_VALUES["none"], 2: mib_oids.PHASE_VALUES["banner"]}
        reasons = smtp_address_cells(store, SmtpAddressColumn.FAILED_REASON)
        assert reasons == {1: mib_oids.REASON_VALUES["none"], 2: mib_oids.REASON_VALUES["reply"]}
        assert smtp_address_cells(store, SmtpAddressColumn.REPLY_CODE) == {1: 0, 2: 554}
        assert smtp_address_cells(store, SmtpAddressColumn.LATENCY) == {1: 12, 2: 34}
        # The probe's own row names the failing address.
        assert bytes(smtp_cell(view_of(store), SmtpProbeColumn.ADDRESS, "a")) == b"2001:db8::7"

    def test_columns_have_the_mib_syntax(self) -> None:
        store = store_with(smtp("a"))
        store.record("a", both_families(ok_smtp(), replace(ok_smtp(), address="2001:db8::7")))
        view = view_of(store)
        for column, syntax in SMTP_ADDRESS_TYPES.items():
            assert type(view.get(mib_oids.smtp_address_oid(column, "a", 2))) is syntax, column.name

    def test_a_single_address_probe_has_no_rows(self) -> None:
        store = store_with(smtp("a"))
        store.record("a", ok_smtp())
        assert smtp_address_cells(store, SmtpAddressColumn.VALUE) == {}

    def test_rows_of_several_probes_walk_in_index_order_after_the_mx_tables(self) -> None:
        store = store_with(smtp("long-name"), smtp("a"), mx("m"))
        for name in ("long-name", "a"):
            store.record(name, both_families(ok_smtp(), replace(ok_smtp(), address="2001:db8::7")))
        store.record(
            "m", MxResult("example.com", time.time(), True, records=(MxRecord(5, "a.example", ("192.0.2.1",)),))
        )
        table = view_of(store).current()
        rows = column_rows(table, mib_oids.SMTP_ADDRESS_ENTRY, int(SmtpAddressColumn.UP))
        assert rows == [
            (*mib_oids.name_index("a"), 1),
            (*mib_oids.name_index("a"), 2),
            (*mib_oids.name_index("long-name"), 1),
            (*mib_oids.name_index("long-name"), 2),
        ]
        oids = walk(table)
        assert oids == sorted(oids) == [oid for oid, _ in table.items()]
        assert oids[-1] == mib_oids.smtp_address_oid(SmtpAddressColumn.LATENCY, "long-name", 2)

    def test_rows_follow_each_new_result_and_vanish_with_the_probe(self) -> None:
        store = store_with(smtp("a"), smtp("b"))
        view = view_of(store)
        store.record("a", both_families(ok_smtp(), replace(ok_smtp(), address="2001:db8::7")))
        assert view.get(mib_oids.smtp_address_oid(SmtpAddressColumn.VALUE, "a", 2)) == b"2001:db8::7"
        store.record("a", both_families(replace(ok_smtp(), address="192.0.2.9")))
        assert view.get(mib_oids.smtp_address_oid(SmtpAddressColumn.VALUE, "a", 1)) == b"192.0.2.9"
        assert view.get(mib_oids.smtp_address_oid(SmtpAddressColumn.VALUE, "a", 2)) is None
        store.record("b", failed_smtp())  # another probe's result keeps a's rows
        assert view.get(mib_oids.smtp_address_oid(SmtpAddressColumn.VALUE, "a", 1)) == b"192.0.2.9"
        store.configure([(smtp("b"), 1, 14)])  # a reload without "a"
        assert view.get(mib_oids.smtp_address_oid(SmtpAddressColumn.VALUE, "a", 1)) is None
