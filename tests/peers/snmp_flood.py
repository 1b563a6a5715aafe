"""Unauthenticated SNMPv3 by hand: engine ID discovery, bad messages, a paced flood from a process of its own.

`python -m tests.peers.snmp_flood PORT RATE SECONDS FILE` sends the datagrams of FILE (hex, one a line)
round-robin to 127.0.0.1:PORT at RATE a second for SECONDS, never more, and prints how many it sent.
It runs in its own process so that the sender shares no interpreter lock with a test's client."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from pathlib import Path

HOST = "127.0.0.1"
AUTH, PRIV, REPORTABLE = 0x01, 0x02, 0x04
GET, RESPONSE, INFORM, TRAP, REPORT = 0xA0, 0xA2, 0xA6, 0xA7, 0xA8
SYS_DESCR = bytes((0x2B, 6, 1, 2, 1, 1, 1, 0))
USM_STATS = (0x2B, 6, 1, 6, 3, 15, 1, 1)  # usmStats (RFC 3414), without the counter's number
MAX_RATE = 20_000  # datagrams a second: a flood to loopback stays bounded
MAX_SECONDS = 120.0


def ber(tag: int, body: bytes) -> bytes:
    size = len(body)
    if size < 0x80:
        return bytes((tag, size)) + body
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(octets))) + octets + body


def integer(value: int) -> bytes:
    return ber(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))


def scoped_pdu(context_engine_id: bytes, tag: int = GET, request_id: int = 1, name: bytes = SYS_DESCR) -> bytes:
    """A plaintext ScopedPDU: one binding of `name` (NULL), or a usmStats counter value for a Report."""
    value = b"\x41\x01\x07" if tag == REPORT else b"\x05\x00"
    varbinds = ber(0x30, ber(0x30, ber(0x06, name) + value))
    pdu = ber(tag, integer(request_id) + integer(0) + integer(0) + varbinds)
    return ber(0x30, ber(0x04, context_engine_id) + ber(0x04, b"") + pdu)


def v3_message(
    *,
    engine_id: bytes,
    user: bytes,
    flags: int,
    data: bytes,
    msg_id: int = 1,
    boots: int = 0,
    engine_time: int = 0,
    auth: bytes = b"",
    priv: bytes = b"",
) -> bytes:
    """An SNMPv3 message with USM parameters as given; `data` is a ScopedPDU or an encrypted OCTET STRING."""
    header = ber(0x30, integer(msg_id) + integer(65507) + ber(0x04, bytes((flags,))) + integer(3))
    usm = ber(
        0x30,
        ber(0x04, engine_id)
        + integer(boots)
        + integer(engine_time)
        + ber(0x04, user)
        + ber(0x04, auth)
        + ber(0x04, priv),
    )
    return ber(0x30, integer(3) + header + ber(0x04, usm) + data)


def discovery(msg_id: int = 1) -> bytes:
    """RFC 3414 4: noAuthNoPriv, reportable, empty engine ID and user, a GET without bindings."""
    pdu = ber(GET, integer(msg_id) + integer(0) + integer(0) + b"\x30\x00")
    scoped = ber(0x30, ber(0x04, b"") + ber(0x04, b"") + pdu)
    return v3_message(engine_id=b"", user=b"", flags=REPORTABLE, data=scoped, msg_id=msg_id)


def _item(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, value start, value end) of the BER item at pos."""
    tag, size, pos = data[pos], data[pos + 1], pos + 2
    if size & 0x80:
        count = size & 0x7F
        size, pos = int.from_bytes(data[pos : pos + count], "big"), pos + count
    return tag, pos, pos + size


