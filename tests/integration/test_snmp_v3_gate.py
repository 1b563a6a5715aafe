"""Live agents on loopback against unauthenticated SNMPv3: no Report loop between two agents, Reports
with the reportable flag clear and rate-limited, and v2c GETs answered through a flood of bad v3 messages."""

from __future__ import annotations

import selectors
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.peers import snmp_flood
from tests.peers.agent import AgentProcess
from tests.peers.snmp_flood import AUTH, PRIV, REPORT, REPORTABLE, USM_STATS, ber, integer, scoped_pdu, v3_message
from tests.support.ports import free_udp_port

ROOT = Path(__file__).resolve().parents[2]
COMMUNITY = "gate-read-51c7"
USER = b"nms"
ENGINE_A = bytes.fromhex("80001f88046167656e742d61")  # two agents' own engine IDs, as two shards have
ENGINE_B = bytes.fromhex("80001f88046167656e742d62")
UNKNOWN_USER_NAMES = (1, 3, 6, 1, 6, 3, 15, 1, 1, 3, 0)
UNKNOWN_ENGINE_IDS = (1, 3, 6, 1, 6, 3, 15, 1, 1, 4, 0)
WRONG_DIGESTS = (1, 3, 6, 1, 6, 3, 15, 1, 1, 5, 0)
# The flood of finding 3: 2,000 bad messages a second for 10 s; GETs must be answered within 1 s.
FLOOD_RATE, FLOOD_SECONDS = 2_000, 10.0
GET_EVERY, GET_DEADLINE = 0.05, 1.0


def snmp_section(port: int, engine_id: bytes) -> dict[str, object]:
    return {
        "listen": [f"udp:127.0.0.1:{port}"],
        "engine_id": engine_id.hex(),
        "communities": [{"name": COMMUNITY}],
        "users": [
            {
                "name": USER.decode(),
                "auth": {"protocol": "sha", "password": "auth-pass-8d1e"},
                "priv": {"protocol": "aes128", "password": "priv-pass-4c2a"},
            }
        ],
    }


@dataclass
class Agent:
    process: AgentProcess
    port: int
    engine_id: bytes


def start_agent(workdir: Path, engine_id: bytes) -> Agent:
    workdir.mkdir()
    port = free_udp_port()
    process = AgentProcess(workdir, {"snmp": snmp_section(port, engine_id)})
    process.start()
    return Agent(process, port, engine_id)


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[Callable[[bytes], Agent]]:
    started: list[Agent] = []

    def make(engine_id: bytes) -> Agent:
        agent = start_agent(tmp_path / f"agent-{len(started)}", engine_id)
        started.append(agent)
        return agent

    yield make
    for agent in started:
        agent.process.stop()


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    """One agent for the tests that need no second one and leave it as it was."""
    agent = start_agent(tmp_path_factory.mktemp("single") / "agent", ENGINE_A)
    try:
        yield agent
    finally:
        agent.process.stop()


# -- a relay between two agents ----------------------------------------------------------------


@dataclass
class Relay:
    """Two loopback sockets between agents A and B: what A sends to `to_a` goes on to B from `to_b`,
    and back, so each agent takes the other for the sender (the spoofed source of the attack).
    It stops by itself after `limit` datagrams."""

    a: int
    b: int
    limit: int = 5_000
    a_to_b: list[bytes] = field(default_factory=list)
    b_to_a: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.to_a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.to_b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.to_a.bind(("127.0.0.1", 0))
        self.to_b.bind(("127.0.0.1", 0))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="relay", daemon=True)
        self._thread.start()

    def inject(self, datagram: bytes) -> None:
        """Send to A from the relay's A side: A answers to what it takes for B."""
        self.to_a.sendto(datagram, ("127.0.0.1", self.a))

    def _run(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self.to_a, selectors.EVENT_READ)
            selector.register(self.to_b, selectors.EVENT_READ)
            while not self._stop.is_set() and len(self.a_to_b) + len(self.b_to_a) < self.limit:
                for key, _ in selector.select(timeout=0.05):
                    ready = key.fileobj
                    assert isinstance(ready, socket.socket)
                    datagram = ready.recv(65535)
                    if key.fileobj is self.to_a:
                        self.a_to_b.append(datagram)
                        self.to_b.sendto(datagram, ("127.0.0.1", self.b))
                    else:
                        self.b_to_a.append(datagram)
                        self.to_a.sendto(datagram, ("127.0.0.1", self.a))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.to_a.close()
        self.to_b.close()


