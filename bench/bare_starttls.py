"""The floor of a Python SMTP-over-TLS prober: the bare dialogue on asyncio socket calls, paced like the agent.

`python -m bench.bare_starttls PORT CA_FILE SERVERNAME RATE SECONDS [implicit]` prints one JSON line:
probes, failures and the CPU seconds of this process. Connect, greeting, EHLO, STARTTLS, a verified
TLS handshake, EHLO, QUIT (with `implicit`: connect, a verified handshake, greeting, EHLO, QUIT):
no timeouts, timings, bounds or results. What the agent spends above this is its own structure,
not Python's or OpenSSL's.
"""

from __future__ import annotations

import asyncio
import json
import resource
import socket
import ssl
import sys
import time


def _reply_end(buffer: bytes) -> int:
    """The offset just past the first complete reply in `buffer`, or -1."""
    start = 0
    while True:
        end = buffer.find(b"\r\n", start)
        if end < 0:
            return -1
        if end - start >= 4 and buffer[start + 3 : start + 4] == b" ":
            return end + 2
        start = end + 2


class _Session:
    def __init__(self, sock: socket.socket) -> None:
        self.loop = asyncio.get_running_loop()
        self.sock = sock
        self.buffer = b""
        self.tls: ssl.SSLObject | None = None
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()

    async def _receive(self) -> None:
        data = await self.loop.sock_recv(self.sock, 65536)
        if not data:
            raise ConnectionError("closed by the server")
        if self.tls is None:
            self.buffer += data
            return
        self.incoming.write(data)
        while True:
            try:
                plain = self.tls.read(16384)
            except ssl.SSLWantReadError:
                return
            if not plain:
                return
            self.buffer += plain

    async def reply(self) -> bytes:
        while (end := _reply_end(self.buffer)) < 0:
            await self._receive()
        reply, self.buffer = self.buffer[:end], self.buffer[end:]
        return reply

    async def send(self, line: bytes) -> None:
        if self.tls is None:
            await self.loop.sock_sendall(self.sock, line)
            return
        self.tls.write(line)
        await self.loop.sock_sendall(self.sock, self.outgoing.read())

    async def starttls(self, context: ssl.SSLContext, servername: str) -> None:
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname=servername)
        self.buffer = b""
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                if pending := self.outgoing.read():
                    await self.loop.sock_sendall(self.sock, pending)
                data = await self.loop.sock_recv(self.sock, 65536)
                if not data:
                    raise ConnectionError("closed during the handshake") from None
                self.incoming.write(data)
        if pending := self.outgoing.read():
            await self.loop.sock_sendall(self.sock, pending)


async def _probe(port: int, context: ssl.SSLContext, servername: str, implicit: bool = False) -> None:
    loop = asyncio.get_running_loop()
    with socket.socket() as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        session = _Session(sock)
        if implicit:
            await session.starttls(context, servername)  # from the first byte
        for command in (None, b"EHLO bench.test\r\n") if implicit else (None, b"EHLO bench.test\r\n", b"STARTTLS\r\n"):
            if command:
                await session.send(command)
            if not (await session.reply()).startswith(b"2"):
                raise ConnectionError("refused")
        if not implicit:
            await session.starttls(context, servername)
            await session.send(b"EHLO bench.test\r\n")
            await session.reply()
        await session.send(b"QUIT\r\n")
        await session.reply()


async def _run(
    port: int, ca_file: str, servername: str, rate: float, seconds: float, implicit: bool = False
) -> dict[str, float]:
    context = ssl.create_default_context(cafile=ca_file)
    await _probe(port, context, servername, implicit)  # fail early, and outside the measurement
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    tasks = []
    start = time.monotonic()
    for i in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        tasks.append(asyncio.create_task(_probe(port, context, servername, implicit)))
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage1.ru_utime + usage1.ru_stime - usage0.ru_utime - usage0.ru_stime
    failed = sum(1 for outcome in outcomes if outcome is not None)
    return {"probes": len(outcomes), "failed": failed, "cpu": cpu, "seconds": time.monotonic() - start}


def main(argv: list[str]) -> int:
    port, ca_file, servername, rate, seconds = int(argv[1]), argv[2], argv[3], float(argv[4]), float(argv[5])
    implicit = argv[6:7] == ["implicit"]
    print(json.dumps(asyncio.run(_run(port, ca_file, servername, rate, seconds, implicit))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
