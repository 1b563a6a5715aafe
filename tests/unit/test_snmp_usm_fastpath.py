"""snmp/fast/usm_fastpath.py: USM keys, strict decoding, answers pysnmp authenticates, Reports for the rest."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.decrepit.ciphers.modes import CFB
from cryptography.hazmat.primitives.ciphers import Cipher
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyasn1.codec.ber import decoder as ber_decoder
from pyasn1.codec.ber import encoder as ber_encoder
from pyasn1.type import univ
from pysnmp.entity import config as pysnmp_config
from pysnmp.hlapi.v3arch.asyncio import (
    ContextData,
    ObjectIdentity,
    ObjectType,
    SnmpEngine,
    UdpTransportTarget,
    UsmUserData,
    bulk_cmd,
    get_cmd,
)
from pysnmp.proto import api, rfc1902, rfc1905
from pysnmp.proto.mpmod.rfc3412 import ScopedPDU, SNMPv3Message
from pysnmp.proto.secmod.rfc3414.service import SnmpUSMSecurityModel, UsmSecurityParameters

from monitor.config.schema import SnmpConfig, SnmpUser
from monitor.exporters.snmp import mib_oids
from monitor.exporters.snmp.agent import READ_SUBTREES, SnmpAgent
from monitor.exporters.snmp.fast.fastpath import GET, GETBULK, GETNEXT, FastPath, NotHandled
from monitor.exporters.snmp.fast.usm_fastpath import (
    UsmFastPath,
    decode_message,
    localize_key,
    localized_priv_key,
    password_to_key,
    usm_user,
)
from monitor.exporters.snmp.identity import AUTH_PROTOCOLS, PRIV_PROTOCOLS
from monitor.exporters.snmp.mib_oids import Oid, SmtpProbeColumn
from monitor.exporters.snmp.mibview import SYS_DESCR, SYS_UPTIME, MibView
from monitor.state.health import AgentHealth
from monitor.state.store import ResultsStore
from tests.peers.snmp_agent_thread import AgentThread
from tests.support.ports import free_udp_port
from tests.unit.test_snmp_fastpath import ber, boundary_oids, chunks, filled_store, integer

ENGINE_ID = bytes.fromhex("80007ed905a1b2c3d4e5f60718")
AUTH_PASS = "auth-pass-8d1e"
PRIV_PASS = "priv-pass-4c2a"
V2C = api.PROTOCOL_MODULES[api.SNMP_VERSION_2C]
SET, RESPONSE, INFORM, TRAP, REPORT = 3, 2, 6, 7, 8
PDU_CLASSES = {
    GET: V2C.GetRequestPDU,
    GETNEXT: V2C.GetNextRequestPDU,
    GETBULK: V2C.GetBulkRequestPDU,
    SET: V2C.SetRequestPDU,
    RESPONSE: V2C.ResponsePDU,
    INFORM: V2C.InformRequestPDU,
    TRAP: V2C.SNMPv2TrapPDU,
    REPORT: V2C.ReportPDU,
}
AUTH_SERVICES = SnmpUSMSecurityModel.AUTH_SERVICES
PRIV_SERVICES = SnmpUSMSecurityModel.PRIV_SERVICES
AUTH, PRIV, REPORTABLE = 0x01, 0x02, 0x04
USM_STATS = (1, 3, 6, 1, 6, 3, 15, 1, 1)
# usmStats*.0 (RFC 3414): the one varbind of each Report pysnmp sends
UNSUPPORTED_SEC_LEVELS, NOT_IN_TIME_WINDOWS, UNKNOWN_USER_NAMES = ((*USM_STATS, n, 0) for n in (1, 2, 3))
UNKNOWN_ENGINE_IDS, WRONG_DIGESTS, DECRYPTION_ERRORS = ((*USM_STATS, n, 0) for n in (4, 5, 6))


# -- a manager built from pysnmp's own USM services --------------------------------------------------


@dataclass(frozen=True)
class Manager:
    """A USM user as a manager holds it: keys hashed and localized by pysnmp's own services."""

    name: str
    auth: str
    priv: str | None
    auth_key: Any
    priv_key: Any

    @classmethod
    def localized(
        cls,
        name: str,
        auth: str,
        priv: str | None,
        engine_id: bytes = ENGINE_ID,
        auth_pass: str = AUTH_PASS,
        priv_pass: str = PRIV_PASS,
    ) -> Manager:
        auth_oid = AUTH_PROTOCOLS[auth]
        service = AUTH_SERVICES[auth_oid]
        engine = univ.OctetString(engine_id)
        auth_key = service.localize_key(service.hash_passphrase(auth_pass), engine)
        priv_key = None
        if priv is not None:
            privacy = PRIV_SERVICES[PRIV_PROTOCOLS[priv]]
            priv_key = privacy.localize_key(auth_oid, privacy.hash_passphrase(auth_oid, priv_pass), engine)
        return cls(name, auth, priv, auth_key, priv_key)

    def config(self) -> dict[str, Any]:
        user: dict[str, Any] = {"name": self.name, "auth": {"protocol": self.auth, "password": AUTH_PASS}}
        if self.priv is not None:
            user["priv"] = {"protocol": self.priv, "password": PRIV_PASS}
        return user

    @property
    def digest(self) -> int:
        return int(AUTH_SERVICES[AUTH_PROTOCOLS[self.auth]].digest_length)


