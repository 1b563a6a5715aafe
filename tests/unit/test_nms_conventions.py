"""NMS conventions without the network: Unix-seconds twins of the DateAndTime columns (0 = never),
sysObjectID.0 and sysLocation.0, and agent.location as the `location` label of every probe series."""

from __future__ import annotations

import math
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry
from pydantic import ValidationError

from monitor.config.schema import Config, SnmpConfig
from monitor.exporters.prometheus.metrics import (
    DELIVERY_FAMILIES,
    MX_FAMILIES,
    SMTP_FAMILIES,
    ProbeExposition,
    StoreCollector,
)
from monitor.exporters.snmp import mib_oids
from monitor.exporters.snmp.agent import SnmpAgent
from monitor.exporters.snmp.mib_oids import DeliveryColumn, DeliveryHopColumn, MxCheckColumn, Scalar, SmtpProbeColumn
from monitor.exporters.snmp.mibview import SYS_LOCATION, SYS_OBJECT_ID, UINT32_MAX, MibView, unix_time
from monitor.model.delivery import Hop
from monitor.model.results import CertInfo, MxRecord, MxResult, TlsInfo
from monitor.state.health import AgentHealth
from monitor.state.store import ProbeConfig, ResultsStore
from tests.unit.test_snmp_delivery import delivery_config, on_time
from tests.unit.test_snmp_mibview import failed_smtp, mx, ok_smtp, smtp

NEVER = mib_oids.DATE_AND_TIME_NEVER


def store_with(*configs: ProbeConfig) -> ResultsStore:
    store = ResultsStore(announce=False)
    store.configure([(cfg, 1, 14) for cfg in configs])
    return store


def view_of(store: ResultsStore, health: AgentHealth | None = None) -> MibView:
    return MibView(store, health or AgentHealth(), sys_name="monitor-host")


def number(view: MibView, oid: tuple[int, ...]) -> int:
    value = view.get(oid)
    assert value is not None, oid
    return int(value)


def octets(view: MibView, oid: tuple[int, ...]) -> bytes:
    value = view.get(oid)
    assert value is not None, oid
    return bytes(value)


class TestUnixTime:
    @pytest.mark.parametrize("never", [None, 0, 0.0, -5.0, math.nan])
    def test_never_and_nonsense_are_0(self, never: float | None) -> None:
        assert unix_time(never) == 0

    def test_a_time_is_whole_seconds_rounded_down(self) -> None:
        assert unix_time(1_800_000_000.9) == 1_800_000_000
        assert unix_time(datetime(2027, 1, 15, 8, 0, 0, 900_000, tzinfo=UTC)) == 1_800_000_000

    def test_a_naive_datetime_is_utc_like_date_and_time_reads_it(self) -> None:
        aware = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
        assert unix_time(aware.replace(tzinfo=None)) == unix_time(aware) == int(aware.timestamp())

    def test_a_real_time_is_never_0_and_never_wraps(self) -> None:
        assert unix_time(0.25) == 1  # just after the epoch: a time, not never
        assert unix_time(float(UINT32_MAX) + 10) == UINT32_MAX  # after 2106 (certificates valid to 9999)
        assert unix_time(datetime(9999, 12, 31, tzinfo=UTC)) == UINT32_MAX


