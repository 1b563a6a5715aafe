"""A scripted DNS server on 127.0.0.1 (UDP and TCP, one free port) that misbehaves on request."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, Self, cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

HOST = "127.0.0.1"
MAX_CNAME_HOPS = 20  # the server's own chase limit, above dnspython's 16: a loop reaches the client
_STOP_DEADLINE = 5.0


# -- behaviours: what the server does with a query for one (name, type) ------------------------


@dataclass(frozen=True, slots=True, init=False)
class Records:
    """Answer with these records (rdata text, as in a zone file) of the queried name and type.

    `secure`: the data is DNSSEC-valid, so AD is set when the query asks for it (DO or AD
    bit, RFC 6840 5.7), as a validating resolver does.
    """

    rdatas: tuple[str, ...]
    ttl: int = 300
    secure: bool = False

    def __init__(self, *rdatas: str, ttl: int = 300, secure: bool = False) -> None:
        object.__setattr__(self, "rdatas", rdatas)
        object.__setattr__(self, "ttl", ttl)
        object.__setattr__(self, "secure", secure)


@dataclass(frozen=True, slots=True)
class Cname:
    """The name is an alias: answer the CNAME and, like a recursive resolver, what the script says for the target."""

    target: str
    secure: bool = False


@dataclass(frozen=True, slots=True)
class Rcode:
    """An empty answer with this rcode: "NXDOMAIN", "SERVFAIL", "REFUSED", or "NOERROR" for NODATA."""

    rcode: str
    secure: bool = False


@dataclass(frozen=True, slots=True)
class Silence:
    """No reply at all: the client times out."""


@dataclass(frozen=True, slots=True)
class Garbage:
    """These bytes instead of a DNS message."""

    data: bytes = b"\x00\x01 this is not a DNS message"


@dataclass(frozen=True, slots=True)
class WrongId:
    """The answer of `inner`, sent with another query id; `then_correct`: the right one follows."""

    inner: Records | Cname | Rcode = Rcode("NOERROR")
    then_correct: bool = False


@dataclass(frozen=True, slots=True)
class Truncated:
    """Over UDP an empty answer with TC set; over TCP what `then` says."""

    then: Behaviour


@dataclass(frozen=True, slots=True)
class RawRdata:
    """One answer record of the queried type whose rdata is these bytes verbatim (malformed on purpose)."""

    data: bytes


Behaviour = Records | Cname | Rcode | Silence | Garbage | WrongId | Truncated | RawRdata
_Answerable = Records | Cname | Rcode


@dataclass(frozen=True, slots=True)
class SeenQuery:
    """One query the server received."""

    qname: str  # lower case, without the final dot
    qtype: str
    transport: Literal["udp", "tcp"]
    message: dns.message.Message = field(repr=False)


def _key(name: str) -> str:
    return name.lower().rstrip(".")


# -- the server ---------------------------------------------------------------------------------


class ScriptedDnsServer:
    """A DNS server answering from a script of behaviours per (name, type), in a thread of its own.

    `on(name, type, *behaviours)` sets what queries for (name, type) get: the behaviours in
    turn, the last one repeating. What is scripted for type "CNAME" answers every type of
    that name (a `Cname` makes it an alias); type "*" matches any type not scripted. A
    scripted name gets NODATA for other types, any other name `default` (NXDOMAIN). UDP
    answers larger than the client's payload size (512 without EDNS) are truncated with TC,
    so the client retries over TCP as with a real server. Every query is kept in `queries`.
    Use as a context manager: it always stops.
    """

    host = HOST

    def __init__(self, default: Behaviour = Rcode("NXDOMAIN")) -> None:
        self.default = default
        self.queries: list[SeenQuery] = []
        self._script: dict[tuple[str, str], list[Behaviour]] = {}
        self._served: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None

    # -- script -------------------------------------------------------------------------------

    def on(self, name: str, rdtype: str, *behaviours: Behaviour) -> Self:
        """Script (name, type); replaces what was scripted for it before."""
        if not behaviours:
            raise ValueError("on() needs at least one behaviour")
        with self._lock:
            self._script[(_key(name), rdtype.upper())] = list(behaviours)
            self._served.pop((_key(name), rdtype.upper()), None)
        return self

    def records(self, name: str, rdtype: str, *rdatas: str, secure: bool = False) -> Self:
        """Shorthand for on(name, rdtype, Records(*rdatas, secure=secure))."""
        return self.on(name, rdtype, Records(*rdatas, secure=secure))

    def seen(self, name: str, rdtype: str | None = None) -> list[SeenQuery]:
        """The queries received for a name (and type)."""
        return [q for q in list(self.queries) if q.qname == _key(name) and rdtype in (None, q.qtype)]

    def _next(self, key: tuple[str, str]) -> Behaviour | None:
        with self._lock:
            steps = self._script.get(key)
            if steps is None:
                return None
            served = self._served.get(key, 0)
            self._served[key] = served + 1
            return steps[min(served, len(steps) - 1)]

    def _behaviour(self, qname: str, qtype: str) -> Behaviour:
        # a CNAME owns its name: it answers for every type (RFC 1034 3.6.2)
        for key in ((qname, "CNAME"), (qname, qtype), (qname, "*")):
            found = self._next(key)
            if found is not None:
                return found
        with self._lock:
            known = any(name == qname for name, _ in self._script)
        return Rcode("NOERROR") if known else self.default

    # -- answering ----------------------------------------------------------------------------

    def _answer(self, query: dns.message.Message, transport: Literal["udp", "tcp"]) -> list[bytes]:
        """The datagrams (or TCP messages) to send back for one query; [] for silence."""
        question = query.question[0]
        qname, qtype = _key(question.name.to_text()), dns.rdatatype.to_text(question.rdtype)
        self.queries.append(SeenQuery(qname, qtype, transport, query))
        return self._replies(query, self._behaviour(qname, qtype), transport)

    def _replies(
        self, query: dns.message.Message, behaviour: Behaviour, transport: Literal["udp", "tcp"]
    ) -> list[bytes]:
        if isinstance(behaviour, Silence):
            return []
        if isinstance(behaviour, Garbage):
            return [behaviour.data]
        if isinstance(behaviour, RawRdata):
            return [_raw_rdata_response(query, behaviour.data)]
        if isinstance(behaviour, Truncated):
            if transport == "tcp":
                return self._replies(query, behaviour.then, transport)
            response = dns.message.make_response(query)
            response.flags |= dns.flags.TC
            return [response.to_wire()]
        if isinstance(behaviour, WrongId):
            wire = self._fit(query, self._response(query, behaviour.inner), transport)
            wrong = struct.pack("!H", (query.id + 1) & 0xFFFF) + wire[2:]
            return [wrong, wire] if behaviour.then_correct else [wrong]
        return [self._fit(query, self._response(query, behaviour), transport)]

    def _response(self, query: dns.message.Message, behaviour: _Answerable) -> dns.message.Message:
        """A response as a recursive resolver gives it: CNAME chains chased within the script."""
        question = query.question[0]
        response = dns.message.make_response(query)
        response.flags |= dns.flags.RA
        secure = True
        current = behaviour
        owner = question.name
        for _ in range(MAX_CNAME_HOPS):
            secure = secure and current.secure
            if isinstance(current, Records):
                rdatas = [dns.rdata.from_text(dns.rdataclass.IN, question.rdtype, text) for text in current.rdatas]
                response.answer.append(dns.rrset.from_rdata_list(owner, current.ttl, rdatas))
                break
            if isinstance(current, Rcode):
                response.set_rcode(dns.rcode.from_text(current.rcode))
                break
            target = dns.name.from_text(current.target)
            response.answer.append(dns.rrset.from_text(owner, 300, "IN", "CNAME", target.to_text()))
            if question.rdtype == dns.rdatatype.CNAME:
                break
            owner = target
            following = self._behaviour(_key(target.to_text()), dns.rdatatype.to_text(question.rdtype))
            if not isinstance(following, _Answerable):
                response.set_rcode(dns.rcode.SERVFAIL)  # a resolver whose upstream misbehaved
                break
            current = following
        if secure and (query.flags & dns.flags.AD or query.ednsflags & dns.flags.DO):
            response.flags |= dns.flags.AD
        return response

    @staticmethod
    def _fit(query: dns.message.Message, response: dns.message.Message, transport: str) -> bytes:
        wire = response.to_wire()
        limit = max(512, query.payload) if query.edns >= 0 else 512
        if transport == "tcp" or len(wire) <= limit:
            return wire
        response.answer, response.authority, response.additional = [], [], []
        response.flags |= dns.flags.TC
        return response.to_wire()

    def _handle(self, wire: bytes, transport: Literal["udp", "tcp"]) -> list[bytes]:
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return []  # not a query: drop it, as servers do
        if not query.question:
            return []
        return self._answer(query, transport)

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("server not started")
        return self._port

    @property
    def nameserver(self) -> str:
        """host:port, as `dns.nameservers` in the config takes it."""
        return f"{self.host}:{self.port}"

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError("already started")
        udp, tcp = _bind_pair()
        self._port = int(udp.getsockname()[1])
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._run, args=(udp, tcp, ready, failure), name=f"dns-fake-{self._port}", daemon=True
        )
        self._thread.start()
        if not ready.wait(_STOP_DEADLINE) or failure:
            self.stop()
            raise RuntimeError(f"scripted DNS server did not start: {failure}")
        return self

    def _run(
        self, udp: socket.socket, tcp: socket.socket, ready: threading.Event, failure: list[BaseException]
    ) -> None:
        assert self._loop is not None
        try:
            self._loop.run_until_complete(self._serve(udp, tcp, ready))
        except BaseException as exc:  # reported to start(); the thread must not die silently
            failure.append(exc)
            ready.set()
        finally:
            self._loop.close()

    async def _serve(self, udp: socket.socket, tcp: socket.socket, ready: threading.Event) -> None:
        loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        clients: set[asyncio.Task[None]] = set()

        async def on_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            clients.add(task)
            try:
                while True:
                    size = struct.unpack("!H", await reader.readexactly(2))[0]
                    for reply in self._handle(await reader.readexactly(size), "tcp"):
                        writer.write(struct.pack("!H", len(reply)) + reply)
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                clients.discard(task)
                writer.close()

        transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), sock=udp)
        server = await asyncio.start_server(on_tcp, sock=tcp)
        ready.set()
        try:
            await self._stopping.wait()
        finally:
            server.close()
            transport.close()
            for task in list(clients):
                task.cancel()
            await asyncio.gather(*clients, return_exceptions=True)
            await server.wait_closed()

    def stop(self) -> None:
        """Stop serving and close both sockets; safe to call twice."""
        loop, thread, stopping = self._loop, self._thread, self._stopping
        if thread is None:
            return
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in between
                loop.call_soon_threadsafe(stopping.set)
        thread.join(_STOP_DEADLINE)
        if thread.is_alive():
            raise RuntimeError(f"scripted DNS server on port {self._port} did not stop")
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: ScriptedDnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Python 3.11's selector datagram transport does not derive from DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        assert self.transport is not None
        for reply in self.server._handle(data, "udp"):
            self.transport.sendto(reply, addr)


def _raw_rdata_response(query: dns.message.Message, rdata: bytes) -> bytes:
    """A NOERROR response with one answer record whose rdata is `rdata` verbatim."""
    response = dns.message.make_response(query)
    response.flags |= dns.flags.RA
    header = bytearray(response.to_wire())
    question = query.question[0]
    struct.pack_into("!H", header, 6, 1)  # ANCOUNT
    # The record follows the question: owner as a pointer to the question name at offset 12.
    record = struct.pack("!HHHIH", 0xC00C, question.rdtype, dns.rdataclass.IN, 300, len(rdata)) + rdata
    name_wire = question.name.to_wire()
    assert name_wire is not None  # no file given, so to_wire returns the bytes
    end_of_question = 12 + len(name_wire) + 4
    return bytes(header[:end_of_question]) + record + bytes(header[end_of_question:])


def _bind_pair(attempts: int = 50) -> tuple[socket.socket, socket.socket]:
    """A UDP and a TCP listening socket on one free 127.0.0.1 port."""
    for _ in range(attempts):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind((HOST, 0))
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            tcp.bind((HOST, udp.getsockname()[1]))
        except OSError:
            udp.close()
            tcp.close()
            continue  # TCP side taken: try another number
        tcp.listen(16)
        udp.setblocking(False)
        tcp.setblocking(False)
        return udp, tcp
    raise RuntimeError(f"no port free for both UDP and TCP on {HOST} after {attempts} attempts")


def long_txt(text: str, chunk: int = 255) -> str:
    """TXT rdata text holding `text` as several <=255-byte strings, as a zone file writes a long record."""
    return " ".join(f'"{text[i : i + chunk]}"' for i in range(0, len(text), chunk))