def v3_request(
    manager: Manager,
    pdu: int,
    oids: Sequence[Oid],
    *,
    engine_time: int,
    boots: int = 1,
    msg_id: int = 1,
    request_id: int = 1,
    first: int = 0,
    second: int = 0,
    max_size: int = 65507,
    flags: int | None = None,
    engine_id: bytes = ENGINE_ID,
    context_engine_id: bytes | None = None,
    context_name: bytes = b"",
    user: str | None = None,
    ciphertext: bytes | None = None,
) -> bytes:
    """An SNMPv3 request encoded, encrypted and authenticated with pysnmp's ASN.1 types and USM services.

    `flags` defaults to the manager's level with the reportable flag; without AUTH the message is
    neither encrypted nor authenticated (noAuthNoPriv, or discovery with an empty engine ID)."""
    if flags is None:
        flags = AUTH | (PRIV if manager.priv else 0) | REPORTABLE
    message_pdu = PDU_CLASSES[pdu]()
    if pdu == GETBULK:
        V2C.apiBulkPDU.set_defaults(message_pdu)
        V2C.apiBulkPDU.set_non_repeaters(message_pdu, first)
        V2C.apiBulkPDU.set_max_repetitions(message_pdu, second)
    else:
        V2C.apiPDU.set_defaults(message_pdu)
    V2C.apiPDU.set_request_id(message_pdu, request_id)
    V2C.apiPDU.set_varbinds(message_pdu, [(oid, V2C.Null("")) for oid in oids])
    scoped = ScopedPDU()
    scoped.setComponentByPosition(0, engine_id if context_engine_id is None else context_engine_id)
    scoped.setComponentByPosition(1, context_name)
    scoped.setComponentByPosition(2)
    scoped.getComponentByPosition(2).setComponentByType(message_pdu.tagSet, message_pdu)
    params = UsmSecurityParameters()
    params.setComponentByPosition(0, engine_id)
    params.setComponentByPosition(1, boots)
    params.setComponentByPosition(2, engine_time)
    params.setComponentByPosition(3, manager.name if user is None else user)
    params.setComponentByPosition(4, bytes(manager.digest) if flags & AUTH else b"")
    message = SNMPv3Message()
    message.setComponentByPosition(0, 3)
    header = message.setComponentByPosition(1).getComponentByPosition(1)
    for position, value in enumerate((msg_id, max_size, bytes([flags]), 3)):
        header.setComponentByPosition(position, value)
    data = message.setComponentByPosition(3).getComponentByPosition(3)
    if flags & PRIV:
        assert manager.priv is not None
        encrypted, salt = PRIV_SERVICES[PRIV_PROTOCOLS[manager.priv]].encrypt_data(
            manager.priv_key, (boots, engine_time, None), bytes(ber_encoder.encode(scoped))
        )
        params.setComponentByPosition(5, salt)
        data.setComponentByPosition(1, encrypted if ciphertext is None else ciphertext)
    else:
        params.setComponentByPosition(5, b"")
        data.setComponentByPosition(0, scoped)
    message.setComponentByPosition(2, bytes(ber_encoder.encode(params)))
    whole = bytes(ber_encoder.encode(message))
    if flags & AUTH:
        service = AUTH_SERVICES[AUTH_PROTOCOLS[manager.auth]]
        whole = bytes(service.authenticate_outgoing_message(manager.auth_key, whole))
    return whole


@dataclass(frozen=True)
class Opened:
    """A response or Report as the manager reads it after pysnmp's services authenticated and decrypted it."""

    msg_id: int
    max_size: int
    flags: int
    engine_id: bytes
    boots: int
    engine_time: int
    user: bytes
    salt: bytes
    context_engine_id: bytes
    context_name: bytes
    pdu: Any  # the PDU's tag set
    request_id: int
    error_status: int
    error_index: int
    varbinds: list[tuple[Oid, Any, bytes]]  # (name, value type, value BER); sysUpTime's value left out

    def comparable(self) -> Opened:
        """Without what differs between two correct answers: the engine's clock and the salt."""
        return replace(self, engine_time=0, salt=b"")

    @property
    def report(self) -> Oid | None:
        return self.varbinds[0][0] if self.pdu == rfc1905.ReportPDU.tagSet else None


def open_message(manager: Manager, datagram: bytes) -> Opened:
    """Decode an SNMPv3 message with pysnmp's types, authenticate it (raises on a wrong digest), decrypt it."""
    message, rest = ber_decoder.decode(datagram, asn1Spec=SNMPv3Message())
    assert not rest
    header = message.getComponentByPosition(1)
    flags = bytes(header.getComponentByPosition(2))[0]
    params, _ = ber_decoder.decode(bytes(message.getComponentByPosition(2)), asn1Spec=UsmSecurityParameters())
    if flags & AUTH:
        AUTH_SERVICES[AUTH_PROTOCOLS[manager.auth]].authenticate_incoming_message(
            manager.auth_key, params.getComponentByPosition(4), datagram
        )
    data = message.getComponentByPosition(3)
    if flags & PRIV:
        assert manager.priv is not None
        boots_time_salt = tuple(params.getComponentByPosition(i) for i in (1, 2, 5))
        plaintext = PRIV_SERVICES[PRIV_PROTOCOLS[manager.priv]].decrypt_data(
            manager.priv_key, boots_time_salt, data.getComponentByPosition(1)
        )
        scoped, _ = ber_decoder.decode(plaintext, asn1Spec=ScopedPDU())
    else:
        scoped = data.getComponentByPosition(0)
    pdu = scoped.getComponentByPosition(2).getComponent()
    binds = []
    for name, value in V2C.apiPDU.get_varbinds(pdu):
        oid = tuple(name)
        moving = oid == SYS_UPTIME and value.tagSet == rfc1902.TimeTicks.tagSet
        binds.append((oid, value.tagSet, b"" if moving else bytes(ber_encoder.encode(value))))
    return Opened(
        int(header.getComponentByPosition(0)),
        int(header.getComponentByPosition(1)),
        flags,
        bytes(params.getComponentByPosition(0)),
        int(params.getComponentByPosition(1)),
        int(params.getComponentByPosition(2)),
        bytes(params.getComponentByPosition(3)),
        bytes(params.getComponentByPosition(5)),
        bytes(scoped.getComponentByPosition(0)),
        bytes(scoped.getComponentByPosition(1)),
        pdu.tagSet,
        int(V2C.apiPDU.get_request_id(pdu)),
        int(V2C.apiPDU.get_error_status(pdu)),
        int(V2C.apiPDU.get_error_index(pdu, muteErrors=True)),
        binds,
    )


