"""SNMP notifications (v1/v2c/v3 traps and informs) for results-store events, one sender per receiver."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from pysnmp.carrier.asyncio.dgram import udp, udp6
from pysnmp.entity import config as snmp_config
from pysnmp.entity.rfc3413 import ntforg
from pysnmp.proto import errind, rfc1902

from monitor.config.schema import SnmpNotify
from monitor.exporters.snmp import mib_oids as mib
from monitor.exporters.snmp.engine import new_snmp_engine
from monitor.exporters.snmp.fast.ber import BerError, item
from monitor.exporters.snmp.identity import AUTH_PROTOCOLS, PRIV_PROTOCOLS, generate_engine_id, parse_engine_id
from monitor.exporters.snmp.mibview import DELIVERY_TYPES, admin_string, date_and_time, ms, row_values
from monitor.state.health import AgentHealth
from monitor.state.store import ResultsStore, StoreEvent

log = logging.getLogger("smtp_monitor.snmp.notify")

Oid = tuple[int, ...]
VarBind = tuple[Oid, Any]  # (OID, pysnmp value)

SYS_UP_TIME: Final[Oid] = (1, 3, 6, 1, 2, 1, 1, 3, 0)
SNMP_TRAP_OID: Final[Oid] = (1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0)
SNMP_TRAP_ENTERPRISE: Final[Oid] = (1, 3, 6, 1, 6, 3, 1, 1, 4, 3, 0)
COLD_START: Final[Oid] = (1, 3, 6, 1, 6, 3, 1, 1, 5, 1)
# SNMP-COMMUNITY-MIB::snmpTrapAddress.0 (RFC 3584 3.1): the agent's address, appended to every notification,
# by which a receiver (Zabbix) matches a trap to its host even through a proxy or NAT; pysnmp makes it
# the agent-addr of an SNMPv1 trap (RFC 3584 3.2).
SNMP_TRAP_ADDRESS: Final[Oid] = (1, 3, 6, 1, 6, 3, 18, 1, 3, 0)
UNKNOWN_TRAP_ADDRESS: Final = ipaddress.IPv4Address("0.0.0.0")  # toward an IPv6 receiver, unless configured

QUEUE_SIZE: Final = 256  # per receiver; events are rare, a backlog this long means the receiver is gone
INFORM_GIVE_UP: Final = 120.0  # seconds an inform is retried at most, whatever timeout/retries say
_RESULT_GRACE = 0.5  # pysnmp reports a timeout on its 0.1 s timer tick: wait a little longer than it

# The outcomes counted in health.notifications[(receiver, outcome)].
SENT, ACKNOWLEDGED, FAILED, RETRIED, DROPPED = "sent", "acknowledged", "failed", "retried", "dropped"

_MP_MODEL = {"1": 0, "2c": 1, "3": 3}
_SECURITY_MODEL = {"1": 1, "2c": 2, "3": 3}
_SEND_TAG = "notify"  # tag of every target address; per-attempt tags pick one window
_CONTEXT_NAME = b""  # must be bytes: a str context name silently drops the notification

_RESOLVE_TIMEOUT = 10.0  # seconds for the receiver's name to resolve
_TIMED_OUT = "timeout"  # an inform's answer when pysnmp's window passed without one
_OUTSTANDING_MAX = 64  # messages awaiting an answer per receiver: an inform and its discovery, a few windows
_REPORTABLE = 0x04  # msgFlags: set on requests (RFC 3412 6.4), never on a Response or Report
_INFORM, _RESPONSE = 0xA6, 0xA2  # v2c PDU tags: what we ask with, what answers it


# -- the notifier's sockets ------------------------------------------------------------


def _exchange(data: bytes) -> tuple[int, int, bool, bool] | None:
    """(version, msgID or request-id, asks for an answer, is an answer) of a message; None if unreadable.

    An SNMPv3 request is reportable and its Response or Report is not (RFC 3412 6.4): the flag is
    readable before authentication, the PDU type of an encrypted message is not."""
    size = len(data)
    try:
        start, _ = item(data, 0, size, 0x30)
        at, pos = item(data, start, size, 0x02)
        version = int.from_bytes(data[at:pos], "big", signed=True)
        if version in (0, 1):
            _, pos = item(data, pos, size, 0x04)  # community
            pdu = data[pos]
            if pdu & 0xE0 != 0xA0:
                return None
            start, _ = item(data, pos, size, pdu)
            at, end = item(data, start, size, 0x02)
            request_id = int.from_bytes(data[at:end], "big", signed=True)
            return version, request_id, pdu == _INFORM, pdu == _RESPONSE
        if version == 3:
            start, _ = item(data, pos, size, 0x30)  # msgGlobalData
            at, pos = item(data, start, size, 0x02)
            msg_id = int.from_bytes(data[at:pos], "big", signed=True)
            _, pos = item(data, pos, size, 0x02)  # msgMaxSize
            at, end = item(data, pos, size, 0x04)
            if end - at != 1:
                return None
            reportable = bool(data[at] & _REPORTABLE)
            return version, msg_id, reportable, not reportable
    except (BerError, IndexError):
        return None
    return None


class _Screen:
    """What a notifier's socket lets through to pysnmp: only the Response or Report to a message it
    sent and still waits on (same version and msgID/request-id), each once.

    A notifier answers nothing: discovery, requests and stray Reports are dropped unread, so its
    engine can neither be probed for its ID, boots and time nor made one end of a Report loop."""

    def __init__(self) -> None:
        self.outstanding: dict[tuple[int, int], None] = {}
        self.dropped = 0

    def sent(self, message: bytes) -> None:
        exchange = _exchange(message)
        if exchange is None or not exchange[2]:
            return  # a trap: nothing answers it
        key = exchange[:2]
        self.outstanding.pop(key, None)
        if len(self.outstanding) >= _OUTSTANDING_MAX:
            del self.outstanding[next(iter(self.outstanding))]  # the oldest: its window has passed
        self.outstanding[key] = None

    def admits(self, message: bytes) -> bool:
        exchange = _exchange(message)
        if exchange is not None and exchange[3] and exchange[:2] in self.outstanding:
            del self.outstanding[exchange[:2]]
            return True
        self.dropped += 1
        return False


class _Screening:
    """Before pysnmp's UDP transport (next in the MRO): what it sends is noted, what comes back must answer it."""

    screen: _Screen

    def send_message(self, outgoing: bytes, address: Any) -> None:
        self.screen.sent(bytes(outgoing))
        super().send_message(outgoing, address)  # type: ignore[misc]  # the transport's, after this class

    def datagram_received(self, datagram: bytes, address: Any) -> None:
        if self.screen.admits(datagram):
            super().datagram_received(datagram, address)  # type: ignore[misc]  # the transport's


