"""A pysnmp-free fast path answering plain SNMPv1/v2c GET, GETNEXT and GETBULK from pre-encoded BER."""

from __future__ import annotations

import logging
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import compress
from operator import is_not
from typing import Any, Generic, NamedTuple, TypeVar

from pyasn1.codec.ber import encoder as pyasn1_encoder
from pyasn1.error import PyAsn1Error
from pysnmp.proto import rfc1902

from monitor.exporters.snmp.fast.ber import (
    SHORT_LENGTHS,
    BerError,
    decode_oid,
    int_body,
    int_tlv,
    integer,
    item,
    length,
    oid_body,
    span,
    sub_ids,
    tlv,
    tlv_size,
)
from monitor.exporters.snmp.mib_oids import Oid
from monitor.exporters.snmp.mibview import (
    SYS_CONTACT,
    SYS_DESCR,
    SYS_LOCATION,
    SYS_NAME,
    SYS_OBJECT_ID,
    SYS_SERVICES,
    SYS_UPTIME,
    MibTable,
    MibView,
    Raw,
    ScalarNode,
)

log = logging.getLogger("smtp_monitor.snmp")
Answer = TypeVar("Answer")

GET, GETNEXT, GETBULK = 0, 1, 5  # context tag numbers of the request PDUs served here
MAX_VARBINDS = 64  # requests with more variable bindings go to pysnmp
MAX_RESPONSE_OCTETS = 65507  # the largest UDP payload over IPv4
MAX_REPEATED = 64  # GETBULK repeats at most this many bindings (pysnmp's BulkCommandResponder.max_varbinds)
# Bounds on what one request may cost or return, on both paths (the pysnmp path in snmp/agent.py).
# A request with more bindings is answered tooBig (RFC 3416 4.2.1, a local constraint): every tool we
# know asks for far fewer, and pysnmp spent 0.2 CPU-s on one of 1,100.
MAX_REQUEST_BINDINGS = 128
# A GETBULK response carries at most this many octets of bindings, fewer repetitions beyond it (RFC 3416
# 4.2.3): a 44-octet request then gets ~4,150 octets at most, 95x, about net-snmp's 98x (its 100-binding
# cap); without it 64 long error texts made 289x. A bulk walk's -Cr50 response of typical rows is ~3,000.
MAX_BULK_OCTETS = 4096

_NULL = b"\x05\x00"
_NO_SUCH_OBJECT, _NO_SUCH_INSTANCE, _END_OF_MIB_VIEW = b"\x80\x00", b"\x81\x00", b"\x82\x00"
_COUNTER64 = 0x46
_TOO_BIG, _NO_SUCH_NAME = 1, 2
_VERSIONS = {0: b"\x02\x01\x00", 1: b"\x02\x01\x01"}
_ZERO_ZERO = b"\x02\x01\x00\x02\x01\x00"  # error-status and error-index 0
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1  # request-id and its two companions (RFC 3416 3)
_CACHE_MAX = 4096  # entries of the small caches (budgets, walk ends) whose entries have a fixed size
_HEADROOM = 64  # more than a response's octets besides its varbinds and head
_AHEAD_MAX = 64  # walks followed at once (managers walking side by side)
_WARM_ROWS = 100  # rows of a column encoded between two pauses of FastPath.warming (well under 1 ms)

_FIXED_PER_TABLE = frozenset({SYS_DESCR, SYS_OBJECT_ID, SYS_CONTACT, SYS_NAME, SYS_LOCATION, SYS_SERVICES})

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


class TooManyBindings(NotHandled):
    """A read request of more than MAX_REQUEST_BINDINGS well-formed bindings: FastPath answers tooBig
    itself, where pysnmp would decode them all first (45 ms for 1,100). Other callers leave it to pysnmp."""

    def __init__(self, request: Request, bindings: bytes) -> None:
        super().__init__("more than MAX_REQUEST_BINDINGS variable bindings")
        self.request = request  # without names: they were not decoded
        self.bindings = bindings  # the varbind list's content octets: SNMPv1's tooBig echoes them


class _TooMany(Exception):
    pass


class _ScalarAhead(Exception):
    """A read-ahead reached a scalar, whose value must be read when the request comes."""


