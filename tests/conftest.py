"""Fixtures shared by every tier, and the `peers` marker that sets the quick tier (`pytest -m "not peers"`) apart.

Session peers start when a test first asks for them, so a run that asks for none starts nothing.
Groups below: the tier marker, SMTP peers, DNS peers, SNMP peers, the agent as a process, the mail chain.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.peers import signed_zones
from tests.peers.agent import AgentProcess
from tests.peers.mail_chain import MailChain
from tests.peers.mibs import base_mib_dir
from tests.peers.nsd import NsdServer
from tests.peers.postfix import PostfixServer
from tests.peers.postfix_sasl import PostfixSaslServer
from tests.peers.snmptrapd import TrapReceiver
from tests.peers.unbound import UnboundResolver
from tests.peers.zone import standard_zones

# The session's Postfix, once some test has asked for it (so unit-only runs start nothing).
_SESSION_POSTFIX = pytest.StashKey[PostfixServer]()

# Fixtures that start a process (a Debian daemon, the agent) or read what a Debian package installed.
_PEER_FIXTURES = frozenset(
    {
        "postfix", "postfix_sasl", "mail_chain",
        "dns_server", "dnssec_zones", "dnssec_nsd", "validating_resolver",
        "trap_receiver", "base_mibs",
        "agent_factory",
    }
)  # fmt: skip


# -- the tier marker ------------------------------------------------------------------------------


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The `peers` tier: every integration test, and any test using a peer fixture.

    `pytest -m "not peers"` is the quick tier: only the Python packages of the lock are needed.
    A unit test that runs a Debian tool itself says so with @pytest.mark.peers.
    """
    for item in items:
        uses = set(getattr(item, "fixturenames", ()))
        if "integration" in item.path.parts or uses & _PEER_FIXTURES:
            item.add_marker(pytest.mark.peers)


@pytest.fixture(scope="session")
def peers_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One session directory holding every peer's files (configs, logs, queues)."""
    return tmp_path_factory.mktemp("peers")


# -- every test ------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _root_logger_restored() -> Iterator[None]:
    """After each test, the root logger's handlers and level as they were before it."""
    # An in-process `run` (monitor.runtime.logs.setup) replaces the root handlers with one writing
    # to the sys.stderr of that moment (pytest's capture, closed after the test): every later log
    # record then printed a "Logging error" traceback, slow enough under asyncio's per-write
    # warnings of a lost connection to push a flood test past its hang guard.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


# -- SMTP peers -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postfix(request: pytest.FixtureRequest, peers_dir: Path) -> Iterator[PostfixServer]:
    """A private Postfix for the session (plain_port, implicit_port, submission_port, ca_file); see PostfixServer."""
    # Tests may pause() it to make probes fail; _resume_paused_postfix restarts it after each test.
    server = PostfixServer(peers_dir / "postfix")
    try:
        server.start()
        request.session.stash[_SESSION_POSTFIX] = server
        yield server
    finally:
        server.close()  # also on failed tests and on a failed start