class _ScreenedUdp(_Screening, udp.UdpAsyncioTransport):  # type: ignore[misc]  # pysnmp is untyped
    pass


class _ScreenedUdp6(_Screening, udp6.Udp6AsyncioTransport):  # type: ignore[misc]  # pysnmp is untyped
    pass


def source_socket(family: int, destination: tuple[Any, ...]) -> socket.socket:
    """A UDP socket bound to the local address the route to `destination` leaves from (loopback for a
    loopback receiver), never the wildcard: the notifier is reachable only where it sends."""
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect(destination)  # no packet: the kernel chooses the route and its source address
        local = probe.getsockname()
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((local[0], 0, 0, local[3]))  # a link-local source keeps its scope
        else:
            sock.bind((local[0], 0))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


@dataclass(frozen=True, slots=True)
class Notification:
    """One notification, built once from an event and sent unchanged to every receiver."""

    label: str  # MIB name, e.g. smtpProbeFailed
    probe: str  # probe or check name; "" for coldStart
    varbinds: tuple[VarBind, ...]


# Value classes a notification can carry, by name, for the outbox of undelivered notifications.
_VALUE_TYPES: Final[dict[str, Any]] = {
    cls.__name__: cls
    for cls in (
        rfc1902.Integer32,
        rfc1902.Integer,
        rfc1902.OctetString,
        rfc1902.ObjectIdentifier,
        rfc1902.IpAddress,
        rfc1902.Counter32,
        rfc1902.Gauge32,
        rfc1902.Unsigned32,
        rfc1902.TimeTicks,
        rfc1902.Counter64,
    )
}


