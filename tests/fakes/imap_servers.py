"""Scripted IMAP and POP3 servers on 127.0.0.1 (TLS from the first byte), healthy or misbehaving.

Each speaks just enough of its protocol for the delivery probe's mailbox session (greeting, CAPABILITY,
LOGIN, LIST, SELECT, UID SEARCH/FETCH/STORE/EXPUNGE, IDLE; POP3 USER/PASS, STAT, TOP, DELE, QUIT) and can
misbehave at one command instead of answering it (`Act`). Everything the client sent is recorded.
"""

from __future__ import annotations

import asyncio
import enum
import ssl
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

HOST = "127.0.0.1"
GREETING = "GREETING"  # the key of `misbehave` for the greeting itself
FILLER = b"x" * 4096
MAX_FLOOD = 256 * 1024 * 1024  # what a flooding fake sends at most: far beyond every client bound


class Act(enum.Enum):
    """What a server does instead of answering a command."""

    HANG = "hang"  # say nothing more (a tarpit)
    CLOSE = "close"  # drop the connection
    GARBAGE = "garbage"  # a line that is not the protocol, then hang
    STREAM = "stream"  # bytes without a line end, forever
    HUGE_LITERAL = "huge_literal"  # IMAP: announce a literal of 10^9 bytes and stream it
    LITERAL_FLOOD = "literal_flood"  # IMAP: literals of 64 KiB each, forever (each one under the cap)
    LINE_FLOOD = "line_flood"  # POP3: a multi-line answer that never ends


@dataclass
class MailboxScript:
    """The mailbox a fake serves and how it misbehaves."""

    username: str = "probe@dest.test"
    password: str = "mailbox-secret"
    capabilities: str = "IMAP4rev1 IDLE UIDPLUS SPECIAL-USE"
    junk_folder: str | None = "Junk"  # announced with \\Junk in LIST
    # folder -> uid -> header block; the probe's message and any other mail
    folders: dict[str, dict[int, bytes]] = field(default_factory=lambda: {"INBOX": {}, "Junk": {}})
    deleted: dict[str, set[int]] = field(default_factory=lambda: {"INBOX": set(), "Junk": set()})
    misbehave: dict[str, Act] = field(default_factory=dict)  # command (or GREETING) -> act
    # IDLE: after this many seconds, move `arriving` into INBOX and push EXISTS
    idle_push_after: float | None = None
    arriving: tuple[int, bytes] | None = None


@dataclass
class Seen:
    """What the clients sent, for assertions."""

    commands: list[str] = field(default_factory=list)  # command lines (LOGIN's password replaced)
    connections: int = 0


async def _write_until_gone(writer: asyncio.StreamWriter, chunk: bytes, head: bytes = b"") -> None:
    """`head`, then `chunk` again and again until the client goes away (or MAX_FLOOD is sent)."""
    writer.write(head)
    sent = 0
    # A TLS transport that is shutting down drops writes and its drain() returns at once: without the
    # is_closing() check this loop would spin (asyncio logs a warning per dropped write).
    while not writer.is_closing() and sent < MAX_FLOOD:
        writer.write(chunk)
        sent += len(chunk)
        await writer.drain()


async def _misbehave(act: Act, writer: asyncio.StreamWriter) -> None:
    if act is Act.CLOSE:
        writer.transport.abort()
        return
    if act is Act.GARBAGE:
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(3600)
    if act is Act.HANG:
        await asyncio.sleep(3600)
    if act is Act.STREAM:
        await _write_until_gone(writer, FILLER)
    if act is Act.HUGE_LITERAL:
        await _write_until_gone(writer, FILLER, b"* 1 FETCH (BODY[HEADER] {1000000000}\r\n")
    if act is Act.LITERAL_FLOOD:
        await _write_until_gone(writer, b"* 1 FETCH (BODY[HEADER] {65536}\r\n" + b"y" * 65536 + b")\r\n")
    if act is Act.LINE_FLOOD:
        await _write_until_gone(writer, b"X-Filler: yes\r\n" * 256, b"+OK here it comes\r\n")


class _Server:
    def __init__(self, tls: ssl.SSLContext, script: MailboxScript) -> None:
        self.tls = tls
        self.script = script
        self.seen = Seen()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, HOST, 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.seen.connections += 1
        try:
            await self.serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            self._tasks.discard(task)
            writer.transport.abort()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


