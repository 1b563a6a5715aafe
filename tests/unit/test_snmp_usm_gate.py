"""UsmFastPath.screen, the SNMPv3 gate in front of pysnmp: what is answered, reported, dropped or left to pysnmp.

Messages are built with pysnmp's own encoder and USM services (tests.unit.test_snmp_usm_fastpath)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pysnmp.proto import rfc1905

from monitor.config.schema import SnmpConfig
from monitor.exporters.snmp.agent import READ_SUBTREES, SnmpAgent
from monitor.exporters.snmp.engine import new_snmp_engine
from monitor.exporters.snmp.fast.fastpath import GET, GETBULK, FastPath
from monitor.exporters.snmp.fast.usm_fastpath import REPORT_RATE, Refusal, Screened, UsmFastPath
from monitor.exporters.snmp.mibview import SYS_DESCR, MibView
from monitor.exporters.snmp.ratelimit import TokenBucket
from monitor.state.health import AgentHealth
from monitor.state.store import ResultsStore
from tests.peers.snmp_agent_thread import AgentThread
from tests.support.ports import free_udp_port
from tests.unit.test_snmp_fastpath import ber, filled_store, integer
from tests.unit.test_snmp_usm_fastpath import (
    AUTH,
    AUTH_ONLY,
    DECRYPTION_ERRORS,
    ENGINE_ID,
    EVERY_PRIV,
    INFORM,
    NMS,
    NOT_IN_TIME_WINDOWS,
    PRIV,
    REPORT,
    REPORTABLE,
    RESPONSE,
    SET,
    TRAP,
    UNKNOWN_ENGINE_IDS,
    UNKNOWN_USER_NAMES,
    UNSUPPORTED_SEC_LEVELS,
    WRONG_DIGESTS,
    Manager,
    Opened,
    agent_config,
    ask,
    open_message,
    raw_v3,
    secrets_of,
    v3_request,
)

NOW = 1000  # the engine's clock, seconds since it started
DES = EVERY_PRIV[0]
FORGED = Manager.localized("nms", "sha", "aes128", auth_pass="not-the-password")
NOT_REQUESTS = [RESPONSE, REPORT, TRAP]


@pytest.fixture(scope="module")
def store() -> ResultsStore:
    return filled_store()


@pytest.fixture
def usm(store: ResultsStore) -> Iterator[UsmFastPath]:
    """A fresh gate (counters, rate limit) for every test, on a clock that stands still."""
    gate = UsmFastPath(
        FastPath(MibView(store, AgentHealth()), subtrees=READ_SUBTREES), engine_id=ENGINE_ID, boots=1, clock=lambda: NOW
    )
    gate.set_users(secrets_of(agent_config(1, [NMS, AUTH_ONLY, DES])))
    yield gate
    assert gate.errors == 0


def request(manager: Manager, pdu: int = GET, **kwargs: Any) -> bytes:
    kwargs.setdefault("engine_time", NOW)
    return v3_request(manager, pdu, [SYS_DESCR], **kwargs)


def reported(screened: Screened, manager: Manager = NMS) -> Opened:
    assert screened.datagram is not None, screened
    report = open_message(manager, screened.datagram)
    assert report.pdu == rfc1905.ReportPDU.tagSet
    assert report.flags & REPORTABLE == 0  # RFC 3412 6.4: no engine may answer it
    return report


# Every way an outsider's or a stale message fails, for a PDU of type `pdu`.
def failing(pdu: int) -> dict[str, bytes]:
    return {
        "discovery": v3_request(NMS, pdu, [], engine_time=0, boots=0, engine_id=b"", user="", flags=REPORTABLE),
        "another engine": request(AUTH_ONLY, pdu, engine_id=b"\x80\x00\x1f\x88\x04other"),
        "unknown user": request(AUTH_ONLY, pdu, user="intruder"),
        "noAuthNoPriv": request(AUTH_ONLY, pdu, flags=REPORTABLE),
        "wrong digest": request(Manager.localized("auth-only", "sha256", None, auth_pass="wrong-pass-0"), pdu),
        "out of the window": request(AUTH_ONLY, pdu, engine_time=NOW + 151),
        "other boots": request(AUTH_ONLY, pdu, boots=2),
        "authentic": request(AUTH_ONLY, pdu),
        "authentic, encrypted": request(NMS, pdu),
        "authentic, encrypted, out of the window": request(NMS, pdu, engine_time=NOW + 10_000),
        "authentic, DES": request(DES, pdu),
    }


class TestNoReportLoop:
    @pytest.mark.parametrize("pdu", NOT_REQUESTS, ids=["response", "report", "trap"])
    @pytest.mark.parametrize("case", list(failing(GET)))
    def test_a_response_report_or_trap_is_never_answered(self, usm: UsmFastPath, pdu: int, case: str) -> None:
        screened = usm.screen(failing(pdu)[case])
        assert screened == Screened(Refusal.NOT_A_REQUEST), case

    def test_an_inform_is_not_for_this_agent(self, usm: UsmFastPath) -> None:
        assert usm.screen(request(NMS, INFORM)) == Screened(Refusal.NOT_A_REQUEST)
        assert usm.screen(request(AUTH_ONLY, INFORM)) == Screened(Refusal.NOT_A_REQUEST)

    def test_an_encrypted_report_with_a_wrong_digest_gets_a_report_that_is_not_reportable(
        self, usm: UsmFastPath
    ) -> None:
        """Before authentication the PDU type of an encrypted message is unknown: refused like a request."""
        screened = usm.screen(request(FORGED, REPORT))
        assert screened.refusal is Refusal.WRONG_DIGEST
        assert reported(screened).report == WRONG_DIGESTS

    def test_the_agents_own_reports_are_dropped_when_they_come_back(self, usm: UsmFastPath) -> None:
        """A spoofed source makes the agent its own peer: each of its Reports is a Report to it."""
        for datagram in failing(GET).values():
            screened = usm.screen(datagram)
            if screened.datagram is not None:
                assert usm.screen(screened.datagram) == Screened(Refusal.NOT_A_REQUEST)


class TestReports:
    @pytest.mark.parametrize(
        ("case", "refusal", "name"),
        [
            ("discovery", Refusal.UNKNOWN_ENGINE_ID, UNKNOWN_ENGINE_IDS),
            ("another engine", Refusal.UNKNOWN_ENGINE_ID, UNKNOWN_ENGINE_IDS),
            ("unknown user", Refusal.UNKNOWN_USER_NAME, UNKNOWN_USER_NAMES),
            ("noAuthNoPriv", Refusal.UNSUPPORTED_SEC_LEVEL, UNSUPPORTED_SEC_LEVELS),
            ("wrong digest", Refusal.WRONG_DIGEST, WRONG_DIGESTS),
        ],
    )
    def test_unauthenticated_reports_count_up_and_are_not_reportable(
        self, usm: UsmFastPath, case: str, refusal: Refusal, name: tuple[int, ...]
    ) -> None:
        values = []
        for _ in range(3):
            screened = usm.screen(failing(GET)[case])
            assert screened.refusal is refusal
            report = reported(screened)
            assert report.flags == 0  # noAuthNoPriv
            assert (report.engine_id, report.boots, report.engine_time) == (ENGINE_ID, 1, NOW)
            assert [oid for oid, _, _ in report.varbinds] == [name]
            values.append(report.varbinds[0][2])
        assert values == [b"\x41\x01\x01", b"\x41\x01\x02", b"\x41\x01\x03"]  # Counter32 1, 2, 3
        assert usm.stats.value(refusal) == 3

    def test_discovery_echoes_the_message_and_request_ids(self, usm: UsmFastPath) -> None:
        probe = v3_request(
            NMS, GET, [], engine_time=0, boots=0, engine_id=b"", user="", flags=REPORTABLE, msg_id=4321, request_id=8765
        )
        report = reported(usm.screen(probe))
        assert (report.msg_id, report.request_id, report.user) == (4321, 8765, b"")

    @pytest.mark.parametrize("case", ["out of the window", "other boots", "authentic, encrypted, out of the window"])
    def test_not_in_time_window_is_reported_authenticated_with_the_engines_clock(
        self, usm: UsmFastPath, case: str
    ) -> None:
        screened = usm.screen(failing(GET)[case])
        assert screened.refusal is Refusal.NOT_IN_TIME_WINDOW
        manager = NMS if "encrypted" in case else AUTH_ONLY
        report = reported(screened, manager)  # open_message checks the digest with the user's key
        assert report.flags == AUTH  # RFC 3414 3.2.7a: authNoPriv
        assert (report.boots, report.engine_time, report.user) == (1, NOW, manager.name.encode())
        assert report.report == NOT_IN_TIME_WINDOWS

    def test_a_privacy_users_time_synchronization_probe_gets_not_in_time_windows(self, usm: UsmFastPath) -> None:
        """authNoPriv with boots and time 0, as pysnmp's manager sends it before an authPriv request."""
        probe = request(NMS, flags=AUTH | REPORTABLE, boots=0, engine_time=0)
        report = reported(usm.screen(probe))
        assert (report.report, report.flags, report.boots, report.engine_time) == (NOT_IN_TIME_WINDOWS, AUTH, 1, NOW)

    def test_a_level_other_than_the_users_is_unsupported(self, usm: UsmFastPath) -> None:
        assert reported(usm.screen(request(NMS, flags=AUTH | REPORTABLE))).report == UNSUPPORTED_SEC_LEVELS
        auth_priv = ber(0x04, bytes((AUTH | PRIV | REPORTABLE,)))
        encrypted = raw_v3(user=b"auth-only", flags=auth_priv, engine_time=integer(NOW))
        assert reported(usm.screen(encrypted)).report == UNSUPPORTED_SEC_LEVELS

    @pytest.mark.parametrize("manager", [NMS, DES], ids=["aes", "des"])
    def test_an_authentic_message_that_does_not_decrypt_gets_decryption_errors(
        self, usm: UsmFastPath, manager: Manager
    ) -> None:
        screened = usm.screen(request(manager, ciphertext=bytes(24)))
        assert screened.refusal is Refusal.DECRYPTION_ERROR
        assert reported(screened, manager).report == DECRYPTION_ERRORS

    @pytest.mark.parametrize("case", ["unknown user", "wrong digest", "out of the window", "noAuthNoPriv"])
    def test_without_the_reportable_flag_there_is_no_report_but_a_count(self, usm: UsmFastPath, case: str) -> None:
        datagram = failing(GET)[case]
        quiet = {
            "unknown user": request(AUTH_ONLY, user="intruder", flags=AUTH),
            "wrong digest": request(FORGED, flags=AUTH | PRIV),
            "out of the window": request(AUTH_ONLY, engine_time=NOW + 151, flags=AUTH),
            "noAuthNoPriv": request(AUTH_ONLY, flags=0),
        }[case]
        refusal = usm.screen(datagram).refusal
        assert refusal is not None
        screened = usm.screen(quiet)
        assert screened == Screened(refusal)
        assert usm.stats.value(refusal) == 2

    def test_reports_are_rate_limited(self, usm: UsmFastPath) -> None:
        now = [0.0]
        usm.report_limit = TokenBucket(REPORT_RATE, REPORT_RATE, clock=lambda: now[0])
        datagram = failing(GET)["unknown user"]
        sent = [usm.screen(datagram).datagram is not None for _ in range(250)]
        assert sent == [True] * 100 + [False] * 150
        assert (usm.reports_limited, usm.stats.value(Refusal.UNKNOWN_USER_NAME)) == (150, 250)
        assert usm.screen(datagram).report_limited
        now[0] = 0.5  # half a second refills half the bucket
        assert sum(usm.screen(datagram).datagram is not None for _ in range(100)) == 50


