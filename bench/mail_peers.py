"""Loopback mail peers for the delivery bench, in a process of their own (their CPU is not the agent's).

A submission server (aiosmtpd: STARTTLS, AUTH PLAIN/LOGIN) keeps the header block of every message
it accepts and files it, after a delay, into an in-memory mailbox store; an IMAP server (implicit
TLS, IDLE, UIDPLUS, SPECIAL-USE \\Junk) and a POP3 server (implicit TLS) read that store. Speaks just
what the delivery probe sends, answers at once: what is measured is the agent's cost, not a real
MTA's or IMAP server's.

The recipient's local part is the mailbox user and says the delivery delay: `w20-d0007@bench.test`
lands in mailbox `w20-d0007` 20 s after the 250 (`w0-...` at once). One password (a file) serves
every mailbox and the submission login.

    python -m bench.mail_peers --workdir DIR

writes DIR/ca.pem, prints one JSON line (ports, CA file) on stdout, then serves until SIGTERM or
until stdin closes; DIR/stats.json (counters and sessions now) is rewritten every 0.5 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.utils
import json
import logging
import os
import re
import secrets
import signal
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import trustme
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

HOST = "127.0.0.1"
SERVER_NAME = "mail.test"  # the name in the certificate: probes set servername to it
DOMAIN = "bench.test"
AUTHSERV_ID = "mx.bench.test"
_DELAY = re.compile(r"^w(\d{1,4})-")
_MAX_LINE = 8192


@dataclass
class Stats:
    """What the peers did, for the bench to read (counters since start, gauges now)."""

    accepted: int = 0  # messages the submission server took (250)
    filed: int = 0  # messages put into a mailbox after their delay
    fetched: int = 0  # IMAP FETCH and POP3 TOP answers
    expunged: int = 0  # messages removed (UID EXPUNGE, POP3 DELE at QUIT)
    imap_sessions: int = 0  # IMAP connections opened
    pop3_sessions: int = 0
    imap_now: int = 0  # IMAP connections open now: a delivery run holds one from start to end
    idle_now: int = 0  # of them in IDLE now
    imap_peak: int = 0
    idle_peak: int = 0
    imap_seconds: float = 0.0  # integral of imap_now over time: mean open sessions = delta / wall
    idle_seconds: float = 0.0
    waiting_to_file: int = 0  # accepted, delay not over yet
    at: float = 0.0  # time.monotonic() of this snapshot


@dataclass
class Message:
    uid: int
    header: bytes
    fields: list[tuple[str, str]]  # (lower-case name, value), for HEADER searches


@dataclass
class Folder:
    messages: dict[int, Message] = field(default_factory=dict)
    next_uid: int = 1


@dataclass
class MailboxStore:
    """Every user's INBOX and Junk; watchers hear of mail filed into an INBOX (IMAP IDLE)."""

    stats: Stats
    inboxes: dict[str, Folder] = field(default_factory=dict)
    junk: dict[str, Folder] = field(default_factory=dict)
    watchers: dict[str, set[Callable[[int], None]]] = field(default_factory=dict)

    def folder(self, user: str, name: str) -> Folder:
        table = self.junk if name.lower() == "junk" else self.inboxes
        return table.setdefault(user, Folder())

    def file(self, user: str, header: bytes) -> None:
        inbox = self.folder(user, "INBOX")
        uid = inbox.next_uid
        inbox.next_uid += 1
        inbox.messages[uid] = Message(uid, header, _header_fields(header))
        self.stats.filed += 1
        self.stats.waiting_to_file -= 1
        for notify in list(self.watchers.get(user, ())):
            notify(len(inbox.messages))