def relayed(a: Agent, b: Agent, datagram: bytes, seconds: float = 2.0) -> Relay:
    relay = Relay(a.port, b.port)
    try:
        relay.inject(datagram)
        time.sleep(seconds)
    finally:
        relay.close()
    return relay


def spoofed_report(engine_id: bytes) -> bytes:
    """A Report as pysnmp sends one to an unknown user: plaintext, reportable flag set (lextudio/pysnmp#207)."""
    report = scoped_pdu(engine_id, REPORT, 0, bytes((*USM_STATS, 3, 0)))
    return v3_message(engine_id=engine_id, user=b"intruder", flags=REPORTABLE, data=report, boots=1)


def unknown_user_get(engine_id: bytes) -> bytes:
    return v3_message(
        engine_id=engine_id,
        user=b"intruder",
        flags=AUTH | REPORTABLE,
        data=scoped_pdu(engine_id),
        boots=1,
        auth=bytes(12),
    )


class TestNoReportLoop:
    def test_a_spoofed_report_between_two_agents_gets_no_answer_at_all(self, agents: Callable[[bytes], Agent]) -> None:
        a, b = agents(ENGINE_A), agents(ENGINE_B)
        relay = relayed(a, b, spoofed_report(a.engine_id))
        assert (len(relay.a_to_b), len(relay.b_to_a)) == (0, 0)

    def test_a_reportable_request_gets_one_report_that_the_other_agent_leaves_unanswered(
        self, agents: Callable[[bytes], Agent]
    ) -> None:
        a, b = agents(ENGINE_A), agents(ENGINE_B)
        relay = relayed(a, b, unknown_user_get(a.engine_id))
        assert (len(relay.a_to_b), len(relay.b_to_a)) == (1, 0)
        engine_id, flags, _, _, name = snmp_flood.report_of(relay.a_to_b[0])
        assert (engine_id, name) == (ENGINE_A, UNKNOWN_USER_NAMES)
        assert flags & REPORTABLE == 0  # RFC 3412 6.4

    @pytest.mark.parametrize(
        "message",
        ["report to an unknown user", "report from another engine", "response", "trap", "encrypted report"],
    )
    def test_no_response_report_or_trap_is_answered(self, single: Agent, message: str) -> None:
        agent = single
        engine = agent.engine_id
        datagrams = {
            "report to an unknown user": spoofed_report(engine),
            "report from another engine": spoofed_report(ENGINE_B),
            "response": v3_message(
                engine_id=engine,
                user=b"intruder",
                flags=REPORTABLE,
                boots=1,
                data=scoped_pdu(engine, snmp_flood.RESPONSE),
            ),
            "trap": v3_message(
                engine_id=engine, user=USER, flags=REPORTABLE, boots=1, data=scoped_pdu(engine, snmp_flood.TRAP)
            ),
            # PDU type unknown before decryption, and the digest is wrong: refused as wrongDigests
            # like any request, but the Report is not reportable, so a compliant peer stops there
            "encrypted report": v3_message(
                engine_id=engine,
                user=USER,
                flags=AUTH | PRIV | REPORTABLE,
                boots=1,
                auth=bytes(12),
                priv=bytes(8),
                data=ber(0x04, bytes(32)),
            ),
        }
        answer = snmp_flood.ask(agent.port, datagrams[message], timeout=1.0)
        if message == "encrypted report":
            assert answer is not None
            _, flags, _, _, name = snmp_flood.report_of(answer)
            assert (name, flags & REPORTABLE) == (WRONG_DIGESTS, 0)
        else:
            assert answer is None

    def test_discovery_and_unknown_users_get_one_unreportable_report_each(self, single: Agent) -> None:
        agent = single
        answer = snmp_flood.ask(agent.port, snmp_flood.discovery())
        assert answer is not None
        engine_id, flags, boots, _, name = snmp_flood.report_of(answer)
        assert (engine_id, flags, name) == (ENGINE_A, 0, UNKNOWN_ENGINE_IDS)
        assert boots >= 1
        for _ in range(3):
            answer = snmp_flood.ask(agent.port, unknown_user_get(ENGINE_A))
            assert answer is not None
            engine_id, flags, report_boots, _, name = snmp_flood.report_of(answer)
            assert (engine_id, flags, report_boots, name) == (ENGINE_A, 0, boots, UNKNOWN_USER_NAMES)
        flags_field = bytes((0x04, 0x01, AUTH | REPORTABLE))
        unreportable = unknown_user_get(ENGINE_A).replace(flags_field, bytes((0x04, 0x01, AUTH)))
        assert snmp_flood.ask(agent.port, unreportable, timeout=1.0) is None