class Guarded(Generic[Answer]):
    """A fast path's bookkeeping: answered, left to pysnmp (NotHandled), or failed (a bug: pysnmp answers)."""

    what = "SNMP fast path"

    def __init__(self) -> None:
        self.answered = 0
        self.fallbacks = 0
        self.errors = 0  # internal failures (bugs): pysnmp answered instead

    def respond(self, message: bytes) -> Answer | None:
        """The answer to `message`, or None to leave it to pysnmp. Never raises."""
        try:
            answer = self._respond(message)
        except NotHandled:
            self.fallbacks += 1
            return None
        except Exception:
            self.errors += 1
            if self.errors == 1:
                log.debug("%s failed; pysnmp answers instead", self.what, exc_info=True)
            return None
        self.answered += 1
        return answer

    def _respond(self, message: bytes) -> Answer:
        raise NotImplementedError


class Request(NamedTuple):
    """A decoded v1/v2c read request. `first`/`second` are error-status/error-index, or for
    GETBULK non-repeaters/max-repetitions; `bodies` are the OIDs' content octets as received.
    `head` is what the response repeats before its PDU inside its SEQUENCE: version and community,
    or for SNMPv3 contextEngineID and contextName, so that the response is the ScopedPDU itself.
    `max_size` caps that response below the fast path's own limit (0: no cap)."""

    version: int
    community: bytes
    pdu: int
    request_id: int
    first: int
    second: int
    names: tuple[Oid, ...]
    bodies: tuple[bytes, ...]
    head: bytes
    max_size: int = 0


_Bindings = tuple[tuple[Oid, ...], tuple[bytes, ...]]

# The decoded-bindings caches are bounded by what their entries cost in memory, not by their count:
# a 16 KiB GET of 64 OIDs of 128 arcs decodes to ~360 KB of tuples and ints, so 4,096 of them took
# 1 GiB. 8 MiB per cache (the agent has two: v1/v2c and v3) keeps ~10,000 one-OID polls or ~300
# snmptable requests, and an entry costing more than 64 KiB is decoded each time instead.
BINDINGS_CACHE_OCTETS = 8 * 1024 * 1024
BINDINGS_ENTRY_OCTETS = 64 * 1024
# What an entry costs, measured with tracemalloc and rounded up: each OID arc is an 8-octet tuple
# slot plus, above 256, a 28-octet int (44 octets an arc at worst); each OID a tuple and a bytes
# object; the key and the OIDs' content octets are held once each.
_COST_PER_ARC = 48
_COST_PER_OID = 128
_COST_PER_ENTRY = 256


class BindingsCache:
    """Decoded variable bindings by the octets of their list, at most `max_octets` of accounted memory.

    Managers poll the same bindings again and again: decoding them once saves a quarter of a GET's cost.
    When the next entry would pass the bound the cache starts afresh (cheaper than LRU bookkeeping per hit)."""

    __slots__ = ("_entries", "max_entry", "max_octets", "octets")

    def __init__(self, max_octets: int = BINDINGS_CACHE_OCTETS, max_entry: int = BINDINGS_ENTRY_OCTETS) -> None:
        self._entries: dict[bytes, _Bindings] = {}
        self.max_octets = max_octets
        self.max_entry = max_entry
        self.octets = 0  # accounted memory of the entries held

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> _Bindings | None:
        return self._entries.get(key)

    def put(self, key: bytes, bindings: _Bindings) -> None:
        names = bindings[0]
        cost = 2 * len(key) + _COST_PER_ARC * sum(map(len, names)) + _COST_PER_OID * len(names) + _COST_PER_ENTRY
        if cost > self.max_entry or key in self._entries:
            return
        if self.octets + cost > self.max_octets:
            self._entries.clear()
            self.octets = 0
        self._entries[key] = bindings
        self.octets += cost


def decode_request(message: bytes, cache: BindingsCache | None = None) -> Request:
    """Strictly decode a v1/v2c GET, GETNEXT or GETBULK request; NotHandled if it is anything else.

    Definite lengths only, no trailing octets, NULL values only, at most MAX_VARBINDS bindings."""
    try:
        return _decode(message, cache)
    except BerError as exc:  # not BER the codec reads: pysnmp decides what it is
        raise NotHandled(str(exc)) from None
    except IndexError:  # read past the end: truncated
        raise NotHandled("truncated") from None


def decode_pdu(
    data: bytes, pos: int, end: int, *, head: bytes, max_size: int = 0, cache: BindingsCache | None = None
) -> Request:
    """Strictly decode the v2c read request PDU from pos to end (its tag octet at pos): the one an
    SNMPv3 ScopedPDU carries, read where it lies rather than framed anew as a v2c message."""
    try:
        return _decode_pdu(data, pos, end, 1, b"", head, max_size, cache)
    except BerError as exc:
        raise NotHandled(str(exc)) from None
    except IndexError:
        raise NotHandled("truncated") from None