class TestUnixTimeColumns:
    """Each twin holds the same time as its DateAndTime column, and 0 exactly where that one says never."""

    def test_smtp_probe_that_never_ran_has_0_in_every_twin(self) -> None:
        view = view_of(store_with(smtp("a")))
        twins = {
            SmtpProbeColumn.LAST_SUCCESS: SmtpProbeColumn.LAST_SUCCESS_UNIX_TIME,
            SmtpProbeColumn.LAST_CHANGE: SmtpProbeColumn.LAST_CHANGE_UNIX_TIME,
            SmtpProbeColumn.CERT_EXPIRY: SmtpProbeColumn.CERT_EXPIRY_UNIX_TIME,
            SmtpProbeColumn.TLS_SEEN: SmtpProbeColumn.TLS_SEEN_UNIX_TIME,
        }
        for date_column, unix_column in twins.items():
            assert octets(view, mib_oids.smtp_probe_oid(date_column, "a")) == NEVER
            assert number(view, mib_oids.smtp_probe_oid(unix_column, "a")) == 0

    def test_smtp_probe_times_after_a_handshake(self) -> None:
        now = datetime.now(UTC)
        leaf_expiry = (now + timedelta(days=90)).replace(microsecond=0)
        chain_expiry = (now + timedelta(days=20)).replace(microsecond=0)
        cert = CertInfo(
            "CN=mail.example", "CN=CA", ("DNS:mail.example",), now - timedelta(days=1), leaf_expiry, "1", "a"
        )
        tls = TlsInfo("TLSv1.3", "TLS_AES_128_GCM_SHA256", True, cert=cert, chain_not_after=chain_expiry)
        store = store_with(smtp("a"))
        before = time.time()
        store.record("a", ok_smtp(tls=tls))
        state = store.snapshot().states["a"]
        view = view_of(store)
        assert state.last_success is not None
        assert state.last_success >= before
        assert number(view, mib_oids.smtp_probe_oid(SmtpProbeColumn.LAST_SUCCESS_UNIX_TIME, "a")) == int(
            state.last_success
        )
        assert number(view, mib_oids.smtp_probe_oid(SmtpProbeColumn.LAST_CHANGE_UNIX_TIME, "a")) == int(
            state.last_change or 0
        )
        # The earliest expiry of the chain, as smtpProbeCertExpiry shows it.
        assert number(view, mib_oids.smtp_probe_oid(SmtpProbeColumn.CERT_EXPIRY_UNIX_TIME, "a")) == int(
            chain_expiry.timestamp()
        )
        assert number(view, mib_oids.smtp_probe_oid(SmtpProbeColumn.TLS_SEEN_UNIX_TIME, "a")) == int(
            state.last_tls_at or 0
        )

    def test_a_failing_probe_keeps_0_for_last_success_but_has_a_last_change(self) -> None:
        store = store_with(smtp("a"))
        store.record("a", failed_smtp())
        view = view_of(store)
        assert number(view, mib_oids.smtp_probe_oid(SmtpProbeColumn.LAST_SUCCESS_UNIX_TIME, "a")) == 0
        assert number(view, mib_oids.smtp_probe_oid(SmtpProbeColumn.LAST_CHANGE_UNIX_TIME, "a")) > 1_700_000_000

    def test_mx_check_twins(self) -> None:
        store = store_with(mx("m"))
        view = view_of(store)
        assert number(view, mib_oids.mx_check_oid(MxCheckColumn.LAST_SUCCESS_UNIX_TIME, "m")) == 0
        assert number(view, mib_oids.mx_check_oid(MxCheckColumn.LAST_CHANGE_UNIX_TIME, "m")) == 0
        store.record("m", MxResult("example.com", time.time(), True, records=(MxRecord(5, "a.example", ()),)))
        state = store.snapshot().states["m"]
        assert state.last_success is not None
        assert state.last_change is not None
        view = view_of(store)
        assert number(view, mib_oids.mx_check_oid(MxCheckColumn.LAST_SUCCESS_UNIX_TIME, "m")) == int(state.last_success)
        assert number(view, mib_oids.mx_check_oid(MxCheckColumn.LAST_CHANGE_UNIX_TIME, "m")) == int(state.last_change)

    def test_delivery_and_hop_twins(self) -> None:
        stamped = datetime(2027, 1, 15, 8, 0, 5, tzinfo=UTC)
        hops = (
            Hop("client.example", "msa.example", "ESMTPSA", "Q1", stamped, 0.0),
            Hop("msa.example", "mx.example.net", "ESMTPS", "Q2", None, None),  # no readable date
        )
        store = store_with(delivery_config())
        view = view_of(store)
        assert number(view, mib_oids.delivery_oid(DeliveryColumn.LAST_SUCCESS_UNIX_TIME, "loop")) == 0
        assert number(view, mib_oids.delivery_oid(DeliveryColumn.LAST_CHANGE_UNIX_TIME, "loop")) == 0
        store.record("loop", on_time(hops=hops))
        state = store.snapshot().states["loop"]
        view = view_of(store)
        assert number(view, mib_oids.delivery_oid(DeliveryColumn.LAST_SUCCESS_UNIX_TIME, "loop")) == int(
            state.last_success or 0
        )
        assert number(view, mib_oids.delivery_oid(DeliveryColumn.LAST_CHANGE_UNIX_TIME, "loop")) == int(
            state.last_change or 0
        )
        assert number(view, mib_oids.delivery_hop_oid(DeliveryHopColumn.UNIX_TIME, "loop", 1)) == int(
            stamped.timestamp()
        )
        assert octets(view, mib_oids.delivery_hop_oid(DeliveryHopColumn.TIME, "loop", 2)) == NEVER
        assert number(view, mib_oids.delivery_hop_oid(DeliveryHopColumn.UNIX_TIME, "loop", 2)) == 0

    def test_config_load_scalar_twin(self) -> None:
        health = AgentHealth()
        health.config_loaded_at = 0.0
        health.config_attempted_at = 0.0
        view = view_of(store_with(), health)
        assert number(view, mib_oids.scalar_oid(Scalar.CONFIG_LOAD_UNIX_TIME)) == 0
        health.config_attempted_at = 1_800_000_042.7  # read at request time, like its DateAndTime
        assert number(view, mib_oids.scalar_oid(Scalar.CONFIG_LOAD_UNIX_TIME)) == 1_800_000_042

    def test_every_twin_is_unsigned32(self) -> None:
        store = store_with(smtp("a"), mx("m"), delivery_config())
        store.record("loop", on_time())
        table = view_of(store).current()
        twins = [
            mib_oids.smtp_probe_oid(column, "a") for column in SmtpProbeColumn if column.name.endswith("UNIX_TIME")
        ]
        twins += [mib_oids.mx_check_oid(column, "m") for column in MxCheckColumn if column.name.endswith("UNIX_TIME")]
        twins += [
            mib_oids.delivery_oid(column, "loop") for column in DeliveryColumn if column.name.endswith("UNIX_TIME")
        ]
        twins += [mib_oids.delivery_hop_oid(DeliveryHopColumn.UNIX_TIME, "loop", 1)]
        twins += [mib_oids.scalar_oid(Scalar.CONFIG_LOAD_UNIX_TIME)]
        assert len(twins) == 10
        for oid in twins:
            value = table.get(oid)
            assert value is not None, oid
            assert value.__class__.__name__ == "Unsigned32", (oid, value)