class TestWhatPysnmpGets:
    def test_authentic_requests_the_fast_path_does_not_serve_go_to_pysnmp(self, usm: UsmFastPath) -> None:
        assert usm.screen(request(NMS, SET)) == Screened(Refusal.UNSERVED)
        assert usm.screen(request(AUTH_ONLY, SET)) == Screened(Refusal.UNSERVED)
        assert usm.screen(request(NMS, context_name=b"other")) == Screened(Refusal.UNSERVED)

    def test_authentic_reads_are_answered_here(self, usm: UsmFastPath) -> None:
        for manager in (NMS, AUTH_ONLY, DES):
            screened = usm.screen(request(manager, GETBULK, second=3))
            assert (screened.refusal, screened.pdu) == (None, GETBULK)
            assert screened.datagram is not None
            assert open_message(manager, screened.datagram).pdu == rfc1905.ResponsePDU.tagSet

    def test_without_the_v1_v2c_fast_path_authentic_reads_go_to_pysnmp(self, usm: UsmFastPath) -> None:
        bare = UsmFastPath(None, engine_id=ENGINE_ID, boots=1, clock=lambda: NOW)
        bare.set_users(secrets_of(agent_config(1, [NMS])))
        assert bare.screen(request(NMS)) == Screened(Refusal.UNSERVED)
        assert bare.screen(request(NMS, REPORT)) == Screened(Refusal.NOT_A_REQUEST)

    @pytest.mark.parametrize(
        "datagram",
        [
            raw_v3(flags=ber(0x04, bytes((PRIV | REPORTABLE,)))),  # privacy without authentication
            raw_v3(flags=ber(0x04, bytes((AUTH | PRIV | 0x08 | REPORTABLE,)))),  # a flag RFC 3412 does not define
            raw_v3(flags=ber(0x04, bytes((AUTH | REPORTABLE,)))),  # authNoPriv, and encrypted octets
            b"\x30\x03\x02\x01\x03",
        ],
        ids=["priv-without-auth", "unknown-flag", "data-not-as-flags", "truncated"],
    )
    def test_malformed_messages_are_dropped(self, usm: UsmFastPath, datagram: bytes) -> None:
        assert usm.screen(datagram) == Screened(Refusal.MALFORMED)