def _decode(data: bytes, cache: BindingsCache | None) -> Request:
    end = len(data)
    if data[0] != 0x30:
        raise NotHandled("not a SEQUENCE")
    pos, stop = span(data, 1, end)
    if stop != end:
        raise NotHandled("octets after the message")
    if data[pos : pos + 2] != b"\x02\x01" or data[pos + 2] not in _VERSIONS:  # 3 octets from any encoder
        raise NotHandled("not SNMPv1 or v2c")
    version = data[pos + 2]
    if data[pos + 3] != 0x04:
        raise NotHandled("no community")
    start, pos = span(data, pos + 4, end)
    community = data[start:pos]
    head = _VERSIONS[version] + b"\x04" + length(len(community)) + community  # minimal lengths, as pysnmp answers
    return _decode_pdu(data, pos, end, version, community, head, 0, cache)


def _decode_pdu(
    data: bytes,
    pos: int,
    end: int,
    version: int,
    community: bytes,
    head: bytes,
    max_size: int,
    cache: BindingsCache | None,
) -> Request:
    pdu = data[pos] - 0xA0
    pos, stop = span(data, pos + 1, end)
    if stop != end or not (pdu in (GET, GETNEXT) or (pdu == GETBULK and version == 1)):
        raise NotHandled("not a read request")
    # request-id, error-status, error-index (or non-repeaters, max-repetitions): short INTEGERs
    request_id, pos = integer(data, pos, stop, _INT32_MIN, _INT32_MAX)
    first, pos = integer(data, pos, stop, _INT32_MIN, _INT32_MAX)
    second, pos = integer(data, pos, stop, _INT32_MIN, _INT32_MAX)
    if pos >= stop:
        raise NotHandled("truncated")
    if pdu != GETBULK and second < 0:
        raise NotHandled("negative error-index")  # pysnmp drops it
    if data[pos] != 0x30:
        raise NotHandled("no variable bindings")
    pos, stop_list = span(data, pos + 1, stop)
    if stop_list != stop:
        raise NotHandled("octets after the variable bindings")
    key = data[pos:stop]  # managers poll the same bindings again and again: decode them once
    known = cache.get(key) if cache is not None else None
    if known is None:
        try:
            known = _bindings(data, pos, stop)
        except _TooMany:
            request = Request(version, community, pdu, request_id, first, second, (), (), head)
            raise TooManyBindings(request, data[pos:stop]) from None
        if cache is not None:
            cache.put(key, known)
    return Request(version, community, pdu, request_id, first, second, *known, head, max_size)


def _bindings(data: bytes, pos: int, stop: int) -> _Bindings:
    """The names (and their content octets) of a varbind list whose values are all NULL."""
    names: list[Oid] = []
    bodies: list[bytes] = []
    while pos < stop:
        if len(names) == MAX_VARBINDS:
            if MAX_VARBINDS + _null_bindings(data, pos, stop) > MAX_REQUEST_BINDINGS:
                raise _TooMany
            raise NotHandled("too many variable bindings")
        start, bind_end = item(data, pos, stop, 0x30)  # a VarBind
        oid_start, oid_end = item(data, start, bind_end, 0x06)  # its name
        if data[oid_end:bind_end] != _NULL:
            raise NotHandled("VarBind value is not NULL")
        body = data[oid_start:oid_end]
        names.append(decode_oid(body))
        bodies.append(body)
        pos = bind_end
    return tuple(names), tuple(bodies)


def _null_bindings(data: bytes, pos: int, stop: int) -> int:
    """How many { OID, NULL } bindings follow from pos to stop (their OIDs unread); NotHandled if one is
    not that: every one is checked, so only what pysnmp would read as well is answered here."""
    count = 0
    while pos < stop:
        start, bind_end = item(data, pos, stop, 0x30)  # a VarBind
        _, oid_end = item(data, start, bind_end, 0x06)  # its name
        if data[oid_end:bind_end] != _NULL:
            raise NotHandled("VarBind value is not NULL")
        count += 1
        pos = bind_end
    return count


def _name_varbind(body: bytes, value: bytes) -> bytes:
    """SEQUENCE { name, value } for OID content octets `body`: one concatenation when short (the
    usual varbind), since a cold walk builds one per cell."""
    size = len(body) + 2 + len(value)
    if size < 0x80:
        return bytes((0x30, size, 0x06, len(body))) + body + value
    return tlv(0x30, tlv(0x06, body) + value)


def _end_after(varbind: bytes) -> bytes:
    """endOfMibView under the name of a varbind this module encoded."""
    pos = 2 if varbind[1] < 0x80 else 2 + (varbind[1] & 0x7F)
    size = varbind[pos + 1]
    head = 2
    if size & 0x80:
        head += size & 0x7F
        size = int.from_bytes(varbind[pos + 2 : pos + head], "big")
    return tlv(0x30, varbind[pos : pos + head + size] + _END_OF_MIB_VIEW)


