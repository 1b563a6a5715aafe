"""The agent's notifier sockets, live: bound where they send (never 0.0.0.0), answering nothing at all,
while informs to a real snmptrapd are still acknowledged."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

from tests.peers.agent import AgentProcess
from tests.peers.postfix import PostfixServer
from tests.peers.snmptrapd import TrapReceiver, V3User

AUTH_PASS = "auth-pass-5e1f"
PRIV_PASS = "priv-pass-77aa"
USER = "informer"
QUIET = 1.0  # seconds to wait for an answer that must not come


def ber(tag: int, body: bytes) -> bytes:
    size = len(body)
    if size < 0x80:
        return bytes([tag, size]) + body
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(octets)]) + octets + body


def integer(value: int) -> bytes:
    return ber(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))


def v3_message(msg_id: int, flags: int, pdu_tag: int, engine_id: bytes = b"") -> bytes:
    """An SNMPv3 noAuthNoPriv message (USM) carrying an empty PDU of `pdu_tag`: with flags 0x04 and
    no engine ID, the engine ID discovery every manager starts with (RFC 3414 4)."""
    header = ber(0x30, integer(msg_id) + integer(65507) + ber(0x04, bytes([flags])) + integer(3))
    usm = ber(0x30, ber(0x04, engine_id) + integer(0) + integer(0) + ber(0x04, b"") + ber(0x04, b"") + ber(0x04, b""))
    pdu = ber(pdu_tag, integer(msg_id) + integer(0) + integer(0) + ber(0x30, b""))
    scoped = ber(0x30, ber(0x04, engine_id) + ber(0x04, b"") + pdu)
    return ber(0x30, integer(3) + header + ber(0x04, usm) + scoped)


def v2c_message(pdu_tag: int, request_id: int, community: bytes = b"public") -> bytes:
    varbind = ber(0x30, ber(0x06, bytes([0x2B, 6, 1, 2, 1, 1, 1, 0])) + b"\x05\x00")
    pdu = ber(pdu_tag, integer(request_id) + integer(0) + integer(0) + ber(0x30, varbind))
    return ber(0x30, integer(1) + ber(0x04, community) + pdu)


def udp_sockets_of(pid: int) -> list[tuple[str, int]]:
    """(local address, port) of every UDP socket process `pid` holds, from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table, family in (("udp", socket.AF_INET), ("udp6", socket.AF_INET6)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] not in inodes:
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)
            # /proc writes each 32-bit word in host (little-endian) order
            packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.append((socket.inet_ntop(family, packed), int(port, 16)))
    return found


def answered(address: tuple[str, int], datagram: bytes) -> bytes | None:
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(QUIET)
        sock.sendto(datagram, address)
        try:
            return sock.recv(65535)
        except TimeoutError:
            return None


def wait_acknowledged(agent: AgentProcess, labels: tuple[str, ...], count: int) -> None:
    for label in labels:

        def acknowledged(label: str = label) -> bool:
            value = agent.value("smtp_monitor_notifications_total", receiver=label, outcome="acknowledged")
            return value == float(count)

        agent.wait_until(acknowledged, 15, f"{count} informs to {label} not acknowledged")


class TestNotifierSockets:
    def test_notifier_sockets_are_bound_to_loopback_and_answer_nothing_while_informs_are_acknowledged(
        self, agent_factory: Callable[[dict[str, object]], AgentProcess], tmp_path: Path, postfix: PostfixServer
    ) -> None:
        receiver = TrapReceiver(tmp_path / "snmptrapd", v3_users=[V3User(USER, "SHA", AUTH_PASS, "AES", PRIV_PASS)])
        receiver.start()
        try:
            agent = agent_factory({
                "defaults": {"interval": "0.3s", "timeout": "2s", "alert_after": 2},
                "smtp": [{"name": "relay", "host": "127.0.0.1", "port": postfix.plain_port, "tls": "none"}],
                "snmp": {"enabled": True, "listen": [], "notify": [
                {"host": "127.0.0.1", "port": receiver.port, "version": "3", "type": "inform", "user": USER,
                 "auth": {"protocol": "sha", "password": AUTH_PASS},
                 "priv": {"protocol": "aes128", "password": PRIV_PASS}, "timeout": "1s"},
                {"host": "127.0.0.1", "port": receiver.port, "version": "2c", "type": "inform",
                 "community": "public", "timeout": "1s"},
            ]}})  # fmt: skip
            labels = (f"127.0.0.1:{receiver.port}", f"127.0.0.1:{receiver.port}#2")
            wait_acknowledged(agent, labels, 1)  # coldStart, through both engines
            assert agent.proc is not None
            sockets = udp_sockets_of(agent.proc.pid)
            assert len(sockets) == 2, sockets  # one per receiver engine
            assert all(address == "127.0.0.1" for address, _ in sockets), sockets  # not 0.0.0.0

            for number, address in enumerate(sockets):
                probes = {
                    "engine ID discovery": v3_message(0x5000 + number, 0x04, 0xA0),
                    "a Report": v3_message(0x6000 + number, 0x00, 0xA8, engine_id=bytes.fromhex("8000000001020304")),
                    "a reportable Report": v3_message(0x7000 + number, 0x04, 0xA8),
                    "a v2c GET": v2c_message(0xA0, 0x8000 + number),
                    "a v2c Response": v2c_message(0xA2, 0x9000 + number),
                    "a v2c inform": v2c_message(0xA6, 0xA000 + number),
                }
                for what, datagram in probes.items():
                    assert answered(address, datagram) is None, f"{what} to the notifier at {address} was answered"

            # Still a working notifier: the failure's informs, sent after the probing, are acknowledged too.
            agent.wait_until(lambda: agent.value("smtp_probe_status", probe="relay", status="ok") == 1.0, 10, "not ok")
            postfix.pause()
            wait_acknowledged(agent, labels, 2)
            postfix.resume()
        finally:
            receiver.stop()
