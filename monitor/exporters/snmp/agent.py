"""The SNMP agent: pysnmp's engine in the monitor's event loop, answering reads from the MibView."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyasn1.codec.ber import encoder as ber_encoder
from pysnmp.carrier.asyncio.dgram import udp, udp6
from pysnmp.carrier.asyncio.dispatch import AsyncioDispatcher
from pysnmp.entity import config as pysnmp_config
from pysnmp.entity.rfc3413 import cmdrsp
from pysnmp.entity.rfc3413.context import SnmpContext
from pysnmp.proto import rfc1905
from pysnmp.proto.api import v2c
from pysnmp.smi import error as smi_error

from monitor.config.schema import SnmpConfig, parse_snmp_listen
from monitor.exporters.snmp import mib_oids
from monitor.exporters.snmp.engine import new_snmp_engine
from monitor.exporters.snmp.fast.ber import BerError, any_item, oid_body, tlv_size
from monitor.exporters.snmp.fast.fastpath import MAX_BULK_OCTETS, MAX_REQUEST_BINDINGS, MAX_RESPONSE_OCTETS, FastPath
from monitor.exporters.snmp.fast.receive import Udp6Listener, UdpListener
from monitor.exporters.snmp.fast.usm_fastpath import Refusal, Screened, UsmFastPath
from monitor.exporters.snmp.identity import (
    AUTH_PROTOCOLS,
    ENGINE_STATE_FILE,
    PRIV_PROTOCOLS,
    EngineState,
    next_engine_state,
    parse_engine_id,
)
from monitor.exporters.snmp.mib_oids import Oid
from monitor.exporters.snmp.mibview import BEYOND, SYSTEM, MibTable, MibView, SnapshotSource
from monitor.exporters.snmp.ratelimit import TokenBucket
from monitor.state.health import AgentHealth

log = logging.getLogger("smtp_monitor.snmp")

# Larger datagrams are dropped unread: a GET of 64 varbinds with long OIDs stays below 10 KiB.
MAX_REQUEST_OCTETS = 16384
VIEW_MAX_STALENESS = 0.5  # seconds an SNMP answer may lag the store (one rebuild per half second at most)
# Keeping the encodings warm: every WARM_EVERY seconds the rows replaced since are encoded, in slices of
# WARM_SLICE seconds of the event loop, as long as a request came within WARM_IDLE seconds.
WARM_EVERY = 1.0
WARM_SLICE = 0.002
WARM_IDLE = 900.0
# Subtrees a manager may read: the system group and our own MIB (RFC 3415 views).
READ_SUBTREES: tuple[Oid, ...] = (SYSTEM, mib_oids.MIB_ROOT)
VIEW_NAME = "smtp-monitor"

# (security model, minimum security level, VACM group)
_GROUPS = (
    (1, "noAuthNoPriv", "smtp-monitor-v1"),
    (2, "noAuthNoPriv", "smtp-monitor-v2c"),
    (3, "authNoPriv", "smtp-monitor-auth"),
    (3, "authPriv", "smtp-monitor-priv"),
)

# Request PDU tag numbers (context-specific, RFC 3416) and the names counted in health.
PDU_NAMES = {0: "get", 1: "getnext", 3: "set", 5: "getbulk"}
_V1_REQUESTS = frozenset({0, 1, 3})
_V2C_REQUESTS = frozenset({0, 1, 3, 5})
# SNMPv3 refusals that mean wrong or missing credentials (not discovery or time sync).
_AUTH_REFUSALS = frozenset(
    {
        Refusal.WRONG_DIGEST,
        Refusal.UNKNOWN_USER_NAME,
        Refusal.DECRYPTION_ERROR,
        Refusal.UNSUPPORTED_SEC_LEVEL,
    }
)
_DROPPED_REFUSALS = {Refusal.MALFORMED: "malformed", Refusal.NOT_A_REQUEST: "not a request"}
# pysnmp's share of the event loop: it spends ~1 ms a message (the fast paths ~0.05 ms), so what
# still reaches it (authentic SETs, other contexts, odd requests; replays of captured ones) gets at
# most half a second of each second, with half a second of burst: GETs on the fast paths keep the rest.
PYSNMP_SHARE = 0.5
PYSNMP_BURST = 0.5

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class SnmpAgentError(Exception):
    """The SNMP agent cannot start or reconfigure."""


class SnmpBindError(SnmpAgentError):
    """A listen address cannot be bound; `address` is the configured text."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"cannot bind SNMP listen address {address}: {reason}")
        self.address = address