def report_of(datagram: bytes) -> tuple[bytes, int, int, int, tuple[int, ...]]:
    """(msgAuthoritativeEngineID, msgFlags, boots, time, the first binding's name) of a plaintext Report."""
    from monitor.exporters.snmp.fast.usm_fastpath import decode_message

    msg = decode_message(datagram)
    if msg.data_tag != 0x30:
        raise ValueError("an encrypted message, not a Report")
    _, pos, _ = _item(datagram, msg.data_at)  # into the ScopedPDU
    for _ in range(2):  # past contextEngineID and contextName
        pos = _item(datagram, pos)[2]
    tag, pos, _ = _item(datagram, pos)
    if tag != REPORT:
        raise ValueError(f"PDU tag {tag:#x}, not a Report")
    for _ in range(3):  # past request-id, error-status and error-index
        pos = _item(datagram, pos)[2]
    _, pos, _ = _item(datagram, pos)  # the list
    _, pos, _ = _item(datagram, pos)  # its first binding
    _, start, stop = _item(datagram, pos)  # the name
    name = datagram[start:stop]
    arcs = (name[0] // 40, name[0] % 40, *name[1:])  # every arc of a usmStats name is below 128
    return msg.engine_id, msg.flags, msg.boots, msg.time, arcs


def ask(port: int, datagram: bytes, timeout: float = 2.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.connect((HOST, port))
        sock.send(datagram)
        try:
            return sock.recv(65535)
        except TimeoutError:
            return None


def discover_engine_id(port: int, timeout: float = 2.0) -> bytes:
    answer = ask(port, discovery(), timeout)
    if answer is None:
        raise RuntimeError(f"no Report to engine ID discovery from udp {port}")
    return report_of(answer)[0]


def bad_messages(engine_id: bytes, known_user: bytes) -> list[bytes]:
    """Reportable SNMPv3 messages that fail USM before any key is needed, as an outsider sends them:
    discovery, an unknown user, a known user's wrong digest (authPriv, random ciphertext), a plaintext
    Report with the reportable flag set (what pysnmp sends), and the same from an unknown engine."""
    get = scoped_pdu(engine_id)
    secret = os.urandom(32)
    return [
        discovery(),
        v3_message(engine_id=engine_id, user=b"intruder", flags=AUTH | REPORTABLE, data=get, boots=1, auth=secret[:12]),
        v3_message(
            engine_id=engine_id,
            user=known_user,
            flags=AUTH | PRIV | REPORTABLE,
            data=ber(0x04, secret),
            boots=1,
            auth=secret[:12],
            priv=secret[:8],
        ),
        v3_message(
            engine_id=engine_id,
            user=b"intruder",
            flags=REPORTABLE,
            data=scoped_pdu(engine_id, REPORT, 0, bytes((*USM_STATS, 3, 0))),
        ),
        v3_message(
            engine_id=b"\x80\x00\x1f\x88\x04other",
            user=b"",
            flags=REPORTABLE,
            data=scoped_pdu(b"", REPORT, 0, bytes((*USM_STATS, 4, 0))),
        ),
    ]


def flood(port: int, datagrams: list[bytes], rate: float, seconds: float) -> int:
    """Send `datagrams` round-robin at `rate` a second for `seconds`, paced in 5 ms slices; the count sent."""
    rate, seconds = min(rate, MAX_RATE), min(seconds, MAX_SECONDS)
    total = int(rate * seconds)
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((HOST, port))
        start = time.perf_counter()
        while sent < total:
            due = min(total, int((time.perf_counter() - start) * rate) + 1)
            while sent < due:
                # an ICMP error from a port gone, or a full buffer: the datagram counts as sent all the same
                with contextlib.suppress(ConnectionRefusedError, BlockingIOError):
                    sock.send(datagrams[sent % len(datagrams)])
                sent += 1
            time.sleep(0.005)
    return sent


def main(argv: list[str]) -> int:
    port, rate, seconds, path = int(argv[0]), float(argv[1]), float(argv[2]), Path(argv[3])
    datagrams = [bytes.fromhex(line) for line in path.read_text().split()]
    print(flood(port, datagrams, rate, seconds), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
