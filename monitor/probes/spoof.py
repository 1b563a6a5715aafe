"""An MX check's spoof test: does every exchange refuse mail forged in the domain it protects?

To every address of every exchange, as an outsider would: a session (opportunistic STARTTLS, as MTAs
do; the certificate is not checked, a forger would not check it either), then MAIL FROM and From: in
the protected domain, RCPT TO the configured recipient, and a minimal message with the probe hygiene
headers (monitor.probes.delivery.probe_message), since DMARC is only decided after DATA.

Refused (5xx) at MAIL, RCPT or after DATA is the expected outcome; the 250 after DATA is `spoofable`.
The exchange sees the agent's own address: when the protected domain's SPF authorises it, the forgery
would be legitimate mail, so nothing is sent and the attempt is `inconclusive` (also when that SPF
cannot be evaluated, and on a 4xx, e.g. greylisting). Where the recipient's mailbox is a delivery
probe's, an accepted forgery is looked for there (folder, Authentication-Results) and deleted.

Like every probe it touches no metrics, SNMP or traps, and every outcome is a value.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from monitor.config.schema import MxCheckConfig, SmtpProbeConfig
from monitor.model.failures import ProbeFailure
from monitor.model.results import MxRecord, Phase, Reply
from monitor.model.spoof import SpoofAttempt, SpoofMailbox, SpoofOutcome, SpoofStep, SpoofVerdict
from monitor.probes import ProbeEnv
from monitor.probes.delivery import new_token, probe_message, verdicts_of, wire_bytes
from monitor.probes.mailbox import Found, Mailbox, open_mailbox
from monitor.probes.smtp import Dialogue
from monitor.probes.spf_eval import SpfResult, SpfVerdict, check_host

MAX_SWEEP = 20  # leftover forgeries of earlier runs deleted per run
# Forged messages per run: an MX answer naming hundreds of addresses must not make the agent a spammer
MAX_ATTEMPTS = 32
MAX_TEXT = 512  # a reply or error kept in the result (a reply may be 100 lines of 2 KiB)
_MAILBOX_RESERVE = 5.0  # seconds of the check's deadline kept for deleting and logging out
_INCONCLUSIVE_SPF = (SpfResult.PASS, SpfResult.TEMPERROR)


class _SpoofDialogue(Dialogue):
    """The SMTP probe's dialogue, keeping its socket to tell the source address the exchange sees."""

    _socket: socket.socket | None = None

    def bind_source(self, sock: socket.socket) -> None:
        super().bind_source(sock)  # called on every new socket, before connect
        self._socket = sock

    def source_address(self) -> str:
        if self._socket is None:
            return ""
        try:
            return str(self._socket.getsockname()[0])
        except OSError:
            return ""


@dataclass(frozen=True, slots=True)
class _Sent:
    """What one attempt needs to know about the message it may send."""

    sender: str
    recipient: str
    token: str
    message_id: str
    data: bytes


class _SpfCache:
    """check_host() once per source address and run: every exchange sees the same agent."""

    def __init__(self, config: MxCheckConfig, env: ProbeEnv) -> None:
        self.config = config
        self.env = env
        self._verdicts: dict[str, asyncio.Future[SpfVerdict]] = {}

    async def verdict(self, source: str) -> SpfVerdict:
        if source not in self._verdicts:
            sender = self.config.spoof_sender
            domain = sender.rpartition("@")[2]
            self._verdicts[source] = asyncio.ensure_future(check_host(self.env.resolver, source, domain, sender))
        return await asyncio.shield(self._verdicts[source])


def _message(config: MxCheckConfig, recipient: str) -> _Sent:
    sender = config.spoof_sender
    token = new_token()
    message = probe_message(
        sender=sender,
        to=recipient,
        subject=f"smtp-monitor spoof test {config.name}",
        probe=config.name,
        token=token,
        body=(
            f"This message tests whether the mail exchangers of {config.domain} refuse mail forged in\n"
            "that domain. smtp-monitor sent it with a sender address the domain does not authorise;\n"
            "an exchanger that accepted it does not enforce SPF/DMARC. smtp-monitor deletes it from\n"
            "the mailbox when it can read that mailbox.\n"
        ),
    )
    return _Sent(sender, recipient, token, str(message["Message-ID"]), wire_bytes(message))