def test_counters_are_pysnmps_own_mib_instances(store: ResultsStore) -> None:
    """Reports from the gate and the few pysnmp still sends (authentic requests) count in one sequence."""
    engine = new_snmp_engine()
    gate = UsmFastPath.for_engine(FastPath(MibView(store, AgentHealth()), subtrees=READ_SUBTREES), engine)
    gate.set_users(secrets_of(agent_config(1, [NMS])))
    (instance,) = engine.get_mib_builder().import_symbols("__SNMP-USER-BASED-SM-MIB", "usmStatsUnknownUserNames")
    instance.syntax = instance.syntax.clone(41)
    probe = v3_request(NMS, GET, [SYS_DESCR], engine_time=0, engine_id=gate.engine_id, user="intruder")
    report = reported(gate.screen(probe))
    assert report.varbinds[0][2] == b"\x41\x01\x2a"  # 42
    assert int(instance.syntax) == 42


def test_a_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    now = [0.0]
    bucket = TokenBucket(10.0, 5.0, clock=lambda: now[0])
    assert [bucket.take() for _ in range(6)] == [True] * 5 + [False]
    now[0] = 100.0
    assert sum(bucket.take() for _ in range(20)) == 5
    budget = TokenBucket(0.5, 0.5, clock=lambda: now[0])
    assert budget.allows()
    budget.charge(2.0)  # one long task may overdraw it
    assert not budget.allows()
    now[0] += 3.0  # 1.5 s refilled: 0 again, still nothing to spend
    assert not budget.allows()
    now[0] += 1.0
    assert budget.allows()


