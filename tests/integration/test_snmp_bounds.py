"""Bounds on what one SNMP request may cost or return, against a live agent on loopback (both paths).

RFC 3416 4.2.1: a response that would not fit is answered tooBig, never dropped in silence; 4.2.3: a
GETBULK response ends early. The agent caps bindings per request (MAX_REQUEST_BINDINGS) and GETBULK
response octets (MAX_BULK_OCTETS)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pyasn1.codec.ber import decoder as ber_decoder
from pyasn1.codec.ber import encoder as ber_encoder
from pysnmp.hlapi.v3arch import asyncio as hlapi
from pysnmp.proto import api

from monitor.config.schema import SmtpProbeConfig, SnmpConfig
from monitor.exporters.snmp import mib_oids
from monitor.exporters.snmp.agent import SnmpAgent
from monitor.exporters.snmp.fast.fastpath import MAX_BULK_OCTETS, MAX_REQUEST_BINDINGS, MAX_RESPONSE_OCTETS
from monitor.exporters.snmp.mib_oids import Oid, SmtpProbeColumn
from monitor.model.results import Phase, Reason, SmtpResult
from monitor.state.health import AgentHealth
from monitor.state.store import ResultsStore
from tests.peers.net_snmp import tool_env
from tests.peers.snmp_agent_thread import AgentThread
from tests.support.ports import free_udp_port

COMMUNITY = "bounds-c0mm"
V2C = 1
GET, GETNEXT, GETBULK = 0, 1, 5
PDU_CLASSES = {GET: "GetRequestPDU", GETNEXT: "GetNextRequestPDU", GETBULK: "GetBulkRequestPDU"}
TOO_BIG = 1
SYS_DESCR: Oid = (1, 3, 6, 1, 2, 1, 1, 1, 0)
LAST_ERROR_COLUMN: Oid = (*mib_oids.SMTP_PROBE_ENTRY, int(SmtpProbeColumn.LAST_ERROR))
PROBES = 40
AUTH_PASS, PRIV_PASS = "auth-pass-b0d5", "priv-pass-b0d5"
USER = {
    "name": "nms",
    "auth": {"protocol": "sha", "password": AUTH_PASS},
    "priv": {"protocol": "aes128", "password": PRIV_PASS},
}


def long_rows_store() -> ResultsStore:
    """Probes with the longest names (100 characters) and error texts (255 octets): ~380-octet bindings."""
    store = ResultsStore()
    names = [f"{n:03d}" + "z" * 97 for n in range(PROBES)]
    store.configure([(SmtpProbeConfig(name=name, host="mail.example.org"), 1, 14) for name in names])
    for name in names:
        store.record(
            name,
            SmtpResult(
                "mail.example.org",
                25,
                "starttls",
                0.0,
                ok=False,
                phase=Phase.CONNECT,
                reason=Reason.REFUSED,
                error="e" * 400,
                total=0.01,
            ),
        )
    return store


def request(pdu: int, oids: Sequence[Oid], *, request_id: int = 7, first: int = 0, second: int = 0) -> bytes:
    """A v2c request as pysnmp's client API encodes it (first/second: non-repeaters/max-repetitions for GETBULK)."""
    mod = api.PROTOCOL_MODULES[V2C]
    message_pdu = getattr(mod, PDU_CLASSES[pdu])()
    if pdu == GETBULK:
        mod.apiBulkPDU.set_defaults(message_pdu)
        mod.apiBulkPDU.set_non_repeaters(message_pdu, first)
        mod.apiBulkPDU.set_max_repetitions(message_pdu, second)
    else:
        mod.apiPDU.set_defaults(message_pdu)
    mod.apiPDU.set_request_id(message_pdu, request_id)
    mod.apiPDU.set_varbinds(message_pdu, [(oid, mod.Null("")) for oid in oids])
    message = mod.Message()
    mod.apiMessage.set_defaults(message)
    mod.apiMessage.set_community(message, COMMUNITY)
    mod.apiMessage.set_pdu(message, message_pdu)
    return bytes(ber_encoder.encode(message))


@dataclass
class Answer:
    size: int
    error_status: int
    error_index: int
    varbinds: list[tuple[Oid, Any]]


