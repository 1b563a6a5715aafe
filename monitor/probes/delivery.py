"""Delivery probe: submit a message with a unique token, wait for it in a mailbox, read what the
receiving side made of it (hops, Authentication-Results verdicts, folder), delete it.

Phases: the mailbox is opened first (phase fetch: a mailbox that cannot be read gets no message, so
nothing is left behind); then the message is submitted (phase submit) through the SMTP probe's own
dialogue (monitor.probes.smtp: bounded reads, TLS, AUTH with its credential scrubbing), to a
submission server or to the recipient domain's exchanges in MX order; then the mailbox is watched
until `deliver_within` after the 250 (phase deliver: not there by then is `late`, and the message
stays pending under its token); found, its headers are read (fetch) and it is deleted (cleanup).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import ipaddress
import math
import re
import secrets
import time
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.policy import SMTP as SMTP_POLICY
from email.policy import compat32

import authres
import dns.rdtypes.ANY.MX

from monitor.config.schema import DeliveryProbeConfig, SmtpAuthConfig, SmtpProbeConfig
from monitor.model.delivery import (
    AuthVerdict,
    DeliveryPhase,
    DeliveryReason,
    DeliveryResult,
    EarlierMessage,
    Hop,
    PendingMessage,
)
from monitor.model.failures import LookupFailure, ProbeFailure, ReplyFailure
from monitor.model.results import Phase, Reason, Reply
from monitor.model.transcript import MAX_LINES_LONG, TranscriptRecorder
from monitor.probes import ProbeEnv, dnsbl, resolve
from monitor.probes.mailbox import PROBE_HEADER, TOKEN_HEADER, Found, Mailbox, open_mailbox
from monitor.probes.smtp import Credentials, Dialogue, failure_note, open_session

MAX_HOPS = 50  # Received headers read; a loop in the relays adds one per pass
MAX_AUTH_HEADERS = 20  # Authentication-Results headers read
MAX_HEADER_VALUE = 8 * 1024  # one header's value: longer ones are skipped, not parsed
MAX_SWEEP = 100  # own messages looked at per sweep: a backlog goes over several runs
_QUEUE_ID = (re.compile(r"queued as ([A-Za-z0-9._-]{1,64})"), re.compile(r"\bid=([A-Za-z0-9._-]{1,64})"))
_COMMENT = re.compile(r"\([^()]*\)")  # innermost comment; nested ones go in a few passes
_CLAUSE = re.compile(r"\b(from|by|with|id|via|for)\s+(\S+)", re.IGNORECASE)


# -- the message ------------------------------------------------------------------------------------------


def new_token() -> str:
    """128 random bits: no message of anyone else's can carry it by chance."""
    return secrets.token_hex(16)


def build_message(config: DeliveryProbeConfig, token: str, now: datetime | None = None) -> EmailMessage:
    """The probe's RFC 5322 message.

    Auto-Submitted: auto-generated (RFC 3834) keeps vacation responders and other auto-replies from
    answering it. No Precedence: bulk: it is not standardised, and some filters take it as a sign of bulk
    mail, which would move the probe toward the junk folder whose placement it measures."""
    message = probe_message(
        sender=config.mail_from,
        to=config.to,
        subject=f"smtp-monitor delivery probe {config.name}",
        probe=config.name,
        token=token,
        body=(
            "This message tests mail delivery end to end.\n"
            "smtp-monitor deletes it from the mailbox once it has read its headers.\n"
        ),
        now=now,
    )
    for name, value in config.extra_headers.items():
        message[name] = value
    return message


def probe_message(
    *, sender: str, to: str, subject: str, probe: str, token: str, body: str, now: datetime | None = None
) -> EmailMessage:
    """A probe's message with the hygiene headers every probe message carries (delivery and spoof tests):
    Auto-Submitted, a Message-ID of its own token, and the probe and token headers its mailbox side
    searches by."""
    domain = sender.rpartition("@")[2] or "smtp-monitor.invalid"
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = email.utils.format_datetime(now or datetime.now(UTC))
    message["Message-ID"] = f"<smtp-monitor.{token}@{domain}>"
    message["Auto-Submitted"] = "auto-generated"
    message[PROBE_HEADER] = probe
    message[TOKEN_HEADER] = token
    message.set_content(body)
    return message


def wire_bytes(message: EmailMessage) -> bytes:
    """The message as sent after DATA: CRLF lines, dot-stuffed (RFC 5321 4.5.2), ended by a lone dot."""
    data = message.as_bytes(policy=SMTP_POLICY)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    stuffed = re.sub(rb"(?m)^\.", b"..", data)
    return stuffed + b".\r\n"