# -- a flood of bad SNMPv3 messages ----------------------------------------------------------------


def v2c_get(request_id: int) -> bytes:
    varbind = ber(0x30, ber(0x30, ber(0x06, snmp_flood.SYS_DESCR) + b"\x05\x00"))
    pdu = ber(0xA0, integer(request_id) + integer(0) + integer(0) + varbind)
    return ber(0x30, integer(1) + ber(0x04, COMMUNITY.encode()) + pdu)


@dataclass
class Gets:
    sent: int = 0
    in_time: int = 0
    slowest: float = 0.0


def steady_gets(port: int, seconds: float) -> Gets:
    """A v2c GET every GET_EVERY s for `seconds`, each waited for GET_DEADLINE s at most."""
    gets = Gets()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("127.0.0.1", port))
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            gets.sent += 1
            expected = integer(gets.sent)
            started = time.monotonic()
            sock.send(v2c_get(gets.sent))
            while (left := started + GET_DEADLINE - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    answer = sock.recv(65535)
                except TimeoutError:
                    break
                if expected in answer and b"\xa2" in answer:  # this GET's Response, not an earlier one's
                    gets.in_time += 1
                    gets.slowest = max(gets.slowest, time.monotonic() - started)
                    break
            time.sleep(max(0.0, started + GET_EVERY - time.monotonic()))
    return gets


def test_v2c_gets_are_answered_through_a_flood_of_bad_v3_messages(
    agents: Callable[[bytes], Agent], tmp_path: Path
) -> None:
    agent = agents(ENGINE_A)
    baseline = steady_gets(agent.port, 1.0)
    assert baseline.in_time == baseline.sent
    datagrams = tmp_path / "flood.hex"
    bad = snmp_flood.bad_messages(snmp_flood.discover_engine_id(agent.port), USER)
    datagrams.write_text("\n".join(datagram.hex() for datagram in bad))
    flood = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.peers.snmp_flood",
            str(agent.port),
            str(FLOOD_RATE),
            str(FLOOD_SECONDS),
            str(datagrams),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.5)  # the flood is on
        gets = steady_gets(agent.port, FLOOD_SECONDS - 1.5)
        out, _ = flood.communicate(timeout=FLOOD_SECONDS + 20)
    finally:
        if flood.poll() is None:
            flood.kill()
            flood.wait(10)
    assert gets.in_time >= 0.95 * gets.sent, f"{gets.in_time} of {gets.sent} GETs answered within {GET_DEADLINE} s"
    assert gets.sent > 50
    assert int(out) == FLOOD_RATE * FLOOD_SECONDS
    # The Reports the flood was due (three of its five kinds are reportable requests) kept to the rate limit.
    samples = agent.process.samples()
    reports = sum(value for (name, _), value in samples.items() if name == "smtp_monitor_snmp_reports_total")
    assert 0 < reports <= 100 * (FLOOD_SECONDS + 5)
    dropped = ("smtp_monitor_snmp_dropped_by_reason_packets_total", frozenset({("reason", "not a request")}))
    assert samples[dropped] >= FLOOD_RATE * FLOOD_SECONDS * 2 / 5 * 0.9  # the flood's Reports: never answered