class TestSystemGroup:
    def test_sys_object_id_is_the_agent_registration_under_the_enterprise(self) -> None:
        view = view_of(store_with())
        object_id = view.get(SYS_OBJECT_ID)
        assert object_id is not None
        assert tuple(object_id) == (*mib_oids.ENTERPRISE_OID, 4, 1) == mib_oids.AGENT_OID

    def test_sys_location_is_agent_location_unless_snmp_location_is_set(self, tmp_path: Path) -> None:
        plain = SnmpConfig.model_validate({"listen": []})
        agent = SnmpAgent(plain, tmp_path, store_with(), AgentHealth(), location="fra-1")
        assert octets(agent.view, SYS_LOCATION) == b"fra-1"
        own = SnmpConfig.model_validate({"listen": [], "location": "rack 4, hall B"})
        agent = SnmpAgent(own, tmp_path, store_with(), AgentHealth(), location="fra-1")
        assert octets(agent.view, SYS_LOCATION) == b"rack 4, hall B"

    def test_a_reload_changes_sys_location_of_a_table_already_built(self, tmp_path: Path) -> None:
        import asyncio

        agent = SnmpAgent(SnmpConfig.model_validate({"listen": []}), tmp_path, store_with(), AgentHealth())
        assert octets(agent.view, SYS_LOCATION) == b""
        table = agent.view.current()
        asyncio.run(agent.reconfigure(SnmpConfig.model_validate({"listen": [], "location": "ams-2"})))
        assert octets(agent.view, SYS_LOCATION) == b"ams-2"
        assert agent.view.current() is not table  # the fast path encodes the system group per table