@pytest.fixture(autouse=True)
def _resume_paused_postfix(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test, restart the session Postfix if the test paused it and did not resume."""
    yield
    server = request.session.stash.get(_SESSION_POSTFIX, None)
    if server is not None and not server.running():
        server.resume()


@pytest.fixture(scope="session")
def postfix_sasl(peers_dir: Path) -> Iterator[PostfixSaslServer]:
    """A second private Postfix with AUTH inside TLS, a local domain and relay control; see PostfixSaslServer."""
    # username/password, known_recipient (accepted) and unknown_recipient (550), no relay for
    # 127.0.0.1 unauthenticated, plus tls12_port (TLS 1.2 at most) and open_relay_port.
    server = PostfixSaslServer(peers_dir / "postfix-sasl")
    try:
        server.start()
        yield server
    finally:
        server.close()  # also on failed tests and on a failed start


# -- DNS peers ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def dns_server(peers_dir: Path) -> Iterator[NsdServer]:
    """A running NSD serving tests.peers.zone's standard zone (origin `test.`) at host:port."""
    server = NsdServer(peers_dir / "nsd", standard_zones())
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def dnssec_zones(postfix: PostfixServer) -> signed_zones.SignedZones:
    """signed.test. (secure), bogus.test. (anchored to another key), plain.test. (insecure), keys made now."""
    # signed.test. also publishes TLSA 3 1 1 of the session Postfix's key for mx1.signed.test. on
    # port 25 and on postfix.plain_port (DANE with a validated TLSA).  See tests.peers.signed_zones.
    tlsa = signed_zones.tlsa_3_1_1(postfix.cert_file.read_bytes())
    exchange = signed_zones.SIGNED_MX1
    records = [f"_{port}._tcp.{exchange} IN TLSA {tlsa}" for port in (25, postfix.plain_port)]
    return signed_zones.build(extra_signed_records=records)


@pytest.fixture(scope="session")
def dnssec_nsd(peers_dir: Path, dnssec_zones: signed_zones.SignedZones) -> Iterator[NsdServer]:
    """An NSD of its own serving the zones of dnssec_zones (authoritative only: it never sets AD)."""
    server = NsdServer(peers_dir / "nsd-dnssec", dnssec_zones.zones)
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def validating_resolver(
    peers_dir: Path, dnssec_zones: signed_zones.SignedZones, dnssec_nsd: NsdServer
) -> Iterator[UnboundResolver]:
    """Unbound validating dnssec_zones (stub zones on dnssec_nsd, DS anchors for the signed ones) at host:port."""
    # signed.test. answers carry AD; bogus.test., tampered.signed.test. and expired.signed.test.
    # are SERVFAIL; plain.test. resolves without AD; every other name is REFUSED (no internet).
    resolver = UnboundResolver(
        peers_dir / "unbound", dict.fromkeys(dnssec_zones.zones, dnssec_nsd.port), dnssec_zones.trust_anchors
    )
    try:
        resolver.start()
        yield resolver
    finally:
        resolver.close()


# -- SNMP peers -----------------------------------------------------------------------------------


@pytest.fixture
def trap_receiver(tmp_path: Path) -> Iterator[TrapReceiver]:
    """A fresh snmptrapd per test (community `public`, every notification logged) at host:port."""
    receiver = TrapReceiver(tmp_path / "snmptrapd")
    try:
        receiver.start()
        yield receiver
    finally:
        receiver.close()


@pytest.fixture(scope="session")
def base_mibs() -> Path:
    """The directory of IETF base MIB texts (erlang-snmp's), for SMIPATH or net-snmp's -M."""
    return base_mib_dir()


# -- the agent as a process -----------------------------------------------------------------------


@pytest.fixture
def agent_factory(tmp_path: Path) -> Iterator[Callable[[dict[str, object]], AgentProcess]]:
    """Start agents from config dicts (each in tmp_path, on free ports); every one is stopped after the test."""
    agents: list[AgentProcess] = []

    def make(config: dict[str, object]) -> AgentProcess:
        agent = AgentProcess(tmp_path, config)
        agents.append(agent)
        agent.start()
        return agent

    yield make
    for agent in agents:
        agent.stop()


# -- the mail chain -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mail_chain(peers_dir: Path) -> Iterator[MailChain]:
    """The delivery chain, started when first asked for: MSA Postfix (AUTH, OpenDKIM signing) ->
    MX Postfix of dest.test (SPF, DKIM verify, DMARC) -> Dovecot (IMAP, POP3, LMTP, Sieve Junk rule),
    with its own NSD.  Ports, accounts and ca_file are attributes; stop_mx()/start_mx(),
    stop_dovecot()/start_dovecot(), msa_queue(), inbox(), junk().  See tests.peers.mail_chain."""
    chain = MailChain(peers_dir / "mail-chain")
    try:
        chain.start()
        yield chain
    finally:
        chain.close()  # every process, also on failed tests and on a failed start