# -- request screening --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessageHeader:
    """The start of an SNMP message: version, and for v1/v2c the community and PDU tag number."""

    version: int
    community: bytes = b""
    pdu_tag: int = -1


def parse_header(message: bytes) -> MessageHeader | None:
    """Decode just enough of a message to screen it; None if it is not a well-formed SNMP message."""
    size = len(message)
    try:
        tag, start, end = any_item(message, 0, size)
        if tag != 0x30:
            return None
        tag, vstart, vend = any_item(message, start, size)
        if tag != 0x02 or not 1 <= vend - vstart <= 4:
            return None
        version = int.from_bytes(message[vstart:vend], "big", signed=True)
        if version not in (0, 1):
            return MessageHeader(version)
        tag, cstart, cend = any_item(message, vend, size)
        if tag != 0x04:
            return None
        tag, _, pdu_end = any_item(message, cend, size)
        if tag & 0xE0 != 0xA0 or pdu_end > end:  # context-specific, constructed
            return None
        return MessageHeader(version, message[cstart:cend], tag & 0x1F)
    except BerError:
        return None


def _source_ip(address: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(str(address[0]).split("%")[0])
    except (ValueError, IndexError, TypeError):
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class _Gate:
    """Screens datagrams before pysnmp: size, shape, community and its allowed sources.

    A wrong community or source gets no answer (RFC 3584 drops it too) and counts as an
    authentication failure; anything malformed counts as dropped."""

    def __init__(self, health: AgentHealth, max_octets: int = MAX_REQUEST_OCTETS) -> None:
        self.health = health
        self.max_octets = max_octets
        # community -> allowed source networks; an empty tuple allows every source
        self.communities: dict[bytes, tuple[Network, ...]] = {}

    def admit(self, address: Any, message: bytes) -> MessageHeader | None:
        if len(message) > self.max_octets:
            self.health.snmp_dropped += 1
            return None
        header = parse_header(message)
        if header is None or header.version not in (0, 1, 3):
            self.health.snmp_dropped += 1
            return None
        if header.version == 3:
            return header  # USM authenticates further on (UsmFastPath, else pysnmp)
        if header.pdu_tag not in (_V1_REQUESTS if header.version == 0 else _V2C_REQUESTS):
            self.health.snmp_dropped += 1
            return None
        networks = self.communities.get(header.community)
        if networks is None or (networks and not self._allowed(address, networks)):
            self.health.snmp_auth_failures += 1
            return None
        return header

    @staticmethod
    def _allowed(address: Any, networks: tuple[Network, ...]) -> bool:
        ip = _source_ip(address)
        return ip is not None and any(ip in network for network in networks)

    def drop(self, reason: str) -> None:
        self.health.snmp_dropped += 1
        self.health.snmp_dropped_reasons[reason] += 1


class _GuardedDispatcher(AsyncioDispatcher):  # type: ignore[misc]  # pysnmp is untyped
    """pysnmp's asyncio dispatcher with the gate in front, the fast paths next and a net behind.

    Every SNMPv3 message is screened by the USM fast path (`UsmFastPath.screen`): pysnmp sees only
    authentic in-window requests it does not serve, and never a Response, Report or Trap. What
    reaches pysnmp shares a time budget (PYSNMP_SHARE of the loop). pysnmp raises uncaught
    exceptions on some malformed messages (a TypeError on ~2 % of random datagrams): they are
    counted as dropped instead of reaching the event loop as tracebacks."""

    def __init__(
        self, gate: _Gate, loop: asyncio.AbstractEventLoop, fast: FastPath | None = None, usm: UsmFastPath | None = None
    ) -> None:
        super().__init__(loop=loop)
        self._gate = gate
        self._fast = fast
        self._usm = usm
        # The budget keeps the fast paths' share of the loop; with no fast path (the tests' pysnmp-only
        # agents) pysnmp answers everything and there is no share to keep.
        self.pysnmp_budget = TokenBucket(PYSNMP_SHARE, PYSNMP_BURST, time.perf_counter) if fast is not None else None

    def _callback_function(self, transport: Any, address: Any, message: bytes) -> None:
        gate = self._gate
        try:
            header = gate.admit(address, message)
            if header is None:
                return
            if header.version == 3:
                if self._screen_v3(transport, address, message):
                    return
            elif self._answer_fast(transport, address, message, header):
                return
            budget = self.pysnmp_budget
            if budget is None:
                super()._callback_function(transport, address, message)
                return
            if not budget.allows():
                gate.drop("pysnmp busy")
                return
            started = time.perf_counter()
            try:
                super()._callback_function(transport, address, message)
            finally:
                budget.charge(time.perf_counter() - started)
        except Exception as exc:
            gate.health.snmp_dropped += 1
            log.debug("dropped SNMP message from %s: %s: %s", address, type(exc).__name__, exc)

    def _screen_v3(self, transport: Any, address: Any, message: bytes) -> bool:
        """Answer, report or drop an SNMPv3 message; False leaves an authentic request to pysnmp."""
        gate, usm = self._gate, self._usm
        if usm is None:  # not started: nothing screens, so nothing goes on
            gate.drop("malformed")
            return True
        screened: Screened = usm.screen(message)
        refusal = screened.refusal
        if refusal is Refusal.UNSERVED:
            return False
        health = gate.health
        if refusal is None:
            health.snmp_requests[PDU_NAMES[screened.pdu]] += 1  # counted before it leaves, as below
        elif refusal in _DROPPED_REFUSALS:
            gate.drop(_DROPPED_REFUSALS[refusal])
            return True
        elif refusal in _AUTH_REFUSALS:
            health.snmp_auth_failures += 1
        if screened.report_limited:
            health.snmp_dropped_reasons["report rate-limited"] += 1
        datagram = screened.datagram
        endpoint = getattr(transport, "transport", None)  # the asyncio DatagramTransport
        if datagram is None or endpoint is None or endpoint.is_closing():
            return True
        if refusal is not None:
            health.snmp_reports[refusal.value] += 1
        endpoint.sendto(datagram, address)
        fast = self._fast
        if refusal is None and fast is not None and fast.planned:
            self.loop.call_soon(fast.read_ahead)  # as in _answer_fast
        return True

    def _answer_fast(self, transport: Any, address: Any, message: bytes, header: MessageHeader) -> bool:
        """Count and send the v1/v2c fast path's answer on the receiving socket; False leaves the message to pysnmp."""
        endpoint = getattr(transport, "transport", None)  # the asyncio DatagramTransport
        if endpoint is None or endpoint.is_closing():  # closing listener: pysnmp drops it
            return False
        response = self._fast.respond(message) if self._fast is not None else None
        answer = None if response is None else (response, header.pdu_tag)
        if answer is None:
            return False
        # Counted before it leaves: a manager that got the answer must already see it counted.
        self._gate.health.snmp_requests[PDU_NAMES[answer[1]]] += 1
        endpoint.sendto(answer[0], address)
        fast = self._fast
        if fast is not None and fast.planned:
            # A bulk walk is in progress: build its next response while the manager reads this one.
            self.loop.call_soon(fast.read_ahead)
        return True


# -- MIB instrumentation ------------------------------------------------------------------------


def _in_served_tree(oid: Oid) -> bool:
    return any(oid[: len(root)] == root for root in READ_SUBTREES)


class _ViewInstrumentation:
    """pysnmp's MIB instrumentation interface (read/next/write variables) over the MibView.

    pysnmp calls these synchronously while it handles one request; `acFun` is its VACM check:
    True means not in the view, NoAccessError means a Counter64 a v1 GETNEXT must skip."""

    def __init__(self, view: MibView) -> None:
        self._view = view

    def read_variables(self, *var_binds: Any, **context: Any) -> list[tuple[Any, Any]]:
        table = self._view.current()
        check = context.get("acFun")
        out = []
        for idx, (name, _) in enumerate(var_binds):
            oid = tuple(name)
            value = table.get(oid)
            if value is None:
                value = rfc1905.noSuchInstance if table.is_object(oid) else rfc1905.noSuchObject
            elif check is not None:
                try:
                    if check("read", (oid, value), **{**context, "idx": idx}):
                        value = rfc1905.noSuchObject
                except smi_error.NoAccessError:
                    value = rfc1905.noSuchObject
            out.append((name, value))
        return out

    def read_next_variables(self, *var_binds: Any, **context: Any) -> list[tuple[Any, Any]]:
        table = self._view.current()
        check = context.get("acFun")
        return [
            self._next(table, tuple(name), check, {**context, "idx": idx}, name)
            for idx, (name, _) in enumerate(var_binds)
        ]

    @staticmethod
    def _next(
        table: MibTable, oid: Oid, check: Callable[..., Any] | None, context: dict[str, Any], name: Any
    ) -> tuple[Any, Any]:
        while True:
            found = table.next(oid)
            if found is None:
                return name, rfc1905.endOfMibView
            oid, value = found
            if check is None:
                return oid, value
            try:
                if not check("read", (oid, value), **context):
                    return oid, value
            except smi_error.NoAccessError:
                # SNMPv1 cannot carry Counter64: skip the whole column, not row by row.
                key = table.node_key(oid)
                if key is not None:
                    oid = (*key, BEYOND)

    def write_variables(self, *var_binds: Any, **context: Any) -> list[tuple[Any, Any]]:
        # Read-only agent (the configuration lives in the YAML file).
        for idx, (name, _) in enumerate(var_binds):
            if _in_served_tree(tuple(name)):
                raise smi_error.NotWritableError(name=name, idx=idx)
            raise smi_error.NoAccessError(name=name, idx=idx)
        return []


# Octets of a response message besides its varbinds and community (v1/v2c): the message and PDU
# headers with long lengths, version, the widest request-id, error-status, error-index, list header.
_V2C_AROUND = 32
# Octets of an SNMPv3 ScopedPDU besides its PDU's varbinds, past pysnmp's maxSizeResponseScopedPDU
# (msgMaxSize less the request's own security parameters and 48): the ScopedPDU and PDU headers, the
# encrypted OCTET STRING and DES padding, and boots and time longer than the request's.
_V3_AROUND = 64


def _varbind_octets(var_bind: tuple[Any, Any]) -> int:
    """The encoded size of one VarBind, as pyasn1 (and the fast path) writes it."""
    name, value = var_bind
    return tlv_size(len(oid_body(tuple(name))) + 2 + len(ber_encoder.encode(value)))  # OID tag and length


class _BoundedResponder(cmdrsp.CommandResponderBase):  # type: ignore[misc]  # pysnmp is untyped
    """A read responder that answers tooBig (RFC 3416 4.2.1) where pysnmp dropped the response in
    silence (snmpSilentDrops): a request of more than MAX_REQUEST_BINDINGS bindings, and a response
    larger than the message size (65,507 octets, or a smaller SNMPv3 msgMaxSize)."""

    def __init__(self, engine: Any, context: Any, cb_ctx: Any = None) -> None:
        super().__init__(engine, context, cb_ctx)
        self._budgets: dict[Any, int] = {}  # varbind octets a response may carry, by stateReference

    def process_pdu(
        self,
        engine: Any,
        mp_model: int,
        security_model: Any,
        security_name: Any,
        security_level: Any,
        context_engine_id: Any,
        context_name: Any,
        pdu_version: Any,
        pdu: Any,
        max_scoped: int,
        state_reference: Any,
    ) -> None:
        if mp_model in (0, 1):
            request = engine.observer.get_execution_context("rfc3412.receiveMessage:request")["wholeMsg"]
            header = parse_header(bytes(request))
            community = len(header.community) if header is not None else 255
            budget = MAX_RESPONSE_OCTETS - _V2C_AROUND - tlv_size(community)
        else:
            context = len(context_engine_id) + len(context_name)
            budget = min(int(max_scoped), MAX_RESPONSE_OCTETS - 256) - _V3_AROUND - context
        self._budgets[state_reference] = budget
        try:
            super().process_pdu(
                engine, mp_model, security_model, security_name, security_level, context_engine_id, context_name,
                pdu_version, pdu, max_scoped, state_reference,
            )  # fmt: skip
        finally:
            self._budgets.pop(state_reference, None)

    def handle_management_operation(self, engine: Any, state_reference: Any, context_name: Any, pdu: Any) -> None:
        if len(v2c.apiPDU.get_varbinds(pdu)) > MAX_REQUEST_BINDINGS:
            raise smi_error.TooBigError()  # pysnmp answers tooBig, error-index 0, no bindings
        super().handle_management_operation(engine, state_reference, context_name, pdu)

    def send_varbinds(
        self, engine: Any, state_reference: Any, error_status: Any, error_index: Any, var_binds: Any
    ) -> None:
        if not error_status and var_binds:
            budget = self._budgets.get(state_reference)
            if budget is not None and sum(map(_varbind_octets, var_binds)) > budget:
                raise smi_error.TooBigError()
        super().send_varbinds(engine, state_reference, error_status, error_index, var_binds)

    def fitting(self, state_reference: Any, var_binds: list[Any], cap: int) -> list[Any]:
        """The longest head of `var_binds` within the response's budget and `cap` octets (RFC 3416 4.2.3)."""
        budget = min(self._budgets.get(state_reference, cap), cap)
        used = 0
        for count, var_bind in enumerate(var_binds):
            used += _varbind_octets(var_bind)
            if used > budget:
                return var_binds[:count]
        return var_binds


class _GetResponder(_BoundedResponder, cmdrsp.GetCommandResponder):  # type: ignore[misc]  # pysnmp is untyped
    pass


class _NextResponder(_BoundedResponder, cmdrsp.NextCommandResponder):  # type: ignore[misc]  # as above
    pass


class _BulkResponder(_BoundedResponder, cmdrsp.BulkCommandResponder):  # type: ignore[misc]  # pysnmp is untyped
    """GETBULK (RFC 3416 4.2.3) that stops repeating once every repeated variable hit endOfMibView,
    and ends the response before MAX_BULK_OCTETS octets of bindings (tooBig if not even one fits).

    pysnmp's responder fills all max-repetitions with copies of the endOfMibView varbinds,
    which net-snmp's snmpbulkwalk prints once per copy."""

    def handle_management_operation(self, engine: Any, state_reference: Any, context_name: Any, pdu: Any) -> None:
        if len(v2c.apiPDU.get_varbinds(pdu)) > MAX_REQUEST_BINDINGS:
            raise smi_error.TooBigError()
        non_repeaters = max(int(v2c.apiBulkPDU.get_non_repeaters(pdu)), 0)
        max_repetitions = max(int(v2c.apiBulkPDU.get_max_repetitions(pdu)), 0)
        requested = v2c.apiPDU.get_varbinds(pdu)
        n = min(non_repeaters, len(requested))
        r = len(requested) - n
        m = min(max_repetitions, self.max_varbinds // r) if r else 0
        read_next = self.snmpContext.get_mib_instrum(context_name).read_next_variables
        context = {"snmpEngine": engine, "acFun": self.verify_access, "cbCtx": self.cbCtx}
        response = list(read_next(*requested[:n], **context)) if n else []
        var_binds = requested[n:]
        while m and r:
            var_binds = read_next(*var_binds, **context)
            response.extend(var_binds)
            if all(value.tagSet == rfc1905.endOfMibView.tagSet for _, value in var_binds):
                break
            m -= 1
        if not response:
            raise smi_error.SmiError()
        response = self.fitting(state_reference, response, MAX_BULK_OCTETS)
        if not response:
            raise smi_error.TooBigError()
        self.send_varbinds(engine, state_reference, 0, 0, response)
        self.release_state_information(state_reference)


# -- the agent ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Listener:
    text: str  # as configured
    domain: tuple[int, ...]
    sock: socket.socket
    transport: Any


class SnmpAgent:
    """A read-only SNMP agent (v1, v2c, v3 USM) for the system group and SMTP-MONITOR-MIB."""

    def __init__(
        self,
        config: SnmpConfig,
        state_dir: Path,
        store: SnapshotSource,
        health: AgentHealth,
        *,
        default_interval: float = 60.0,
        location: str = "",
    ) -> None:
        self._config = config
        self._state_path = Path(state_dir) / ENGINE_STATE_FILE
        self._health = health
        self._location = location  # agent.location: sysLocation.0 unless snmp.location says otherwise
        self.view = MibView(
            store,
            health,
            default_interval=default_interval,
            max_staleness=VIEW_MAX_STALENESS,
            sys_location=config.location if config.location is not None else location,
        )
        self._gate = _Gate(health)
        # Plain v1/v2c reads skip pysnmp (several times faster); it answers everything else.
        # None before start() serves everything through pysnmp (the tests compare the two).
        self.fast_path: FastPath | None = FastPath(
            self.view,
            subtrees=READ_SUBTREES,
            max_repeated=_BulkResponder.max_varbinds,
            max_message_size=MAX_RESPONSE_OCTETS,
        )
        # SNMPv3 reads of configured users through the same FastPath; made at start() (engine ID, boots, time).
        self.usm_fast_path: UsmFastPath | None = None
        self._engine: Any = None
        self._dispatcher: _GuardedDispatcher | None = None
        self._listeners: list[_Listener] = []
        self._communities: list[str] = []  # pysnmp community indexes in use
        self._users: list[tuple[str, int]] = []  # (user, model) in VACM groups
        self._domains = 0
        self.engine_state: EngineState | None = None
        self._warmer: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._engine is not None

    def addresses(self) -> list[tuple[str, int]]:
        """The bound (host, port) of every listener."""
        return [listener.sock.getsockname()[:2] for listener in self._listeners]

    async def start(self) -> None:
        """Bind every listen address and serve; SnmpBindError names an address that cannot be bound."""
        if self._engine is not None:
            raise SnmpAgentError("SNMP agent already started")
        loop = asyncio.get_running_loop()
        sockets = _bind_all(self._config.listen)
        try:
            configured = parse_engine_id(self._config.engine_id) if self._config.engine_id else None
            self.engine_state = next_engine_state(self._state_path, configured)
            engine = self._new_engine(self.engine_state)
            # Also without the v1/v2c fast path: it screens every SNMPv3 message in front of pysnmp.
            self.usm_fast_path = UsmFastPath.for_engine(self.fast_path, engine)
            self._dispatcher = _GuardedDispatcher(self._gate, loop, self.fast_path, self.usm_fast_path)
            engine.register_transport_dispatcher(self._dispatcher)
            self._engine = engine
            self._setup_access(engine)
            self._apply_credentials(self._config)
            for text, sock in sockets:
                self._listeners.append(self._serve(text, sock, loop))
            await self._await_endpoints(self._listeners)
        except BaseException:
            for _, sock in sockets:
                sock.close()
            self._teardown()
            raise
        self.view.restart_uptime()
        if self.fast_path is not None:
            self._warmer = loop.create_task(self._keep_warm(self.fast_path), name="snmp-warmer")
        log.info(
            "SNMP agent listening on %s (engine ID %s, boots %d)",
            ", ".join(self._config.listen),
            self.engine_state.engine_id.hex(),
            self.engine_state.boots,
        )

    async def stop(self) -> None:
        """Close every socket; the ports are free when this returns."""
        warmer, self._warmer = self._warmer, None
        if warmer is not None:
            warmer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await warmer
        self._teardown()

    async def _keep_warm(self, fast: FastPath) -> None:
        """Encode replaced rows soon after they change, while managers poll (a request within
        WARM_IDLE): a walk then costs lookups, however long since the last one.

        Before the first request, or once managers stopped asking, the work is left to the next
        request: an agent nobody polls spends nothing on it."""
        answered, polled_at = 0, float("-inf")
        while True:
            await asyncio.sleep(WARM_EVERY)
            now = time.monotonic()
            count = sum(self._health.snmp_requests.values())
            if count != answered:
                answered, polled_at = count, now
            if now - polled_at > WARM_IDLE:
                continue
            try:
                steps = fast.warming()
                while True:
                    deadline = time.perf_counter() + WARM_SLICE
                    for _ in steps:
                        if time.perf_counter() >= deadline:
                            break
                    else:
                        break  # every cell is current
                    await asyncio.sleep(0)  # requests in between: they find what is encoded so far
            except Exception:  # never the end of the warmer: the requests encode what it left
                log.debug("keeping SNMP encodings warm failed", exc_info=True)

    async def reconfigure(self, config: SnmpConfig) -> None:
        """Apply new communities, users and listen addresses without restarting the engine.

        A changed engine_id needs a restart (keys are localized to the engine ID)."""
        self.view.set_sys_location(config.location if config.location is not None else self._location)
        if not self.running:
            self._config = config
            return
        if config.engine_id != self._config.engine_id:
            log.warning("SNMP engine_id changed: it takes effect when the agent restarts")
        loop = asyncio.get_running_loop()
        current = {listener.text: listener for listener in self._listeners}
        wanted = list(dict.fromkeys(config.listen))
        added = _bind_all([text for text in wanted if text not in current])
        new_listeners = [self._serve(text, sock, loop) for text, sock in added]
        try:
            await self._await_endpoints(new_listeners)
        except BaseException:
            self._close_listeners(new_listeners)
            raise
        self._close_listeners([listener for text, listener in current.items() if text not in wanted])
        self._listeners = [current[text] for text in wanted if text in current] + new_listeners
        self._apply_credentials(config)
        self._config = config

    # -- internals --------------------------------------------------------------------------

    def _new_engine(self, state: EngineState) -> Any:
        # No snmpEngineID argument: pysnmp would then keep its own boots file under /tmp.
        engine = new_snmp_engine()
        builder = engine.get_mib_builder()
        (engine_id, boots) = builder.import_symbols("__SNMP-FRAMEWORK-MIB", "snmpEngineID", "snmpEngineBoots")
        engine_id.syntax = engine_id.syntax.clone(state.engine_id)
        boots.syntax = boots.syntax.clone(state.boots)
        engine.snmpEngineID = engine_id.syntax
        # pysnmp's default of 4096 octets silently drops larger responses (a bulk of long strings):
        # allow what UDP carries, as the fast path does.
        (max_size,) = builder.import_symbols("__SNMP-FRAMEWORK-MIB", "snmpEngineMaxMessageSize")
        max_size.syntax = max_size.syntax.clone(MAX_RESPONSE_OCTETS)
        engine.observer.register_observer(self._count_request, "rfc3412.receiveMessage:request")
        return engine

    def _count_request(self, engine: Any, execpoint: str, variables: dict[str, Any], cb_ctx: Any) -> None:
        tag = variables["pdu"].tagSet[0].tagId
        self._health.snmp_requests[PDU_NAMES.get(tag, "other")] += 1

    def _setup_access(self, engine: Any) -> None:
        context = SnmpContext(engine)
        context.unregister_context_name(b"")
        context.register_context_name(b"", _ViewInstrumentation(self.view))
        for responder in (
            _GetResponder,
            _NextResponder,
            _BulkResponder,
            cmdrsp.SetCommandResponder,
        ):
            responder(engine, context)
        pysnmp_config.add_context(engine, b"")
        for subtree in READ_SUBTREES:
            pysnmp_config.add_vacm_view(engine, VIEW_NAME, "included", subtree, b"")
        for model, level, group in _GROUPS:
            pysnmp_config.add_vacm_access(engine, group, b"", model, level, "exact", VIEW_NAME, "", "")

    def _apply_credentials(self, config: SnmpConfig) -> None:
        """Replace the communities and users pysnmp knows with those of `config`."""
        # Read every secret first: one that cannot be read must not leave half the old set removed.
        communities: dict[str, list[Network]] = {}
        open_to_all: set[str] = set()
        for community in config.communities:
            name = community.name.reveal()
            communities.setdefault(name, []).extend(community.allow)
            if not community.allow:
                open_to_all.add(name)
        users = [
            (user, user.auth.password.reveal(), user.priv.password.reveal() if user.priv else None)
            for user in config.users
        ]

        engine = self._engine
        for index in self._communities:
            pysnmp_config.delete_v1_system(engine, index)
            for model in (1, 2):
                pysnmp_config.delete_vacm_group(engine, model, index)
        for user_name, model in self._users:
            pysnmp_config.delete_v3_user(engine, user_name)
            pysnmp_config.delete_vacm_group(engine, model, user_name)
        self._communities, self._users = [], []

        gate_map: dict[bytes, tuple[Network, ...]] = {}
        for number, (name, networks) in enumerate(communities.items()):
            # The security name is what pysnmp logs: never the community itself.
            index = f"community-{number}"
            # As octets: pysnmp would encode a str as ISO 8859-1, the gate (and every terminal) as UTF-8.
            pysnmp_config.add_v1_system(engine, index, name.encode("utf-8"), securityName=index)
            pysnmp_config.add_vacm_group(engine, "smtp-monitor-v1", 1, index)
            pysnmp_config.add_vacm_group(engine, "smtp-monitor-v2c", 2, index)
            self._communities.append(index)
            gate_map[name.encode("utf-8")] = () if name in open_to_all else tuple(networks)
        self._gate.communities = gate_map

        for user, auth_key, priv_key in users:
            priv = user.priv
            pysnmp_config.add_v3_user(
                engine,
                user.name,
                authProtocol=AUTH_PROTOCOLS[user.auth.protocol],
                authKey=auth_key,
                privProtocol=PRIV_PROTOCOLS[priv.protocol] if priv else pysnmp_config.USM_PRIV_NONE,
                privKey=priv_key,
            )
            group = "smtp-monitor-priv" if priv else "smtp-monitor-auth"
            pysnmp_config.add_vacm_group(engine, group, 3, user.name)
            self._users.append((user.name, 3))
        if self.usm_fast_path is not None:
            self.usm_fast_path.set_users(users)

    def _serve(self, text: str, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> _Listener:
        self._domains += 1
        if sock.family == socket.AF_INET6:
            domain = (*udp6.DOMAIN_NAME, self._domains)
            transport = Udp6Listener(loop=loop).open_server_mode(sock=sock)
        else:
            domain = (*udp.DOMAIN_NAME, self._domains)
            transport = UdpListener(loop=loop).open_server_mode(sock=sock)
        pysnmp_config.add_transport(self._engine, domain, transport)
        return _Listener(text, domain, sock, transport)

    @staticmethod
    async def _await_endpoints(listeners: Iterable[_Listener]) -> None:
        # pysnmp creates the asyncio endpoint in the background: wait for it and fail loudly.
        for listener in listeners:
            pending = getattr(listener.transport, "_lport", None)
            if pending is None:
                continue
            try:
                await asyncio.wait_for(pending, timeout=10)
            except (OSError, TimeoutError) as exc:
                raise SnmpBindError(listener.text, str(exc) or type(exc).__name__) from None

    def _close_listeners(self, listeners: Iterable[_Listener]) -> None:
        for listener in listeners:
            try:
                if self._dispatcher is not None:
                    self._dispatcher.unregister_transport(listener.domain)
            except Exception as exc:  # already gone: closing must still free the socket
                log.debug("unregistering SNMP transport %s: %s", listener.text, exc)
            listener.transport.close_transport()
            listener.sock.close()  # frees the port now, not on the next loop iteration

    def _teardown(self) -> None:
        self._close_listeners(self._listeners)
        self._listeners = []
        if self._dispatcher is not None:
            self._dispatcher.close_dispatcher()
            self._dispatcher = None
        if self._engine is not None:
            self._engine.observer.unregister_observer()
            self._engine = None
        self._communities, self._users = [], []


def _bind_all(addresses: Iterable[str]) -> list[tuple[str, socket.socket]]:
    """Bind a UDP socket per address now, so a taken port fails here with its address named."""
    bound: list[tuple[str, socket.socket]] = []
    try:
        for text in addresses:
            kind, host, port = parse_snmp_listen(text)
            family = socket.AF_INET6 if kind == "udp6" else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                if family == socket.AF_INET6:
                    # udp6:[::] and udp:0.0.0.0 on one port must not collide.
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((host, port))
                sock.setblocking(False)
            except OSError as exc:
                sock.close()
                raise SnmpBindError(text, exc.strerror or str(exc)) from None
            bound.append((text, sock))
    except BaseException:
        for _, sock in bound:
            sock.close()
        raise
    return bound