def queue_id(reply: Reply) -> str:
    """The queue ID a server names in its 250 to DATA (Postfix "queued as X", Exim "id=X"), or ""."""
    for pattern in _QUEUE_ID:
        match = pattern.search(reply.text)
        if match:
            return match[1]
    return ""


# -- what the receiving side made of it ---------------------------------------------------------------------


def _uncomment(text: str) -> str:
    for _ in range(8):  # nesting deeper than this is not a Received header worth reading
        text, count = _COMMENT.subn(" ", text)
        if not count:
            break
    return text


def _header_values(header: bytes, name: str, limit: int) -> list[str]:
    parsed = BytesHeaderParser(policy=compat32).parsebytes(header)
    values = [re.sub(r"\s+", " ", str(value)).strip() for value in parsed.get_all(name, [])[:limit]]
    return [value for value in values if len(value) <= MAX_HEADER_VALUE]


def parse_received(value: str) -> tuple[str, str, str, str, datetime | None]:
    """(from, by, with, id, time) of one Received header value (RFC 5321 4.4); "" or None where absent."""
    clauses, _, date_text = value.rpartition(";")
    if not _:
        clauses, date_text = value, ""
    found: dict[str, str] = {}
    for keyword, word in _CLAUSE.findall(_uncomment(clauses)):
        found.setdefault(keyword.lower(), word.strip("<>;"))
    when: datetime | None = None
    if date_text.strip():
        try:
            when = email.utils.parsedate_to_datetime(_uncomment(date_text).strip())
        except (TypeError, ValueError, IndexError, OverflowError):
            when = None
        if when is not None and when.tzinfo is None:
            when = None  # "-0000": the local time of an unknown zone
    return found.get("from", ""), found.get("by", ""), found.get("with", ""), found.get("id", ""), when


_BRACKETED_ADDRESS = re.compile(r"\[(?:IPv6:)?([0-9A-Fa-f:.]{2,45})\]")
_BY_CLAUSE = re.compile(r"\sby\s", re.IGNORECASE)


def from_address(value: str) -> str:
    """The sending address of one Received header value: the bracketed IP address in its from clause's
    comment, as Postfix, Exim and Sendmail write it ("from name (helo [192.0.2.1])"); "" when there is none."""
    head = _BY_CLAUSE.split(value, maxsplit=1)[0]
    if not head.lstrip().lower().startswith("from"):
        return ""
    for match in _BRACKETED_ADDRESS.finditer(head):
        try:
            return str(ipaddress.ip_address(match[1]))
        except ValueError:
            continue
    return ""


def hops_of(header: bytes, submitted_at: float | None) -> tuple[Hop, ...]:
    """The Received chain in travel order, each hop with its delay since the one before (the first: since
    the submission's second; Received dates have whole seconds)."""
    values = _header_values(header, "Received", MAX_HOPS)
    hops: list[Hop] = []
    previous: float | None = math.floor(submitted_at) if submitted_at is not None else None
    for value in reversed(values):  # the newest header is on top
        from_host, by_host, protocol, hop_id, when = parse_received(value)
        stamp = when.timestamp() if when is not None else None
        delay = stamp - previous if stamp is not None and previous is not None else None
        if not hops and delay is not None and -1.0 <= delay < 0.0:
            # The first server stamps its Received before its 250 (submitted_at), both in whole
            # seconds: a second that ticked in between is resolution, not delay. Less than -1 s is
            # a clock apart from ours, and shows as such.
            delay = 0.0
        hops.append(Hop(from_host, by_host, protocol, hop_id, when, delay, from_address(value)))
        previous = stamp
    return tuple(hops)


def verdicts_of(header: bytes, authserv_id: str | None) -> tuple[AuthVerdict, ...]:
    """The receiving side's verdicts: the Authentication-Results of `authserv_id`, or else of the topmost
    header's authserv-id (the receiving side's own, above anything the sender wrote); the first result
    per method counts."""
    verdicts: dict[str, AuthVerdict] = {}
    chosen = authserv_id.lower() if authserv_id else None
    for value in _header_values(header, "Authentication-Results", MAX_AUTH_HEADERS):
        try:
            parsed = authres.AuthenticationResultsHeader.parse_value(value)
        except Exception:  # noqa: S112 -- authres raises its own errors on malformed text: skip that header
            continue
        server = str(parsed.authserv_id or "").lower()
        if chosen is None:
            chosen = server
        if server != chosen:
            continue
        for result in parsed.results:
            method = str(result.method or "").lower()
            if method and method not in verdicts:
                verdicts[method] = AuthVerdict(method, str(result.result or "").lower(), server)
    return tuple(verdicts.values())


