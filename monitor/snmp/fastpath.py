"""A pysnmp-free fast path answering plain SNMPv1/v2c GET, GETNEXT and GETBULK from pre-encoded BER."""

from __future__ import annotations

import logging
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pyasn1.codec.ber import encoder as pyasn1_encoder
from pyasn1.error import PyAsn1Error
from pysnmp.proto import rfc1902

from monitor.mib_oids import Oid

# MibTable's layout (_keys, _nodes, _Scalar, _Column) is read in FastPath._compile only: a
# change there makes the fast path step aside (pysnmp answers), never answer differently.
from monitor.snmp.mibview import MibTable, MibView, Raw, _Column, _Scalar

log = logging.getLogger("smtp_monitor.snmp")

GET, GETNEXT, GETBULK = 0, 1, 5  # context tag numbers of the request PDUs served here
MAX_VARBINDS = 64  # requests with more variable bindings go to pysnmp
MAX_RESPONSE_OCTETS = 65507  # the largest UDP payload over IPv4
MAX_REPEATED = 64  # GETBULK repeats at most this many bindings (pysnmp's BulkCommandResponder.max_varbinds)
MAX_OID_ARCS = 128  # RFC 2578 3.5
MAX_SUB_ID = 2**32 - 1

_RESPONSE = 0xA2
_NULL = b"\x05\x00"
_NO_SUCH_OBJECT, _NO_SUCH_INSTANCE, _END_OF_MIB_VIEW = b"\x80\x00", b"\x81\x00", b"\x82\x00"
_COUNTER64 = 0x46
_TOO_BIG, _NO_SUCH_NAME = 1, 2
_VERSIONS = {0: b"\x02\x01\x00", 1: b"\x02\x01\x01"}
_OID_CACHE_MAX = 4096

# A varbind's outcome, for SNMPv1's error mapping (RFC 3584 4.1.2).
_VALUE, _EXCEPTION, _BIG_COUNTER = 0, 1, 2

# The SMI types pysnmp builds, encoded here as pyasn1 would: (tag octet, kind, lowest, highest),
# the range being the type's own constraint. Other types are encoded by pyasn1 itself.
_INT, _OCTETS, _OID = 0, 1, 2
_UINT32 = (0, 2**32 - 1)
_SIMPLE: dict[type, tuple[int, int, int, int]] = {
    rfc1902.Integer32: (0x02, _INT, -(2**31), 2**31 - 1),
    rfc1902.Integer: (0x02, _INT, -(2**31), 2**31 - 1),
    rfc1902.OctetString: (0x04, _OCTETS, 0, 65535),
    rfc1902.ObjectIdentifier: (0x06, _OID, 0, 0),
    rfc1902.IpAddress: (0x40, _OCTETS, 4, 4),
    rfc1902.Counter32: (0x41, _INT, *_UINT32),
    rfc1902.Gauge32: (0x42, _INT, *_UINT32),
    rfc1902.Unsigned32: (0x42, _INT, *_UINT32),
    rfc1902.TimeTicks: (0x43, _INT, *_UINT32),
    rfc1902.Counter64: (_COUNTER64, _INT, 0, 2**64 - 1),
}


class NotHandled(Exception):
    """Not for the fast path (unusual, malformed or unsupported): pysnmp handles the datagram."""


# -- BER ----------------------------------------------------------------------------------------


def _tlv(tag: int, body: bytes) -> bytes:
    """One BER item with a minimal definite length, as pyasn1 encodes it."""
    size = len(body)
    if size < 0x80:
        return bytes((tag, size)) + body
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(octets))) + octets + body