def raw_v3(
    *,
    version: bytes = integer(3),
    msg_id: bytes = integer(1),
    max_size: bytes = integer(65507),
    flags: bytes = ber(0x04, b"\x07"),
    model: bytes = integer(3),
    engine_id: bytes = ENGINE_ID,
    boots: bytes = integer(1),
    engine_time: bytes = integer(1),
    user: bytes = b"nms",
    auth: bytes | None = bytes(12),
    priv: bytes = bytes(8),
    params_tail: bytes = b"",
    data: bytes = ber(0x04, bytes(16)),
) -> bytes:
    """An SNMPv3 message by hand, any field replaceable by its encoding (neither authentic nor decryptable)."""
    auth_item = b"" if auth is None else ber(0x04, auth)
    params = ber(
        0x04,
        ber(
            0x30,
            ber(0x04, engine_id) + boots + engine_time + ber(0x04, user) + auth_item + ber(0x04, priv) + params_tail,
        ),
    )
    return ber(0x30, version + ber(0x30, msg_id + max_size + flags + model) + params + data)


def ask(port: int, datagram: bytes, timeout: float = 3.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:  # a socket per request: no stale answers
        sock.settimeout(timeout)
        sock.connect(("127.0.0.1", port))
        sock.send(datagram)
        try:
            return sock.recv(65535)
        except TimeoutError:
            return None


# -- agents and fast paths ------------------------------------------------------------------------------


NMS = Manager.localized("nms", "sha", "aes128")
AUTH_ONLY = Manager.localized("auth-only", "sha256", None)
EVERY_AUTH = [Manager.localized(f"a-{auth}", auth, "aes128") for auth in AUTH_PROTOCOLS]
EVERY_PRIV = [Manager.localized(f"p-{priv}", "sha256", priv) for priv in PRIV_PROTOCOLS]
MANAGERS = [NMS, AUTH_ONLY, *EVERY_AUTH, *EVERY_PRIV]


def agent_config(port: int, managers: Sequence[Manager] = MANAGERS, engine_id: bytes = ENGINE_ID) -> SnmpConfig:
    return SnmpConfig.model_validate(
        {
            "listen": [f"udp:127.0.0.1:{port}"],
            "engine_id": engine_id.hex(),
            "users": [manager.config() for manager in managers],
        }
    )


def secrets_of(config: SnmpConfig) -> list[tuple[SnmpUser, str, str | None]]:
    return [
        (user, user.auth.password.reveal(), user.priv.password.reveal() if user.priv else None) for user in config.users
    ]


@dataclass
class Served:
    """An SnmpAgent serving a store from a background thread, and requests timed by its pysnmp engine's clock."""

    agent: SnmpAgent
    port: int
    store: ResultsStore

    @property
    def usm(self) -> UsmFastPath:
        assert self.agent.usm_fast_path is not None
        return self.agent.usm_fast_path

    def engine_time(self) -> int:
        (engine_time,) = self.agent._engine.get_mib_builder().import_symbols("__SNMP-FRAMEWORK-MIB", "snmpEngineTime")
        return int(engine_time.syntax.clone())  # what pysnmp's USM reads when it checks the window

    def request(self, manager: Manager, pdu: int, oids: Sequence[Oid], **kwargs: Any) -> bytes:
        kwargs.setdefault("engine_time", self.engine_time())
        kwargs.setdefault("boots", self.agent.engine_state.boots if self.agent.engine_state else 1)
        return v3_request(manager, pdu, oids, **kwargs)

    def ask(self, datagram: bytes, timeout: float = 3.0) -> bytes | None:
        return ask(self.port, datagram, timeout)


def counted_from_zero(state_dir: Path) -> Path:
    """A state directory whose engine state knows ENGINE_ID's count: the next start is boot 1 (without
    it a configured engine ID takes its boots from the clock)."""
    (state_dir / "snmp-engine.json").write_text(json.dumps({"engine_id": ENGINE_ID.hex(), "boots": 0}))
    return state_dir


def serve(
    state_dir: Path, store: ResultsStore, *, pysnmp_only: bool = False, managers: Sequence[Manager] = MANAGERS
) -> Iterator[Served]:
    """An agent with the managers' users; `pysnmp_only` without either fast path."""
    port = free_udp_port()
    counted_from_zero(state_dir)
    agent = SnmpAgent(agent_config(port, managers), state_dir, store, AgentHealth())
    if pysnmp_only:
        agent.fast_path = None  # and so no USM fast path either
    with AgentThread(agent):
        yield Served(agent, port, store)


@pytest.fixture(scope="module")
def store() -> ResultsStore:
    return filled_store()


@pytest.fixture(scope="module")
def fast_agent(tmp_path_factory: pytest.TempPathFactory, store: ResultsStore) -> Iterator[Served]:
    yield from serve(tmp_path_factory.mktemp("snmp-fast"), store)


@pytest.fixture(scope="module")
def slow_agent(tmp_path_factory: pytest.TempPathFactory, store: ResultsStore) -> Iterator[Served]:
    yield from serve(tmp_path_factory.mktemp("snmp-slow"), store, pysnmp_only=True)


@dataclass
class Pair:
    """The same store and users served by the USM fast path (called directly) and by pysnmp (over UDP)."""

    usm: UsmFastPath
    slow: Served
    served: list[Oid]

    def request(self, manager: Manager, pdu: int, oids: Sequence[Oid], **kwargs: Any) -> bytes:
        return self.slow.request(manager, pdu, oids, **kwargs)

    def both(self, datagram: bytes) -> tuple[bytes | None, bytes | None]:
        answer = self.usm.respond(datagram)
        return (answer[0] if answer else None), self.slow.ask(datagram)

    def check(self, manager: Manager, datagram: bytes, what: object = None) -> Opened:
        fast, slow = self.both(datagram)
        assert fast is not None, f"fast path declined {what}"
        assert slow is not None, f"pysnmp did not answer {what}"
        opened, expected = open_message(manager, fast), open_message(manager, slow)
        assert opened.comparable() == expected.comparable(), what
        assert abs(opened.engine_time - expected.engine_time) <= 1
        return opened


@pytest.fixture(scope="module")
def pair(slow_agent: Served, store: ResultsStore) -> Iterator[Pair]:
    """A fast path on pysnmp's own engine of `slow_agent`: its engine ID, boots and clock."""
    health = AgentHealth()
    usm = UsmFastPath.for_engine(FastPath(MibView(store, health), subtrees=READ_SUBTREES), slow_agent.agent._engine)
    usm.set_users(secrets_of(agent_config(slow_agent.port)))
    served = [oid for oid, _ in MibView(store, health).current().items()]
    yield Pair(usm, slow_agent, served)
    assert usm.errors == 0


# -- keys ---------------------------------------------------------------------------------------------


class TestKeyLocalization:
    def test_rfc_3414_a3_known_answers(self) -> None:
        engine_id = bytes(11) + b"\x02"
        md5 = password_to_key(b"maplesyrup", "md5")
        assert md5.hex() == "9faf3283884e92834ebc9847d8edd963"
        assert localize_key(md5, engine_id, "md5").hex() == "526f5eed9fcce26f8964c2930787d82b"
        sha = password_to_key(b"maplesyrup", "sha1")
        assert sha.hex() == "9fb5cc0381497b3793528939ff788d5d79145211"
        assert localize_key(sha, engine_id, "sha1").hex() == "6695febc9288e36282235fc7151f128497b38f3f"

    def test_short_passwords_repeat_to_a_mebibyte(self) -> None:
        assert password_to_key(b"ab", "sha1") == password_to_key(b"abab", "sha1")
        with pytest.raises(ValueError, match="empty"):
            password_to_key(b"", "md5")

    @pytest.mark.parametrize("auth", list(AUTH_PROTOCOLS))
    @pytest.mark.parametrize("priv", list(PRIV_PROTOCOLS))
    def test_keys_equal_pysnmps_for_every_protocol_pair(self, auth: str, priv: str) -> None:
        """AES-192/256 stretched as Blumenthal, DES cut to key and pre-IV: what pysnmp's USM holds."""
        manager = Manager.localized("u", auth, priv)
        hash_name = {"md5": "md5", "sha": "sha1"}.get(auth, auth)
        ours = localize_key(password_to_key(AUTH_PASS.encode(), hash_name), ENGINE_ID, hash_name)
        assert ours == bytes(manager.auth_key)
        assert localized_priv_key(auth, priv, PRIV_PASS.encode(), ENGINE_ID) == bytes(manager.priv_key)

    def test_keys_are_localized_to_the_engine(self) -> None:
        other = bytes.fromhex("80007ed9050000000000000001")
        assert localized_priv_key("sha", "aes256", b"password", ENGINE_ID) != localized_priv_key(
            "sha", "aes256", b"password", other
        )


class TestCiphers:
    """The fast path's encryption and decryption equal the cipher modes of `cryptography` under RFC 3826's IV."""

    @pytest.mark.parametrize("priv", ["aes128", "aes192", "aes256"])
    def test_encryption_and_decryption_equal_cfb128(self, priv: str) -> None:
        user = usm_user(
            SnmpUser.model_validate(Manager.localized("u", "sha", priv).config()), AUTH_PASS, PRIV_PASS, ENGINE_ID
        )
        assert user.cipher is not None
        usm = UsmFastPath(
            FastPath(MibView(ResultsStore(), AgentHealth()), subtrees=READ_SUBTREES),
            engine_id=ENGINE_ID,
            boots=3,
            clock=lambda: 77,
        )
        for size in (0, 1, 15, 16, 17, 100, 255, 256, 257, 1000):  # whole and partial last blocks
            plaintext = (bytes(range(256)) * 4)[:size]
            ciphertext, salt = usm._encrypt(user, 77, plaintext)
            iv = (3).to_bytes(4, "big") + (77).to_bytes(4, "big") + salt
            reference = Cipher(user.cipher, CFB(iv)).encryptor()
            assert ciphertext == reference.update(plaintext) + reference.finalize(), size
            msg = decode_message(raw_v3(boots=integer(3), engine_time=integer(77), priv=salt))
            assert usm._decrypt(user, msg, ciphertext) == plaintext, size

    def test_des_decryption_equals_cbc(self) -> None:
        user = usm_user(
            SnmpUser.model_validate(Manager.localized("u", "md5", "des").config()), AUTH_PASS, PRIV_PASS, ENGINE_ID
        )
        usm = UsmFastPath(
            FastPath(MibView(ResultsStore(), AgentHealth()), subtrees=READ_SUBTREES),
            engine_id=ENGINE_ID,
            boots=3,
            clock=lambda: 77,
        )
        for size in (1, 8, 9, 100):
            ciphertext, salt = usm._encrypt(user, 77, bytes(range(size)))
            assert len(ciphertext) % 8 == 0
            msg = decode_message(raw_v3(priv=salt))
            assert usm._decrypt(user, msg, ciphertext)[:size] == bytes(range(size))


# -- decoding ---------------------------------------------------------------------------------------


class TestDecodeMessage:
    def test_the_fields_pysnmp_encodes(self) -> None:
        datagram = v3_request(NMS, GET, [SYS_DESCR], engine_time=4242, boots=7, msg_id=2**31 - 1, max_size=1500)
        msg = decode_message(datagram)
        assert (msg.msg_id, msg.max_size, msg.flags) == (2**31 - 1, 1500, AUTH | PRIV | REPORTABLE)
        assert (msg.engine_id, msg.boots, msg.time, msg.user) == (ENGINE_ID, 7, 4242, b"nms")
        assert datagram[msg.auth_at : msg.auth_end] != bytes(12)
        assert msg.auth_end - msg.auth_at == 12
        assert len(msg.priv_params) == 8
        assert msg.data_tag == 0x04
        assert msg.data_end == len(datagram)

    def test_a_plaintext_scoped_pdu_is_located(self) -> None:
        datagram = v3_request(AUTH_ONLY, GET, [SYS_DESCR], engine_time=1)
        msg = decode_message(datagram)
        assert msg.data_tag == 0x30
        assert datagram[msg.data_at] == 0x30
        assert msg.priv_params == b""

    def test_every_truncation_is_refused(self) -> None:
        datagram = v3_request(NMS, GETNEXT, [SYS_DESCR], engine_time=1)
        for cut in range(len(datagram)):
            with pytest.raises(NotHandled):
                decode_message(datagram[:cut])

    def test_a_well_formed_message_by_hand_is_read(self) -> None:
        msg = decode_message(raw_v3())
        assert (msg.msg_id, msg.max_size, msg.flags, msg.user, msg.data_tag) == (1, 65507, 7, b"nms", 0x04)

    @pytest.mark.parametrize(
        "fields",
        [
            pytest.param({"version": integer(1)}, id="version-2c"),
            pytest.param({"msg_id": integer(-1)}, id="negative-msgID"),
            pytest.param({"max_size": integer(483)}, id="msgMaxSize-483"),
            pytest.param({"max_size": integer(2**31)}, id="msgMaxSize-2**31"),
            pytest.param({"flags": ber(0x04, b"\x07\x07")}, id="two-flag-octets"),
            pytest.param({"flags": ber(0x04, b"")}, id="no-flag-octet"),
            pytest.param({"model": integer(2)}, id="security-model-2"),
            pytest.param({"boots": integer(-1)}, id="negative-boots"),
            pytest.param({"engine_time": integer(2**31)}, id="time-2**31"),
            pytest.param({"user": b"u" * 33}, id="user-name-33-octets"),
            pytest.param({"params_tail": b"\x05\x00"}, id="octets-after-usm-parameters"),
            pytest.param({"data": ber(0xA0, b"")}, id="msgData-a-pdu"),
            pytest.param({"data": ber(0x24, ber(0x04, bytes(8)))}, id="msgData-constructed-octets"),
            pytest.param({"auth": None}, id="no-authentication-parameters"),
        ],
    )
    def test_other_shapes_are_refused(self, fields: dict[str, Any]) -> None:
        with pytest.raises(NotHandled):
            decode_message(raw_v3(**fields))

    def test_trailing_octets_are_refused(self) -> None:
        with pytest.raises(NotHandled):
            decode_message(v3_request(NMS, GET, [SYS_DESCR], engine_time=1) + b"\x00")


# -- answers ---------------------------------------------------------------------------------------


class TestAnswers:
    """What the fast path sends, read by a manager with pysnmp's own USM services."""

    @pytest.mark.parametrize("manager", MANAGERS, ids=[manager.name for manager in MANAGERS])
    def test_every_protocol_authenticates_decrypts_and_echoes_the_request(
        self, fast_agent: Served, manager: Manager
    ) -> None:
        usm = fast_agent.usm
        answered = usm.answered
        now = fast_agent.engine_time()
        datagram = fast_agent.request(manager, GET, [SYS_DESCR], msg_id=0x2345, request_id=-77, max_size=2000)
        response = fast_agent.ask(datagram)
        assert response is not None
        assert usm.answered == answered + 1
        opened = open_message(manager, response)  # raises unless the digest is right
        level = AUTH | (PRIV if manager.priv else 0)
        assert (opened.msg_id, opened.flags, opened.max_size) == (0x2345, level, 65507)  # a Response is not reportable
        assert (opened.engine_id, opened.boots, opened.user) == (ENGINE_ID, 1, manager.name.encode())
        assert abs(opened.engine_time - now) <= 1
        assert (opened.context_engine_id, opened.context_name) == (ENGINE_ID, b"")
        assert (opened.pdu, opened.request_id, opened.error_status) == (rfc1905.ResponsePDU.tagSet, -77, 0)
        assert opened.varbinds[0][0] == SYS_DESCR
        assert b"smtp-monitor" in opened.varbinds[0][2]
        assert len(opened.salt) == (8 if manager.priv else 0)

    @pytest.mark.parametrize("manager", [NMS, EVERY_PRIV[0]], ids=["aes", "des"])
    def test_every_encrypted_response_has_a_fresh_salt(self, fast_agent: Served, manager: Manager) -> None:
        datagram = fast_agent.request(manager, GET, [SYS_DESCR])
        responses = [fast_agent.usm.respond(datagram) for _ in range(3)]
        salts = {open_message(manager, answer[0]).salt for answer in responses if answer}
        assert len(salts) == 3
        if manager.priv == "des":  # RFC 3414 8.1.1.1: boots, then a counter
            assert all(salt[:4] == (1).to_bytes(4, "big") for salt in salts)
        assert len({answer[0] for answer in responses if answer}) == 3

    def test_the_request_pdu_type_is_reported_for_counting(self, fast_agent: Served) -> None:
        for pdu in (GET, GETNEXT, GETBULK):
            answer = fast_agent.usm.respond(fast_agent.request(NMS, pdu, [SYS_DESCR], second=3))
            assert answer is not None
            assert answer[1] == pdu

    def test_requests_are_counted_by_pdu_type_like_pysnmps(self, fast_agent: Served) -> None:
        health = fast_agent.agent._health
        before = dict(health.snmp_requests)
        for pdu in (GET, GETNEXT, GETBULK):
            assert fast_agent.ask(fast_agent.request(NMS, pdu, [SYS_DESCR], second=2)) is not None
        for name in ("get", "getnext", "getbulk"):
            assert health.snmp_requests[name] == before.get(name, 0) + 1

    def test_the_engine_time_is_pysnmps(self, fast_agent: Served) -> None:
        """The clock pysnmp's Reports carry (here: the notInTimeWindow one) is the one responses carry."""
        stale = fast_agent.request(NMS, GET, [SYS_DESCR], engine_time=fast_agent.engine_time() + 1000)
        report = fast_agent.ask(stale)
        assert report is not None
        reported = open_message(NMS, report)
        assert reported.report == NOT_IN_TIME_WINDOWS
        assert abs(fast_agent.usm.engine_time() - reported.engine_time) <= 1
        assert reported.boots == fast_agent.usm.engine_boots
        answer = fast_agent.ask(fast_agent.request(NMS, GET, [SYS_DESCR], engine_time=reported.engine_time))
        assert answer is not None
        assert open_message(NMS, answer).report is None

    def test_a_message_max_size_truncates_a_bulk_and_a_get_that_cannot_fit_is_too_big(self, fast_agent: Served) -> None:
        column = (*mib_oids.SMTP_PROBE_ENTRY, int(SmtpProbeColumn.LAST_ERROR))
        whole = fast_agent.usm.respond(fast_agent.request(NMS, GETBULK, [column], second=20))
        part = fast_agent.usm.respond(fast_agent.request(NMS, GETBULK, [column], second=20, max_size=600))
        assert whole is not None
        assert part is not None
        assert len(part[0]) <= 600
        full, cut = open_message(NMS, whole[0]).varbinds, open_message(NMS, part[0]).varbinds
        assert 0 < len(cut) < len(full)
        assert cut == full[: len(cut)]
        errors = [mib_oids.smtp_probe_oid(SmtpProbeColumn.LAST_ERROR, "b")] * 2  # 380 octets each
        for manager in (NMS, EVERY_PRIV[0], AUTH_ONLY):
            answer = fast_agent.usm.respond(fast_agent.request(manager, GET, errors, max_size=484))
            assert answer is not None
            assert len(answer[0]) <= 484
            opened = open_message(manager, answer[0])
            assert (opened.error_status, opened.error_index, opened.varbinds) == (1, 0, [])  # tooBig

    def test_an_oid_outside_the_view_is_not_served(self, fast_agent: Served) -> None:
        engine_id_oid = (1, 3, 6, 1, 6, 3, 10, 2, 1, 1, 0)  # pysnmp's own snmpEngineID.0
        answer = fast_agent.usm.respond(fast_agent.request(NMS, GET, [engine_id_oid]))
        assert answer is not None
        assert open_message(NMS, answer[0]).varbinds[0][1] == rfc1905.NoSuchObject.tagSet


# -- declined: Reports --------------------------------------------------------------------------------


class TestFallback:
    """Everything but an authentic in-window read of a known user is declined: a Report where one is due
    (built by the fast path's screen, as pysnmp would; tests.unit.test_snmp_usm_gate), pysnmp for a SET."""

    def declined_then_reported(self, agent: Served, datagram: bytes, manager: Manager = NMS) -> Opened | None:
        usm = agent.usm
        answered, fallbacks = usm.answered, usm.fallbacks
        response = agent.ask(datagram, timeout=1.0)
        assert usm.fallbacks == fallbacks + 1
        assert usm.answered == answered
        assert usm.errors == 0
        return None if response is None else open_message(manager, response)

    def test_a_wrong_authentication_key_gets_wrong_digests(self, fast_agent: Served) -> None:
        forged = Manager.localized("nms", "sha", "aes128", auth_pass="not-the-password")
        report = self.declined_then_reported(fast_agent, fast_agent.request(forged, GET, [SYS_DESCR]))
        assert report is not None
        assert report.report == WRONG_DIGESTS
        assert report.flags & AUTH == 0

    def test_an_unknown_user_gets_unknown_user_names(self, fast_agent: Served) -> None:
        report = self.declined_then_reported(fast_agent, fast_agent.request(NMS, GET, [SYS_DESCR], user="intruder"))
        assert report is not None
        assert report.report == UNKNOWN_USER_NAMES

    @pytest.mark.parametrize("shift", [151, 10_000])
    def test_a_time_outside_the_window_gets_not_in_time_windows(self, fast_agent: Served, shift: int) -> None:
        datagram = fast_agent.request(NMS, GET, [SYS_DESCR], engine_time=fast_agent.engine_time() + shift)
        report = self.declined_then_reported(fast_agent, datagram)
        assert report is not None
        assert report.report == NOT_IN_TIME_WINDOWS

    def test_the_window_is_150_seconds_either_side(self, store: ResultsStore) -> None:
        usm = UsmFastPath(
            FastPath(MibView(store, AgentHealth()), subtrees=READ_SUBTREES),
            engine_id=ENGINE_ID,
            boots=1,
            clock=lambda: 1000,
        )
        usm.set_users(secrets_of(agent_config(1)))
        for sent, served in ((850, True), (1150, True), (849, False), (1151, False)):
            assert (usm.respond(v3_request(NMS, GET, [SYS_DESCR], engine_time=sent)) is not None) is served, sent

    def test_other_boots_get_not_in_time_windows(self, fast_agent: Served) -> None:
        report = self.declined_then_reported(fast_agent, fast_agent.request(NMS, GET, [SYS_DESCR], boots=2))
        assert report is not None
        assert report.report == NOT_IN_TIME_WINDOWS

    def test_discovery_gets_unknown_engine_ids_with_the_engine_id(self, fast_agent: Served) -> None:
        probe = v3_request(NMS, GET, [], engine_time=0, boots=0, engine_id=b"", user="", flags=REPORTABLE)
        report = self.declined_then_reported(fast_agent, probe)
        assert report is not None
        assert report.report == UNKNOWN_ENGINE_IDS
        assert (report.engine_id, report.boots) == (ENGINE_ID, 1)

    def test_a_lower_security_level_than_the_users_gets_unsupported_sec_levels(self, fast_agent: Served) -> None:
        plain = fast_agent.request(NMS, GET, [SYS_DESCR], flags=REPORTABLE)  # noAuthNoPriv
        report = self.declined_then_reported(fast_agent, plain)
        assert report is not None
        assert report.report == UNSUPPORTED_SEC_LEVELS
        unencrypted = fast_agent.request(NMS, GET, [SYS_DESCR], flags=AUTH | REPORTABLE)  # authNoPriv
        report = self.declined_then_reported(fast_agent, unencrypted)
        assert report is not None
        assert report.report == UNSUPPORTED_SEC_LEVELS

    def test_a_wrong_privacy_key_gets_decryption_errors(self, fast_agent: Served) -> None:
        forged = Manager.localized("p-des", "sha256", "des", priv_pass="not-the-password")
        report = self.declined_then_reported(fast_agent, fast_agent.request(forged, GET, [SYS_DESCR]), forged)
        assert report is not None
        assert report.report == DECRYPTION_ERRORS

    @pytest.mark.parametrize("size", [0, 1, 2, 7, 8, 40])
    @pytest.mark.parametrize("manager", [NMS, EVERY_PRIV[0]], ids=["aes", "des"])
    def test_authentic_ciphertext_that_is_no_scoped_pdu_is_left_to_pysnmp(
        self, fast_agent: Served, manager: Manager, size: int
    ) -> None:
        for filler in (b"\x30", b"\x00", b"\xff"):
            datagram = fast_agent.request(manager, GET, [SYS_DESCR], ciphertext=(filler * size))
            assert fast_agent.usm.respond(datagram) is None
        assert fast_agent.usm.errors == 0

    def test_another_context_or_a_set_is_left_to_pysnmp(self, fast_agent: Served) -> None:
        other_engine = fast_agent.request(NMS, GET, [SYS_DESCR], context_engine_id=b"\x80\x00\x00\x00\x01")
        self.declined_then_reported(fast_agent, other_engine)  # what pysnmp says (if anything) is its own affair
        named = fast_agent.request(NMS, GET, [SYS_DESCR], context_name=b"other")
        self.declined_then_reported(fast_agent, named)
        set_request = fast_agent.request(NMS, SET, [SYS_DESCR])
        answer = self.declined_then_reported(fast_agent, set_request)
        assert answer is not None
        assert answer.error_status != 0  # pysnmp refuses the write

    def test_every_truncation_falls_back_without_errors(self, fast_agent: Served) -> None:
        datagram = fast_agent.request(NMS, GETBULK, [SYS_DESCR], second=5)
        usm = fast_agent.usm
        assert usm.respond(datagram) is not None
        errors = usm.errors
        for cut in range(len(datagram)):
            assert usm.respond(datagram[:cut]) is None, cut
        assert usm.errors == errors

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(data=st.data())
    def test_no_altered_message_is_answered(self, fast_agent: Served, data: st.DataObject) -> None:
        """The digest covers every octet: any change sends the message to pysnmp, and nothing raises."""
        manager = data.draw(st.sampled_from([NMS, AUTH_ONLY, EVERY_PRIV[0]]))
        datagram = bytearray(
            fast_agent.request(manager, data.draw(st.sampled_from([GET, GETNEXT, GETBULK])), [SYS_DESCR], second=2)
        )
        original = bytes(datagram)
        for _ in range(data.draw(st.integers(1, 3))):
            if not datagram:
                break
            position = data.draw(st.integers(0, len(datagram) - 1))
            action = data.draw(st.sampled_from(["flip", "flip", "flip", "cut", "insert", "delete"]))
            if action == "flip":
                datagram[position] = data.draw(st.integers(0, 255))
            elif action == "cut":
                del datagram[position:]
            elif action == "insert":
                datagram.insert(position, data.draw(st.integers(0, 255)))
            else:
                del datagram[position]
        errors = fast_agent.usm.errors
        answer = fast_agent.usm.respond(bytes(datagram))
        assert fast_agent.usm.errors == errors
        assert answer is None or bytes(datagram) == original

    def test_an_internal_failure_falls_back_and_counts(self, store: ResultsStore) -> None:
        class Broken(FastPath):
            def answer(self, request: Any) -> bytes:
                raise RuntimeError("bug")

        usm = UsmFastPath(
            Broken(MibView(store, AgentHealth()), subtrees=READ_SUBTREES),
            engine_id=ENGINE_ID,
            boots=1,
            clock=lambda: 100,
        )
        usm.set_users(secrets_of(agent_config(1)))
        assert usm.respond(v3_request(NMS, GET, [SYS_DESCR], engine_time=100)) is None
        assert (usm.errors, usm.fallbacks, usm.answered) == (1, 0, 0)

    def test_a_latched_boots_counter_is_never_in_the_window(self, store: ResultsStore) -> None:
        usm = UsmFastPath(
            FastPath(MibView(store, AgentHealth()), subtrees=READ_SUBTREES),
            engine_id=ENGINE_ID,
            boots=2**31 - 1,
            clock=lambda: 100,
        )
        usm.set_users(secrets_of(agent_config(1)))
        assert usm.respond(v3_request(NMS, GET, [SYS_DESCR], engine_time=100, boots=2**31 - 1)) is None
        assert usm.fallbacks == 1


# -- answers the same as pysnmp's ---------------------------------------------------------------------


class TestSameAsPysnmp:
    """The fast path and pysnmp (fast paths off) answer one request alike, varbind by varbind."""

    @pytest.mark.parametrize("pdu", [GET, GETNEXT])
    def test_every_served_oid_and_its_neighbours_over_auth_priv(self, pair: Pair, pdu: int) -> None:
        for number, group in enumerate(chunks(boundary_oids(pair.served), seed=pdu)):
            datagram = pair.request(NMS, pdu, group, msg_id=number, request_id=number)
            pair.check(NMS, datagram, (pdu, group))

    def test_single_gets_of_every_served_oid(self, pair: Pair) -> None:
        for number, oid in enumerate(pair.served):
            pair.check(NMS, pair.request(NMS, GET, [oid], msg_id=number, request_id=oid[-1]), oid)

    @pytest.mark.parametrize("non_repeaters", [0, 1, 2])
    @pytest.mark.parametrize("max_repetitions", [1, 2, 10, 50])
    def test_getbulk(self, pair: Pair, non_repeaters: int, max_repetitions: int) -> None:
        near_end = pair.served[-3]
        starts = [
            [SYS_DESCR],
            [mib_oids.MIB_ROOT],
            [near_end],
            [SYS_DESCR, (*mib_oids.SMTP_PROBE_ENTRY, 1), near_end],
            [
                (*mib_oids.SMTP_PROBE_ENTRY, int(SmtpProbeColumn.LAST_ERROR)),
                (*mib_oids.MX_CHECK_ENTRY, 1),
                pair.served[-1],
            ],
        ]
        for number, oids in enumerate(starts):
            datagram = pair.request(
                NMS, GETBULK, oids, msg_id=number, request_id=number, first=non_repeaters, second=max_repetitions
            )
            pair.check(NMS, datagram, (oids, non_repeaters, max_repetitions))

    @pytest.mark.parametrize("manager", [AUTH_ONLY, *EVERY_AUTH, *EVERY_PRIV], ids=lambda manager: manager.name)
    def test_every_protocol_reads_the_same(self, pair: Pair, manager: Manager) -> None:
        pair.check(manager, pair.request(manager, GET, [SYS_DESCR, SYS_UPTIME, pair.served[-1]]))
        pair.check(manager, pair.request(manager, GETBULK, [(*mib_oids.SMTP_PROBE_ENTRY, 1)], second=30))

    def test_a_request_without_the_reportable_flag_is_answered_alike(self, pair: Pair) -> None:
        opened = pair.check(NMS, pair.request(NMS, GET, [SYS_DESCR], flags=AUTH | PRIV))
        assert opened.flags == AUTH | PRIV

    @pytest.mark.parametrize("msg_id", [0, 127, 128, 65535, 2**31 - 1])
    def test_the_message_id_is_echoed(self, pair: Pair, msg_id: int) -> None:
        assert pair.check(NMS, pair.request(NMS, GETNEXT, [SYS_DESCR], msg_id=msg_id)).msg_id == msg_id


# -- the agent --------------------------------------------------------------------------------------


class TestAgent:
    """SnmpAgent answers SNMPv3 reads through the USM fast path; pysnmp's own manager reads them."""

    @pytest.mark.parametrize("manager", MANAGERS, ids=[manager.name for manager in MANAGERS])
    def test_pysnmps_manager_reads_through_the_fast_path(self, fast_agent: Served, manager: Manager) -> None:
        usm = fast_agent.usm
        answered = usm.answered

        async def read() -> tuple[Any, ...]:
            engine = SnmpEngine()
            try:
                target = await UdpTransportTarget.create(("127.0.0.1", fast_agent.port), timeout=3, retries=1)
                user = UsmUserData(
                    manager.name,
                    AUTH_PASS,
                    PRIV_PASS if manager.priv else None,
                    authProtocol=AUTH_PROTOCOLS[manager.auth],
                    privProtocol=PRIV_PROTOCOLS[manager.priv] if manager.priv else pysnmp_config.USM_PRIV_NONE,
                )
                got = await get_cmd(engine, user, target, ContextData(), ObjectType(ObjectIdentity(SYS_DESCR)))
                bulk = await bulk_cmd(
                    engine, user, target, ContextData(), 0, 10, ObjectType(ObjectIdentity(mib_oids.SMTP_PROBE_TABLE))
                )
                return got, bulk
            finally:
                engine.close_dispatcher()

        got, bulk = asyncio.run(read())
        assert got[0] is None, got[0]
        assert got[1] == 0
        assert "smtp-monitor" in str(got[3][0][1])
        assert bulk[0] is None, bulk[0]
        assert len(bulk[3]) == 10
        assert usm.answered == answered + 2  # discovery went to pysnmp, the reads did not

    def test_without_the_v2c_fast_path_pysnmp_answers_reads_the_screen_let_through(self, slow_agent: Served) -> None:
        usm = slow_agent.usm
        answered, fallbacks = usm.answered, usm.fallbacks
        answer = slow_agent.ask(slow_agent.request(NMS, GET, [SYS_DESCR]))
        assert answer is not None
        assert open_message(NMS, answer).pdu == rfc1905.ResponsePDU.tagSet
        assert (usm.answered, usm.fallbacks) == (answered, fallbacks + 1)  # screened, then pysnmp's

    def test_reconfigured_users_are_served_and_removed_ones_are_not(self, tmp_path: Path, store: ResultsStore) -> None:
        port = free_udp_port()
        agent = SnmpAgent(agent_config(port, [NMS]), counted_from_zero(tmp_path), store, AgentHealth())
        with AgentThread(agent) as thread:
            served = Served(agent, port, store)
            assert served.ask(served.request(NMS, GET, [SYS_DESCR])) is not None
            thread.call(agent.reconfigure(agent_config(port, [AUTH_ONLY])))
            assert served.usm.respond(served.request(NMS, GET, [SYS_DESCR])) is None
            assert served.usm.respond(served.request(AUTH_ONLY, GET, [SYS_DESCR])) is not None
            report = served.ask(served.request(NMS, GET, [SYS_DESCR]))
            assert report is not None
            assert open_message(NMS, report).report == UNKNOWN_USER_NAMES

    def test_boots_and_engine_id_come_from_the_persisted_state(self, tmp_path: Path, store: ResultsStore) -> None:
        counted_from_zero(tmp_path)
        for boots in (1, 2):
            port = free_udp_port()
            agent = SnmpAgent(agent_config(port, [NMS]), tmp_path, store, AgentHealth())
            with AgentThread(agent):
                usm = agent.usm_fast_path
                assert usm is not None
                assert (usm.engine_id, usm.engine_boots) == (ENGINE_ID, boots)
                served = Served(agent, port, store)
                answer = served.ask(served.request(NMS, GET, [SYS_DESCR], boots=boots))
                assert answer is not None
                assert open_message(NMS, answer).boots == boots