# -- submission ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Submitted:
    reply: Reply
    where: str  # host:port
    wall: float
    monotonic: float
    timings: dict[str, float]


def _smtp_config(config: DeliveryProbeConfig, host: str, servername: str | None) -> SmtpProbeConfig:
    submit = config.submit
    return SmtpProbeConfig(
        name=config.name,
        host=host,
        port=submit.effective_port,
        tls=submit.tls,
        timeout=config.timeouts.submit,
        ca_file=submit.ca_file,
        servername=servername,
        helo=submit.helo,
        verify=submit.verify,
    )


async def _send(d: Dialogue, config: DeliveryProbeConfig, data: bytes, steps: list[str]) -> Reply:
    """MAIL, RCPT, DATA on an open session; the 250 to the message's end. `steps` names DATA while it runs."""
    d.enter(Phase.MAIL)
    reply = await d.command(f"MAIL FROM:<{config.mail_from}>")
    if reply.code // 100 != 2:
        raise ReplyFailure(reply)
    d.in_transaction = True
    d.done()
    d.enter(Phase.RCPT)
    reply = await d.command(f"RCPT TO:<{config.to}>")
    if reply.code // 100 != 2:
        raise ReplyFailure(reply)
    d.done()
    steps.append("data")  # no Phase of its own: the SMTP probe never sends DATA
    started = time.perf_counter()
    reply = await d.command("DATA")
    if reply.code != 354:
        raise ReplyFailure(reply)
    d.recorder.note(f"(the message: {len(data)} bytes, ended by a lone dot)")
    d.proto.write(data)
    reply = await d.proto.read_reply()
    if reply.code // 100 != 2:
        raise ReplyFailure(reply)
    d.in_transaction = False
    d.timings["data"] = time.perf_counter() - started
    steps.pop()
    return reply


async def _submit_once(
    config: DeliveryProbeConfig,
    env: ProbeEnv,
    host: str,
    servername: str | None,
    data: bytes,
    credentials: Credentials | None,
    recorder: TranscriptRecorder | None = None,
) -> Submitted:
    smtp_config = _smtp_config(config, host, servername)
    timeout = config.timeouts.submit
    deadline = asyncio.get_running_loop().time() + timeout
    d = Dialogue(smtp_config, env, recorder)
    where = f"{host}:{smtp_config.effective_port}"
    steps: list[str] = []
    try:
        async with asyncio.timeout_at(deadline):
            await open_session(d, credentials)
            reply = await _send(d, config, data, steps)
            accepted_wall, accepted = time.time(), time.monotonic()
            await d.quit()
    except (ProbeFailure, OSError) as exc:
        failure = await d.ended_by(exc, timeout, deadline)
        message = f"{where} {steps[-1] if steps else d.phase.value}: {failure.message}"
        failed_reply = failure.reply
        if credentials is not None:
            message = credentials.scrub(message)
            if failed_reply is not None:
                failed_reply = Reply(failed_reply.code, tuple(credentials.scrub(line) for line in failed_reply.lines))
        raise ProbeFailure(failure.reason, message, reply=failed_reply) from None
    finally:
        d.close()
    return Submitted(reply, where, accepted_wall, accepted, {f"submit_{k}": v for k, v in d.timings.items()})


async def _exchanges(config: DeliveryProbeConfig, env: ProbeEnv) -> list[str]:
    """The recipient domain's exchanges in preference order; the domain itself without MX (RFC 5321 5.1)."""
    domain = config.recipient_domain
    try:
        answer = await resolve.query(env.resolver, domain, "MX")
    except LookupFailure as exc:
        if exc.reason is Reason.NO_ADDRESS:  # no MX records: the implicit MX
            return [domain]
        raise exc.as_dns() from None
    pairs = sorted(
        (int(rdata.preference), rdata.exchange.to_text(omit_final_dot=True))
        for rdata in answer
        if isinstance(rdata, dns.rdtypes.ANY.MX.MX)
    )
    if any(exchange in ("", ".") for _, exchange in pairs):
        raise ProbeFailure(Reason.NULL_MX, f"{domain} has a null MX (RFC 7505): it accepts no mail")
    return [exchange for _, exchange in pairs]