def test_pysnmp_gets_no_more_than_its_time_budget(tmp_path: Path, store: ResultsStore) -> None:
    """What still reaches pysnmp (~1 ms a message: a SET, replayed or not) waits for its budget; reads
    on the fast paths go on. A live agent on loopback, its budget spent by hand."""
    port = free_udp_port()
    config = SnmpConfig.model_validate({"listen": [f"udp:127.0.0.1:{port}"], "communities": [{"name": "gate-c0de"}]})
    health = AgentHealth()
    agent = SnmpAgent(config, tmp_path, store, health)

    def v2c(tag: int, name: bytes, value: bytes) -> bytes:
        varbinds = ber(0x30, ber(0x30, ber(0x06, name) + value))
        pdu = ber(tag, integer(7) + integer(0) + integer(0) + varbinds)
        return ber(0x30, integer(1) + ber(0x04, b"gate-c0de") + pdu)

    set_request = v2c(0xA3, b"\x2b\x06\x01\x02\x01\x01\x05\x00", b"\x04\x01x")  # sysName.0 = "x"
    get_request = v2c(0xA0, b"\x2b\x06\x01\x02\x01\x01\x01\x00", b"\x05\x00")  # sysDescr.0
    with AgentThread(agent):
        assert ask(port, set_request) is not None  # refused by pysnmp with an error status, but answered
        dispatcher = agent._dispatcher
        assert dispatcher is not None
        budget = dispatcher.pysnmp_budget
        assert budget is not None  # the fast path is on, and the budget with it
        budget.charge(10.0)  # ten seconds of pysnmp work just done: 20 s to earn back
        assert ask(port, set_request, timeout=0.5) is None
        assert ask(port, get_request) is not None  # the fast path's
        assert health.snmp_dropped_reasons["pysnmp busy"] == 1
