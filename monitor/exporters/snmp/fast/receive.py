"""The agent's listening sockets: each datagram goes to the dispatcher at once, with what else is queued.

pysnmp's asyncio transport hands every datagram on through `loop.call_soon`, and asyncio reads one
datagram per readiness of the socket: a request costs two turns of the event loop and a poll. Under
load the socket holds more than one request at a time (several managers polling, a replayed GET
with 32 in flight). Handing each datagram on at once and reading what is already queued in the same
turn saves a tenth to a fifth of the agent's CPU per request. Replayed GETs, 1,000 rows, 32 in
flight, trees alternating (2026-12-08, the 2-core machine, bench/README.md): authPriv 14,100 GET/s
against 12,700 with pysnmp's transport (13,600 before the USM path took cryptography's cipher modes,
which this pays back), v2c 46,000 against 37,100.
"""

from __future__ import annotations

import socket
from typing import Any

from pysnmp.carrier.asyncio.dgram import udp, udp6

# Datagrams read in one turn of the loop beyond the one asyncio read. At about 70 µs an authPriv GET,
# other work on the loop (the scheduler, HTTP) waits at most 1.2 ms for a full turn. 4 or 64 moved the
# replayed authPriv GET by -1 and +3 % (median of 4 rounds each, 2026-12-08): within the noise.
QUEUED_PER_TURN = 16

# Larger than any UDP payload (65,527 octets over IPv6 without jumbograms): a datagram is never cut.
MAX_DATAGRAM = 65_536


class _HandsOnAtOnce:
    """What both address families' transports add to pysnmp's: the dispatcher called in the same turn."""

    _callback_function: Any  # pysnmp's: the dispatcher's receive callback, None once unregistered
    _listening: socket.socket | None = None

    def open_server_mode(self, iface: Any = None, sock: socket.socket | None = None) -> Any:
        self._listening = sock
        return super().open_server_mode(iface, sock)  # type: ignore[misc]  # pysnmp's transport, next in the MRO

    def datagram_received(self, datagram: bytes, address: Any) -> None:
        deliver = self._callback_function
        if deliver is None:  # unregistered: the listener is closing, and nothing may answer any more
            return
        deliver(self, address, datagram)
        sock = self._listening
        if sock is None:
            return
        for _ in range(QUEUED_PER_TURN):
            try:
                datagram, address = sock.recvfrom(MAX_DATAGRAM)
            except OSError:  # nothing queued (BlockingIOError); any other error is asyncio's to report next read
                return
            deliver(self, address, datagram)


class UdpListener(_HandsOnAtOnce, udp.UdpAsyncioTransport):  # type: ignore[misc]  # pysnmp is untyped
    """An IPv4 listening socket for the agent."""


class Udp6Listener(_HandsOnAtOnce, udp6.Udp6AsyncioTransport):  # type: ignore[misc]  # pysnmp is untyped
    """An IPv6 listening socket for the agent."""