def _worth_next_exchange(failure: ProbeFailure) -> bool:
    """An MTA tries the next MX when one cannot take the message now; a 5xx refusal is final."""
    if failure.reply is not None:
        return failure.reply.code // 100 == 4
    return failure.reason is not Reason.TLS_VERIFY  # a certificate failure is the same at every exchange


async def submit(
    config: DeliveryProbeConfig, env: ProbeEnv, data: bytes, recorder: TranscriptRecorder | None = None
) -> Submitted:
    """Hand the message over; `recorder` gets every SMTP dialogue of it (one per exchange tried)."""
    submit_config = config.submit
    auth = submit_config.auth
    credentials = Credentials.of(auth) if isinstance(auth, SmtpAuthConfig) else None
    if credentials is not None and recorder is not None:
        recorder.add_secret(credentials.password)
    if submit_config.via == "submission":
        assert submit_config.host is not None
        return await _submit_once(
            config, env, submit_config.host, submit_config.servername, data, credentials, recorder
        )
    failures: list[ProbeFailure] = []
    for exchange in await _exchanges(config, env):
        try:
            return await _submit_once(config, env, exchange, submit_config.servername or exchange, data, None, recorder)
        except ProbeFailure as failure:
            if recorder is not None:
                recorder.note(f"not taken: {failure.reason.value}: {failure.message}")
            failures.append(failure)
            if not _worth_next_exchange(failure):
                break
    last = failures[-1]
    message = "; ".join(f.message for f in failures)
    raise ProbeFailure(last.reason, message, reply=last.reply)


# -- the run ---------------------------------------------------------------------------------------------------


class _Run:
    """One run's progress: the phase it is in and what was learned so far."""

    def __init__(self, config: DeliveryProbeConfig) -> None:
        self.config = config
        self.started_at = time.time()
        self.t0 = time.perf_counter()
        self.phase = DeliveryPhase.FETCH
        self.phase_started = self.t0
        self.timings: dict[str, float] = {}
        self.token = ""
        self.message_id = ""
        self.submitted: Submitted | None = None
        self.found: Found | None = None
        self.deleted = False
        self.idle = False
        self.earlier: tuple[EarlierMessage, ...] = ()
        # the submission's SMTP dialogue and the mailbox's commands, in the order they happened
        self.recorder = TranscriptRecorder(max_lines=MAX_LINES_LONG)

    def enter(self, phase: DeliveryPhase) -> None:
        self.phase = phase
        self.phase_started = time.perf_counter()

    def done(self, key: str) -> None:
        self.timings[key] = time.perf_counter() - self.phase_started

    def result(
        self, failure: ProbeFailure | None, reason: DeliveryReason | None = None, error: str = "", note: str = ""
    ) -> DeliveryResult:
        submitted, found = self.submitted, self.found
        latency = found.seen_monotonic - submitted.monotonic if (found and submitted) else None
        late = latency is not None and latency > self.config.deliver_within
        header = found.header if found is not None else b""
        failed_reason: Reason | DeliveryReason | None = failure.reason if failure is not None else reason
        if failed_reason is not None:
            self.recorder.conclude(
                failure_note(self.phase.value, failure)
                if failure is not None
                else f"failed in {self.phase.value}: {failed_reason.value}: {error}"
            )
        return DeliveryResult(
            name=self.config.name,
            started_at=self.started_at,
            ok=failed_reason is None,
            phase=self.phase if failed_reason is not None else None,
            reason=failed_reason,
            error=failure.message if failure is not None else error,
            reply=failure.reply if failure is not None else None,
            token=self.token if submitted is not None else "",
            message_id=self.message_id if submitted is not None else "",
            submitted_to=submitted.where if submitted else "",
            queue_id=queue_id(submitted.reply) if submitted else "",
            submitted_at=submitted.wall if submitted else None,
            arrived_at=found.seen_at if found else None,
            latency=latency,
            pending=submitted is not None and found is None,
            late=late or reason is DeliveryReason.LATE,
            hops=hops_of(header, submitted.wall if submitted else None) if found else (),
            verdicts=verdicts_of(header, self.config.authserv_id) if found else (),
            folder=found.folder if found else "",
            folder_name=found.folder_name if found else "",
            deleted=self.deleted,
            cleanup_note=note,
            idle=self.idle,
            earlier=self.earlier,
            transcript=self.recorder.transcript(),
            timings={**(submitted.timings if submitted else {}), **self.timings},
            total=time.perf_counter() - self.t0,
        )