def _int_body(value: int) -> bytes:
    """Minimal two's complement (pyasn1 encodes unsigned SMI types the same way)."""
    return value.to_bytes((value if value >= 0 else ~value).bit_length() // 8 + 1, "big", signed=True)


def _int_tlv(value: int) -> bytes:
    return _tlv(0x02, _int_body(value))


def _sub_ids(arcs: Sequence[int]) -> bytes:
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
    """The content octets of an OBJECT IDENTIFIER."""
    if len(oid) < 2 or not 0 <= oid[0] <= 2 or (oid[0] < 2 and not 0 <= oid[1] < 40):
        raise ValueError(f"not an encodable OID: {oid}")
    return _sub_ids((oid[0] * 40 + oid[1], *oid[2:]))


def decode_oid(body: bytes) -> Oid:
    """An OID from canonical content octets; NotHandled for anything else (padding, truncation, size)."""
    if not body or body[-1] & 0x80:
        raise NotHandled("empty or truncated OID")
    arcs: list[int] = []
    value = 0
    start = True
    for octet in body:
        if start and octet == 0x80:
            raise NotHandled("padded sub-identifier")  # pyasn1 refuses it too
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
        raise NotHandled("OID beyond SMI limits")
    return oid


def _item(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag octet, value start, value end) of the item at pos, which must fit before end."""
    if pos + 2 > end:
        raise NotHandled("truncated")
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 4 or pos + count > end:
            raise NotHandled("indefinite or oversized length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + length > end:
        raise NotHandled("truncated")
    return tag, pos, pos + length


def _integer(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """(value, next position) of an INTEGER of at most 32 bits (every field pysnmp takes as Integer32)."""
    tag, start, stop = _item(data, pos, end)
    if tag != 0x02 or not 1 <= stop - start <= 4:
        raise NotHandled("not a 32-bit INTEGER")
    return int.from_bytes(data[start:stop], "big", signed=True), stop


@dataclass(frozen=True, slots=True)
class Request:
    """A decoded v1/v2c read request. `first`/`second` are error-status/error-index, or for
    GETBULK non-repeaters/max-repetitions; `bodies` are the OIDs' content octets as received."""

    version: int
    community: bytes
    pdu: int
    request_id: int
    first: int
    second: int
    names: tuple[Oid, ...]
    bodies: tuple[bytes, ...]


def decode_request(message: bytes, oid_cache: dict[bytes, Oid] | None = None) -> Request:
    """Strictly decode a v1/v2c GET, GETNEXT or GETBULK request; NotHandled if it is anything else.

    Definite lengths only, no trailing octets, NULL values only, at most MAX_VARBINDS bindings."""
    end = len(message)
    tag, pos, stop = _item(message, 0, end)
    if tag != 0x30 or stop != end:
        raise NotHandled("not one SEQUENCE")
    version, pos = _integer(message, pos, end)
    if version not in _VERSIONS:
        raise NotHandled("not SNMPv1 or v2c")
    tag, start, pos = _item(message, pos, end)
    if tag != 0x04:
        raise NotHandled("no community")
    community = message[start:pos]
    tag, pos, stop = _item(message, pos, end)
    pdu = tag - 0xA0
    if stop != end or not (pdu in (GET, GETNEXT) or (pdu == GETBULK and version == 1)):
        raise NotHandled("not a read request")
    request_id, pos = _integer(message, pos, stop)
    first, pos = _integer(message, pos, stop)
    second, pos = _integer(message, pos, stop)
    if pdu != GETBULK and second < 0:
        raise NotHandled("negative error-index")  # pysnmp drops it
    tag, pos, stop_list = _item(message, pos, stop)
    if tag != 0x30 or stop_list != stop:
        raise NotHandled("no variable bindings")
    names: list[Oid] = []
    bodies: list[bytes] = []
    while pos < stop:
        if len(names) == MAX_VARBINDS:
            raise NotHandled("too many variable bindings")
        tag, start, bind_end = _item(message, pos, stop)
        if tag != 0x30:
            raise NotHandled("not a VarBind")
        tag, oid_start, oid_end = _item(message, start, bind_end)
        if tag != 0x06 or message[oid_end:bind_end] != _NULL:
            raise NotHandled("VarBind is not (OID, NULL)")
        body = message[oid_start:oid_end]
        oid = oid_cache.get(body) if oid_cache is not None else None
        if oid is None:
            oid = decode_oid(body)
            if oid_cache is not None:
                if len(oid_cache) >= _OID_CACHE_MAX:
                    oid_cache.clear()
                oid_cache[body] = oid
        names.append(oid)
        bodies.append(body)
        pos = bind_end
    return Request(version, community, pdu, request_id, first, second, tuple(names), tuple(bodies))


def _name_varbind(body: bytes, value: bytes) -> bytes:
    return _tlv(0x30, _tlv(0x06, body) + value)


def _end_after(varbind: bytes) -> bytes:
    """endOfMibView under the name of a varbind this module encoded."""
    pos = 2 if varbind[1] < 0x80 else 2 + (varbind[1] & 0x7F)
    size = varbind[pos + 1]
    head = 2
    if size & 0x80:
        head += size & 0x7F
        size = int.from_bytes(varbind[pos + 2 : pos + head], "big")
    return _tlv(0x30, varbind[pos : pos + head + size] + _END_OF_MIB_VIEW)


def _value_tlv(value: Any) -> tuple[bytes, int]:
    """(TLV, tag octet) of a pyasn1 value built at request time (a scalar)."""
    spec = _SIMPLE.get(type(value))
    if spec is None:
        encoded = _pyasn1(lambda: value)
        return encoded, encoded[0]
    tag, kind = spec[0], spec[1]
    if kind == _INT:
        return _tlv(tag, _int_body(int(value))), tag
    if kind == _OCTETS:
        return _tlv(tag, value.asOctets()), tag
    return _tlv(tag, oid_body(tuple(value))), tag


def _pyasn1(build: Callable[[], Any]) -> bytes:
    try:
        return bytes(pyasn1_encoder.encode(build()))
    except PyAsn1Error as exc:  # pysnmp fails on this value as well
        raise NotHandled(f"unencodable value: {exc}") from None


def cell_encoder(syntax: type) -> Callable[[Raw], bytes]:
    """The value TLV of a column's cell, for `syntax` (what pysnmp would build: syntax(raw))."""
    spec = _SIMPLE.get(syntax)
    if spec is None or spec[1] == _OID:
        return lambda raw: _pyasn1(lambda: syntax(raw))
    tag, kind, low, high = spec
    if kind == _INT:

        def encode_int(raw: Raw) -> bytes:
            if type(raw) is not int:
                return _pyasn1(lambda: syntax(raw))
            if not low <= raw <= high:
                raise NotHandled(f"{raw} outside {syntax.__name__}")
            return _tlv(tag, _int_body(raw))

        return encode_int

    def encode_octets(raw: Raw) -> bytes:
        if type(raw) is not bytes:
            return _pyasn1(lambda: syntax(raw))
        if not low <= len(raw) <= high:
            raise NotHandled(f"{len(raw)} octets outside {syntax.__name__}")
        return _tlv(tag, raw)

    return encode_octets


# -- the served table, compiled -----------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _RowCode:
    """A row's encoded varbinds by column position, valid while the view hands out the same cells."""

    cells: tuple[Raw, ...]
    index: Oid
    index_body: bytes
    varbinds: list[bytes | None]


@dataclass(slots=True, eq=False)
class _ScalarNode:
    key: Oid
    name_tlv: bytes
    read: Callable[[], Any]
    visible: bool


@dataclass(slots=True, eq=False)
class _ColumnNode:
    key: Oid
    key_body: bytes
    indexes: Sequence[Oid]
    cells: Sequence[tuple[Raw, ...]]
    position: int
    encode: Callable[[Raw], bytes]
    counter64: bool
    visible: bool
    rows: dict[int, _RowCode]  # id(cells) -> code, shared by the table's columns across versions


_Node = _ScalarNode | _ColumnNode


@dataclass(slots=True, eq=False)
class _Compiled:
    table: MibTable
    keys: Sequence[Oid]
    nodes: list[_Node]


# -- the fast path ------------------------------------------------------------------------------


class FastPath:
    """Answers v1/v2c GET, GETNEXT and GETBULK from the MibView as pysnmp would (RFC 3416, RFC 3584).

    `respond` returns the response datagram, or None when pysnmp must handle the request: it
    never raises. Community and source checks are the caller's (the agent's gate)."""

    def __init__(
        self,
        view: MibView,
        *,
        subtrees: Sequence[Oid],
        max_repeated: int = MAX_REPEATED,
        max_message_size: int = MAX_RESPONSE_OCTETS,
    ) -> None:
        self._view = view
        self._subtrees = tuple(subtrees)
        self._max_repeated = max_repeated
        self._max_message = max_message_size
        self._compiled: _Compiled | None = None
        self._unsupported: MibTable | None = None
        self._row_codes: dict[Oid, dict[int, _RowCode]] = {}  # table entry OID -> its rows' codes
        self._encoders: dict[type, Callable[[Raw], bytes]] = {}
        self._oids: dict[bytes, Oid] = {}
        self.answered = 0
        self.fallbacks = 0
        self.errors = 0  # internal failures (bugs): pysnmp answered instead

    def respond(self, message: bytes) -> bytes | None:
        """The response to `message`, or None to leave it to pysnmp."""
        try:
            response = self._respond(message)
        except NotHandled:
            self.fallbacks += 1
            return None
        except Exception:
            self.errors += 1
            if self.errors == 1:
                log.debug("SNMP fast path failed; pysnmp answers instead", exc_info=True)
            return None
        self.answered += 1
        return response

    def _respond(self, message: bytes) -> bytes:
        request = decode_request(message, self._oids)
        compiled = self._current()
        if request.pdu == GETBULK:
            return self._bulk(compiled, request)
        pairs = zip(request.names, request.bodies, strict=True)
        if request.pdu == GET:
            outcomes = [self._get(compiled, oid, body) for oid, body in pairs]
        else:
            v1 = request.version == 0
            outcomes = [self._get_next(compiled, oid, body, v1) for oid, body in pairs]
        if request.version == 0:
            # RFC 3584 4.1.2 as pysnmp applies it: scanning from the last binding, a Counter64
            # stops the scan; the error names the first binding reached that has no value.
            index = 0
            for position in range(len(outcomes) - 1, -1, -1):
                kind = outcomes[position][1]
                if kind != _VALUE:
                    index = position + 1
                    if kind == _BIG_COUNTER:
                        break
            if index:
                return self._message(request, _NO_SUCH_NAME, index, self._echo(request))
        response = self._message(request, 0, 0, [varbind for varbind, _ in outcomes])
        if len(response) > self._max_message:
            # RFC 3416 4.2.1: tooBig without bindings (SNMPv1 echoes the request's, RFC 1157 4.1.2)
            return self._message(request, _TOO_BIG, 0, self._echo(request) if request.version == 0 else [])
        return response

    # -- lookups (MibTable.get/next/is_object, on the compiled nodes) -----------------------------

    def _get(self, compiled: _Compiled, oid: Oid, body: bytes) -> tuple[bytes, int]:
        i = bisect_right(compiled.keys, oid) - 1
        if i >= 0:
            node = compiled.nodes[i]
            key = node.key
            if isinstance(node, _ColumnNode):
                if oid[: len(key)] == key:
                    index = oid[len(key) :]
                    indexes = node.indexes
                    j = bisect_left(indexes, index)
                    if j < len(indexes) and indexes[j] == index:
                        if not node.visible:
                            return _name_varbind(body, _NO_SUCH_OBJECT), _EXCEPTION
                        return self._cell(node, j), _BIG_COUNTER if node.counter64 else _VALUE
            elif oid == key:
                if not node.visible:
                    return _name_varbind(body, _NO_SUCH_OBJECT), _EXCEPTION
                value, tag = _value_tlv(node.read())
                return _tlv(0x30, node.name_tlv + value), _BIG_COUNTER if tag == _COUNTER64 else _VALUE
        exception = _NO_SUCH_INSTANCE if compiled.table.is_object(oid) else _NO_SUCH_OBJECT
        return _name_varbind(body, exception), _EXCEPTION

    def _get_next(self, compiled: _Compiled, oid: Oid, body: bytes, v1: bool) -> tuple[bytes, int]:
        k, j = self._locate(compiled, oid)
        found = self._next_from(compiled, k, j, v1)
        if found is None:
            return _name_varbind(body, _END_OF_MIB_VIEW), _EXCEPTION
        return found[2], _VALUE

    @staticmethod
    def _locate(compiled: _Compiled, oid: Oid) -> tuple[int, int]:
        """The first (node, row) position that may hold an instance after `oid`."""
        keys = compiled.keys
        i = bisect_right(keys, oid) - 1
        if i < 0 or oid[: len(keys[i])] != keys[i]:
            return i + 1, 0  # oid is inside no node: every later node sorts after it
        node = compiled.nodes[i]
        if isinstance(node, _ColumnNode):
            return i, bisect_right(node.indexes, oid[len(node.key) :])
        return i + 1, 0  # at (or below) a scalar instance

    def _next_from(self, compiled: _Compiled, k: int, j: int, v1_next: bool) -> tuple[int, int, bytes] | None:
        """(node, row, varbind) of the first readable instance at or after position (k, j).

        Nodes outside the view are skipped, as are Counter64 ones for an SNMPv1 GETNEXT
        (RFC 3584 4.1.2.1: the whole column, as the pysnmp path does)."""
        nodes = compiled.nodes
        while k < len(nodes):
            node = nodes[k]
            if node.visible:
                if isinstance(node, _ColumnNode):
                    if j < len(node.indexes) and not (v1_next and node.counter64):
                        return k, j, self._cell(node, j)
                elif j == 0:
                    value, tag = _value_tlv(node.read())
                    if not (v1_next and tag == _COUNTER64):
                        return k, 0, _tlv(0x30, node.name_tlv + value)
            k += 1
            j = 0
        return None

    def _cell(self, node: _ColumnNode, j: int) -> bytes:
        """The encoded varbind of row j of a column, from the row's cache when it is unchanged."""
        cells = node.cells[j]
        index = node.indexes[j]
        code = node.rows.get(id(cells))
        if code is None or code.cells is not cells or code.index is not index:
            code = node.rows[id(cells)] = _RowCode(cells, index, _sub_ids(index), [None] * len(cells))
        varbind = code.varbinds[node.position]
        if varbind is None:
            value = node.encode(cells[node.position])
            varbind = code.varbinds[node.position] = _tlv(0x30, _tlv(0x06, node.key_body + code.index_body) + value)
        return varbind

    # -- GETBULK ----------------------------------------------------------------------------

    def _bulk(self, compiled: _Compiled, request: Request) -> bytes:
        """RFC 3416 4.2.3, with pysnmp's cap on repetitions and the agent's early stop once every
        repeated binding reached endOfMibView; trailing bindings that do not fit are left out."""
        names, bodies = request.names, request.bodies
        count = len(names)
        n = min(max(request.first, 0), count)  # negative non-repeaters/max-repetitions count as 0
        r = count - n
        m = min(max(request.second, 0), self._max_repeated // r) if r else 0
        budget = self._budget(request)
        out: list[bytes] = []
        used = 0
        for i in range(n):
            varbind, _ = self._get_next(compiled, names[i], bodies[i], False)
            used += len(varbind)
            if used > budget:
                return self._truncated(request, out)
            out.append(varbind)
        cursors: list[tuple[int, int] | None] = [self._locate(compiled, names[i]) for i in range(n, count)]
        ends: list[bytes | None] = [None] * r  # endOfMibView varbinds of repeaters that ran out
        last: list[bytes | None] = [None] * r  # the latest varbind found per repeater
        while m and r:
            ended = 0
            for i in range(r):
                cursor = cursors[i]
                found = self._next_from(compiled, cursor[0], cursor[1], False) if cursor is not None else None
                if found is None:
                    cursors[i] = None
                    end = ends[i]
                    if end is None:
                        previous = last[i]
                        end = ends[i] = (
                            _end_after(previous) if previous is not None
                            else _name_varbind(bodies[n + i], _END_OF_MIB_VIEW)
                        )
                    varbind = end
                    ended += 1
                else:
                    k, j, varbind = found
                    cursors[i] = (k, j + 1)  # past a scalar or the last row: _next_from moves on
                    last[i] = varbind
                used += len(varbind)
                if used > budget:
                    return self._truncated(request, out)
                out.append(varbind)
            if ended == r:
                break
            m -= 1
        return self._message(request, 0, 0, out)

    def _truncated(self, request: Request, varbinds: list[bytes]) -> bytes:
        if not varbinds:
            return self._message(request, _TOO_BIG, 0, [])
        return self._message(request, 0, 0, varbinds)

    def _budget(self, request: Request) -> int:
        """The most varbind octets a response to `request` can carry within the message size."""
        fixed = len(_VERSIONS[request.version]) + len(_tlv(0x04, request.community))
        pdu_fixed = len(_int_tlv(request.request_id)) + 6  # error-status and error-index: 0 and 0

        def size(octets: int) -> int:
            pdu = pdu_fixed + _tlv_size(octets)
            return _tlv_size(fixed + _tlv_size(pdu))

        octets = self._max_message - fixed - pdu_fixed
        while octets > 0 and size(octets) > self._max_message:
            octets -= 1
        return octets

    # -- messages ---------------------------------------------------------------------------

    @staticmethod
    def _message(request: Request, status: int, index: int, varbinds: list[bytes]) -> bytes:
        pdu = _int_tlv(request.request_id) + _int_tlv(status) + _int_tlv(index) + _tlv(0x30, b"".join(varbinds))
        return _tlv(0x30, _VERSIONS[request.version] + _tlv(0x04, request.community) + _tlv(_RESPONSE, pdu))

    @staticmethod
    def _echo(request: Request) -> list[bytes]:
        return [_name_varbind(body, _NULL) for body in request.bodies]

    # -- compiling a MibTable ---------------------------------------------------------------

    def _current(self) -> _Compiled:
        table = self._view.current()
        compiled = self._compiled
        if compiled is not None and compiled.table is table:
            return compiled
        if table is self._unsupported:
            raise NotHandled("table layout not supported")
        try:
            compiled = self._compile(table)
        except NotHandled:
            self._unsupported = table
            raise
        self._compiled = compiled
        return compiled

    def _compile(self, table: MibTable) -> _Compiled:
        try:
            return self._compile_nodes(table)
        except (AttributeError, TypeError, ValueError) as exc:
            raise NotHandled(f"unknown MibTable layout: {exc}") from None

    def _compile_nodes(self, table: MibTable) -> _Compiled:
        keys: list[Oid] = getattr(table, "_keys", None) or []
        raw_nodes: list[object] = getattr(table, "_nodes", None) or []
        if not keys or len(keys) != len(raw_nodes):
            raise NotHandled("unknown MibTable layout")
        nodes: list[_Node] = []
        trimmed: set[int] = set()
        for key, node in zip(keys, raw_nodes, strict=True):
            visible = self._visible(key)
            if type(node) is _Scalar:
                nodes.append(_ScalarNode(key, _tlv(0x06, oid_body(key)), node.read, visible))
            elif type(node) is _Column:
                rows = node.rows
                codes = self._row_codes.setdefault(key[:-1], {})
                if id(codes) not in trimmed:
                    trimmed.add(id(codes))
                    _trim(codes, rows.indexes, rows.cells)
                nodes.append(
                    _ColumnNode(
                        key, oid_body(key), rows.indexes, rows.cells, node.position, self._encoder(node.syntax),
                        getattr(node.syntax, "tagSet", None) == rfc1902.Counter64.tagSet, visible, codes,
                    )
                )
            else:
                raise NotHandled(f"unknown MIB node {type(node).__name__}")
        return _Compiled(table, keys, nodes)

    def _visible(self, key: Oid) -> bool:
        """Whether a node's instances are in the read view (each node lies wholly in or out of it)."""
        if any(key[: len(root)] == root for root in self._subtrees):
            return True
        if any(root[: len(key)] == key for root in self._subtrees):
            raise NotHandled(f"view boundary inside node {key}")
        return False

    def _encoder(self, syntax: type) -> Callable[[Raw], bytes]:
        encoder = self._encoders.get(syntax)
        if encoder is None:
            encoder = self._encoders[syntax] = cell_encoder(syntax)
        return encoder


def _tlv_size(octets: int) -> int:
    """The size of a BER item whose value has `octets` octets."""
    if octets < 0x80:
        return 2 + octets
    return 2 + (octets.bit_length() + 7) // 8 + octets


def _trim(codes: dict[int, _RowCode], indexes: Sequence[Oid], cells: Sequence[tuple[Raw, ...]]) -> None:
    """Forget the codes of rows gone from the table once they outnumber the live ones."""
    if len(codes) <= 2 * len(cells) + 256:
        return
    live: dict[int, _RowCode] = {}
    for index, row in zip(indexes, cells, strict=True):
        code = codes.get(id(row))
        if code is not None and code.cells is row and code.index is index:
            live[id(row)] = code
    codes.clear()
    codes.update(live)