def _smtp_config(config: MxCheckConfig, env: ProbeEnv, exchange: str, address: str) -> SmtpProbeConfig:
    return SmtpProbeConfig(
        name=f"{config.name}:spoof",
        host=address,
        port=config.port,
        # an MTA's opportunistic TLS: STARTTLS when offered (see _open); implicit when the check says so
        tls="implicit" if config.tls == "implicit" else "none",
        timeout=config.timeout or env.defaults.timeout,
        ca_file=config.ca_file,
        servername=exchange,
        verify=False,
    )


async def _open(d: _SpoofDialogue, starttls: bool) -> None:
    await d.resolve()
    await d.connect()
    if d.config.tls == "implicit":
        await d.handshake()
    await d.greet()
    await d.ehlo(Phase.EHLO)
    if starttls and "STARTTLS" in d.extensions:
        await d.starttls()
        await d.handshake()
        await d.ehlo(Phase.EHLO_TLS)


def _seen_as(config: MxCheckConfig, local: str) -> str:
    """The address the exchange sees: the configured public address of the connection's family (NAT), else
    the socket's own."""
    spoof = config.spoof_test
    if spoof is None or not local:
        return local
    family = ipaddress.ip_address(local).version
    return next((str(a) for a in spoof.public_addresses if a.version == family), local)


def _refusal(reply: Reply) -> SpoofOutcome:
    """5xx refuses the forgery; 4xx (greylisting, a busy server) decides nothing."""
    return SpoofOutcome.REFUSED if reply.code // 100 == 5 else SpoofOutcome.INCONCLUSIVE


async def _transaction(d: _SpoofDialogue, sent: _Sent, at: list[SpoofStep]) -> tuple[SpoofOutcome, SpoofStep, Reply]:
    """MAIL, RCPT, DATA and the message: the outcome, the step that decided it and its reply.

    `at` gets each step as it starts: where a broken connection ended the attempt."""
    at.append(SpoofStep.MAIL)
    d.enter(Phase.MAIL)
    reply = await d.command(f"MAIL FROM:<{sent.sender}>")
    if reply.code // 100 != 2:
        return _refusal(reply), SpoofStep.MAIL, reply
    d.in_transaction = True
    at.append(SpoofStep.RCPT)
    d.enter(Phase.RCPT)
    reply = await d.command(f"RCPT TO:<{sent.recipient}>")
    if reply.code // 100 != 2:
        return _refusal(reply), SpoofStep.RCPT, reply
    at.append(SpoofStep.DATA)
    reply = await d.command("DATA")
    if reply.code != 354:
        return _refusal(reply), SpoofStep.DATA, reply
    d.proto.write(sent.data)
    reply = await d.proto.read_reply()
    d.in_transaction = False  # the message's end closes the transaction, accepted or not
    if reply.code // 100 == 2:
        return SpoofOutcome.SPOOFABLE, SpoofStep.DATA, reply
    return _refusal(reply), SpoofStep.DATA, reply


async def attempt(
    config: MxCheckConfig, env: ProbeEnv, exchange: str, address: str, sent: _Sent, spf: _SpfCache
) -> SpoofAttempt:
    """One exchange address's answer to the forgery; never raises (but for cancellation)."""
    timeout = config.timeout or env.defaults.timeout
    deadline = asyncio.get_running_loop().time() + timeout
    d = _SpoofDialogue(_smtp_config(config, env, exchange, address), env)
    base = SpoofAttempt(exchange, address, SpoofOutcome.ERROR, SpoofStep.SESSION, sent.sender)
    at: list[SpoofStep] = []
    try:
        async with asyncio.timeout_at(deadline):
            await _open(d, starttls=config.tls == "starttls")
            source = _seen_as(config, d.source_address())
            verdict = await spf.verdict(source)
            base = replace(base, source_address=source, source_spf=verdict.result.value)
            if verdict.result in _INCONCLUSIVE_SPF:
                await d.quit()
                why = (
                    f"the SPF of {config.domain} authorises the agent's own address {source} ({verdict.why}): "
                    "a message from it is no forgery"
                    if verdict.result is SpfResult.PASS
                    else f"the SPF of {config.domain} could not be evaluated for {source}: {verdict.why}"
                )
                return replace(base, outcome=SpoofOutcome.INCONCLUSIVE, error=why[:MAX_TEXT])
            outcome, step, reply = await _transaction(d, sent, at)
            if d.in_transaction:
                await d.rset()
            await d.quit()
    except (ProbeFailure, OSError) as exc:
        failure = await d.ended_by(exc, timeout, deadline)
        reply_code = failure.reply.code if failure.reply is not None else 0
        where = at[-1].value if at else d.phase.value
        return replace(
            base,
            step=at[-1] if at else SpoofStep.SESSION,
            reply_code=reply_code,
            reply=str(failure.reply)[:MAX_TEXT] if failure.reply is not None else "",
            error=f"{where}: {failure.reason.value}: {failure.message}"[:MAX_TEXT],
        )
    finally:
        d.close()
    return replace(
        base,
        outcome=outcome,
        step=step,
        reply_code=reply.code,
        reply=str(reply)[:MAX_TEXT],
        message_id=sent.message_id if step is SpoofStep.DATA and outcome is SpoofOutcome.SPOOFABLE else "",
    )