def _expectations(config: DeliveryProbeConfig, result: DeliveryResult) -> tuple[DeliveryReason, str] | None:
    """What the found message's folder and verdicts fail of the configured expectations."""
    if config.expect_folder is not None and result.folder and result.folder != config.expect_folder:
        where = f"{result.folder} ({result.folder_name})"
        return DeliveryReason.WRONG_FOLDER, f"landed in {where}, not {config.expect_folder}"
    wrong = [
        f"{method}={result.verdict(method) or 'missing'} (expected {expected})"
        for method, expected in (
            ("spf", config.expect_auth.spf),
            ("dkim", config.expect_auth.dkim),
            ("dmarc", config.expect_auth.dmarc),
        )
        if expected is not None and result.verdict(method) != expected
    ]
    if wrong:
        return DeliveryReason.AUTH_VERDICT, "Authentication-Results: " + ", ".join(wrong)
    return None


async def run(config: DeliveryProbeConfig, env: ProbeEnv, pending: Sequence[PendingMessage] = ()) -> DeliveryResult:
    """One delivery run; every outcome, good or bad, is a result value.

    `pending`: earlier runs' messages not yet seen. This run looks for them first: found, each is late
    (with its real latency) and deleted; pending for longer than lost_after, lost. Then it sweeps this
    probe's own messages older than lost_after (left by a run the agent never finished), submits its own
    and waits for it."""
    progress = _Run(config)
    for secret in (config.mailbox.password, *((config.submit.auth.password,) if config.submit.auth else ())):
        # every configured secret, before any line is recorded; one that cannot be read fails the run later
        with contextlib.suppress(ValueError):
            progress.recorder.add_secret(secret.reveal())
    mailbox = open_mailbox(config.mailbox, env, config.timeouts, progress.recorder)
    try:
        result = await _run(progress, mailbox, env, pending)
    except Exception as exc:  # a bug or a library's surprise: a classified result, never a crashed scheduler
        return progress.result(ProbeFailure(Reason.INTERNAL, f"internal error: {type(exc).__name__}"))
    finally:
        await mailbox.close()
    return await _with_dnsbl(config, env, result)


async def _with_dnsbl(config: DeliveryProbeConfig, env: ProbeEnv, result: DeliveryResult) -> DeliveryResult:
    """The hops' sending addresses in the configured DNSBL zones: a fact of the run, as the verdicts are (a
    listing says where the relays' mail may be refused elsewhere, not that this delivery failed)."""
    addresses = [
        hop.from_address
        for hop in result.hops
        if hop.from_address and (config.dnsbl_private_hops or ipaddress.ip_address(hop.from_address).is_global)
    ]
    if not config.dnsbl or not addresses:
        return result
    facts = await dnsbl.check(env.resolver, addresses, config.dnsbl, query_timeout=config.dnsbl_timeout)
    return replace(result, dnsbl=facts)


async def _take(mailbox: Mailbox, token: str) -> tuple[Found, str] | None:
    """The message carrying `token` as the mailbox holds it now (no waiting), deleted; with what kept it
    from being deleted ("" when it was)."""
    found = await mailbox.wait_for(token, time.monotonic())
    if found is None:
        return None
    return found, await mailbox.delete(found)


@contextlib.asynccontextmanager
async def _session(config: DeliveryProbeConfig, env: ProbeEnv) -> AsyncIterator[Mailbox]:
    """The probe's mailbox, open (ProbeFailure when it cannot be read), closed afterwards."""
    mailbox = open_mailbox(config.mailbox, env, config.timeouts)
    try:
        await mailbox.open()
        yield mailbox
    finally:
        await mailbox.close()


async def _earlier(
    config: DeliveryProbeConfig, mailbox: Mailbox, pending: Sequence[PendingMessage]
) -> tuple[EarlierMessage, ...]:
    """What became of earlier runs' pending messages: arrived since (late), or waited for too long (lost)."""
    outcomes: list[EarlierMessage] = []
    for message in pending:
        taken = await _take(mailbox, message.token)
        if taken is not None:
            found, left = taken
            outcomes.append(
                EarlierMessage(
                    token=message.token,
                    submitted_at=message.submitted_at,
                    outcome="late",
                    arrived_at=found.seen_at,
                    # Wall clock, both ends: the 250 may be from before a restart of the agent.
                    latency=max(found.seen_at - message.submitted_at, 0.0),
                    hops=hops_of(found.header, message.submitted_at),
                    deleted=not left,
                )
            )
        elif time.time() - message.submitted_at > config.lost_after:
            outcomes.append(EarlierMessage(message.token, message.submitted_at, "lost"))
    return tuple(outcomes)