def to_payload(notification: Notification) -> dict[str, Any]:
    """A JSON-able form of a notification, to keep it in the state database until delivered."""
    varbinds = []
    for oid, value in notification.varbinds:
        kind = type(value).__name__
        if kind not in _VALUE_TYPES:
            raise TypeError(f"cannot keep a {kind} in the outbox")
        if isinstance(value, rfc1902.OctetString):
            data: Any = bytes(value).hex()
        elif isinstance(value, rfc1902.ObjectIdentifier):
            data = list(value)
        else:
            data = int(value)
        varbinds.append([list(oid), kind, data])
    return {"label": notification.label, "probe": notification.probe, "varbinds": varbinds}


def from_payload(payload: dict[str, Any]) -> Notification:
    varbinds: list[VarBind] = []
    for oid, kind, data in payload["varbinds"]:
        cls = _VALUE_TYPES[kind]
        value = (
            cls(bytes.fromhex(data))
            if issubclass(cls, rfc1902.OctetString)
            else cls(tuple(data) if issubclass(cls, rfc1902.ObjectIdentifier) else data)
        )
        varbinds.append((tuple(oid), value))
    return Notification(payload["label"], payload["probe"], tuple(varbinds))


def receiver_label(cfg: SnmpNotify) -> str:
    """The receiver's name in logs and counters: host:port, never credentials."""
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    return f"{host}:{cfg.port}"


# -- varbinds -------------------------------------------------------------------


def _text(text: str) -> Any:
    return rfc1902.OctetString(admin_string(text))


def _ticks(seconds: float) -> Any:
    return rfc1902.TimeTicks(min(max(int(seconds * 100), 0), 2**32 - 1))


_WHICH: Final[dict[tuple[str, str], mib.Notification]] = {
    ("smtp", "failed"): mib.Notification.SMTP_PROBE_FAILED,
    ("smtp", "recovered"): mib.Notification.SMTP_PROBE_RECOVERED,
    ("mx", "failed"): mib.Notification.MX_CHECK_FAILED,
    ("mx", "recovered"): mib.Notification.MX_CHECK_RECOVERED,
    ("smtp", "cert_expiring"): mib.Notification.SMTP_CERT_EXPIRING,
    ("delivery", "failed"): mib.Notification.DELIVERY_PROBE_FAILED,
    ("delivery", "recovered"): mib.Notification.DELIVERY_PROBE_RECOVERED,
    ("delivery", "delivery_late"): mib.Notification.DELIVERY_LATE,
    ("delivery", "delivery_lost"): mib.Notification.DELIVERY_LOST,
    # ("delivery", "pending_changed") is for the state database only: no notification.
}


def _event_value(column: mib.DeliveryColumn, event: StoreEvent) -> Any:
    """An accessible-for-notify object of deliveryLate or deliveryLost: the message the event is about."""
    earlier = event.earlier
    if column is mib.DeliveryColumn.EVENT_LATENCY:
        return DELIVERY_TYPES[column](ms(earlier.latency if earlier is not None else None))
    return DELIVERY_TYPES[column](date_and_time(earlier.submitted_at if earlier is not None else None))


def build_notification(event: StoreEvent, started_at: float) -> Notification | None:
    """The notification for a store event (None if the MIB has none for it), varbinds in MIB order."""
    which = _WHICH.get((event.probe_kind, event.kind))
    if which is None:
        return None
    varbinds: list[VarBind] = [
        (SYS_UP_TIME, _ticks(event.at - started_at)),  # when it happened, not when it was sent
        (SNMP_TRAP_OID, rfc1902.ObjectIdentifier(mib.notification_oid(which))),
    ]
    columns = mib.NOTIFICATION_OBJECTS[which]
    # By type, not by number: the columns are IntEnums, and smtpProbeAddress (28) == deliveryEventLatency (28).
    from_event = [isinstance(c, mib.DeliveryColumn) and c in mib.DELIVERY_EVENT_COLUMNS for c in columns]
    in_row = [column for column, event_only in zip(columns, from_event, strict=True) if not event_only]
    row = iter(row_values(event.state, in_row))
    for column, event_only in zip(columns, from_event, strict=True):
        value = _event_value(column, event) if event_only else next(row)  # type: ignore[arg-type]  # from_event: DeliveryColumns only
        varbinds.append((mib.notification_object_oid(column, event.name), value))
    return Notification(mib.mib_label(which.name), event.name, tuple(varbinds))