async def run(
    config: MxCheckConfig, env: ProbeEnv, records: Sequence[MxRecord], deadline: float
) -> tuple[tuple[SpoofAttempt, ...], ...]:
    """The spoof test of every address of every exchange: one tuple of attempts per record, in order.

    `deadline`: the MX check's, on time.monotonic(); the mailbox is watched until shortly before it."""
    spoof = config.spoof_test
    assert spoof is not None
    spf = _SpfCache(config, env)
    jobs = [
        (i, r.exchange, address, _message(config, spoof.recipient))
        for i, r in enumerate(records)
        for address in r.addresses
    ]
    sent_to, skipped = jobs[:MAX_ATTEMPTS], jobs[MAX_ATTEMPTS:]
    attempts = list(
        await asyncio.gather(
            *(attempt(config, env, exchange, address, sent, spf) for _, exchange, address, sent in sent_to)
        )
    )
    not_sent = f"not sent: the spoof test sends to at most {MAX_ATTEMPTS} addresses per run"
    attempts += [
        SpoofAttempt(exchange, address, SpoofOutcome.ERROR, SpoofStep.SESSION, sent.sender, error=not_sent)
        for _, exchange, address, sent in skipped
    ]
    delivery = spoof.delivery
    accepted = [n for n, a in enumerate(attempts) if a.spoofable]
    if delivery is not None and accepted:
        tokens = {n: jobs[n][3].token for n in accepted}
        until = min(time.monotonic() + spoof.wait, deadline - min(_MAILBOX_RESERVE, (deadline - time.monotonic()) / 3))
        mailbox = open_mailbox(delivery.mailbox, env, delivery.timeouts)
        try:
            seen = await _look(mailbox, config.name, tokens, until, delivery.authserv_id)
        finally:
            await mailbox.close()
        for n, facts in seen.items():
            attempts[n] = replace(attempts[n], mailbox=facts)
    by_record: list[list[SpoofAttempt]] = [[] for _ in records]
    for (i, _, _, _), result in zip(jobs, attempts, strict=True):
        by_record[i].append(result)
    return tuple(tuple(found) for found in by_record)


async def _look(
    mailbox: Mailbox, check: str, tokens: dict[int, str], until: float, authserv_id: str | None
) -> dict[int, SpoofMailbox]:
    """Each accepted forgery as the mailbox shows it (waiting until `until`), deleted; then leftovers of
    earlier runs of this check (arrived after their run ended) are deleted too."""
    seen: dict[int, SpoofMailbox] = {}
    try:
        await mailbox.open()
        for n, token in tokens.items():
            found = await mailbox.wait_for(token, until)
            seen[n] = await _read(mailbox, found, authserv_id)
        current = set(tokens.values())
        for leftover in await mailbox.own_messages(check, MAX_SWEEP):
            if not any(token.encode() in leftover.header for token in current):
                await mailbox.delete(leftover)
    except ProbeFailure as failure:
        for n in tokens:
            if n not in seen:
                seen[n] = SpoofMailbox(found=False, error=f"mailbox: {failure.message}")
    return seen


async def _read(mailbox: Mailbox, found: Found | None, authserv_id: str | None) -> SpoofMailbox:
    if found is None:
        return SpoofMailbox(found=False, error="not in the mailbox within the spoof test's wait")
    verdicts = tuple(SpoofVerdict(v.method, v.result, v.authserv_id) for v in verdicts_of(found.header, authserv_id))
    left = await mailbox.delete(found)
    return SpoofMailbox(
        found=True, folder=found.folder, folder_name=found.folder_name, verdicts=verdicts, deleted=not left, error=left
    )