class FakeImapServer(_Server):
    """IMAP4rev1 over implicit TLS, as far as the probe uses it."""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        script = self.script
        if GREETING in script.misbehave:
            await _misbehave(script.misbehave[GREETING], writer)
            return
        writer.write(b"* OK fake IMAP ready\r\n")
        selected = ""
        while True:
            line = await reader.readline()
            if not line:
                return
            tag, _, rest = line.decode().rstrip("\r\n").partition(" ")
            words = rest.split(" ")
            command = words[0].upper()
            if command == "UID":
                command = f"UID {words[1].upper()}"
                words = words[1:]
            logged = f"{command} {' '.join(words[1:2])} ***" if command == "LOGIN" else rest
            self.seen.commands.append(logged)
            if command in script.misbehave:
                await _misbehave(script.misbehave[command], writer)
                return
            reply = await self._answer(command, words, selected, writer, reader)
            if command == "SELECT" and reply.startswith("OK"):
                selected = words[1].strip('"')
            writer.write(f"{tag} {reply}\r\n".encode())
            await writer.drain()
            if command == "LOGOUT":
                return

    async def _answer(
        self,
        command: str,
        words: list[str],
        selected: str,
        writer: asyncio.StreamWriter,
        reader: asyncio.StreamReader,
    ) -> str:
        script = self.script
        if command == "CAPABILITY":
            writer.write(f"* CAPABILITY {script.capabilities}\r\n".encode())
            return "OK done"
        if command == "LOGIN":
            user, password = words[1].strip('"'), words[2].strip('"')
            if (user, password) != (script.username, script.password):
                return f"NO [AUTHENTICATIONFAILED] no such user {user} with password {password}"
            return "OK logged in"
        if command == "LIST":
            for name in script.folders:
                flags = r"\HasNoChildren \Junk" if name == script.junk_folder else r"\HasNoChildren"
                writer.write(f'* LIST ({flags}) "/" "{name}"\r\n'.encode())
            return "OK listed"
        if command == "SELECT":
            name = words[1].strip('"')
            if name not in script.folders:
                return "NO no such folder"
            writer.write(f"* {len(script.folders[name])} EXISTS\r\n".encode())
            return "OK [READ-WRITE] selected"
        if command == "UID SEARCH":
            return self._search(words, selected, writer)
        if command == "UID FETCH":
            uid = int(words[1])
            header = script.folders[selected].get(uid, b"")
            writer.write(f"* 1 FETCH (UID {uid} BODY[HEADER] {{{len(header)}}}\r\n".encode() + header + b")\r\n")
            return "OK fetched"
        if command == "UID STORE":
            script.deleted[selected].add(int(words[1]))
            return "OK stored"
        if command == "UID EXPUNGE":
            uid = int(words[1])
            script.folders[selected].pop(uid, None)
            script.deleted[selected].discard(uid)
            return "OK expunged"
        if command == "EXPUNGE":
            for uid in script.deleted[selected]:
                script.folders[selected].pop(uid, None)
            script.deleted[selected].clear()
            return "OK expunged"
        if command == "IDLE":
            return await self._idle(writer, reader)
        if command == "NOOP":
            return "OK nothing"
        if command == "LOGOUT":
            writer.write(b"* BYE bye\r\n")
            return "OK logged out"
        return "BAD unknown command"

    def _search(self, words: list[str], selected: str, writer: asyncio.StreamWriter) -> str:
        folder = self.script.folders[selected]
        if words[1].upper() == "DELETED":
            uids = sorted(self.script.deleted[selected])
        else:
            token = words[3]
            uids = [uid for uid, header in folder.items() if token.encode() in header]
        writer.write(("* SEARCH" + "".join(f" {uid}" for uid in uids) + "\r\n").encode())
        return "OK searched"

    async def _idle(self, writer: asyncio.StreamWriter, reader: asyncio.StreamReader) -> str:
        script = self.script
        writer.write(b"+ idling\r\n")
        await writer.drain()
        done = asyncio.ensure_future(reader.readline())
        if script.idle_push_after is not None and script.arriving is not None:
            finished, _ = await asyncio.wait({done}, timeout=script.idle_push_after)
            if not finished:
                uid, header = script.arriving
                script.folders["INBOX"][uid] = header
                script.arriving = None
                writer.write(f"* {len(script.folders['INBOX'])} EXISTS\r\n".encode())
                await writer.drain()
        await done
        self.seen.commands.append("DONE")
        return "OK idle done"


class FakePop3Server(_Server):
    """POP3 over implicit TLS: the INBOX of the script, numbered in uid order."""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        script = self.script
        if GREETING in script.misbehave:
            await _misbehave(script.misbehave[GREETING], writer)
            return
        writer.write(b"+OK fake POP3 ready\r\n")
        user = ""
        dele: set[int] = set()
        while True:
            line = await reader.readline()
            if not line:
                return
            words = line.decode().rstrip("\r\n").split(" ")
            command = words[0].upper()
            self.seen.commands.append("PASS ***" if command == "PASS" else " ".join(words))
            if command in script.misbehave:
                await _misbehave(script.misbehave[command], writer)
                return
            inbox = [script.folders["INBOX"][uid] for uid in sorted(script.folders["INBOX"])]
            if command == "USER":
                user = words[1]
                writer.write(b"+OK send PASS\r\n")
            elif command == "PASS":
                if (user, words[1]) != (script.username, script.password):
                    writer.write(f"-ERR [AUTH] wrong password {words[1]}\r\n".encode())
                else:
                    writer.write(b"+OK logged in\r\n")
            elif command == "STAT":
                writer.write(f"+OK {len(inbox)} {sum(map(len, inbox))}\r\n".encode())
            elif command == "TOP":
                header = inbox[int(words[1]) - 1]
                writer.write(b"+OK\r\n" + header.rstrip(b"\r\n") + b"\r\n\r\n.\r\n")
            elif command == "DELE":
                dele.add(int(words[1]))
                writer.write(b"+OK marked\r\n")
            elif command == "QUIT":
                uids = sorted(script.folders["INBOX"])
                for number in dele:
                    script.folders["INBOX"].pop(uids[number - 1], None)
                writer.write(b"+OK bye\r\n")
                await writer.drain()
                return
            else:
                writer.write(b"-ERR unknown\r\n")
            await writer.drain()