def _value_tlv(value: Any) -> tuple[bytes, int]:
    """(TLV, tag octet) of a pyasn1 value built at request time (a scalar)."""
    spec = _SIMPLE.get(type(value))
    if spec is None:
        encoded = _pyasn1(lambda: value)
        return encoded, encoded[0]
    tag, kind = spec[0], spec[1]
    if kind == _INT:
        return tlv(tag, int_body(int(value))), tag
    if kind == _OCTETS:
        return tlv(tag, value.asOctets()), tag
    return tlv(tag, oid_body(tuple(value))), tag


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
            return tlv(tag, int_body(raw))

        return encode_int

    def encode_octets(raw: Raw) -> bytes:
        if type(raw) is not bytes:
            return _pyasn1(lambda: syntax(raw))
        if not low <= len(raw) <= high:
            raise NotHandled(f"{len(raw)} octets outside {syntax.__name__}")
        return tlv(tag, raw)

    return encode_octets


# -- the served table, compiled -----------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _ColumnCode:
    """A column's encoded varbinds by row position, each with the row version it was encoded from.

    Position-aligned lists let a walk find the rows that changed since it last passed with one
    C-level scan (`sources[i] is not cells[i]`) instead of a lookup per row."""

    sources: list[tuple[Raw, ...] | None]
    varbinds: list[bytes]


@dataclass(slots=True, eq=False)
class _TableCode:
    """A table's encodings, kept across its versions while its rows keep their positions."""

    indexes: Sequence[Oid]  # the index list the positions refer to
    index_bodies: list[bytes]  # each row's index as OID sub-identifier octets
    columns: dict[int, _ColumnCode]  # by column position

    def column(self, position: int) -> _ColumnCode:
        code = self.columns.get(position)
        if code is None:
            rows = len(self.indexes)
            code = self.columns[position] = _ColumnCode([None] * rows, [b""] * rows)
        return code


@dataclass(slots=True, eq=False)
class _CompiledScalar:
    key: Oid
    name_tlv: bytes
    value: Callable[[], tuple[bytes, int]]  # (value TLV, tag octet), read at each request
    visible: bool


@dataclass(slots=True, eq=False)
class _CompiledColumn:
    key: Oid
    key_body: bytes
    indexes: Sequence[Oid]
    cells: Sequence[tuple[Raw, ...]]
    position: int
    encode: Callable[[Raw], bytes]
    counter64: bool
    visible: bool
    index_bodies: list[bytes]  # shared by the table's columns
    code: _ColumnCode  # kept across table versions


_Node = _CompiledScalar | _CompiledColumn


@dataclass(slots=True, eq=False)
class _Compiled:
    table: MibTable
    keys: Sequence[Oid]
    nodes: list[_Node]


@dataclass(slots=True, eq=False)
class _WalkPart:
    """The varbinds of a bulk walk from one position; `after` and `last`: where the walk goes on."""

    varbinds: list[bytes]
    used: int  # their octets
    truncated: bool  # the budget ended it: a shorter response
    after: tuple[int, int] | None = None  # the (node, row) position to go on from; None at the view's end
    last: Oid | None = None  # the name of the last varbind, which the manager's next request repeats


@dataclass(slots=True, eq=False)
class _ReadAhead:
    """A walk's next response to prepare, valid for its compiled table only."""

    compiled: _Compiled
    start: Oid  # the name the next request will carry
    repetitions: int
    budget: int
    position: tuple[int, int]


# -- the fast path ------------------------------------------------------------------------------