def _header_fields(header: bytes) -> list[tuple[str, str]]:
    fields: list[tuple[str, str]] = []
    for line in header.decode("utf-8", "replace").split("\r\n"):
        if line[:1] in (" ", "\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + " " + line.strip())
        elif ":" in line:
            name, _, value = line.partition(":")
            fields.append((name.strip().lower(), value.strip()))
    return fields


def _delay_of(user: str) -> float:
    match = _DELAY.match(user)
    return float(match[1]) if match else 0.0


# -- submission -------------------------------------------------------------------------------------------


class SubmissionHandler:
    """aiosmtpd handler: keep the header block, add what an MSA and an MX would, file it after the delay."""

    def __init__(self, store: MailboxStore, loop: asyncio.AbstractEventLoop) -> None:
        self.store = store
        self.loop = loop

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        head = content.split(b"\r\n\r\n", 1)[0] + b"\r\n"
        queue_id = secrets.token_hex(5).upper()
        now = email.utils.formatdate(localtime=False)
        # what Postfix (MSA, MX) and Dovecot's LMTP would add: three hops and the MX's verdicts
        received = (
            f"Received: from mx.{DOMAIN} (mx.{DOMAIN} [{HOST}])\r\n"
            f"\tby imap.{DOMAIN} with LMTP id {queue_id}b; {now}\r\n"
            f"Authentication-Results: {AUTHSERV_ID};\r\n\tdkim=pass header.d=sender.{DOMAIN};"
            f"\r\n\tspf=pass smtp.mailfrom=sender.{DOMAIN};\r\n\tdmarc=pass header.from=sender.{DOMAIN}\r\n"
            f"Received: from msa.{DOMAIN} (msa.{DOMAIN} [{HOST}])\r\n"
            f"\tby mx.{DOMAIN} with ESMTPS id {queue_id}a; {now}\r\n"
            f"Received: from bench ({HOST})\r\n\tby msa.{DOMAIN} with ESMTPSA id {queue_id}; {now}\r\n"
        ).encode()
        for rcpt in envelope.rcpt_tos:
            user = rcpt.rpartition("@")[0]
            self.store.stats.waiting_to_file += 1
            self.loop.call_later(_delay_of(user), self.store.file, user, received + head)
        self.store.stats.accepted += 1
        return f"250 2.0.0 Ok: queued as {queue_id}"


class Authenticator:
    def __init__(self, password: bytes) -> None:
        self.password = password

    def __call__(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: object) -> AuthResult:
        ok = isinstance(data, LoginPassword) and secrets.compare_digest(data.password, self.password)
        return AuthResult(success=ok)


# -- IMAP -------------------------------------------------------------------------------------------------


_ATOM = re.compile(r'"((?:[^"\\]|\\.)*)"|(\S+)')


def _words(text: str) -> list[str]:
    return [re.sub(r"\\(.)", r"\1", q) if q or a == "" else a for q, a in _ATOM.findall(text)]


class ImapSession:
    """One IMAP connection: LOGIN, LIST, SELECT, NOOP, UID SEARCH/FETCH/STORE/EXPUNGE, IDLE, LOGOUT."""

    CAPABILITIES = "IMAP4rev1 IDLE UIDPLUS SPECIAL-USE LITERAL+"

    def __init__(self, peers: Peers, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.peers = peers
        self.reader = reader
        self.writer = writer
        self.user = ""
        self.selected: Folder | None = None

    async def serve(self) -> None:
        self.writer.write(b"* OK [CAPABILITY " + self.CAPABILITIES.encode() + b"] bench IMAP ready\r\n")
        while True:
            line = await self.reader.readline()
            if not line or len(line) > _MAX_LINE:
                return
            tag, _, rest = line.decode("utf-8", "replace").rstrip("\r\n").partition(" ")
            words = _words(rest)
            if not words:
                self.writer.write(f"{tag} BAD empty\r\n".encode())
                continue
            command = words[0].upper()
            if command == "UID" and len(words) > 1:
                command = "UID " + words[1].upper()
                words = words[1:]
            reply = await self.answer(command, words)
            self.writer.write(f"{tag} {reply}\r\n".encode())
            await self.writer.drain()
            if command == "LOGOUT":
                return

    async def answer(self, command: str, words: list[str]) -> str:
        store = self.peers.store
        w = self.writer
        if command == "CAPABILITY":
            w.write(f"* CAPABILITY {self.CAPABILITIES}\r\n".encode())
            return "OK CAPABILITY completed"
        if command == "LOGIN":
            if len(words) < 3 or not secrets.compare_digest(words[2].encode(), self.peers.password):
                return "NO [AUTHENTICATIONFAILED] Authentication failed."
            self.user = words[1]
            return "OK Logged in"
        if not self.user:
            return "NO [AUTHENTICATIONFAILED] not logged in" if command not in ("NOOP", "LOGOUT") else "OK"
        if command == "LIST":
            w.write(b'* LIST (\\HasNoChildren) "/" "INBOX"\r\n* LIST (\\HasNoChildren \\Junk) "/" "Junk"\r\n')
            return "OK List completed"
        if command in ("SELECT", "EXAMINE"):
            chosen = store.folder(self.user, words[1] if len(words) > 1 else "INBOX")
            self.selected = chosen
            w.write(
                f"* {len(chosen.messages)} EXISTS\r\n* 0 RECENT\r\n* OK [UIDVALIDITY 1] UIDs valid\r\n"
                f"* OK [UIDNEXT {chosen.next_uid}] next\r\n".encode()
            )
            return "OK [READ-WRITE] Select completed"
        if command == "NOOP":
            return "OK NOOP completed"
        if command == "LOGOUT":
            w.write(b"* BYE Logging out\r\n")
            return "OK Logout completed"
        if command == "IDLE":
            return await self.idle()
        folder = self.selected
        if folder is None:
            return "BAD no folder selected"
        if command == "UID SEARCH":
            uids = self.search(folder, words[1:])
            w.write(("* SEARCH" + "".join(f" {uid}" for uid in uids) + "\r\n").encode())
            return "OK Search completed"
        if command == "UID FETCH" and len(words) > 1 and words[1].isdigit():
            uid = int(words[1])
            message = folder.messages.get(uid)
            if message is not None:
                seq = sorted(folder.messages).index(uid) + 1
                head = f"* {seq} FETCH (UID {uid} BODY[HEADER] {{{len(message.header)}}}\r\n".encode()
                w.write(head + message.header + b")\r\n")
                self.peers.stats.fetched += 1
            return "OK Fetch completed"
        if command == "UID STORE":
            return "OK Store completed"
        if command == "UID EXPUNGE" and len(words) > 1 and words[1].isdigit():
            uid = int(words[1])
            if uid in folder.messages:
                seq = sorted(folder.messages).index(uid) + 1
                del folder.messages[uid]
                w.write(f"* {seq} EXPUNGE\r\n".encode())
                self.peers.stats.expunged += 1
            return "OK Expunge completed"
        return "BAD unknown command"

    def search(self, folder: Folder, criteria: list[str]) -> list[int]:
        if len(criteria) >= 3 and criteria[0].upper() == "HEADER":
            name, needle = criteria[1].lower(), criteria[2].lower()
            return [
                uid
                for uid, message in folder.messages.items()
                if any(n == name and needle in v.lower() for n, v in message.fields)
            ]
        return []

    async def idle(self) -> str:
        stats = self.peers.stats
        watchers = self.peers.store.watchers.setdefault(self.user, set())

        def notify(count: int) -> None:
            self.writer.write(f"* {count} EXISTS\r\n".encode())

        self.writer.write(b"+ idling\r\n")
        watchers.add(notify)
        stats.idle_now += 1
        stats.idle_peak = max(stats.idle_peak, stats.idle_now)
        try:
            await self.writer.drain()
            line = await self.reader.readline()
        finally:
            stats.idle_now -= 1
            watchers.discard(notify)
        if line.strip().upper() != b"DONE":
            return "BAD expected DONE"
        return "OK Idle completed"


# -- POP3 -------------------------------------------------------------------------------------------------


async def pop3_session(peers: Peers, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """USER, PASS, STAT, TOP n 0, DELE, QUIT: the maildrop as it was at PASS, deletions done at QUIT."""
    writer.write(b"+OK bench POP3 ready\r\n")
    user = ""
    drop: list[Message] = []
    marked: set[int] = set()
    logged_in = False
    while True:
        line = await reader.readline()
        if not line or len(line) > _MAX_LINE:
            return
        words = line.decode("utf-8", "replace").rstrip("\r\n").split(" ")
        command = words[0].upper()
        if command == "USER" and len(words) > 1:
            user = words[1]
            writer.write(b"+OK\r\n")
        elif command == "PASS":
            if not secrets.compare_digest(" ".join(words[1:]).encode(), peers.password):
                writer.write(b"-ERR [AUTH] Authentication failed.\r\n")
            else:
                logged_in = True
                inbox = peers.store.folder(user, "INBOX")
                drop = [inbox.messages[uid] for uid in sorted(inbox.messages)]
                writer.write(b"+OK Logged in.\r\n")
        elif command == "CAPA":
            writer.write(b"+OK\r\nUSER\r\nTOP\r\nUIDL\r\n.\r\n")
        elif not logged_in and command != "QUIT":
            writer.write(b"-ERR not logged in\r\n")
        elif command == "STAT":
            writer.write(f"+OK {len(drop)} {sum(len(m.header) for m in drop)}\r\n".encode())
        elif command == "TOP" and len(words) > 1 and words[1].isdigit() and 1 <= int(words[1]) <= len(drop):
            header = drop[int(words[1]) - 1].header
            stuffed = re.sub(rb"(?m)^\.", b"..", header.rstrip(b"\r\n"))
            writer.write(b"+OK\r\n" + stuffed + b"\r\n\r\n.\r\n")
            peers.stats.fetched += 1
        elif command == "DELE" and len(words) > 1 and words[1].isdigit() and 1 <= int(words[1]) <= len(drop):
            marked.add(int(words[1]))
            writer.write(b"+OK marked\r\n")
        elif command == "QUIT":
            kept = peers.store.folder(user, "INBOX").messages if user else {}
            for number in marked:
                if kept.pop(drop[number - 1].uid, None) is not None:
                    peers.stats.expunged += 1
            writer.write(b"+OK bye\r\n")
            await writer.drain()
            return
        else:
            writer.write(b"-ERR unknown command\r\n")
        await writer.drain()


# -- the process ------------------------------------------------------------------------------------------


@dataclass
class Ports:
    submission: int
    imap: int
    pop3: int
    ca_file: str
    password_file: str


class Peers:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.stats = Stats()
        self.store = MailboxStore(self.stats)
        self.password_file = workdir / "mailbox-password"
        self.password = secrets.token_urlsafe(18).encode()
        self.password_file.write_bytes(self.password + b"\n")
        os.chmod(self.password_file, 0o600)
        ca = trustme.CA()
        leaf = ca.issue_cert(SERVER_NAME, HOST)
        self.ca_file = workdir / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        leaf.configure_cert(self.tls)

    async def _imap(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stats = self.stats
        stats.imap_sessions += 1
        stats.imap_now += 1
        stats.imap_peak = max(stats.imap_peak, stats.imap_now)
        try:
            await ImapSession(self, reader, writer).serve()
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            stats.imap_now -= 1
            writer.close()

    async def _pop3(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.pop3_sessions += 1
        try:
            await pop3_session(self, reader, writer)
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def start(self) -> Ports:
        loop = asyncio.get_running_loop()
        handler = SubmissionHandler(self.store, loop)
        authenticator = Authenticator(self.password)

        def smtp() -> SMTP:
            return SMTP(
                handler,
                hostname=f"msa.{DOMAIN}",
                tls_context=self.tls,
                require_starttls=True,
                authenticator=authenticator,
                auth_require_tls=True,
                loop=loop,
            )

        submission = await loop.create_server(smtp, HOST, 0)
        imap = await asyncio.start_server(self._imap, HOST, 0, ssl=self.tls, limit=_MAX_LINE)
        pop3 = await asyncio.start_server(self._pop3, HOST, 0, ssl=self.tls, limit=_MAX_LINE)
        self.servers = (submission, imap, pop3)
        return Ports(
            submission=submission.sockets[0].getsockname()[1],
            imap=imap.sockets[0].getsockname()[1],
            pop3=pop3.sockets[0].getsockname()[1],
            ca_file=str(self.ca_file),
            password_file=str(self.password_file),
        )

    async def write_stats(self, every: float = 0.5) -> None:
        target = self.workdir / "stats.json"
        scratch = self.workdir / "stats.json.tmp"
        last = time.monotonic()
        while True:
            await asyncio.sleep(every)
            now = time.monotonic()
            self.stats.imap_seconds += self.stats.imap_now * (now - last)
            self.stats.idle_seconds += self.stats.idle_now * (now - last)
            last = now
            self.stats.at = now
            scratch.write_text(json.dumps(asdict(self.stats)))
            scratch.replace(target)


async def serve(workdir: Path) -> None:
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every command at INFO
    peers = Peers(workdir)
    ports = await peers.start()
    print(json.dumps(asdict(ports)), flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not os.read(sys.stdin.fileno(), 512) else None)
    stats = asyncio.ensure_future(peers.write_stats())
    await stop.wait()
    stats.cancel()
    for server in peers.servers:
        server.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(asyncio.gather(*(s.wait_closed() for s in peers.servers)), 2.0)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.mail_peers", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    asyncio.run(serve(args.workdir))


if __name__ == "__main__":
    main()