def ask(port: int, datagram: bytes, timeout: float = 3.0) -> Answer | None:
    """The agent's answer to one datagram, or None if none came within `timeout` seconds."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(datagram, ("127.0.0.1", port))
        try:
            data = sock.recv(70_000)
        except TimeoutError:
            return None
    mod = api.PROTOCOL_MODULES[V2C]
    message, rest = ber_decoder.decode(data, asn1Spec=mod.Message())
    assert not rest
    pdu = mod.apiMessage.get_pdu(message)
    varbinds = [(tuple(name), value) for name, value in mod.apiPDU.get_varbinds(pdu)]
    return Answer(len(data), int(mod.apiPDU.get_error_status(pdu)), int(mod.apiPDU.get_error_index(pdu)), varbinds)


@dataclass
class Served:
    port: int
    path: str


@pytest.fixture(scope="module", params=["fast path", "pysnmp"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    port = free_udp_port()
    config = SnmpConfig.model_validate(
        {"listen": [f"udp:127.0.0.1:{port}"], "communities": [{"name": COMMUNITY}], "users": [USER]}
    )
    agent = SnmpAgent(config, tmp_path_factory.mktemp("snmp-state"), long_rows_store(), AgentHealth())
    if request.param == "pysnmp":
        agent.fast_path = None  # every request through pysnmp's responders
    with AgentThread(agent):
        yield Served(port, request.param)


class TestTooBig:
    def test_a_response_beyond_a_datagram_is_answered_too_big_not_dropped(self, served: Served) -> None:
        # 180 GETNEXTs of the error column, ~20 octets each, would answer ~68,000 octets (> 65,507).
        answer = ask(served.port, request(GETNEXT, [LAST_ERROR_COLUMN] * 180))
        assert answer is not None, "no answer: the response was dropped in silence"
        assert (answer.error_status, answer.error_index, answer.varbinds) == (TOO_BIG, 0, [])

    def test_more_bindings_than_the_cap_are_answered_too_big(self, served: Served) -> None:
        within = ask(served.port, request(GET, [SYS_DESCR] * MAX_REQUEST_BINDINGS))
        assert within is not None
        assert within.error_status == 0
        assert len(within.varbinds) == MAX_REQUEST_BINDINGS
        beyond = ask(served.port, request(GET, [SYS_DESCR] * (MAX_REQUEST_BINDINGS + 1)))
        assert beyond is not None
        assert (beyond.error_status, beyond.error_index, beyond.varbinds) == (TOO_BIG, 0, [])


def v3_getnext_with_max_size(port: int, max_size: int, oids: Sequence[Oid]) -> tuple[Any, Any, list[Any]]:
    """(errorIndication, errorStatus, varBinds) of an authPriv GETNEXT by pysnmp's client, msgMaxSize `max_size`."""

    async def ask() -> tuple[Any, Any, list[Any]]:
        engine = hlapi.SnmpEngine()
        (size,) = engine.get_mib_builder().import_symbols("__SNMP-FRAMEWORK-MIB", "snmpEngineMaxMessageSize")
        size.syntax = size.syntax.clone(max_size)  # what its requests carry as msgMaxSize
        user = hlapi.UsmUserData(
            "nms",
            AUTH_PASS,
            PRIV_PASS,
            authProtocol=hlapi.usmHMACSHAAuthProtocol,
            privProtocol=hlapi.usmAesCfb128Protocol,
        )
        target = await hlapi.UdpTransportTarget.create(("127.0.0.1", port), timeout=2, retries=1)
        objects = [hlapi.ObjectType(hlapi.ObjectIdentity(oid)) for oid in oids]
        indication, status, _, varbinds = await hlapi.next_cmd(engine, user, target, hlapi.ContextData(), *objects)
        engine.close_dispatcher()
        return indication, status, list(varbinds)

    return asyncio.run(ask())


class TestV3MaxSize:
    def test_a_response_beyond_the_managers_msg_max_size_is_answered_too_big(self, served: Served) -> None:
        # Two ~380-octet bindings do not fit in 484 octets (RFC 3412's smallest msgMaxSize); one does.
        indication, status, varbinds = v3_getnext_with_max_size(served.port, 484, [LAST_ERROR_COLUMN] * 2)
        assert indication is None, f"no answer: {indication}"
        assert (str(status), varbinds) == ("tooBig", [])
        indication, status, varbinds = v3_getnext_with_max_size(served.port, 1400, [LAST_ERROR_COLUMN] * 2)
        assert (indication, int(status), len(varbinds)) == (None, 0, 2)


class TestBulkAmplification:
    def test_getbulk_with_huge_max_repetitions_gets_a_bounded_response(self, served: Served) -> None:
        datagram = request(GETBULK, [LAST_ERROR_COLUMN], second=2**31 - 1)
        answer = ask(served.port, datagram)
        assert answer is not None
        assert answer.error_status == 0
        assert 1 <= len(answer.varbinds) < 64  # fewer repetitions than pysnmp's cap of 64
        assert all(name[: len(LAST_ERROR_COLUMN)] == LAST_ERROR_COLUMN for name, _ in answer.varbinds)
        assert answer.size <= MAX_BULK_OCTETS + 64
        assert answer.size / len(datagram) <= 100, f"{len(datagram)} -> {answer.size} octets"

    def test_a_walk_in_bounded_responses_still_reads_every_row(self, served: Served) -> None:
        oid, seen = LAST_ERROR_COLUMN, 0
        for number in range(PROBES + 2):
            answer = ask(served.port, request(GETBULK, [oid], request_id=number, second=50))
            assert answer is not None
            assert answer.size <= MAX_BULK_OCTETS + 64
            in_column = [name for name, _ in answer.varbinds if name[: len(LAST_ERROR_COLUMN)] == LAST_ERROR_COLUMN]
            seen += len(in_column)
            if len(in_column) < len(answer.varbinds):
                break
            oid = in_column[-1]
        assert seen == PROBES

    def test_net_snmp_bulkget_gets_fewer_repetitions_not_an_error(self, served: Served, tmp_path: Path) -> None:
        result = subprocess.run(
            ["snmpbulkget", "-v2c", "-c", COMMUNITY, "-On", "-t", "3", "-r", "1", "-Cr10000",
             f"127.0.0.1:{served.port}", ".".join(map(str, LAST_ERROR_COLUMN))],
            capture_output=True, text=True, env=tool_env(tmp_path), timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        lines = [line for line in result.stdout.splitlines() if " = " in line]
        assert 1 <= len(lines) <= MAX_BULK_OCTETS // 300
        assert MAX_RESPONSE_OCTETS > MAX_BULK_OCTETS
