"""Notifier against a real snmptrapd: store events become v1/v2c/v3 traps and informs, once each."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from monitor.config.schema import MxCheckConfig, SmtpProbeConfig, SnmpNotify
from monitor.exporters.snmp import mib_oids as mib
from monitor.exporters.snmp.identity import generate_engine_id
from monitor.exporters.snmp.mibview import date_and_time
from monitor.exporters.snmp.notify import COLD_START, Notifier
from monitor.model.results import CertInfo, MxResult, Phase, Reason, SmtpResult, TlsInfo
from monitor.state.health import AgentHealth
from monitor.state.store import ResultsStore
from tests.peers.snmptrapd import TrapReceiver, V3User
from tests.support.ports import free_udp_port

AUTH_PASS = "auth-pass-123"
PRIV_PASS = "priv-pass-456"
COMMUNITY = "public"
INFORM_USER = "informer"  # SHA + AES, informs: snmptrapd's own engine ID, discovered
TRAP_USER = "trapper"  # SHA-256 + AES, traps: our engine ID, given to snmptrapd
SEE = 5.0  # seconds to wait for snmptrapd to log something
SETTLE = 0.5  # seconds to wait for a notification that must NOT come


# -- helpers ----------------------------------------------------------------------


def _dotted(oid: tuple[int, ...]) -> str:
    return "." + ".".join(str(arc) for arc in oid)


def _trap_oid_pattern(notification: mib.Notification | tuple[int, ...]) -> str:
    oid = mib.notification_oid(notification) if isinstance(notification, mib.Notification) else notification
    return rf"OID: {re.escape(_dotted(oid))}(\t|$)"


def _varbinds(line: str) -> dict[str, str]:
    """`OID = TYPE: value` pairs of one snmptrapd line (format `%P [%b]: %v`)."""
    body = line.split("]: ", 1)[1]
    pairs = (item.split(" = ", 1) for item in body.split("\t") if " = " in item)
    return {oid.strip(): value for oid, value in pairs}


def _smtp(column: mib.SmtpProbeColumn, name: str) -> str:
    return _dotted(mib.smtp_probe_oid(column, name))


def _mx(column: mib.MxCheckColumn, name: str) -> str:
    return _dotted(mib.mx_check_oid(column, name))


def _receiver(port: int, version: str = "2c", kind: str = "trap", **extra: Any) -> SnmpNotify:
    fields: dict[str, Any] = {"host": "127.0.0.1", "port": port, "version": version, "type": kind}
    if version == "3":
        fields.setdefault("user", INFORM_USER if kind == "inform" else TRAP_USER)
        protocol = "sha" if kind == "inform" else "sha256"
        fields["auth"] = {"protocol": protocol, "password": AUTH_PASS}
        fields["priv"] = {"protocol": "aes128", "password": PRIV_PASS}
    else:
        fields["community"] = COMMUNITY
    fields.update(extra)
    return SnmpNotify.model_validate(fields)


def _smtp_store(name: str = "mail-a", alert_after: int = 2, cert_warn_days: int = 14) -> ResultsStore:
    store = ResultsStore()
    cfg = SmtpProbeConfig(name=name, host="mail.test", port=2525, tls="none")
    store.configure([(cfg, alert_after, cert_warn_days)])
    return store


def _failing(error: str = "connect to mail.test:2525: Connection refused") -> SmtpResult:
    return SmtpResult(
        "mail.test", 2525, "none", time.time(), ok=False, phase=Phase.CONNECT, reason=Reason.REFUSED,
        error=error, address="127.0.0.1", total=0.012,
    )  # fmt: skip


def _passing(**extra: Any) -> SmtpResult:
    return SmtpResult("mail.test", 2525, "none", time.time(), ok=True, address="127.0.0.1", total=0.034, **extra)


def _fail_then_recover(store: ResultsStore, name: str = "mail-a", alert_after: int = 2) -> None:
    for _ in range(alert_after):
        store.record(name, _failing())
    store.record(name, _passing())


async def _lines_matching(receiver: TrapReceiver, pattern: str, count: int) -> list[str]:
    """Poll snmptrapd's log (yielding to the notifier) until `count` notification lines match,
    then a little longer to catch any extra; return them all."""
    regex = re.compile(pattern)
    end = time.monotonic() + SEE
    while True:
        found = [line for line in receiver.notifications() if regex.search(line)]
        if len(found) >= count or time.monotonic() >= end:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(SETTLE)
    return [line for line in receiver.notifications() if regex.search(line)]


def _run(
    receivers: Sequence[SnmpNotify],
    scenario: Callable[[Notifier, AgentHealth], Awaitable[None]],
    engine_id: bytes | None = None,
    **options: Any,
) -> AgentHealth:
    """Start a Notifier, run `scenario`, always stop it; return the health it counted into."""
    health = AgentHealth()
    # As the agent wires it: boots from its state file (pysnmp's own counter would litter /tmp).
    options.setdefault("engine_boots", 1)

    async def main() -> None:
        notifier = Notifier(receivers, health, engine_id, **options)
        await notifier.start()
        try:
            await scenario(notifier, health)
        finally:
            await notifier.stop(deadline=2.0)

    asyncio.run(main())
    return health


@pytest.fixture
def engine_id() -> bytes:
    return generate_engine_id()


@pytest.fixture
def receiver(tmp_path: Path, engine_id: bytes) -> Iterator[TrapReceiver]:
    """snmptrapd knowing community `public`, user `informer` (SHA/AES) and `trapper`
    (SHA-256/AES, also under this test's engine ID for v3 traps)."""
    users = [
        V3User(INFORM_USER, "SHA", AUTH_PASS, "AES", PRIV_PASS),
        V3User(TRAP_USER, "SHA-256", AUTH_PASS, "AES", PRIV_PASS, "0x" + engine_id.hex()),
    ]
    trapd = TrapReceiver(tmp_path / "snmptrapd", community=COMMUNITY, v3_users=users)
    try:
        trapd.start()
        yield trapd
    finally:
        trapd.close()


# -- tests --------------------------------------------------------------------------


class TestV2cTrap:
    def test_failed_then_recovered_reach_snmptrapd_with_name_target_cause_and_error_text(
        self, receiver: TrapReceiver
    ) -> None:
        lines: list[str] = []

        async def scenario(notifier: Notifier, health: AgentHealth) -> None:
            store = _smtp_store()
            notifier.subscribe(store)
            _fail_then_recover(store)
            await notifier.drain(SEE)
            lines.extend(await _lines_matching(receiver, r"^TRAP2, SNMP v2c, community public ", 2))

        health = _run([_receiver(receiver.port)], scenario)

        assert len(lines) == 2, lines
        failed, recovered = lines
        assert re.search(_trap_oid_pattern(mib.Notification.SMTP_PROBE_FAILED), failed)
        assert re.search(_trap_oid_pattern(mib.Notification.SMTP_PROBE_RECOVERED), recovered)
        got = _varbinds(failed)
        col = mib.SmtpProbeColumn
        assert got[_smtp(col.NAME, "mail-a")] == 'STRING: "mail-a"'
        assert got[_smtp(col.HOST, "mail-a")] == 'STRING: "mail.test"'
        assert got[_smtp(col.PORT, "mail-a")] == "Gauge32: 2525"
        assert got[_smtp(col.STATUS, "mail-a")] == f"INTEGER: {mib.STATUS_VALUES['failed']}"
        assert got[_smtp(col.FAILED_PHASE, "mail-a")] == f"INTEGER: {mib.PHASE_VALUES['connect']}"
        assert got[_smtp(col.FAILED_REASON, "mail-a")] == f"INTEGER: {mib.REASON_VALUES['refused']}"
        assert got[_smtp(col.LAST_ERROR, "mail-a")] == 'STRING: "connect to mail.test:2525: Connection refused"'
        assert got[_smtp(col.LATENCY, "mail-a")] == "Gauge32: 12"
        assert got[_smtp(col.ADDRESS, "mail-a")] == 'STRING: "127.0.0.1"'
        assert got[_smtp(col.CONSECUTIVE_FAILURES, "mail-a")] == "Gauge32: 2"
        back = _varbinds(recovered)
        assert back[_smtp(col.STATUS, "mail-a")] == f"INTEGER: {mib.STATUS_VALUES['ok']}"
        assert back[_smtp(col.FAILED_PHASE, "mail-a")] == f"INTEGER: {mib.PHASE_VALUES['none']}"
        assert back[_smtp(col.LAST_ERROR, "mail-a")] == '""'
        assert back[_smtp(col.LATENCY, "mail-a")] == "Gauge32: 34"
        assert health.notifications == {(f"127.0.0.1:{receiver.port}", "sent"): 2}

    def test_varbinds_follow_the_mib_objects_order_after_uptime_and_trap_oid(self, receiver: TrapReceiver) -> None:
        lines: list[str] = []

        async def scenario(notifier: Notifier, health: AgentHealth) -> None:
            store = _smtp_store(alert_after=1)
            notifier.subscribe(store)
            store.record("mail-a", _failing())
            lines.extend(await _lines_matching(receiver, r"^TRAP2, ", 1))

        _run([_receiver(receiver.port)], scenario)

        oids = list(_varbinds(lines[0]))
        expected = [_dotted((1, 3, 6, 1, 2, 1, 1, 3, 0)), _dotted((1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0))]
        row = mib.name_index("mail-a")
        expected += [
            _dotted((*mib.SMTP_PROBE_ENTRY, int(column), *row))
            for column in mib.NOTIFICATION_OBJECTS[mib.Notification.SMTP_PROBE_FAILED]
        ]
        expected.append(_dotted((1, 3, 6, 1, 6, 3, 18, 1, 3, 0)))  # snmpTrapAddress.0 (RFC 3584), after the objects
        assert oids == expected


class TestV2cInform:
    def test_informs_are_logged_and_counted_acknowledged(self, receiver: TrapReceiver) -> None:
        lines: list[str] = []

        async def scenario(notifier: Notifier, health: AgentHealth) -> None:
            store = _smtp_store()
            notifier.subscribe(store)
            _fail_then_recover(store)
            assert await notifier.drain(SEE)
            lines.extend(await _lines_matching(receiver, r"^INFORM, SNMP v2c, community public ", 2))

        health = _run([_receiver(receiver.port, kind="inform")], scenario)

        assert len(lines) == 2, lines
        assert re.search(_trap_oid_pattern(mib.Notification.SMTP_PROBE_FAILED), lines[0])
        assert re.search(_trap_oid_pattern(mib.Notification.SMTP_PROBE_RECOVERED), lines[1])
        assert health.notifications == {(f"127.0.0.1:{receiver.port}", "acknowledged"): 2}

    def test_an_acknowledged_inform_leaves_the_outbox_before_it_is_counted(self, receiver: TrapReceiver) -> None:
        # A counted ack must already be durable: a kill -9 after the count never resends it.
        counted_at_release: list[tuple[int, dict[tuple[str, str], int]]] = []

        async def scenario(notifier: Notifier, health: AgentHealth) -> None:
            notifier.on_final = lambda outbox_id: counted_at_release.append((outbox_id, dict(health.notifications)))
            store = _smtp_store()
            prepared: list[tuple[int, str, dict[str, Any]]] = []
            store.subscribe(lambda event: prepared.extend((7, *item) for item in notifier.prepare(event)))
            for _ in range(2):
                store.record("mail-a", _failing())
            notifier.enqueue_prepared(prepared)
            assert await notifier.drain(SEE)
            assert health.notifications == {(f"127.0.0.1:{receiver.port}", "acknowledged"): 1}

        _run([_receiver(receiver.port, kind="inform")], scenario)

        assert counted_at_release == [(7, {})]


class TestV3Inform:
    def test_authpriv_sha_aes_informs_are_acknowledged_by_snmptrapd(self, receiver: TrapReceiver) -> None:
        lines: list[str] = []

        async def scenario(notifier: Notifier, health: AgentHealth) -> None:
            store = _smtp_store()
            notifier.subscribe(store)
            _fail_then_recover(store)
            assert await notifier.drain(SEE)
            lines.extend(await _lines_matching(receiver, rf"^INFORM, SNMP v3, user {INFORM_USER}, ", 2))

        health = _run([_receiver(receiver.port, version="3", kind="inform")], scenario)

        assert len(lines) == 2, lines
        assert re.search(_trap_oid_pattern(mib.Notification.SMTP_PROBE_FAILED), lines[0])
        assert 'STRING: "connect to mail.test:2525: Connection refused"' in lines[0]
        assert health.notifications == {(f"127.0.0.1:{receiver.port}", "acknowledged"): 2}

    def test_wrong_password_fails_without_resending(self, receiver: TrapReceiver) -> None:
        wrong = {"protocol": "sha", "password": "wrong-pass-789"}
        bad = _receiver(receiver.port, version="3", kind="inform", timeout=1.0, retries=3, auth=wrong)

        async def scenario(notifier: Notifier, health: AgentHealth) -> None:
            await notifier.cold_start()
            assert await notifier.drain(SEE)

        health = _run([bad], scenario)

        assert health.notifications == {(f"127.0.0.1:{receiver.port}", "failed"): 1}
        assert receiver.notifications() == []


class TestV3Trap:
    def test_authpriv_trap_under_the_notifier_engine_id_is_logged(
        self, receiver: TrapReceiver, engine_id: bytes
    ) -> None:
        lines: list[str] = []

        async def scenario(notifier: Notifier, health: AgentHealth) -> None:
            assert notifier.engine_id == engine_id
            assert notifier.engine_id_hex == "0x" + engine_id.hex()
            store = _smtp_store()
            notifier.subscribe(store)
            _fail_then_recover(store)
            lines.extend(await _lines_matching(receiver, rf"^TRAP2, SNMP v3, user {TRAP_USER}, ", 2))

        health = _run([_receiver(receiver.port, version="3")], scenario, engine_id)

        assert len(lines) == 2, lines
        assert re.search(_trap_oid_pattern(mib.Notification.SMTP_PROBE_FAILED), lines[0])
        assert re.search(_trap_oid_pattern(mib.Notification.SMTP_PROBE_RECOVERED), lines[1])
        assert health.notifications == {(f"127.0.0.1:{receiver.port}", "sent"): 2}

    def test_trap_under_another_engine_id_is_refused_by_snmptrapd(self, receiver: TrapReceiver) -> None:
        # Pins why engine_id is exposed: the receiver must be told the sender's engine ID.
        async def scenario(notifier: Notifier, health: AgentHealth) -> None:
            await notifier.cold_start()
            assert await notifier.drain(SEE)
            await asyncio.sleep(SETTLE)

        _run([_receiver(receiver.port, version="3")], scenario, generate_engine_id())

        assert receiver.notifications() == []


class TestV1Trap:
    def test_v1_trap_names_our_enterprise_and_the_notification_number(self, receiver: TrapReceiver) -> None:
        lines: list[str] = []

        async def scenario(notifier: Notifier, health: AgentHealth) -> None:
            store = _smtp_store()
            notifier.subscribe(store)
            _fail_then_recover(store)
            lines.extend(await _lines_matching(receiver, r"^TRAP, SNMP v1, community public ", 2))

        _run([_receiver(receiver.port, version="1")], scenario)

        assert len(lines) == 2, lines
        enterprise = re.escape(_dotted(mib.NOTIFICATIONS))
        assert re.search(rf"enterprise {enterprise} generic 6 specific \.?1:", lines[0])
        assert re.search(rf"enterprise {enterprise} generic 6 specific \.?2:", lines[1])
        assert f'{_smtp(mib.SmtpProbeColumn.NAME, "mail-a")} = STRING: "mail-a"' in lines[0]


class TestColdStart:
    def test_cold_start_reaches_every_kind_of_receiver_once(self, receiver: TrapReceiver, engine_id: bytes) -> None:
        receivers = [
            _receiver(receiver.port),
            _receiver(receiver.port, kind="inform"),
            _receiver(receiver.port, version="1"),
            _receiver(receiver.port, version="3"),
            _receiver(receiver.port, version="3", kind="inform"),
        ]
        lines: list[str] = []

        async def scenario(notifier: Notifier, health: AgentHealth) -> None:
            await notifier.cold_start()
            assert await notifier.drain(SEE)
            v2 = await _lines_matching(receiver, _trap_oid_pattern(COLD_START), 4)
            v1 = await _lines_matching(receiver, r"^TRAP, SNMP v1, .* generic 0 specific 0", 1)
            lines.extend(v2 + v1)

        health = _run(receivers, scenario, engine_id)

        heads = sorted(line.split(" [", 1)[0] for line in lines)
        assert heads == [
            "INFORM, SNMP v2c, community public",
            f"INFORM, SNMP v3, user {INFORM_USER}, context ",
            "TRAP, SNMP v1, community public",
            "TRAP2, SNMP v2c, community public",
            f"TRAP2, SNMP v3, user {TRAP_USER}, context ",
        ]
        assert sorted(health.notifications.values()) == [1] * 5
        assert {outcome for _, outcome in health.notifications} == {"sent", "acknowledged"}


class TestMxAndCertificateNotifications:
    def test_mx_check_failed_and_recovered_carry_domain_reason_and_error(self, receiver: TrapReceiver) -> None:
        lines: list[str] = []

        async def scenario(notifier: Notifier, health: AgentHealth) -> None:
            store = ResultsStore()
            store.configure([(MxCheckConfig(name="dom-a", domain="example.test"), 1, 14)])
            notifier.subscribe(store)
            store.record("dom-a", MxResult(
                "example.test", time.time(), ok=False, phase=Phase.MX, reason=Reason.NXDOMAIN,
                error="example.test: the domain does not exist", total=0.004,
            ))  # fmt: skip
            store.record("dom-a", MxResult("example.test", time.time(), ok=True, total=0.003))
            lines.extend(await _lines_matching(receiver, r"^TRAP2, ", 2))

        _run([_receiver(receiver.port)], scenario)

        assert len(lines) == 2, lines
        assert re.search(_trap_oid_pattern(mib.Notification.MX_CHECK_FAILED), lines[0])
        assert re.search(_trap_oid_pattern(mib.Notification.MX_CHECK_RECOVERED), lines[1])
        got = _varbinds(lines[0])
        col = mib.MxCheckColumn
        assert got[_mx(col.NAME, "dom-a")] == 'STRING: "dom-a"'
        assert got[_mx(col.DOMAIN, "dom-a")] == 'STRING: "example.test"'
        assert got[_mx(col.FAILED_PHASE, "dom-a")] == f"INTEGER: {mib.PHASE_VALUES['mx']}"
        assert got[_mx(col.FAILED_REASON, "dom-a")] == f"INTEGER: {mib.REASON_VALUES['nxdomain']}"
        assert got[_mx(col.LAST_ERROR, "dom-a")] == 'STRING: "example.test: the domain does not exist"'
        assert got[_mx(col.LATENCY, "dom-a")] == "Gauge32: 4"

    def test_cert_expiring_carries_expiry_days_left_and_subject(self, receiver: TrapReceiver) -> None:
        now = datetime.now(UTC).replace(microsecond=0)
        not_after = now + timedelta(days=5, hours=1)
        cert = CertInfo(
            subject="CN=mail.test", issuer="CN=Test CA", sans=("mail.test",), not_before=now - timedelta(days=80),
            not_after=not_after, serial="01", sha256="ab" * 32,
        )  # fmt: skip
        tls = TlsInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", verified=True, cert=cert)
        lines: list[str] = []

        async def scenario(notifier: Notifier, health: AgentHealth) -> None:
            store = _smtp_store(cert_warn_days=14)
            notifier.subscribe(store)
            store.record("mail-a", _passing(tls=tls))
            store.record("mail-a", _passing(tls=tls))  # the same certificate: no second warning
            lines.extend(await _lines_matching(receiver, r"^TRAP2, ", 1))

        _run([_receiver(receiver.port)], scenario)

        assert len(lines) == 1, lines
        assert re.search(_trap_oid_pattern(mib.Notification.SMTP_CERT_EXPIRING), lines[0])
        got = _varbinds(lines[0])
        col = mib.SmtpProbeColumn
        assert got[_smtp(col.CERT_DAYS_LEFT, "mail-a")] == "INTEGER: 5"
        assert got[_smtp(col.CERT_SUBJECT, "mail-a")] == 'STRING: "CN=mail.test"'
        expiry = got[_smtp(col.CERT_EXPIRY, "mail-a")]
        assert expiry.startswith("Hex-STRING: ")
        assert bytes.fromhex(expiry.removeprefix("Hex-STRING: ")) == date_and_time(not_after)
        assert got[_smtp(col.STATUS, "mail-a")] == f"INTEGER: {mib.STATUS_VALUES['ok']}"


class TestUnreachableReceiver:
    def test_informs_to_a_silent_port_give_up_in_bounded_time_while_others_get_theirs_promptly(
        self, receiver: TrapReceiver
    ) -> None:
        silent = f"127.0.0.1:{free_udp_port()}"
        dead = _receiver(int(silent.rsplit(":", 1)[1]), kind="inform", timeout=0.2, retries=5)
        give_up = 1.5  # windows 0.2 + 0.4 + 0.8 fit; 1.6 more would not
        timings: dict[str, float] = {}

        async def scenario(notifier: Notifier, health: AgentHealth) -> None:
            store = _smtp_store(alert_after=1)
            notifier.subscribe(store)
            start = time.monotonic()
            store.record("mail-a", _failing())
            await _lines_matching(receiver, r"^TRAP2, ", 1)
            while health.notifications[(f"127.0.0.1:{receiver.port}#2", "acknowledged")] < 1:
                await asyncio.sleep(0.01)
            timings["others"] = time.monotonic() - start - SETTLE
            while health.notifications[(silent, "failed")] < 1:
                assert time.monotonic() - start < 10, "the silent receiver never gave up"
                await asyncio.sleep(0.01)
            timings["gave_up"] = time.monotonic() - start

        health = _run(
            [dead, _receiver(receiver.port), _receiver(receiver.port, kind="inform")],
            scenario,
            inform_give_up=give_up,
        )

        # The others are served while the dead one still waits (its first window alone is 0.2 s,
        # all three 1.4 s); it gives up after its windows, never later than the bound plus slack.
        assert timings["others"] < 1.0, timings
        assert timings["others"] < timings["gave_up"] - 0.4, timings
        assert 1.2 <= timings["gave_up"] <= give_up + 1.0, timings  # pysnmp ticks every 0.1 s
        assert health.notifications[(silent, "retried")] == 2
        assert health.notifications[(silent, "failed")] == 1
        assert health.notifications[(silent, "acknowledged")] == 0

    def test_stop_counts_what_a_dead_receiver_still_holds_as_dropped(self) -> None:
        silent = f"127.0.0.1:{free_udp_port()}"
        dead = _receiver(int(silent.rsplit(":", 1)[1]), kind="inform", timeout=5.0, retries=0)
        stopped_in: list[float] = []

        async def scenario(notifier: Notifier, health: AgentHealth) -> None:
            store = _smtp_store(alert_after=1)
            notifier.subscribe(store)
            store.record("mail-a", _failing())
            store.record("mail-a", _passing())
            await asyncio.sleep(0.1)
            start = time.monotonic()
            await notifier.stop(deadline=0.3)
            stopped_in.append(time.monotonic() - start)

        health = _run([dead], scenario)

        assert stopped_in[0] < 2.0  # the 0.3 s deadline, not the 5 s inform window
        assert health.notifications == {(silent, "dropped"): 2}


class TestExactlyOnce:
    def test_each_event_reaches_each_receiver_exactly_once(self, receiver: TrapReceiver, engine_id: bytes) -> None:
        receivers = [
            _receiver(receiver.port),
            _receiver(receiver.port, kind="inform"),
            _receiver(receiver.port, version="3"),
            _receiver(receiver.port, version="3", kind="inform"),
        ]
        heads = {
            "TRAP2, SNMP v2c, community public",
            "INFORM, SNMP v2c, community public",
            f"TRAP2, SNMP v3, user {TRAP_USER}, context ",
            f"INFORM, SNMP v3, user {INFORM_USER}, context ",
        }
        cycles = 3

        async def scenario(notifier: Notifier, health: AgentHealth) -> None:
            store = _smtp_store(alert_after=2)
            notifier.subscribe(store)
            for _ in range(cycles):
                _fail_then_recover(store)  # 2 failures (1 event), 1 success (1 event)
            store.record("mail-a", _failing())  # 1 failure short of alerting: no event
            assert await notifier.drain(SEE)
            await _lines_matching(receiver, r".", 4 * 2 * cycles)

        health = _run(receivers, scenario, engine_id)

        lines = receiver.notifications()
        for head in heads:
            mine = [line for line in lines if line.startswith(head + " [")]
            failed = [line for line in mine if re.search(_trap_oid_pattern(mib.Notification.SMTP_PROBE_FAILED), line)]
            assert len(mine) == 2 * cycles, (head, mine)
            assert len(failed) == cycles, head
        assert len(lines) == 4 * 2 * cycles
        assert sum(health.notifications.values()) == 4 * 2 * cycles  # no resends, no drops


class TestBoundedQueue:
    def test_full_queue_drops_the_oldest_and_counts_it(self, receiver: TrapReceiver) -> None:
        health = AgentHealth()
        label = f"127.0.0.1:{receiver.port}"

        async def main() -> None:
            notifier = Notifier([_receiver(receiver.port)], health, queue_size=2)
            store = _smtp_store(alert_after=1)
            notifier.subscribe(store)
            # Five events queue up before the sender runs: failed, recovered, failed, recovered, failed.
            for error in ("first", "second", "third"):
                store.record("mail-a", _failing(error))
                if error != "third":
                    store.record("mail-a", _passing())
            assert health.notifications == {(label, "dropped"): 3}
            await notifier.start()
            try:
                await notifier.drain(SEE)
                await _lines_matching(receiver, r"^TRAP2, ", 2)
            finally:
                await notifier.stop()

        asyncio.run(main())

        lines = receiver.notifications()
        assert len(lines) == 2, lines
        assert re.search(_trap_oid_pattern(mib.Notification.SMTP_PROBE_RECOVERED), lines[0])
        assert 'STRING: "third"' in lines[1]
        assert health.notifications == {(label, "dropped"): 3, (label, "sent"): 2}


class TestLogging:
    def test_one_line_per_outcome_naming_receiver_by_address_without_credentials(
        self, receiver: TrapReceiver, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, logger="smtp_monitor.snmp.notify")

        async def scenario(notifier: Notifier, health: AgentHealth) -> None:
            store = _smtp_store(alert_after=1)
            notifier.subscribe(store)
            store.record("mail-a", _failing())
            assert await notifier.drain(SEE)

        receivers = [
            _receiver(receiver.port, community="s3cret-community"),
            _receiver(receiver.port, version="3", kind="inform"),
        ]
        _run(receivers, scenario)

        mine = [r.getMessage() for r in caplog.records if r.name == "smtp_monitor.snmp.notify"]
        assert len(mine) == 2, mine
        assert any(f"to 127.0.0.1:{receiver.port} (v2c trap): sent" in m for m in mine), mine
        assert any(f"to 127.0.0.1:{receiver.port}#2 (v3 inform): acknowledged" in m for m in mine), mine
        assert all("smtpProbeFailed for mail-a" in m for m in mine), mine
        everything = caplog.text
        for secret in ("s3cret-community", AUTH_PASS, PRIV_PASS):
            assert secret not in everything
