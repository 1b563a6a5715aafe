"""Kernel timestamps of a TCP socket: the handshake RTT (TCP_INFO) and data receive times (SO_TIMESTAMPNS)."""

from __future__ import annotations

import asyncio
import atexit
import platform
import socket
import struct
import sys
from dataclasses import dataclass
from typing import Any

# struct tcp_info (linux/tcp.h): eight u8 fields, then u32 fields from tcpi_rto on.
_RETRANSMITS_AT = 2  # tcpi_retransmits (u8)
_RTT_AT = 8 + 4 * 15  # tcpi_rtt, µs: after rto ... rcv_ssthresh
_TOTAL_RETRANS_AT = 8 + 4 * 23  # tcpi_total_retrans: after rtt ... rcv_space
TCP_INFO_SIZE = _TOTAL_RETRANS_AT + 4  # Linux has returned at least this much since 2.6
_U32 = struct.Struct("=I")
_TCP_INFO: int | None = getattr(socket, "TCP_INFO", None)

# Python has no SO_TIMESTAMPNS; 35 is SO_TIMESTAMPNS_OLD of asm-generic and x86, a timespec of native longs.
# Other architectures (mips, sparc, parisc, alpha) number their socket options differently: wall clock there.
SO_TIMESTAMPNS = 35
_STAMPING_MACHINES = {"x86_64", "i386", "i686", "aarch64", "armv7l", "armv6l", "riscv64"}
_CAN_STAMP = sys.platform == "linux" and platform.machine() in _STAMPING_MACHINES
_TIMESPEC = struct.Struct("@ll")
_ANCILLARY_SIZE = socket.CMSG_SPACE(_TIMESPEC.size)


@dataclass(frozen=True, slots=True)
class TcpInfo:
    """The fields of struct tcp_info that tell whether tcpi_rtt is the handshake time."""

    retransmits: int  # tcpi_retransmits: the current RTO backoff, reset to 0 once established
    rtt_us: int  # tcpi_rtt: smoothed RTT; right after an active open, the one SYN -> SYN-ACK sample
    total_retrans: int  # tcpi_total_retrans: every retransmitted segment of the connection, SYNs included


def parse_tcp_info(raw: bytes) -> TcpInfo | None:
    """The fields of a getsockopt(TCP_INFO) answer; None when it is too short to hold them."""
    if len(raw) < TCP_INFO_SIZE:
        return None
    return TcpInfo(
        retransmits=raw[_RETRANSMITS_AT],
        rtt_us=_U32.unpack_from(raw, _RTT_AT)[0],
        total_retrans=_U32.unpack_from(raw, _TOTAL_RETRANS_AT)[0],
    )


def tcp_info(sock: socket.socket) -> TcpInfo | None:
    if _TCP_INFO is None:
        return None
    try:
        return parse_tcp_info(sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, TCP_INFO_SIZE))
    except OSError:
        return None


def handshake_rtt(sock: socket.socket) -> float | None:
    """SYN -> SYN-ACK in seconds, as the kernel measured it, for a socket whose connect() just completed.

    None when it is unknown: no TCP_INFO, or a SYN was retransmitted (Karn's rule leaves no sample then,
    and the operator should see the RTO the wall clock includes)."""
    info = tcp_info(sock)
    if info is None or info.total_retrans or info.retransmits or info.rtt_us == 0:
        return None
    return info.rtt_us / 1e6


_keeper: list[socket.socket] = []


def enable_rx_timestamps(sock: socket.socket) -> bool:
    """Ask the kernel to stamp received data (CLOCK_REALTIME); must be on before the data arrives."""
    if not _CAN_STAMP:
        return False
    try:
        if not _keeper:
            _keep_stamping_wanted()
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        return False
    return True


def _keep_stamping_wanted() -> None:
    # Linux switches packet stamping on by deferred work when no socket wants it, and off again when the
    # last one closes: a greeting could come in unstamped. A socket that wants it for the life of the
    # process makes every later switch-on immediate.
    keeper = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        keeper.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        keeper.close()
        raise
    _keeper.append(keeper)
    atexit.register(keeper.close)  # kept for the life of the process, and closed with it


def rx_time(ancdata: list[tuple[int, int, bytes]]) -> float | None:
    """The receive time (epoch seconds) in recvmsg() ancillary data, if the kernel put one there."""
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            sec, nsec = _TIMESPEC.unpack_from(data)
            return sec + nsec / 1e9 if sec else None
    return None


async def recv_stamped(sock: socket.socket, size: int) -> tuple[bytes, float | None]:
    """One recvmsg() of at most `size` bytes once the non-blocking `sock` is readable, with its kernel receive
    time. For TCP that is the arrival of the last segment read. OSError (a reset) is raised as recv() would."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            data, ancdata, _, _ = sock.recvmsg(size, _ANCILLARY_SIZE)
        except (BlockingIOError, InterruptedError):
            pass
        else:
            return data, rx_time(ancdata)
        readable: asyncio.Future[None] = loop.create_future()
        fd = sock.fileno()
        loop.add_reader(fd, _resolve, readable)
        try:
            await readable
        finally:
            loop.remove_reader(fd)


def _resolve(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_result(None)
