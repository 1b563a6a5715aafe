"""The SNMP wing's one BER codec (X.690, definite lengths): what the fast paths and the datagram gate read and write.

Readers take (data, pos, end) and return positions into `data`, never copies: a GET is decoded
without building a value it does not need. They raise BerError, and only BerError, for what they
refuse: each caller maps it to its own outcome (the fast paths leave the datagram to pysnmp or
drop it, the gate counts it dropped)."""

from __future__ import annotations

from collections.abc import Sequence

Oid = tuple[int, ...]  # monitor.exporters.snmp.mib_oids.Oid: this codec imports nothing of the project

MAX_OID_ARCS = 128  # RFC 2578 3.5
MAX_SUB_ID = 2**32 - 1
INTEGER, OCTET_STRING, NULL, OBJECT_IDENTIFIER, SEQUENCE = 0x02, 0x04, 0x05, 0x06, 0x30
_MAX_LENGTH_OCTETS = 4  # a length beyond 4 GiB is no SNMP message's


class BerError(ValueError):
    """Octets this codec does not read (truncated, indefinite or oversized length, wrong tag, a value out
    of its bounds), or a value it cannot write (an OID that is not one)."""


# -- writing ---------------------------------------------------------------------------------------

SHORT_LENGTHS = tuple(bytes((size,)) for size in range(0x80))  # the usual length octets, built once


def length(size: int) -> bytes:
    """The length octets of a `size`-octet value, in the minimal definite form (as pyasn1 writes them)."""
    if size < 0x80:
        return SHORT_LENGTHS[size]
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(octets),)) + octets


def tlv(tag: int, body: bytes) -> bytes:
    """One item: tag octet, minimal definite length, value."""
    size = len(body)
    if size < 0x80:
        return bytes((tag, size)) + body
    return bytes((tag,)) + length(size) + body


def tlv_size(octets: int) -> int:
    """The size of an item whose value has `octets` octets."""
    if octets < 0x80:
        return 2 + octets
    return 2 + (octets.bit_length() + 7) // 8 + octets


def int_body(value: int) -> bytes:
    """Two's complement, as long as pyasn1 makes it (-128 takes two octets there): byte for byte
    what the pysnmp path sends. Unsigned SMI types are encoded the same way."""
    return value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True)


def int_tlv(value: int) -> bytes:
    return tlv(INTEGER, int_body(value))


def sub_ids(arcs: Sequence[int]) -> bytes:
    """Base-128 sub-identifiers, as in an OID's content octets (a table index, a column's key)."""
    out = bytearray()
    for arc in arcs:
        if arc < 0x80:
            out.append(arc)
            continue
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out.extend(reversed(chunk))
    return bytes(out)


def oid_body(oid: Oid) -> bytes:
    """The content octets of an OBJECT IDENTIFIER; BerError if `oid` is not one."""
    if len(oid) < 2 or not 0 <= oid[0] <= 2 or (oid[0] < 2 and not 0 <= oid[1] < 40):
        raise BerError(f"not an encodable OID: {oid}")
    return sub_ids((oid[0] * 40 + oid[1], *oid[2:]))


# -- reading ---------------------------------------------------------------------------------------


def decode_oid(body: bytes) -> Oid:
    """An OID from canonical content octets; BerError for anything else (padding, truncation, SMI limits)."""
    if not body or body[-1] & 0x80:
        raise BerError("empty or truncated OID")
    arcs: list[int] = []
    value = 0
    start = True
    for octet in body:
        if start and octet == 0x80:
            raise BerError("padded sub-identifier")  # pyasn1 refuses it too
        value = (value << 7) | (octet & 0x7F)
        if octet & 0x80:
            start = False
        else:
            arcs.append(value)
            value = 0
            start = True
    first = arcs[0]
    head = (0, first) if first < 40 else (1, first - 40) if first < 80 else (2, first - 80)
    oid = (*head, *arcs[1:])
    if len(oid) > MAX_OID_ARCS or max(oid) > MAX_SUB_ID:
        raise BerError("OID beyond SMI limits")
    return oid


def span(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """(value start, value end) of the item whose length octets are at pos; it must end by `end`."""
    if pos >= end:
        raise BerError("truncated")
    size = data[pos]
    start = pos + 1
    if size & 0x80:
        count = size & 0x7F
        if not 1 <= count <= _MAX_LENGTH_OCTETS:  # 0x80 is the indefinite form
            raise BerError("indefinite or oversized length")
        size = int.from_bytes(data[start : start + count], "big")
        start += count
    if start + size > end:
        raise BerError("truncated")
    return start, start + size


def item(data: bytes, pos: int, end: int, tag: int) -> tuple[int, int]:
    """(value start, value end) of the item at pos, which must have `tag` and end by `end`."""
    if pos + 2 > end:
        raise BerError("truncated")
    if data[pos] != tag:
        raise BerError(f"tag {data[pos]:#x} where {tag:#x} belongs")
    size = data[pos + 1]
    if size & 0x80:
        return span(data, pos + 1, end)
    stop = pos + 2 + size  # the short form, most items: without a second call
    if stop > end:
        raise BerError("truncated")
    return pos + 2, stop


def any_item(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag octet, value start, value end) of the item at pos, whatever its one-octet tag."""
    if pos >= end:
        raise BerError("truncated")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise BerError("multi-octet tag")
    return (tag, *span(data, pos + 1, end))


def integer(data: bytes, pos: int, end: int, low: int, high: int) -> tuple[int, int]:
    """(value, next position) of an INTEGER of at most five octets, short-form length, within [low, high]
    (the bounds pysnmp's decoder holds: pyasn1 writes -2**31 in five octets)."""
    if pos + 2 > end:
        raise BerError("truncated")
    size = data[pos + 1]
    stop = pos + 2 + size
    if data[pos] != INTEGER or not 1 <= size <= 5 or stop > end:  # a long-form length is above 5 here
        raise BerError("not a short INTEGER")
    value = int.from_bytes(data[pos + 2 : stop], "big", signed=True)
    if not low <= value <= high:
        raise BerError("INTEGER out of range")
    return value, stop