class FastPath(Guarded[bytes]):
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
        super().__init__()
        self._view = view
        self._subtrees = tuple(subtrees)
        self._max_repeated = max_repeated
        self._max_message = max_message_size
        self._compiled: _Compiled | None = None
        self._unsupported: MibTable | None = None
        self._table_codes: dict[Oid, _TableCode] = {}  # by table entry OID
        self._encoders: dict[type, Callable[[Raw], bytes]] = {}
        self._bindings = BindingsCache()
        self._budgets: dict[tuple[int, int, int], int] = {}
        self._walk_ends: dict[Oid, bool] = {}  # names that ended a walk response: a request there continues a walk
        self._plan: _ReadAhead | None = None
        self._prepared: dict[Oid, tuple[_ReadAhead, _WalkPart]] = {}  # by the name the next request carries
        self._warmed: _Compiled | None = None  # the table whose every cell warming() last encoded
        self.read_ahead_served = 0

    def _respond(self, message: bytes) -> bytes:
        try:
            request = decode_request(message, self._bindings)
        except TooManyBindings as too_many:
            # RFC 3416 4.2.1 (SNMPv1, RFC 1157 4.1.2: the request's bindings echoed), as the pysnmp path
            request = too_many.request
            return _message(request, _TOO_BIG, 0, [too_many.bindings] if request.version == 0 else [])
        return self.answer(request)

    def answer(self, request: Request) -> bytes:
        """The response to a decoded request: a v1/v2c message, or the ScopedPDU of an SNMPv3 one (the
        request's `head`); NotHandled when pysnmp must answer it.

        Unlike `respond` this raises and counts nothing: the SNMPv3 path calls it with its own PDUs."""
        compiled = self._current()
        if request.pdu == GETBULK:
            return self._bulk(compiled, request)
        if len(request.names) == 1:  # the usual poll: one binding, no lists to build
            if request.pdu == GET:
                varbind, kind = self._get(compiled, request.names[0], request.bodies[0])
            else:
                varbind, kind = self._get_next(compiled, request.names[0], request.bodies[0], request.version == 0)
            if kind != _VALUE and request.version == 0:
                return _message(request, _NO_SUCH_NAME, 1, _echo(request))
            size = len(varbind)
            if size + len(request.head) > self._limit(request) - _HEADROOM and size > self._budget(request):
                return _message(request, _TOO_BIG, 0, _echo(request) if request.version == 0 else [])
            return _message(request, 0, 0, [varbind], size)
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
                return _message(request, _NO_SUCH_NAME, index, _echo(request))
        varbinds = [varbind for varbind, _ in outcomes]
        size = sum(map(len, varbinds))
        if size > self._budget(request):
            # RFC 3416 4.2.1: tooBig without bindings (SNMPv1 echoes the request's, RFC 1157 4.1.2)
            return _message(request, _TOO_BIG, 0, _echo(request) if request.version == 0 else [])
        return _message(request, 0, 0, varbinds, size)

    # -- lookups (MibTable.get/next/is_object, on the compiled nodes) -----------------------------

    def _get(self, compiled: _Compiled, oid: Oid, body: bytes) -> tuple[bytes, int]:
        i = bisect_right(compiled.keys, oid) - 1
        if i >= 0:
            node = compiled.nodes[i]
            key = node.key
            if isinstance(node, _CompiledColumn):
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
                value, tag = node.value()
                return tlv(0x30, node.name_tlv + value), _BIG_COUNTER if tag == _COUNTER64 else _VALUE
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
        if isinstance(node, _CompiledColumn):
            return i, bisect_right(node.indexes, oid[len(node.key) :])
        return i + 1, 0  # at (or below) a scalar instance

    def _next_from(
        self, compiled: _Compiled, k: int, j: int, v1_next: bool, *, scalars: bool = True
    ) -> tuple[int, int, bytes] | None:
        """(node, row, varbind) of the first readable instance at or after position (k, j).

        Nodes outside the view are skipped, as are Counter64 ones for an SNMPv1 GETNEXT
        (RFC 3584 4.1.2.1: the whole column, as the pysnmp path does). With scalars=False a
        scalar instance raises _ScalarAhead instead of being read (a read-ahead must not read it early)."""
        nodes = compiled.nodes
        while k < len(nodes):
            node = nodes[k]
            if node.visible:
                if isinstance(node, _CompiledColumn):
                    if j < len(node.indexes) and not (v1_next and node.counter64):
                        return k, j, self._cell(node, j)
                elif j == 0:
                    if not scalars:
                        raise _ScalarAhead
                    value, tag = node.value()
                    if not (v1_next and tag == _COUNTER64):
                        return k, 0, tlv(0x30, node.name_tlv + value)
            k += 1
            j = 0
        return None

    @staticmethod
    def _cell(node: _CompiledColumn, j: int) -> bytes:
        """The encoded varbind of row j of a column, from the column's code when the row is unchanged."""
        code = node.code
        if code.sources[j] is not node.cells[j]:
            _encode_row(node, j)
        return code.varbinds[j]

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
        if r == 1 and m:
            return self._walk(compiled, request, out, used, budget, m)
        nodes = compiled.nodes
        # per repeater: the next candidate position, or k = -1 once at the end of the view
        ks, js = [0] * r, [0] * r
        for i in range(r):
            ks[i], js[i] = self._locate(compiled, names[n + i])
        ends: list[bytes | None] = [None] * r  # their endOfMibView varbinds
        last: list[bytes | None] = [None] * r  # the latest varbind found per repeater
        while m and r:
            ended = 0
            for i in range(r):
                k, j = ks[i], js[i]
                found_varbind: bytes | None = None
                if k >= 0:
                    node = nodes[k] if k < len(nodes) else None
                    # the common case, a walk down a column, without the general search
                    if isinstance(node, _CompiledColumn) and node.visible and j < len(node.indexes):
                        found_varbind = self._cell(node, j)
                        js[i] = j + 1
                    else:
                        found = self._next_from(compiled, k, j, False)
                        if found is not None:
                            k, j, found_varbind = found
                            ks[i], js[i] = k, j + 1  # past a scalar or the last row: _next_from moves on
                if found_varbind is not None:
                    varbind = last[i] = found_varbind
                else:
                    ks[i] = -1
                    end = ends[i]
                    if end is None:
                        previous = last[i]
                        end = ends[i] = (
                            _end_after(previous)
                            if previous is not None
                            else _name_varbind(bodies[n + i], _END_OF_MIB_VIEW)
                        )
                    varbind = end
                    ended += 1
                used += len(varbind)
                if used > budget:
                    return self._truncated(request, out)
                out.append(varbind)
            if ended == r:
                break
            m -= 1
        return _message(request, 0, 0, out, used)

    def _walk(self, compiled: _Compiled, request: Request, out: list[bytes], used: int, budget: int, m: int) -> bytes:
        """GETBULK with one repeated binding (a bulk walk): rows of a column in a tight loop."""
        start = request.names[-1]
        prepared = self._prepared.pop(start, None) if not out else None  # non-repeaters: never prepared
        if prepared is not None:
            plan, part = prepared
            # A part that fitted its own budget and fits this one is what this request would build.
            if plan.compiled is compiled and plan.repetitions == m and part.used <= budget:
                self.read_ahead_served += 1
                self._follow(compiled, m, budget, part, continues=True)
                return _message(request, 0, 0, part.varbinds, part.used)
        # The agent read this request in the turn it answered the one before (fast.receive), so
        # read_ahead() has not run yet: the plan is this request's, and would prepare what none will take.
        pending = self._plan
        planned_here = pending is not None and pending.start == start
        if planned_here:
            self._plan = None
        continues = not out and (planned_here or self._walk_ends.pop(start, False))
        k, j = self._locate(compiled, start)
        part = self._walk_part(compiled, k, j, m, budget, out, used, request.bodies[-1], columns_only=False)
        if part.truncated:
            return self._truncated(request, part.varbinds)
        self._follow(compiled, m, budget, part, continues)
        return _message(request, 0, 0, part.varbinds, part.used)

    def _walk_part(
        self,
        compiled: _Compiled,
        k: int,
        j: int,
        m: int,
        budget: int,
        out: list[bytes],
        used: int,
        start_body: bytes,
        *,
        columns_only: bool,
    ) -> _WalkPart:
        """Up to m instances from position (k, j) appended to `out`, and where a walk would go on.

        columns_only: _ScalarAhead instead of reading a scalar (a read-ahead must not read health values early)."""
        nodes = compiled.nodes
        previous: bytes | None = None
        last: Oid | None = None
        while m:
            node = nodes[k] if k < len(nodes) else None
            if isinstance(node, _CompiledColumn) and node.visible and j < len(node.indexes):
                stop = min(j + m, len(node.indexes))
                m -= stop - j
                # Only rows replaced since this column was last encoded go through Python.
                for row in _stale_rows(node, j, stop):
                    _encode_row(node, row)
                chunk = node.code.varbinds[j:stop]
                size = sum(map(len, chunk))
                if used + size > budget:
                    for varbind in chunk:
                        used += len(varbind)
                        if used > budget:
                            return _WalkPart(out, used, True)
                        out.append(varbind)
                used += size
                out += chunk
                last = node.key + node.indexes[stop - 1]
                j = stop
                previous = out[-1]
                continue
            found = self._next_from(compiled, k, j, False, scalars=not columns_only)
            if found is None:
                end = _end_after(previous) if previous is not None else _name_varbind(start_body, _END_OF_MIB_VIEW)
                used += len(end)
                if used > budget:
                    return _WalkPart(out, used, True)
                out.append(end)
                return _WalkPart(out, used, False)
            k, j, previous = found
            found_node = nodes[k]
            last = found_node.key + found_node.indexes[j] if isinstance(found_node, _CompiledColumn) else found_node.key
            j += 1
            m -= 1
            used += len(previous)
            if used > budget:
                return _WalkPart(out, used, True)
            out.append(previous)
        return _WalkPart(out, used, False, (k, j), last)

    # -- reading ahead of a bulk walk -------------------------------------------------------------

    def _follow(self, compiled: _Compiled, m: int, budget: int, part: _WalkPart, continues: bool) -> None:
        """Note where a bulk walk's response ended; once a walk continues there, plan its next response.

        A lone GETBULK plans nothing: the second request of a walk is the first to be read ahead of."""
        if part.after is None or part.last is None:
            return  # the end of the view: no next request
        if continues:
            self._plan = _ReadAhead(compiled, part.last, m, budget, part.after)
        else:
            if len(self._walk_ends) >= _AHEAD_MAX:
                self._walk_ends.clear()
            self._walk_ends[part.last] = True

    def warming(self) -> Iterator[None]:
        """Bring every served cell's encoding up to its row's current version, pausing (yielding)
        after every stretch of rows: the agent runs it in slices between requests.

        A walk then finds its cells encoded whatever changed since the last one: with 10,000 probes
        every row is replaced within an interval, and a walk that met them all replaced paid for
        rebuilding and encoding them (0.5 CPU-s) while the manager waited."""
        try:
            compiled = self._current()
        except NotHandled:
            return  # pysnmp answers this table: nothing to keep
        if compiled is self._warmed:
            return  # no row replaced since: not even a scan (13 ms with 10,000 rows)
        for node in compiled.nodes:
            if not isinstance(node, _CompiledColumn) or not node.visible:
                continue
            stale = _stale_rows(node, 0, len(node.cells))
            for start in range(0, len(stale), _WARM_ROWS):
                for row in stale[start : start + _WARM_ROWS]:
                    _encode_row(node, row)
                yield
        self._warmed = compiled

    @property
    def planned(self) -> bool:
        """Whether read_ahead() has a walk's next response to prepare."""
        return self._plan is not None

    def read_ahead(self) -> None:
        """Prepare the next response of the walk in progress while the manager reads this one.

        The manager's next request then costs a lookup: on a machine with a core to spare, the agent's
        share of a walk leaves its critical path. Never raises (the agent calls it from the event loop)."""
        plan, self._plan = self._plan, None
        if plan is None:
            return
        body = oid_body(plan.start)  # the name the request will carry, and endOfMibView's if nothing follows
        try:
            k, j = plan.position
            part = self._walk_part(plan.compiled, k, j, plan.repetitions, plan.budget, [], 0, body, columns_only=True)
        except _ScalarAhead:
            return  # answered when the request comes, with the scalar read then
        except Exception:
            log.debug("reading ahead of a bulk walk failed; the request is answered when it comes", exc_info=True)
            return
        if part.truncated:
            return
        if len(self._prepared) >= _AHEAD_MAX:
            self._prepared.clear()
        self._prepared[plan.start] = (plan, part)
        # The next request's one binding, as every BER encoder writes it: decoded now, not on arrival.
        self._bindings.put(_name_varbind(body, _NULL), ((plan.start,), (body,)))

    @staticmethod
    def _truncated(request: Request, varbinds: list[bytes]) -> bytes:
        if not varbinds:
            return _message(request, _TOO_BIG, 0, [])
        return _message(request, 0, 0, varbinds)

    def _limit(self, request: Request) -> int:
        """The response's size limit: ours, or the request's own when it is smaller (SNMPv3 msgMaxSize)."""
        return min(request.max_size or self._max_message, self._max_message)

    def _budget(self, request: Request) -> int:
        """The most varbind octets a response to `request` can carry within the message size
        (and MAX_BULK_OCTETS for GETBULK)."""
        octets = self._message_budget(request)
        return min(octets, MAX_BULK_OCTETS) if request.pdu == GETBULK else octets

    def _message_budget(self, request: Request) -> int:
        limit = self._limit(request)
        shape = (len(request.head), request.request_id.bit_length(), limit)
        octets = self._budgets.get(shape)
        if octets is None:
            octets = limit - _message_size(request, 0)  # longer lengths take a few octets more
            while octets > 0 and _message_size(request, octets) > limit:
                octets -= 1
            if len(self._budgets) >= _CACHE_MAX:  # SNMPv3 managers choose the limit
                self._budgets.clear()
            self._budgets[shape] = octets
        return octets

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
        # What was read ahead of the old table is never served (_walk checks the table), and holding
        # it would keep that table and its encoded cells alive: 5-6 MiB at 10,000 probes.
        self._prepared.clear()
        self._plan = None
        return compiled

    def _compile(self, table: MibTable) -> _Compiled:
        try:
            return self._compile_nodes(table)
        except BerError as exc:  # a node OID the codec cannot write: pysnmp answers this table
            raise NotHandled(f"MIB node not encodable: {exc}") from None

    def _compile_nodes(self, table: MibTable) -> _Compiled:
        keys = table.node_oids
        if not keys:
            raise NotHandled("an empty MibTable")
        nodes: list[_Node] = []
        tables: dict[Oid, _TableCode] = {}  # checked once per compile
        for key, node in zip(keys, table.nodes, strict=True):
            visible = self._visible(key)
            if isinstance(node, ScalarNode):
                nodes.append(_CompiledScalar(key, tlv(0x06, oid_body(key)), self._scalar_value(key, node), visible))
            else:
                rows = node.rows
                table_code = tables.get(key[:-1])
                if table_code is None:
                    table_code = tables[key[:-1]] = self._table_code(key[:-1], rows.indexes)
                counter64 = getattr(node.syntax, "tagSet", None) == rfc1902.Counter64.tagSet
                nodes.append(
                    _CompiledColumn(
                        key,
                        oid_body(key),
                        rows.indexes,
                        rows.cells,
                        node.position,
                        self._encoder(node.syntax),
                        counter64,
                        visible,
                        table_code.index_bodies,
                        table_code.column(node.position),
                    )
                )
        return _Compiled(table, keys, nodes)

    def _table_code(self, entry: Oid, indexes: Sequence[Oid]) -> _TableCode:
        """The table's code, kept while its rows keep their positions; afresh when rows came or went."""
        code = self._table_codes.get(entry)
        if code is not None and (code.indexes is indexes or code.indexes == indexes):
            code.indexes = indexes
            return code
        code = self._table_codes[entry] = _TableCode(indexes, [sub_ids(index) for index in indexes], {})
        return code

    def _scalar_value(self, key: Oid, node: ScalarNode) -> Callable[[], tuple[bytes, int]]:
        if key == SYS_UPTIME:
            # Read at every request like every scalar, without building a pyasn1 TimeTicks.
            uptime = self._view.uptime_ticks
            return lambda: (tlv(0x43, int_body(uptime())), 0x43)
        if key in _FIXED_PER_TABLE:
            # The rest of the system group is fixed when MibView builds a table: encode it once.
            encoded = _value_tlv(node.read())
            return lambda: encoded
        read = node.read  # health facts and the like: read at request time, as pysnmp does
        return lambda: _value_tlv(read())

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