class TestLocationConfig:
    def test_default_is_empty_and_text_is_kept(self) -> None:
        assert Config.model_validate({}).agent.location == ""
        assert Config.model_validate({"agent": {"location": "Frankfurt, DE"}}).agent.location == "Frankfurt, DE"

    @pytest.mark.parametrize("bad", ["fra\n1", "x" * 101, "tab\there"])
    def test_control_characters_and_long_text_are_refused(self, bad: str) -> None:
        with pytest.raises(ValidationError, match=r"agent\.location"):
            Config.model_validate({"agent": {"location": bad}})

    def test_trap_address_is_ipv4(self) -> None:
        assert str(Config.model_validate({"snmp": {"trap_address": "192.0.2.7"}}).snmp.trap_address) == "192.0.2.7"
        with pytest.raises(ValidationError, match="trap_address"):
            Config.model_validate({"snmp": {"trap_address": "2001:db8::1"}})


# -- the location label ---------------------------------------------------------------------------


def mixed_store() -> ResultsStore:
    store = store_with(smtp("s"), mx("m"), delivery_config())
    store.record("s", ok_smtp(tls=TlsInfo("TLSv1.3", "TLS_AES_128_GCM_SHA256", True)))
    store.record("loop", on_time())
    return store


def parsed(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def collector_text(store: ResultsStore, location: str) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store, None, location=location))
    return generate_latest(registry).decode()


PROBE_SERIES = re.compile(r"^(smtp_|mx_check_|delivery_probe_)")


class TestLocationLabel:
    def test_every_probe_series_of_every_kind_carries_the_location(self) -> None:
        text = ProbeExposition("fra-1").render(mixed_store().snapshot().states.values()).decode()
        samples = parsed(text)
        families = {name for name, _, _ in samples}
        assert {"smtp_probe_success", "mx_check_success", "delivery_probe_success"} <= families
        assert any(name.startswith("delivery_probe_latency_seconds_bucket") for name, _, _ in samples)
        assert samples
        for name, labels, _ in samples:
            assert labels.get("location") == "fra-1", (name, labels)

    def test_both_expositions_agree_line_for_line(self) -> None:
        store = mixed_store()
        cached = ProbeExposition("fra-1").render(store.snapshot().states.values()).decode()
        collected = collector_text(store, "fra-1")

        def key(sample: tuple[str, dict[str, str], float]) -> tuple[str, tuple[tuple[str, str], ...], float]:
            name, labels, value = sample
            return name, tuple(sorted(labels.items())), value

        assert sorted(map(key, parsed(cached))) == sorted(key(s) for s in parsed(collected) if PROBE_SERIES.match(s[0]))

    def test_without_a_location_there_is_no_location_label_at_all(self) -> None:
        store = mixed_store()
        for text in (ProbeExposition().render(store.snapshot().states.values()).decode(), collector_text(store, "")):
            assert "location=" not in text
            assert parsed(text)

    def test_a_location_with_quotes_and_backslashes_is_escaped(self) -> None:
        odd = 'rack "7" \\ hall%s'
        text = ProbeExposition(odd).render(mixed_store().snapshot().states.values()).decode()
        assert {labels["location"] for _, labels, _ in parsed(text)} == {odd}

    def test_the_label_set_of_every_family_is_fixed(self) -> None:
        """One label set per family whatever the probe's state: what `count by (probe)` rules rely on."""
        store = mixed_store()
        text = ProbeExposition("x").render(store.snapshot().states.values()).decode()
        families = {**SMTP_FAMILIES, **MX_FAMILIES, **DELIVERY_FAMILIES}
        for name, labels, _ in parsed(text):
            base = re.sub(r"_(bucket|sum|count|total|info)$", "", name)
            family = families.get(base) or families[re.sub(r"_(bucket|sum|count)$", "", base)]
            expected = {*family.labels, "location"} | ({"le"} if name.endswith("_bucket") else set())
            assert set(labels) == expected, (name, labels)
