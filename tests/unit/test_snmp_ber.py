"""snmp/fast/ber.py: the one BER codec of the SNMP wing writes what pyasn1 writes and refuses with BerError only."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyasn1.codec.ber import encoder as pyasn1_encoder
from pyasn1.type import univ

from monitor.exporters.snmp.agent import MessageHeader, parse_header
from monitor.exporters.snmp.fast import ber
from monitor.exporters.snmp.fast.ber import BerError
from monitor.exporters.snmp.fast.fastpath import NotHandled, decode_request
from monitor.exporters.snmp.fast.usm_fastpath import decode_message

SYS_DESCR = (1, 3, 6, 1, 2, 1, 1, 1, 0)


def v2c_get(community: bytes = b"public", request_id: int = 7) -> bytes:
    varbind = ber.tlv(0x30, ber.tlv(0x06, ber.oid_body(SYS_DESCR)) + b"\x05\x00")
    pdu = ber.tlv(0xA0, ber.int_tlv(request_id) + b"\x02\x01\x00\x02\x01\x00" + ber.tlv(0x30, varbind))
    return ber.tlv(0x30, b"\x02\x01\x01" + ber.tlv(0x04, community) + pdu)


class TestWriting:
    @given(st.binary(max_size=70_000))
    def test_octet_strings_are_written_as_pyasn1_writes_them(self, value: bytes) -> None:
        encoded = ber.tlv(0x04, value)
        assert encoded == bytes(pyasn1_encoder.encode(univ.OctetString(value)))
        assert len(encoded) == ber.tlv_size(len(value))

    @given(st.integers(-(2**63), 2**64))
    def test_integers_are_written_as_pyasn1_writes_them(self, value: int) -> None:
        assert ber.int_tlv(value) == bytes(pyasn1_encoder.encode(univ.Integer(value)))

    @pytest.mark.parametrize("oid", [(), (3, 1), (1, 40), (0,)])
    def test_what_is_no_oid_is_refused_with_ber_error(self, oid: tuple[int, ...]) -> None:
        with pytest.raises(BerError):
            ber.oid_body(oid)


# The readers, each at position 0 of `data` and bounded by its end.
READERS: dict[str, Callable[[bytes], object]] = {
    "span": lambda data: ber.span(data, 0, len(data)),
    "item": lambda data: ber.item(data, 0, len(data), 0x30),
    "any_item": lambda data: ber.any_item(data, 0, len(data)),
    "integer": lambda data: ber.integer(data, 0, len(data), -(2**31), 2**31 - 1),
    "decode_oid": ber.decode_oid,
}


class TestReading:
    @pytest.mark.parametrize("reader", list(READERS))
    @given(data=st.binary(max_size=40))
    def test_any_octets_are_read_or_refused_with_ber_error_only(self, reader: str, data: bytes) -> None:
        with contextlib.suppress(BerError):  # anything else (IndexError, a bare ValueError) fails the test
            READERS[reader](data)

    @pytest.mark.parametrize("reader", ["span", "item", "any_item", "integer"])
    def test_every_truncation_is_refused(self, reader: str) -> None:
        whole = {
            "span": b"\x82\x01\x00" + bytes(256),
            "item": ber.tlv(0x30, bytes(200)),
            "any_item": ber.tlv(0x04, bytes(200)),
            "integer": ber.int_tlv(-(2**31)),
        }[reader]
        READERS[reader](whole)
        for cut in range(len(whole)):
            with pytest.raises(BerError):
                READERS[reader](whole[:cut])

    def test_an_item_is_read_within_its_end_not_the_data_s(self) -> None:
        data = ber.tlv(0x04, b"abcd") + b"trailing"
        assert ber.item(data, 0, 6, 0x04) == (2, 6)
        with pytest.raises(BerError):
            ber.item(data, 0, 5, 0x04)

    @pytest.mark.parametrize(
        ("data", "why"),
        [
            (b"\x30\x80\x00\x00", "indefinite length"),
            (b"\x30\x85\x00\x00\x00\x00\x01\x00", "five length octets"),
            (b"\x1f\x01\x00", "multi-octet tag"),
        ],
    )
    def test_forms_snmp_never_uses_are_refused(self, data: bytes, why: str) -> None:
        with pytest.raises(BerError):
            ber.any_item(data, 0, len(data))

    @pytest.mark.parametrize(
        "data", [b"\x02\x06\x00\x80\x00\x00\x00\x00", b"\x02\x81\x01\x01", b"\x04\x01\x01", b"\x02\x00"]
    )
    def test_integers_beyond_five_octets_long_form_or_other_tags_are_refused(self, data: bytes) -> None:
        with pytest.raises(BerError):
            ber.integer(data, 0, len(data), -(2**63), 2**63)

    def test_integer_bounds_are_the_caller_s(self) -> None:
        assert ber.integer(b"\x02\x01\x05", 0, 3, 0, 5) == (5, 3)
        with pytest.raises(BerError):
            ber.integer(b"\x02\x01\x06", 0, 3, 0, 5)


class TestOneCodecThreeReaders:
    """The gate, the v1/v2c decoder and the SNMPv3 decoder refuse through the same codec."""

    def test_the_gate_reads_a_request_and_nothing_truncated(self) -> None:
        message = v2c_get()
        assert parse_header(message) == MessageHeader(1, b"public", 0)
        for cut in range(len(message)):
            assert parse_header(message[:cut]) is None

    def test_the_gate_lets_an_snmpv3_message_on_by_its_version(self) -> None:
        assert parse_header(ber.tlv(0x30, b"\x02\x01\x03" + bytes(10))) == MessageHeader(3)

    @given(st.binary(max_size=60))
    def test_the_gate_never_raises(self, data: bytes) -> None:
        parse_header(data)

    @given(st.binary(max_size=60))
    def test_the_decoders_refuse_any_octets_with_not_handled_only(self, data: bytes) -> None:
        for decode in (decode_request, decode_message):
            with contextlib.suppress(NotHandled):
                decode(data)

    def test_a_codec_refusal_reaches_the_fast_path_as_not_handled(self) -> None:
        message = bytearray(v2c_get())
        message[1] = 0x80  # indefinite length: the codec's refusal
        with pytest.raises(NotHandled, match="indefinite"):
            decode_request(bytes(message))
