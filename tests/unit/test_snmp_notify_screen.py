"""What a notifier socket passes on to pysnmp: only the Response or Report to a message it still waits on."""

from __future__ import annotations

import socket

import pytest

from monitor.exporters.snmp.notify import _Screen, source_socket


def ber(tag: int, body: bytes) -> bytes:
    return bytes([tag, len(body)]) + body


def integer(value: int) -> bytes:
    return ber(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))


def v2c(pdu_tag: int, request_id: int) -> bytes:
    pdu = ber(pdu_tag, integer(request_id) + integer(0) + integer(0) + ber(0x30, b""))
    return ber(0x30, integer(1) + ber(0x04, b"public") + pdu)


def v3(msg_id: int, flags: int) -> bytes:
    header = ber(0x30, integer(msg_id) + integer(65507) + ber(0x04, bytes([flags])) + integer(3))
    return ber(0x30, integer(3) + header + ber(0x04, ber(0x30, b"")) + ber(0x04, b"\x01\x02\x03"))


class TestScreen:
    def test_an_inform_lets_its_response_through_once(self) -> None:
        screen = _Screen()
        screen.sent(v2c(0xA6, 1234))
        assert not screen.admits(v2c(0xA2, 999))  # another request-id
        assert not screen.admits(v2c(0xA0, 1234))  # a GET, not a Response
        assert not screen.admits(v3(1234, 0x00))  # another version
        assert screen.admits(v2c(0xA2, 1234))
        assert not screen.admits(v2c(0xA2, 1234))  # once
        assert screen.dropped == 4

    def test_a_v3_request_lets_through_the_unreportable_answer_with_its_msg_id(self) -> None:
        screen = _Screen()
        screen.sent(v3(77, 0x07))  # an authPriv inform, reportable
        assert not screen.admits(v3(77, 0x04))  # reportable: a request, never an answer
        assert not screen.admits(v3(78, 0x03))
        assert screen.admits(v3(77, 0x03))

    @pytest.mark.parametrize("datagram", [v2c(0xA7, 5), v3(5, 0x03), v2c(0xA4, 5)])
    def test_a_trap_awaits_nothing(self, datagram: bytes) -> None:
        screen = _Screen()
        screen.sent(datagram)
        assert not screen.outstanding
        assert not screen.admits(v2c(0xA2, 5))
        assert not screen.admits(v3(5, 0x00))

    @pytest.mark.parametrize("datagram", [b"", b"\x30", b"\x30\x03\x02\x01", b"\x30\x84\xff\xff\xff\xff", bytes(40)])
    def test_garbage_is_dropped(self, datagram: bytes) -> None:
        screen = _Screen()
        screen.sent(datagram)
        assert not screen.admits(datagram)

    def test_the_outstanding_set_is_bounded(self) -> None:
        screen = _Screen()
        for number in range(1000):
            screen.sent(v2c(0xA6, number))
        assert len(screen.outstanding) <= 64
        assert screen.admits(v2c(0xA2, 999))
        assert not screen.admits(v2c(0xA2, 0))


class TestSourceSocket:
    @pytest.mark.parametrize(("family", "destination", "local"), [
        (socket.AF_INET, ("127.0.0.1", 162), "127.0.0.1"),
        (socket.AF_INET, ("127.3.4.5", 162), "127.0.0.1"),
        (socket.AF_INET6, ("::1", 162), "::1"),
    ])  # fmt: skip
    def test_bound_to_the_routes_source_address_not_the_wildcard(
        self, family: int, destination: tuple[str, int], local: str
    ) -> None:
        with source_socket(family, destination) as sock:
            address = sock.getsockname()
        assert address[0] == local
        assert address[1] != 0