def build_cold_start(started_at: float) -> Notification:
    # snmpTrapEnterprise lets a v1 receiver (RFC 3584 translation) see whose coldStart it is.
    varbinds = (
        (SYS_UP_TIME, _ticks(time.time() - started_at)),
        (SNMP_TRAP_OID, rfc1902.ObjectIdentifier(COLD_START)),
        (SNMP_TRAP_ENTERPRISE, rfc1902.ObjectIdentifier(mib.MIB_ROOT)),
    )
    return Notification("coldStart", "", varbinds)


# -- one receiver -----------------------------------------------------------------


class _Receiver:
    """A receiver's engine, queue and sender task; nothing here is shared with other receivers."""

    def __init__(self, cfg: SnmpNotify, label: str, queue_size: int, give_up: float) -> None:
        self.cfg = cfg
        self.label = label
        self.kind = f"v{cfg.version} {cfg.type}"
        self.queue: asyncio.Queue[tuple[Notification, int | None]] = asyncio.Queue(maxsize=queue_size)
        self.task: asyncio.Task[None] | None = None
        self.engine: Any = None
        self.originator: Any = None
        self.ready = False  # target registered (host resolved)
        self.current: tuple[Notification, int | None] | None = None
        self.screen = _Screen()
        # snmpTrapAddress.0 toward this receiver: configured, else the source address of its socket.
        self.trap_address = UNKNOWN_TRAP_ADDRESS
        # Informs: attempt k waits timeout * 2**k, all within give_up (and at least one attempt).
        windows: list[float] = []
        for attempt in range(cfg.retries + 1 if cfg.type == "inform" else 1):
            window = cfg.timeout * 2**attempt
            if windows and sum(windows) + window > give_up:
                break
            windows.append(window)
        self.windows = windows


