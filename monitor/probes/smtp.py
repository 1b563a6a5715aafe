"""SMTP handshake probe: connect, greeting, EHLO, STARTTLS or implicit TLS, QUIT."""

from __future__ import annotations

import asyncio
import base64
import functools
import ipaddress
import re
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from monitor.config.schema import EnvelopeConfig, RelayTestConfig, SmtpAuthConfig, SmtpProbeConfig
from monitor.model.failures import (
    LookupFailure,
    ProbeFailure,
    ReplyFailure,
    SessionFailure,
    WireFailure,
    classify,
)
from monitor.model.results import Phase, Reason, Reply, SmtpResult, TlsInfo
from monitor.model.transcript import TranscriptRecorder
from monitor.probes import ProbeEnv, kernel_times, resolve
from monitor.probes.smtp_wire import MAX_BUFFER, SmtpClientProtocol, parse_extensions
from monitor.probes.tls import tls_facts, tls_summary, unverified_context

# EHLO refusals after which HELO is worth a try (RFC 5321 4.1.4); a 421 is not one.
_HELO_FALLBACK_CODES = {500, 501, 502, 504, 550}
_QUIT_GRACE = 1.0  # seconds: QUIT is a courtesy, never worth the whole deadline
_FIRST_READ = min(16 * 1024, MAX_BUFFER)  # the greeting's first recvmsg(), then the protocol's bounds apply
# SmtpResult.timing_source values: connect and banner come from kernel timestamps when they can.
KERNEL = "kernel"
WALL = "wall"


_TLS_ORDER = {"TLSv1": 1, "TLSv1.1": 2, "TLSv1.2": 3, "TLSv1.3": 4}


def _matches(code: int, expect: str) -> bool:
    """A reply code against "250" or a class like "5xx"."""
    return str(code)[0] == expect[0] if expect.endswith("xx") else str(code) == expect


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _utf8(text: str) -> bytes:
    """A credential's bytes; surrogateescape gives back an environment variable's undecodable bytes."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        # The exception's text names the character and its position: never let it near a log.
        raise ValueError("AUTH username or password is not valid UTF-8") from None


def _password_only_runs(raw: bytes) -> Iterator[str]:
    """The base64 characters that encode password bytes only, with the password at each offset mod 3
    of a longer base64 text (the PLAIN token puts it at len("\\0user\\0") mod 3).

    Character i carries bits 6i..6i+5: it depends on the password alone when those bits lie within it."""
    for offset in range(3):
        encoded = _b64(bytes(offset) + raw + bytes(3))
        first = -(-8 * offset // 6)  # ceil: the first character after the password's first bit
        end = 8 * (offset + len(raw)) // 6
        yield encoded[first:end]


# A shorter run carries less than three password bytes and would match ordinary text.
_MIN_RUN = 4


@dataclass(frozen=True, slots=True)
class _Credentials:
    """The AUTH credentials, read once per probe, and every text that gives them away: servers echo
    what they got, in the AUTH reply or in a later session's banner, so every reply text leaving the
    probe is scrubbed of them."""

    mechanism: str | None
    username: str
    password: str = field(repr=False)
    forms: tuple[str, ...] = field(repr=False)  # longest first: a whole token is replaced before its parts

    @classmethod
    def of(cls, auth: SmtpAuthConfig) -> _Credentials:
        password = auth.password.reveal()
        raw = _utf8(password)
        forms = {
            password,
            _b64(_utf8(f"\0{auth.username}\0{password}")),  # the PLAIN token
            _b64(_utf8(auth.username)),  # the LOGIN lines
            _b64(raw),
            _b64(raw).rstrip("="),
            *(run for run in _password_only_runs(raw) if len(run) >= _MIN_RUN),
        }
        forms.discard("")
        return cls(auth.mechanism, auth.username, password, tuple(sorted(forms, key=len, reverse=True)))

    def scrub(self, text: str) -> str:
        for form in self.forms:
            if form in text:
                text = text.replace(form, "***")
        return text

    def scrub_result(self, result: SmtpResult) -> SmtpResult:
        """The result with no credential in any text the server chose."""
        reply = result.reply
        if reply is not None:
            reply = Reply(reply.code, tuple(self.scrub(line) for line in reply.lines))
        return replace(
            result,
            error=self.scrub(result.error),
            banner=self.scrub(result.banner),
            reply=reply,
            extensions={self.scrub(k): self.scrub(v) for k, v in result.extensions.items()},
        )


# RFC 4954's meanings of the replies to AUTH: all that is kept of them (the server's text may echo
# the credentials). RFC 3463's enhanced status code is kept too when it is well formed.
_AUTH_REPLY_MEANING = {
    432: "password transition needed",
    454: "temporary authentication failure",
    500: "authentication exchange line too long",
    501: "authentication exchange refused as malformed",
    502: "AUTH not implemented",
    504: "authentication mechanism not supported",
    530: "authentication required",
    534: "authentication mechanism too weak",
    535: "authentication credentials invalid",
    538: "encryption required for the mechanism",
}
_ENHANCED_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")


def _withheld(reply: Reply, credentials: _Credentials) -> Reply:
    """A reply to AUTH as kept: the code, the enhanced status code, a fixed description."""
    first = reply.lines[0].split(" ", 1)[0] if reply.lines else ""
    enhanced = first if _ENHANCED_STATUS.fullmatch(first) and first[0] == str(reply.code)[0] else ""
    if credentials.scrub(enhanced) != enhanced:  # a digits-only password
        enhanced = ""
    meaning = _AUTH_REPLY_MEANING.get(reply.code, "reply to AUTH")
    return Reply(reply.code, (f"{enhanced} {meaning} (server text withheld)".lstrip(),))


def _ends_a_reply(chunk: bytes) -> bool:
    """Whether `chunk` holds a reply's last line ("220 ..." or a bare "220"), i.e. the whole greeting."""
    lines = chunk.split(b"\n")[:-1]  # the part after the last line end is unfinished
    return any(len(line.rstrip(b"\r")) == 3 or line[3:4] == b" " for line in lines)


