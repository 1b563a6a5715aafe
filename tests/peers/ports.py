"""Re-exported from tests.support.ports for the peers that still import `.ports`; new code imports tests.support."""

from tests.support.ports import (
    HOST,
    free_tcp_port,
    free_tcp_ports,
    free_tcp_udp_port,
    free_udp_port,
    tcp_port_open,
    wait_for_tcp_port,
    wait_for_tcp_port_closed,
)

__all__ = [
    "HOST",
    "free_tcp_port",
    "free_tcp_ports",
    "free_tcp_udp_port",
    "free_udp_port",
    "tcp_port_open",
    "wait_for_tcp_port",
    "wait_for_tcp_port_closed",
]