class Notifier:
    """Sends a notification for every results-store event to every configured receiver.

    Each receiver has its own pysnmp engine (one engine per destination: sharing one between
    targets with different timeouts duplicates notifications), a bounded queue (the oldest
    waiting notification is dropped when full) and a sender task, so a dead receiver delays
    nothing but its own queue. Informs are resent with exponential backoff (windows of
    timeout, 2*timeout, 4*timeout... for `retries` resends, at most `inform_give_up` seconds).

    Every notification ends with one outcome per receiver in health.notifications:
    "sent" (trap handed to the network), "acknowledged" (inform), "failed" or "dropped";
    "retried" counts inform resends. Each outcome is logged on one line.
    All engines use `engine_id`: v3 trap receivers need it (`createUser -e`).
    """

    def __init__(
        self,
        receivers: Sequence[SnmpNotify],
        health: AgentHealth,
        engine_id: bytes | str | None = None,
        *,
        queue_size: int = QUEUE_SIZE,
        inform_give_up: float = INFORM_GIVE_UP,
        engine_boots: int | None = None,
        trap_address: ipaddress.IPv4Address | None = None,
    ) -> None:
        self.health = health
        self.trap_address = trap_address  # snmp.trap_address; None: each receiver's socket's source address
        self.engine_id = parse_engine_id(engine_id) if engine_id is not None else generate_engine_id()
        self._receivers: list[_Receiver] = []
        seen: dict[str, int] = {}
        for cfg in receivers:
            label = receiver_label(cfg)
            seen[label] = seen.get(label, 0) + 1
            if seen[label] > 1:
                label = f"{label}#{seen[label]}"  # two receivers at one address stay apart in counters
            self._receivers.append(_Receiver(cfg, label, queue_size, inform_give_up))
        self._started = False
        self._closing = False
        # Called with an outbox id once its notification has a final outcome (not at shutdown).
        self.on_final: Callable[[int], None] | None = None
        # snmpEngineBoots of every engine: the caller's persistent counter, else pysnmp's own.
        self._boots: int | None = engine_boots

    @property
    def engine_id_hex(self) -> str:
        """The engine ID as net-snmp writes it: 0x..."""
        return "0x" + self.engine_id.hex()

    @property
    def receivers(self) -> list[str]:
        return [r.label for r in self._receivers]

    def subscribe(self, store: ResultsStore) -> None:
        store.subscribe(self.publish)

    def publish(self, event: StoreEvent) -> None:
        """Store subscriber: build the notification now, queue it for every receiver, never block."""
        if self._closing or not self._receivers:
            return
        notification = build_notification(event, self.health.started_at)
        if notification is not None:
            self._enqueue(notification)

    def prepare(self, event: StoreEvent) -> list[tuple[str, dict[str, Any]]]:
        """(receiver, payload) for each receiver, to be kept durably before enqueue_prepared()."""
        notification = build_notification(event, self.health.started_at)
        if notification is None or self._closing:
            return []
        payload = to_payload(notification)
        return [(rcv.label, payload) for rcv in self._receivers]

    def enqueue_prepared(self, items: Sequence[tuple[int, str, dict[str, Any]]]) -> None:
        """Queue (outbox id, receiver, payload) items; ids come back through on_final when done."""
        by_label = {rcv.label: rcv for rcv in self._receivers}
        for outbox_id, label, payload in items:
            rcv = by_label.get(label)
            if rcv is None:  # the receiver was removed from the config since: nothing to deliver to
                if self.on_final is not None:
                    self.on_final(outbox_id)
                continue
            self._put(rcv, from_payload(payload), outbox_id)

    async def cold_start(self) -> None:
        """Queue SNMPv2-MIB::coldStart for every receiver (call once, after start())."""
        self._enqueue(build_cold_start(self.health.started_at))

    def _enqueue(self, notification: Notification) -> None:
        for rcv in self._receivers:
            self._put(rcv, notification, None)

    def _put(self, rcv: _Receiver, notification: Notification, outbox_id: int | None) -> None:
        if rcv.queue.full():
            # Drop the oldest: the newest event says most about the probe's present state.
            oldest = rcv.queue.get_nowait()
            rcv.queue.task_done()
            self._finish(rcv, oldest, DROPPED, f"queue full ({rcv.queue.maxsize} waiting)")
        rcv.queue.put_nowait((notification, outbox_id))

    def _finish(self, rcv: _Receiver, item: tuple[Notification, int | None], outcome: str, detail: str = "") -> None:
        """A final outcome: release the outbox entry, then count and log it (a counted outcome is
        already durable, so a kill -9 after it never sends the notification again)."""
        notification, outbox_id = item
        if outbox_id is not None and self.on_final is not None:
            self.on_final(outbox_id)
        self._outcome(rcv, notification, outcome, detail)

    async def start(self) -> None:
        """Create every receiver's engine and start its sender task."""
        if self._started:
            return
        self._started = True
        for rcv in self._receivers:
            try:
                await self._setup_target(rcv)
            except Exception as exc:  # a bad receiver must not stop the agent or the others
                log.error("SNMP receiver %s not ready, will retry per notification: %s", rcv.label, exc)
        # Senders start once every engine is built: no pysnmp work in a thread while they run.
        for rcv in self._receivers:
            rcv.task = asyncio.create_task(self._run(rcv), name=f"snmp-notify {rcv.label}")

    async def drain(self, deadline: float) -> bool:
        """Wait until every queued notification has an outcome; False if `deadline` s passed first."""
        joins = [asyncio.ensure_future(r.queue.join()) for r in self._receivers if r.task]
        if not joins:
            return True
        _, pending = await asyncio.wait(joins, timeout=deadline)
        for join in pending:
            join.cancel()
        return not pending

    async def stop(self, deadline: float = 5.0) -> None:
        """Take no more events, let queued notifications go out for up to `deadline` s, then close."""
        self._closing = True
        await self.drain(deadline)
        tasks = [r.task for r in self._receivers if r.task]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for rcv in self._receivers:
            rcv.task = None
            # Not _finish(): what is kept in the outbox goes out after the restart.
            if rcv.current is not None:
                self._outcome(rcv, rcv.current[0], DROPPED, "agent stopping")
                rcv.current = None
            while not rcv.queue.empty():
                self._outcome(rcv, rcv.queue.get_nowait()[0], DROPPED, "agent stopping")
                rcv.queue.task_done()
            if rcv.engine is not None:
                rcv.engine.close_dispatcher()
                rcv.engine = None
                rcv.ready = False

    # -- engine setup ---------------------------------------------------------------

    async def _setup_engine(self, rcv: _Receiver) -> None:
        if rcv.engine is None:
            # Building an engine loads MIB modules (~0.25 s): not on the event loop, probes run there.
            rcv.engine = await asyncio.to_thread(self._build_engine, rcv.cfg)
            rcv.originator = ntforg.NotificationOriginator()

    def _build_engine(self, cfg: SnmpNotify) -> Any:
        """An engine with this receiver's credentials and notify view; no transport yet."""
        if self._boots is None:
            # pysnmp keeps a boots counter per engine ID in the temp directory and bumps it here,
            # so v3 trap receivers (which refuse boots going backwards) accept us after a restart.
            engine = new_snmp_engine(snmpEngineID=rfc1902.OctetString(self.engine_id))
        else:
            engine = new_snmp_engine()
            (engine_id,) = engine.get_mib_builder().import_symbols("__SNMP-FRAMEWORK-MIB", "snmpEngineID")
            engine_id.syntax = engine_id.syntax.clone(self.engine_id)
            engine.snmpEngineID = engine_id.syntax
        (boots,) = engine.get_mib_builder().import_symbols("__SNMP-FRAMEWORK-MIB", "snmpEngineBoots")
        if self._boots is None:
            self._boots = int(boots.syntax)
        boots.syntax = boots.syntax.clone(self._boots)  # one value for every engine of our ID
        security_name = "notify"
        if cfg.version == "3":
            assert cfg.user is not None
            assert cfg.auth is not None
            security_name = cfg.user
            priv = cfg.priv
            snmp_config.add_v3_user(
                engine,
                cfg.user,
                AUTH_PROTOCOLS[cfg.auth.protocol],
                cfg.auth.password.reveal(),
                PRIV_PROTOCOLS[priv.protocol] if priv else snmp_config.USM_PRIV_NONE,
                priv.password.reveal() if priv else None,
            )
            level = "authPriv" if priv else "authNoPriv"
        else:
            assert cfg.community is not None
            snmp_config.add_v1_system(
                engine, security_name, cfg.community.reveal().encode("utf-8"), transportTag=_SEND_TAG,
                securityName=security_name,
            )  # fmt: skip  # octets as the agent's communities: UTF-8, not pysnmp's ISO 8859-1 for a str
            level = "noAuthNoPriv"
        snmp_config.add_target_parameters(engine, "params", security_name, level, _MP_MODEL[cfg.version])
        # The notify view must cover every varbind (sysUpTime.0 and snmpTrapOID.0 included).
        snmp_config.add_vacm_user(
            engine, _SECURITY_MODEL[cfg.version], security_name, level, (), (), (1, 3, 6),
            contextName=_CONTEXT_NAME,
        )  # fmt: skip
        return engine

    async def _setup_target(self, rcv: _Receiver) -> None:
        """Resolve the receiver, open its UDP socket and register one target per attempt window."""
        if rcv.ready:
            return
        await self._setup_engine(rcv)
        loop = asyncio.get_running_loop()
        # A resolver that hangs must not hold this receiver's queue for ever.
        infos = await asyncio.wait_for(
            loop.getaddrinfo(rcv.cfg.host, rcv.cfg.port, type=socket.SOCK_DGRAM), _RESOLVE_TIMEOUT
        )
        if not infos:
            raise OSError(f"{rcv.cfg.host} has no address")
        family, *_, sockaddr = infos[0]
        v6 = family == socket.AF_INET6
        domain = udp6.DOMAIN_NAME if v6 else udp.DOMAIN_NAME
        address: tuple[Any, ...] = (str(sockaddr[0]), int(sockaddr[1]))
        if v6 and len(sockaddr) == 4 and sockaddr[3]:
            address = (*address, 0, sockaddr[3])  # link-local: keep the scope
        engine = rcv.engine
        if snmp_config.get_transport(engine, domain) is None:
            sock = source_socket(family, address)
            if self.trap_address is not None:
                rcv.trap_address = self.trap_address
            elif not v6:
                rcv.trap_address = ipaddress.IPv4Address(sock.getsockname()[0])
            transport = _ScreenedUdp6() if v6 else _ScreenedUdp()
            transport.screen = rcv.screen
            try:
                transport.open_server_mode(sock=sock)  # "server": on our socket, not one on 0.0.0.0
                snmp_config.add_transport(engine, domain, transport)
            except BaseException:
                sock.close()
                raise
            await transport._lport  # bind now, so a socket error shows here and not as silence
        notify_type = "inform" if rcv.cfg.type == "inform" else "trap"
        for attempt, window in enumerate(rcv.windows):
            tag = f"t{attempt}"
            snmp_config.add_target_address(
                engine, f"a{attempt}", domain, address, "params",
                timeout=round(window * 100), retryCount=0, tagList=f"{_SEND_TAG} {tag}",
            )  # fmt: skip
            snmp_config.add_notification_target(engine, f"n{attempt}", "params", tag, notify_type)
        rcv.ready = True

    # -- sending ------------------------------------------------------------------

    async def _run(self, rcv: _Receiver) -> None:
        while True:
            item = await rcv.queue.get()
            rcv.current = item
            try:
                outcome, detail = await self._deliver(rcv, item[0])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one bad send must not end this receiver's sender
                outcome, detail = FAILED, f"{type(exc).__name__}: {exc}"
            self._finish(rcv, item, outcome, detail)
            rcv.current = None
            rcv.queue.task_done()

    async def _deliver(self, rcv: _Receiver, notification: Notification) -> tuple[str, str]:
        """Send one notification (informs until acknowledged or given up): its final outcome."""
        try:
            await self._setup_target(rcv)
        except (OSError, ValueError) as exc:
            return FAILED, f"receiver not ready: {exc}"
        if rcv.cfg.type == "trap":
            error = self._send(rcv, 0, notification, None)
            return (FAILED, error) if error else (SENT, "")
        started = time.monotonic()
        give_up = started + sum(rcv.windows)
        loop = asyncio.get_running_loop()
        reason = ""
        for attempt, window in enumerate(rcv.windows):
            if attempt:
                self._outcome(rcv, notification, RETRIED, f"{reason}; resend {attempt} of {len(rcv.windows) - 1}")
            future: asyncio.Future[str] = loop.create_future()
            error = self._send(rcv, attempt, notification, future)
            if error:
                return FAILED, error
            try:
                answer = await asyncio.wait_for(future, max(give_up - time.monotonic(), 0.0) + _RESULT_GRACE)
            except TimeoutError:
                answer = _TIMED_OUT
            if not answer:
                took = time.monotonic() - started
                return ACKNOWLEDGED, f"after {attempt + 1} attempt(s), {took:.2f} s"
            if answer != _TIMED_OUT:
                # A refusal (unknown user, wrong digest...) does not heal by resending.
                return FAILED, f"refused: {answer}"
            reason = f"no acknowledgement in {window:g} s"
        return FAILED, f"gave up: {reason}"

    def _send(
        self, rcv: _Receiver, attempt: int, notification: Notification, future: asyncio.Future[str] | None
    ) -> str:
        """Hand one notification to pysnmp: "" or why it could not. An inform's answer lands in
        `future`: "" when acknowledged, _TIMED_OUT, or the error."""
        failed: list[str] = []

        def done(_engine: Any, _handle: Any, indication: Any, status: Any, *_rest: Any) -> None:
            if indication:
                answer = _TIMED_OUT if isinstance(indication, errind.RequestTimedOut) else str(indication)
            else:
                answer = f"error-status {status}" if status else ""
            if future is None:
                failed.append(answer or "refused")
            elif not future.done():
                future.set_result(answer)

        # Per receiver, at sending: one notification (and the outbox copy) serves receivers on other routes.
        varbinds = (*notification.varbinds, (SNMP_TRAP_ADDRESS, rfc1902.IpAddress(str(rcv.trap_address))))
        handle = rcv.originator.send_varbinds(rcv.engine, f"n{attempt}", None, _CONTEXT_NAME, varbinds, done, None)
        if handle is None:
            return "refused by the notify view (VACM)"
        return failed[0] if failed else ""

    def _outcome(self, rcv: _Receiver, notification: Notification, outcome: str, detail: str = "") -> None:
        """Count and log one outcome; the line names receiver by address only, never credentials."""
        self.health.notifications[(rcv.label, outcome)] += 1
        about = f" for {notification.probe}" if notification.probe else ""
        level = logging.INFO if outcome in (SENT, ACKNOWLEDGED) else logging.WARNING
        log.log(
            level, "SNMP %s%s to %s (%s): %s%s",
            notification.label, about, rcv.label, rcv.kind, outcome, f", {detail}" if detail else "",
        )  # fmt: skip
