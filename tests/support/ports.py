"""Free loopback ports chosen at run time, and waiting for a TCP listener."""

from __future__ import annotations

import socket
import time

HOST = "127.0.0.1"


def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    return free_tcp_ports(1)[0]


def free_tcp_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports; the sockets stay open until all are chosen so none repeats."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((HOST, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that nothing is bound to right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def free_tcp_udp_port(attempts: int = 50) -> int:
    """A port number free for both TCP and UDP on 127.0.0.1 (a DNS server needs both)."""
    for _ in range(attempts):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((HOST, 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((HOST, port))
                except OSError:
                    continue  # UDP side taken: try another number
                return port
    raise RuntimeError(f"no port free for both TCP and UDP on {HOST} after {attempts} attempts")


def tcp_port_open(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    """Whether a TCP connection to host:port succeeds now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_tcp_port(port: int, host: str = HOST, deadline: float = 10.0) -> None:
    """Block until host:port accepts TCP connections; TimeoutError after `deadline` seconds."""
    end = time.monotonic() + deadline
    while True:
        if tcp_port_open(port, host):
            return
        if time.monotonic() >= end:
            raise TimeoutError(f"nothing accepted TCP connections on {host}:{port} within {deadline:.1f} s")
        time.sleep(0.05)


def wait_for_tcp_port_closed(port: int, host: str = HOST, deadline: float = 10.0) -> None:
    """Block until host:port refuses TCP connections; TimeoutError after `deadline` seconds."""
    end = time.monotonic() + deadline
    while True:
        if not tcp_port_open(port, host):
            return
        if time.monotonic() >= end:
            raise TimeoutError(f"{host}:{port} still accepted TCP connections after {deadline:.1f} s")
        time.sleep(0.05)