async def _sweep_open(config: DeliveryProbeConfig, mailbox: Mailbox, keep: Collection[str]) -> tuple[str, ...]:
    removed: list[str] = []
    cutoff = time.time() - config.lost_after
    for message in await mailbox.own_messages(config.name, MAX_SWEEP):
        sent = _sent_at(message.header)
        token = _header_values(message.header, TOKEN_HEADER, 1)
        if sent is None or sent >= cutoff or not token or token[0] in keep:
            continue
        if not await mailbox.delete(message):
            removed.append(token[0])
    return tuple(removed)


async def _run(progress: _Run, mailbox: Mailbox, env: ProbeEnv, pending: Sequence[PendingMessage]) -> DeliveryResult:
    config = progress.config
    try:
        progress.enter(DeliveryPhase.FETCH)
        await mailbox.open()
        progress.idle = mailbox.idle
        progress.done("fetch_open")
        if pending:
            progress.enter(DeliveryPhase.FETCH)
            progress.earlier = await _earlier(config, mailbox, pending)
            progress.done("fetch_earlier")
        resolved = {e.token for e in progress.earlier}
        progress.enter(DeliveryPhase.FETCH)
        await _sweep_open(config, mailbox, keep={p.token for p in pending if p.token not in resolved})
        progress.done("fetch_sweep")

        progress.enter(DeliveryPhase.SUBMIT)
        progress.token = new_token()
        message = build_message(config, progress.token)
        progress.message_id = str(message["Message-ID"])
        progress.submitted = await submit(config, env, wire_bytes(message), progress.recorder)
        progress.done("submit")

        progress.enter(DeliveryPhase.FETCH)
        deadline = progress.submitted.monotonic + config.deliver_within
        progress.found = await mailbox.wait_for(progress.token, deadline)
        progress.done("wait")
        if progress.found is None:
            progress.enter(DeliveryPhase.DELIVER)
            return progress.result(
                None, DeliveryReason.LATE, f"not in the mailbox within {config.deliver_within:g}s of submission"
            )

        progress.enter(DeliveryPhase.CLEANUP)
        left = await mailbox.delete(progress.found)
        progress.deleted = not left
        progress.done("cleanup")
    except ProbeFailure as failure:
        return progress.result(failure)
    except ValueError as exc:  # a secret that cannot be read (file, environment) or encoded
        return progress.result(ProbeFailure(Reason.INTERNAL, str(exc)))
    result = progress.result(None, note=left)
    expectation = _expectations(config, result)
    if expectation is not None:
        progress.enter(DeliveryPhase.DELIVER)
        reason, error = expectation
        progress.recorder.conclude(f"failed in {DeliveryPhase.DELIVER.value}: {reason.value}: {error}")
        transcript = progress.recorder.transcript()
        result = replace(
            result, ok=False, phase=DeliveryPhase.DELIVER, reason=reason, error=error, transcript=transcript
        )
    return result


async def look_for(config: DeliveryProbeConfig, env: ProbeEnv, tokens: Sequence[str]) -> dict[str, tuple[Found, bool]]:
    """A look for pending tokens outside a run: each one found (now, no waiting) with whether it was deleted.

    ProbeFailure when the mailbox cannot be read."""
    found: dict[str, tuple[Found, bool]] = {}
    async with _session(config, env) as mailbox:
        for token in tokens:
            taken = await _take(mailbox, token)
            if taken is not None:
                found[token] = (taken[0], not taken[1])
    return found


def _sent_at(header: bytes) -> float | None:
    values = _header_values(header, "Date", 1)
    if not values:
        return None
    try:
        when = email.utils.parsedate_to_datetime(values[0])
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return when.timestamp() if when.tzinfo is not None else None


async def sweep(config: DeliveryProbeConfig, env: ProbeEnv, keep: Collection[str] = ()) -> tuple[str, ...]:
    """Delete this probe's own messages written more than lost_after ago (their Date header), except the
    tokens in `keep`; the tokens removed. Messages of other probes and undated ones are never touched.

    ProbeFailure when the mailbox cannot be read."""
    async with _session(config, env) as mailbox:
        return await _sweep_open(config, mailbox, keep)