# -- messages -------------------------------------------------------------------------------------


def _message(request: Request, status: int, index: int, varbinds: list[bytes], size: int = -1) -> bytes:
    """The Response-PDU in its SEQUENCE after the request's head (a v1/v2c message, or a ScopedPDU), assembled
    in one join (varbinds are not copied on the way); `size` is the varbinds' total length when the caller knows it."""
    request_id = request.request_id
    rid = request_id.to_bytes(request_id.bit_length() // 8 + 1, "big", signed=True)
    fields = b"\x02" + SHORT_LENGTHS[len(rid)] + rid
    fields += int_tlv(status) + int_tlv(index) if status or index else _ZERO_ZERO
    if size < 0:
        size = sum(map(len, varbinds))
    list_head = b"\x30" + length(size)
    pdu_size = len(fields) + len(list_head) + size
    pdu_head = b"\xa2" + length(pdu_size)
    head = request.head + pdu_head + fields + list_head
    return b"".join([b"\x30", length(len(head) + size), head, *varbinds])


def _message_size(request: Request, octets: int) -> int:
    """The size of a noError response carrying `octets` octets of varbinds."""
    fixed = len(request.head)
    pdu = len(int_tlv(request.request_id)) + len(_ZERO_ZERO) + tlv_size(octets)
    return tlv_size(fixed + tlv_size(pdu))


def _echo(request: Request) -> list[bytes]:
    return [_name_varbind(body, _NULL) for body in request.bodies]


def _stale_rows(node: _CompiledColumn, start: int, stop: int) -> list[int]:
    """The rows among start..stop-1 of a column replaced since they were encoded: one C-level scan."""
    sources, rows = node.code.sources[start:stop], node.cells[start:stop]
    return list(compress(range(start, stop), map(is_not, sources, rows)))


def _encode_row(node: _CompiledColumn, j: int) -> None:
    """Bring row j of a column's code up to the row's current version.

    A new version of a row usually changes a few cells (timings, counters): a cell equal to the
    one it was encoded from keeps its varbind."""
    code, cells, position = node.code, node.cells[j], node.position
    source, value = code.sources[j], cells[position]
    if source is None or source[position] != value:
        code.varbinds[j] = _name_varbind(node.key_body + node.index_bodies[j], node.encode(value))
    code.sources[j] = cells
