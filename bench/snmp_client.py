"""Async UDP load client for SNMP agents: requests answered per second with N in flight on one socket."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import cast

from monitor.exporters.snmp.fast.ber import oid_body, tlv

GET, GETNEXT, GETBULK = 0xA0, 0xA1, 0xA5
_ID_BASE = 0x40000000  # request-ids from here on always take 4 octets: packets differ in those only


def request_packets(
    oids: Sequence[str],
    *,
    community: str = "public",
    version: int = 1,
    pdu: int = GET,
    count: int = 65536,
    non_repeaters: int = 0,
    max_repetitions: int = 10,
) -> list[bytes]:
    """`count` copies of one request (version 0 = v1, 1 = v2c) with request-ids _ID_BASE, _ID_BASE + 1, ..."""
    arcs = [tuple(int(arc) for arc in oid.strip(".").split(".")) for oid in oids]
    binds = b"".join(tlv(0x30, tlv(0x06, oid_body(a)) + b"\x05\x00") for a in arcs)
    fields = (non_repeaters, max_repetitions) if pdu == GETBULK else (0, 0)
    ints = b"".join(tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True)) for value in fields)
    marker = (0x7FFFFFFF).to_bytes(4, "big")
    template = tlv(
        0x30,
        tlv(0x02, bytes((version,)))
        + tlv(0x04, community.encode())
        + tlv(pdu, tlv(0x02, marker) + ints + tlv(0x30, binds)),
    )
    at = template.index(marker)
    return [template[:at] + (_ID_BASE + i).to_bytes(4, "big") + template[at + 4 :] for i in range(count)]


@dataclass
class LoadResult:
    answered: int
    lost: int
    seconds: float
    client_cpu: float  # the client's own CPU seconds: near `seconds` means the client was the limit
    server_cpu: float | None  # CPU seconds of the server process (pid given), from /proc

    @property
    def rate(self) -> float:
        return self.answered / self.seconds if self.seconds else 0.0

    @property
    def server_us_per_request(self) -> float | None:
        if self.server_cpu is None or not self.answered:
            return None
        return self.server_cpu / self.answered * 1e6


class _Load(asyncio.DatagramProtocol):
    def __init__(self, packets: Sequence[bytes], in_flight: int) -> None:
        self.packets = packets
        self.in_flight = in_flight
        self.transport: asyncio.DatagramTransport | None = None
        self.sent = 0
        self.answered = 0
        self.last_answer = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        self.refill()

    def refill(self) -> None:
        for _ in range(self.in_flight):
            self.send()

    def send(self) -> None:
        assert self.transport is not None
        self.transport.sendto(self.packets[self.sent % len(self.packets)])
        self.sent += 1

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self.answered += 1
        self.last_answer = time.monotonic()
        self.send()


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def load(
    host: str,
    port: int,
    packets: Sequence[bytes],
    *,
    in_flight: int = 16,
    seconds: float = 5.0,
    warmup: float = 0.5,
    server_pid: int | None = None,
) -> LoadResult:
    """Keep `in_flight` requests outstanding for `seconds` (after `warmup`); count the answers.

    Any datagram back counts as an answer (the agent under test is the only sender); when
    nothing comes back for 0.5 s the window is counted as lost and sent again."""
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(lambda: _Load(packets, in_flight), remote_addr=(host, port))
    try:
        await asyncio.sleep(warmup)
        answered, lost = proto.answered, 0
        cpu0, server0, t0 = time.process_time(), _cpu_seconds(server_pid) if server_pid else None, time.monotonic()
        end = t0 + seconds
        while (now := time.monotonic()) < end:
            await asyncio.sleep(min(0.1, end - now))
            if time.monotonic() - proto.last_answer > 0.5:
                lost += in_flight
                proto.last_answer = time.monotonic()
                proto.refill()
        elapsed = time.monotonic() - t0
        server = _cpu_seconds(server_pid) - server0 if server_pid and server0 is not None else None
        return LoadResult(proto.answered - answered, lost, elapsed, time.process_time() - cpu0, server)
    finally:
        transport.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("oids", nargs="+", help="numeric OIDs of the request")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--community", default="public")
    parser.add_argument("--v1", action="store_true", help="SNMPv1 instead of v2c")
    parser.add_argument(
        "--v3",
        action="store_true",
        help="SNMPv3 authPriv GET of the first OID as bench.snmp_tools' user (SHA/AES) on --host 127.0.0.1: one "
        "request captured from snmpget -d, replayed (RFC 3414 accepts a replay within 150 s)",
    )
    parser.add_argument("--pdu", choices=["get", "getnext", "getbulk"], default="get")
    parser.add_argument("--max-repetitions", type=int, default=10)
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--server-pid", type=int, help="report the server's CPU per answered request")
    args = parser.parse_args()
    pdu = {"get": GET, "getnext": GETNEXT, "getbulk": GETBULK}[args.pdu]
    if args.v3:
        from bench.snmp_tools import capture_request  # runs net-snmp's snmpget: only when asked

        packets = [capture_request(args.port, "v3", args.oids[0])]
    else:
        packets = request_packets(
            args.oids,
            community=args.community,
            version=0 if args.v1 else 1,
            pdu=pdu,
            max_repetitions=args.max_repetitions,
        )
    result = asyncio.run(
        load(args.host, args.port, packets, in_flight=args.in_flight, seconds=args.seconds, server_pid=args.server_pid)
    )
    print(
        json.dumps(
            {
                **asdict(result),
                "rate": round(result.rate),
                "server_us_per_request": result.server_us_per_request and round(result.server_us_per_request, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