@functools.cache
def _default_helo() -> str:
    # Once per process: getfqdn() may ask DNS, and this runs inside the event loop.
    name = socket.getfqdn()
    return name if "." in name else "smtp-monitor.localdomain"


class _Dialogue:
    """One probe's state: phase timings, what was learned, and the connection."""

    def __init__(self, config: SmtpProbeConfig, env: ProbeEnv, recorder: TranscriptRecorder | None = None) -> None:
        self.config = config
        self.env = env
        # The dialogue as it happens; a delivery probe passes its own, shared with the mailbox side.
        self.recorder = recorder if recorder is not None else TranscriptRecorder()
        self.phase = Phase.RESOLVE
        self.phase_started = time.perf_counter()
        self.timings: dict[str, float] = {}
        self.address = ""
        self.banner = ""
        self.extensions: dict[str, str] = {}  # from the last EHLO (inside TLS when there is TLS)
        self.plain_extensions: dict[str, str] = {}  # from the EHLO before STARTTLS
        self.helo_fallback = False
        self.tls: TlsInfo | None = None
        self.in_transaction = False  # MAIL FROM accepted and not yet RSET
        self.proto = SmtpClientProtocol()
        self.proto.recorder = self.recorder
        # Connected but not yet handed to the protocol: greet() reads the greeting's first bytes off it itself.
        self.sock: socket.socket | None = None
        self.established: float | None = None  # epoch seconds the TCP handshake completed
        self.timing_source: dict[str, str] = {}  # connect/banner -> KERNEL or WALL

    def enter(self, phase: Phase) -> None:
        self.phase = phase
        self.phase_started = time.perf_counter()

    def done(self) -> None:
        self.timings[self.phase.value] = time.perf_counter() - self.phase_started

    def record(self, phase: Phase, seconds: float | None) -> None:
        """Replace the wall-clock timing of `phase` (done() was called) by a kernel-based one when there is one."""
        if seconds is None:
            self.timing_source[phase.value] = WALL
        else:
            self.timings[phase.value] = seconds
            self.timing_source[phase.value] = KERNEL

    async def command(self, line: str, secret: bool = False) -> Reply:
        """Send one command line and read its reply; `secret`: an AUTH line, recorded without its credentials."""
        self.recorder.sent(line, secret)
        self.proto.write(line.encode("ascii") + b"\r\n")
        return await self.proto.read_reply(secret)

    async def expect(self, line: str | None, ok_codes: range) -> Reply:
        reply = await (self.command(line) if line else self.proto.read_reply())
        if reply.code not in ok_codes:
            raise ReplyFailure(reply)
        return reply

    # -- steps ----------------------------------------------------------------
    async def resolve(self) -> None:
        self.enter(Phase.RESOLVE)
        addrs = await resolve.addresses(self.env.resolver, self.config.host)
        family = self.config.address_family
        if family in ("ipv4", "ipv6"):
            wanted = 4 if family == "ipv4" else 6
            addrs = [a for a in addrs if ipaddress.ip_address(a).version == wanted]
            if not addrs:
                raise LookupFailure(Reason.NO_ADDRESS, f"{self.config.host}: no {family} address")
        self.address = addrs[0]
        if addrs != [self.config.host]:
            self.recorder.note(f"resolved {self.config.host}: {', '.join(addrs)}")
        self.done()

    async def connect(self) -> None:
        """Connect, timing the handshake by the kernel's RTT sample: the wall clock would also count the
        time this process waited for a CPU before it saw the connection complete."""
        self.enter(Phase.CONNECT)
        self.recorder.note(f"trying {self.address} port {self.effective_port}")
        loop = asyncio.get_running_loop()
        family, kind, proto, _, address = socket.getaddrinfo(
            self.address, self.effective_port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            self.bind_source(sock)
            # With implicit TLS the greeting comes through the TLS layer: no raw read to stamp.
            stamped = self.config.tls != "implicit" and kernel_times.enable_rx_timestamps(sock)
            started = time.time()  # the SYN follows at once: a numeric address needs no await first
            await loop.sock_connect(sock, address)
        except BaseException:
            sock.close()
            raise
        self.done()
        self.recorder.note("connected")
        rtt = kernel_times.handshake_rtt(sock)
        if rtt is not None:
            rtt = min(rtt, self.timings[Phase.CONNECT.value])  # sanity: never more than the wall clock
        # When the SYN-ACK arrived, in the clock of the kernel's receive timestamps (CLOCK_REALTIME).
        self.established = started + rtt if rtt is not None else time.time()
        self.record(Phase.CONNECT, rtt)
        if stamped:
            self.sock = sock
        else:
            self.attach(sock, b"")

    def bind_source(self, sock: socket.socket) -> None:
        """Bind to source_address, failing with the errors create_connection(local_addr=...) raised (their
        errno and text make the result's reason and error)."""
        source = self.config.source_address
        if source is None:
            return
        failure: OSError | None = None
        # AI_NUMERICHOST: an IP literal, so getaddrinfo never blocks the event loop on a DNS lookup
        for family, _, _, _, laddr in socket.getaddrinfo(
            str(source), 0, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST
        ):
            if family != sock.family:
                continue
            try:
                sock.bind(laddr)
                return
            except OSError as exc:
                why = (exc.strerror or str(exc)).lower()
                failure = OSError(exc.errno, f"error while attempting to bind on address {laddr!r}: {why}")
        raise failure or OSError(f"no matching local address with family={sock.family!r} found")

    def attach(self, sock: socket.socket, first: bytes) -> None:
        """Hand the connected socket to the protocol, `first` (bytes already read off it) ahead of the rest."""
        if first:
            self.proto.data_received(first)
        self.proto.attach_socket(sock)
        self.sock = None

    async def receive_greeting(self) -> float | None:
        """Read the greeting's first bytes with their kernel receive time, then hand the socket to the protocol.

        Returns that time when the chunk holds the whole reply; a greeting in several packets is timed
        by the wall clock. A reset or close is left for read_reply() to report, as a transport would."""
        assert self.sock is not None
        try:
            first, arrived = await kernel_times.recv_stamped(self.sock, _FIRST_READ)
        except OSError as exc:
            self.proto.connection_lost(exc)
            return None
        if not first:
            self.proto.eof_received()
            return None
        self.attach(self.sock, first)
        return arrived if _ends_a_reply(first) else None

    @property
    def effective_port(self) -> int:
        return self.config.effective_port

    @property
    def server_name(self) -> str:
        return self.config.servername or self.config.host

    async def handshake(self) -> None:
        self.enter(Phase.TLS)
        ctx = self.env.tls.get(self.config.ca_file, self.config.verify)
        try:
            # start_tls() drops bytes the server sent before the handshake: they are not part of the session.
            sslobj = await self.proto.start_tls(ctx, self.server_name)
        except ssl.SSLCertVerificationError as exc:
            raise ProbeFailure(Reason.TLS_VERIFY, f"certificate verification failed: {exc.verify_message}") from exc
        verified = self.config.verify
        self.tls = tls_facts(
            sslobj, verified, "" if verified else "verification disabled", keep_chain=self.config.keep_chain
        )
        self.done()
        self.recorder.tls(tls_summary(self.tls))
        minimum = self.config.tls_min_version
        if minimum is not None and _TLS_ORDER.get(self.tls.version, 0) < _TLS_ORDER[minimum]:
            raise SessionFailure(Reason.TLS_VERSION, f"negotiated {self.tls.version}, below the minimum {minimum}")

    async def greet(self) -> None:
        self.enter(Phase.BANNER)
        arrived = await self.receive_greeting() if self.sock is not None else None
        reply = await self.expect(None, range(220, 221))
        self.banner = str(reply)
        self.done()
        now = time.time()
        # The kernel stamp must lie between the handshake and now, or a clock step happened in between.
        if arrived is not None and self.established is not None and self.established <= arrived <= now:
            self.record(Phase.BANNER, arrived - self.established)
        else:
            self.record(Phase.BANNER, None)
        pattern = self.config.expect_banner
        if pattern is not None and not re.search(pattern, self.banner):
            raise SessionFailure(Reason.UNEXPECTED_BANNER, f"greeting {self.banner[:120]!r} does not match {pattern!r}")

    async def ehlo(self, phase: Phase) -> None:
        self.enter(phase)
        helo = self.config.helo or self.env.defaults.helo or _default_helo()
        reply = await self.command(f"EHLO {helo}")
        if reply.code in _HELO_FALLBACK_CODES and phase is Phase.EHLO:
            self.helo_fallback = True
            reply = await self.command(f"HELO {helo}")
            if reply.code // 100 != 2:
                raise ReplyFailure(reply)
            self.extensions = {}
        elif reply.code // 100 != 2:
            raise ReplyFailure(reply)
        else:
            self.extensions = parse_extensions(reply)
        if phase is Phase.EHLO:
            self.plain_extensions = self.extensions
        self.done()

    async def starttls(self) -> None:
        self.enter(Phase.STARTTLS)
        if "STARTTLS" not in self.extensions:
            raise SessionFailure(Reason.NO_STARTTLS, "server does not offer STARTTLS")
        await self.expect("STARTTLS", range(220, 221))
        self.done()

    def check_extensions(self) -> None:
        # STARTTLS is only offered before TLS; the rest are judged from the final EHLO.
        offered = self.extensions.keys() | self.plain_extensions.keys()
        missing = [e for e in self.config.expect_extensions if e not in offered]
        if missing:
            raise SessionFailure(Reason.MISSING_EXTENSION, "EHLO lacks " + ", ".join(missing))

    async def relay_test(self, relay: RelayTestConfig) -> None:
        """An outside recipient must be refused; a 2xx means anyone can relay through us."""
        self.enter(Phase.MAIL)
        await self.envelope_step(f"MAIL FROM:<{relay.mail_from}>", "2xx")
        self.done()
        self.enter(Phase.RCPT)
        reply = await self.command(f"RCPT TO:<{relay.rcpt_to}>")
        if reply.code // 100 == 2:
            raise SessionFailure(Reason.OPEN_RELAY, f"open relay: RCPT TO:<{relay.rcpt_to}> accepted ({reply})")
        self.done()
        await self.rset()

    async def envelope(self, envelope: EnvelopeConfig) -> None:
        self.enter(Phase.MAIL)
        await self.envelope_step(f"MAIL FROM:<{envelope.mail_from}>", "2xx")
        self.done()
        self.enter(Phase.RCPT)
        for rcpt in envelope.rcpt_to:
            await self.envelope_step(f"RCPT TO:<{rcpt}>", envelope.expect)
        self.done()
        await self.rset()

    async def envelope_step(self, line: str, expect: str) -> Reply:
        reply = await self.command(line)
        if line.startswith("MAIL") and reply.code // 100 == 2:
            self.in_transaction = True
        if not _matches(reply.code, expect):
            if expect == "2xx":
                raise ReplyFailure(reply)
            raise SessionFailure(Reason.UNEXPECTED_REPLY, f"{line}: expected {expect}, got {reply}", reply=reply)
        return reply

    async def rset(self) -> None:
        # RSET clears the transaction so nothing is ever queued; its reply is not checked.
        await self.command("RSET")
        self.in_transaction = False

    async def authenticate(self, credentials: _Credentials) -> None:
        self.enter(Phase.AUTH)
        username, password = credentials.username, credentials.password
        offered = self.extensions.get("AUTH", "").upper().split()
        mechanism = credentials.mechanism or next((m for m in ("PLAIN", "LOGIN") if m in offered), None)
        if mechanism is None or mechanism not in offered:
            wanted = credentials.mechanism or "PLAIN or LOGIN"
            offer = " ".join(offered) or "(none)"
            raise SessionFailure(Reason.AUTH_UNAVAILABLE, f"server offers AUTH {offer}, not {wanted}")
        try:
            if mechanism == "PLAIN":
                token = _b64(_utf8(f"\0{username}\0{password}"))
                reply = await self.command(f"AUTH PLAIN {token}", secret=True)
            else:
                reply = await self.command("AUTH LOGIN", secret=True)
                for value in (username, password):
                    if reply.code != 334:
                        break
                    reply = await self.command(_b64(_utf8(value)), secret=True)
        except WireFailure as exc:
            # A malformed reply is quoted in the message: keep the message, never the server's text.
            raise WireFailure(exc.reason, credentials.scrub(exc.bare)) from None
        if reply.code == 235:
            self.done()
            return
        reply = _withheld(reply, credentials)
        if reply.code == 535:
            raise SessionFailure(Reason.AUTH_FAILED, f"credentials refused: {reply}", reply=reply)
        raise ReplyFailure(reply)

    async def quit(self) -> None:
        self.enter(Phase.QUIT)
        try:
            async with asyncio.timeout(_QUIT_GRACE):
                await self.command("QUIT")
            self.done()
        except (WireFailure, OSError):  # OSError: TimeoutError and ssl.SSLError too
            pass  # the dialogue already succeeded; a sloppy goodbye is not an outage

    async def ended_by(self, exc: ProbeFailure | OSError, allowed: float, deadline: float) -> ProbeFailure:
        """The classified failure `exc` ended the dialogue with (a lookup failure as a DNS one; `allowed`, the
        seconds the dialogue had, names a timeout); when the server is still in the session, it is ended
        politely first (RSET, QUIT)."""
        failure = classify(exc, allowed)
        if isinstance(failure, LookupFailure):
            failure = failure.as_dns()
        if session_open(failure):
            await self.goodbye(deadline)
        return failure

    async def goodbye(self, deadline: float) -> None:
        """After a check failed on a healthy connection: end politely (RSET, QUIT), so the server
        logs a normal session instead of "lost connection" and drops any open transaction."""
        transport = self.proto.transport
        if transport is None or transport.is_closing():
            return
        grace = min(_QUIT_GRACE, deadline - asyncio.get_running_loop().time())
        if grace <= 0:
            return
        try:
            async with asyncio.timeout(grace):
                if self.in_transaction:
                    await self.command("RSET")
                await self.command("QUIT")
        except (WireFailure, OSError):
            pass

    def close(self) -> None:
        # abort(), not close(): a graceful TLS shutdown can wait on a silent peer.
        if self.proto.transport is not None:
            self.proto.transport.abort()
        if self.sock is not None:
            self.sock.close()
            self.sock = None


async def run(config: SmtpProbeConfig, env: ProbeEnv) -> SmtpResult:
    """Probe one SMTP server; every outcome, good or bad, is a result value.

    address_family "both" probes every A and AAAA address of the host: the result is the first
    failing address's (or the first address's), with every address's result attached."""
    if config.address_family != "both":
        return await _run_one(config, env)
    t0 = time.perf_counter()
    try:
        addrs = await resolve.addresses(env.resolver, config.host)
    except LookupFailure:
        return await _run_one(config.model_copy(update={"address_family": "any"}), env)  # reports the DNS failure
    servername = config.servername or config.host
    per_address = await asyncio.gather(
        *(
            _run_one(config.model_copy(update={"host": a, "address_family": "any", "servername": servername}), env)
            for a in addrs
        )
    )
    per_address = [replace(r, host=config.host) for r in per_address]
    main = next((r for r in per_address if not r.ok), per_address[0])
    if not main.ok:
        main = replace(main, error=f"{main.address}: {main.error}")
    return replace(main, address_results=tuple(per_address), total=time.perf_counter() - t0)


# The dialogue's parts a delivery probe reuses to send its message on the session (monitor.probes.delivery).
Dialogue = _Dialogue
Credentials = _Credentials


async def _converse(d: _Dialogue, credentials: _Credentials | None) -> None:
    """The dialogue's steps in order; the first that fails raises."""
    await open_session(d, credentials)
    await d.quit()


async def open_session(d: Dialogue, credentials: Credentials | None) -> None:
    """Every step up to and including AUTH, leaving the session open: the handshake probe ends it with
    QUIT, a delivery probe sends its message on it first."""
    config = d.config
    await d.resolve()
    await d.connect()
    if config.tls == "implicit":
        await d.handshake()
    await d.greet()
    await d.ehlo(Phase.EHLO)
    if config.tls == "starttls":
        await d.starttls()
        await d.handshake()
        await d.ehlo(Phase.EHLO_TLS)
    d.check_extensions()
    # Relay and envelope tests run before AUTH: an authenticated client may relay.
    if config.relay_test is not None:
        await d.relay_test(config.relay_test)
    if config.envelope is not None:
        await d.envelope(config.envelope)
    if credentials is not None:
        await d.authenticate(credentials)


def session_open(failure: ProbeFailure) -> bool:
    """Whether the server is still in the session after `failure`, so that the probe ends it politely."""
    if not isinstance(failure, SessionFailure):
        return False  # a broken connection, a failed handshake (no session left), DNS, a timeout
    # 421: the server is closing the channel itself
    return failure.reason is not Reason.REPLY or failure.reply is None or failure.reply.code != 421


async def _run_one(config: SmtpProbeConfig, env: ProbeEnv) -> SmtpResult:
    started_at = time.time()
    t0 = time.perf_counter()
    timeout = config.timeout or env.defaults.timeout
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    d = _Dialogue(config, env)
    credentials = _Credentials.of(config.auth) if config.auth is not None else None
    if credentials is not None:
        d.recorder.add_secret(credentials.password)
    failure: ProbeFailure | None = None
    try:
        async with asyncio.timeout_at(deadline):
            await _converse(d, credentials)
    except (ProbeFailure, OSError) as exc:  # OSError: TimeoutError, ssl.SSLError and the socket's errors
        failure = await d.ended_by(exc, timeout, deadline)
    finally:
        d.close()
    reason = failure.reason if failure is not None else None
    error = failure.message if failure is not None else ""
    reply = failure.reply if failure is not None else None
    if reason is Reason.TLS_VERIFY:
        d.tls = await _look_at_certificate(d, deadline, error)
        if d.tls is not None:
            d.recorder.tls(f"second look, unverified: {tls_summary(d.tls)}")
    if failure is not None:
        d.recorder.conclude(failure_note(d.phase.value, failure))
    result = SmtpResult(
        host=config.host,
        port=config.effective_port,
        tls_mode=config.tls,
        started_at=started_at,
        ok=reason is None,
        phase=d.phase if reason is not None else None,
        reason=reason,
        error=error,
        reply=reply,
        address=d.address,
        timings=d.timings,
        total=time.perf_counter() - t0,
        banner=d.banner,
        helo_fallback=d.helo_fallback,
        extensions=d.extensions,
        tls=d.tls,
        timing_source=d.timing_source,
        transcript=d.recorder.transcript(),
    )
    return credentials.scrub_result(result) if credentials is not None else result


def failure_note(phase: str, failure: ProbeFailure) -> str:
    """The transcript's last line of a failed run: where and why."""
    return f"failed in {phase}: {failure.reason.value}: {failure.message}"


async def _look_at_certificate(failed: _Dialogue, deadline: float, verify_error: str) -> TlsInfo | None:
    """Repeat the dialogue up to the handshake without verification, so that the
    certificate's facts (expiry above all) are known even when it does not verify."""
    d = _Dialogue(failed.config, failed.env)
    d.address = failed.address
    try:
        async with asyncio.timeout_at(deadline):
            await d.connect()
            if failed.config.tls == "starttls":
                await d.greet()
                await d.ehlo(Phase.EHLO)
                await d.starttls()
            sslobj = await d.proto.start_tls(unverified_context(), d.server_name)
            return tls_facts(sslobj, False, verify_error, keep_chain=d.config.keep_chain)
    except (ProbeFailure, OSError):
        return None
    finally:
        d.close()
