"""The agent's listening sockets (fast.receive): each datagram handed on in the turn it is read, with what
else is queued, a bounded number per turn, nothing cut, nothing delivered once unregistered.

Real UDP sockets on loopback and pysnmp's transports; a list stands in for the dispatcher."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pysnmp.proto import rfc1905

from monitor.config.schema import SnmpConfig
from monitor.exporters.snmp.agent import SnmpAgent
from monitor.exporters.snmp.fast.fastpath import GET
from monitor.exporters.snmp.fast.receive import MAX_DATAGRAM, QUEUED_PER_TURN, Udp6Listener, UdpListener
from monitor.exporters.snmp.mibview import SYS_DESCR
from monitor.state.health import AgentHealth
from tests.peers.snmp_agent_thread import AgentThread
from tests.support.ports import free_udp_port
from tests.unit.test_snmp_fastpath import V2C, decoded, filled_store, request

FAMILIES = [
    pytest.param(socket.AF_INET, "127.0.0.1", UdpListener, id="ipv4"),
    pytest.param(socket.AF_INET6, "::1", Udp6Listener, id="ipv6"),
]


class Dispatcher:
    """What the dispatcher was handed, in order, and how many when the loop first ran something else."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.received: list[bytes] = []
        self.before_other_work: int | None = None

    def __call__(self, transport: Any, address: Any, datagram: bytes) -> None:
        if not self.received:
            self.loop.call_soon(self._other_work)
        self.received.append(datagram)

    def _other_work(self) -> None:
        self.before_other_work = len(self.received)

    async def wait_for(self, count: int, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.received) < count:
                await asyncio.sleep(0.005)


@contextmanager
def bound(family: socket.AddressFamily, host: str) -> Iterator[socket.socket]:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind((host, 0))
        sock.setblocking(False)
        yield sock
    finally:
        sock.close()


def send_all(family: socket.AddressFamily, to: Any, datagrams: list[bytes]) -> None:
    with socket.socket(family, socket.SOCK_DGRAM) as client:
        for datagram in datagrams:
            client.sendto(datagram, to)


async def listen(listener_type: type[Any], sock: socket.socket, dispatcher: Dispatcher) -> Any:
    transport = listener_type(loop=asyncio.get_running_loop())
    transport.register_callback(dispatcher)
    transport.open_server_mode(sock=sock)
    await transport._lport  # pysnmp creates the endpoint in the background
    return transport


def received_when_queued(
    family: socket.AddressFamily, host: str, listener_type: type[Any], datagrams: list[bytes]
) -> Dispatcher:
    """`datagrams` sent to a listener's socket before it reads anything, then read until all arrived."""

    async def scenario() -> Dispatcher:
        dispatcher = Dispatcher(asyncio.get_running_loop())
        with bound(family, host) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # room for the largest datagram
            send_all(family, sock.getsockname(), datagrams)
            transport = await listen(listener_type, sock, dispatcher)
            try:
                await dispatcher.wait_for(len(datagrams))
            finally:
                transport.close_transport()
        return dispatcher

    return asyncio.run(scenario())


class TestListener:
    @pytest.mark.parametrize(("family", "host", "listener_type"), FAMILIES)
    def test_queued_datagrams_are_read_in_one_turn_a_bounded_number_at_a_time(
        self, family: socket.AddressFamily, host: str, listener_type: type[Any]
    ) -> None:
        datagrams = [b"request %d" % number for number in range(3 * QUEUED_PER_TURN + 5)]
        dispatcher = received_when_queued(family, host, listener_type, datagrams)
        assert dispatcher.received == datagrams  # every one, in order
        # asyncio's read and QUEUED_PER_TURN more, then other work: pysnmp's transport hands on none in
        # the turn it reads (call_soon), and an unbounded drain would read all of them first.
        assert dispatcher.before_other_work == 1 + QUEUED_PER_TURN

    @pytest.mark.parametrize(("family", "host", "listener_type"), FAMILIES)
    def test_the_largest_datagram_arrives_whole_when_read_from_the_queue(
        self, family: socket.AddressFamily, host: str, listener_type: type[Any]
    ) -> None:
        largest = bytes(range(256)) * 255 + bytes(range(227))  # 65,507 octets: the most IPv4 UDP carries
        assert len(largest) < MAX_DATAGRAM
        datagrams = [b"first", largest, b"last"]
        dispatcher = received_when_queued(family, host, listener_type, datagrams)
        assert dispatcher.received == datagrams
        assert dispatcher.before_other_work == 3  # the second and third came from the queue

    def test_nothing_is_handed_on_once_the_dispatcher_is_unregistered(self) -> None:
        errors: list[dict[str, Any]] = []

        async def scenario() -> Dispatcher:
            loop = asyncio.get_running_loop()
            loop.set_exception_handler(lambda _, context: errors.append(context))
            dispatcher = Dispatcher(loop)
            with bound(socket.AF_INET, "127.0.0.1") as sock:
                transport = await listen(UdpListener, sock, dispatcher)
                try:
                    send_all(socket.AF_INET, sock.getsockname(), [b"before"])
                    await dispatcher.wait_for(1)
                    transport.unregister_callback()  # as the dispatcher does when a listener closes
                    send_all(socket.AF_INET, sock.getsockname(), [b"after"] * 3)
                    await asyncio.sleep(0.1)
                finally:
                    transport.close_transport()
            return dispatcher

        dispatcher = asyncio.run(scenario())
        assert dispatcher.received == [b"before"]
        assert errors == []  # pysnmp's transport raises CarrierError into the loop here


def test_an_agent_answers_a_burst_queued_before_it_reads(tmp_path: Path) -> None:
    """200 v2c GETs sent back to back: every request ID answered once, none counted dropped."""
    port = free_udp_port()
    config = SnmpConfig.model_validate({"listen": [f"udp:127.0.0.1:{port}"], "communities": [{"name": "burst-c0de"}]})
    health = AgentHealth()
    agent = SnmpAgent(config, tmp_path, filled_store(), health)
    request_ids = list(range(1000, 1200))
    with AgentThread(agent), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as manager:
        manager.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        manager.settimeout(5)
        manager.connect(("127.0.0.1", port))
        for request_id in request_ids:
            manager.send(request(V2C, GET, [SYS_DESCR], request_id=request_id, community="burst-c0de"))
        answered = []
        for _ in request_ids:
            _, community, pdu, request_id, *_ = decoded(manager.recv(65535))
            assert community == b"burst-c0de"
            assert pdu == rfc1905.ResponsePDU.tagSet
            answered.append(request_id)
    assert sorted(answered) == request_ids
    assert health.snmp_dropped == 0
    assert health.snmp_requests["get"] == len(request_ids)
