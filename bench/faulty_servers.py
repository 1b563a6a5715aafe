"""Misbehaving SMTP servers on loopback for the soak: tarpit, reset mid-dialogue, 554 greeting, endless line.

Run as `python -m bench.faulty_servers --seconds N`: prints one JSON line {"kind": port, ...}
and serves until N seconds have passed or stdin closes. Everything is bounded: connections
held at once, bytes sent per connection, and how long any connection lives.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import struct
import sys
from collections.abc import Awaitable, Callable

HOST = "127.0.0.1"
MAX_CONNECTIONS = 1000  # per server; beyond it a new connection is closed at once
HOLD_LIMIT = 60.0  # seconds any connection lives at most
ENDLESS_BYTES = 1 << 20  # an endless line stops after 1 MiB
CHUNK = 4096

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def tarpit(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accept and say nothing; wait for the client to give up."""
    while await reader.read(65536):  # b"" once the client closes; anything it sends is ignored
        pass


async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Greet, read the EHLO, then reset the connection (RST, not FIN)."""
    writer.write(b"220 reset.test ESMTP about to reset\r\n")
    await writer.drain()
    await reader.readline()
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def reject(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """554 greeting (RFC 5321 3.1), then answer anything but QUIT with 503 until QUIT or EOF."""
    writer.write(b"554 5.3.2 reject.test no SMTP service here\r\n")
    await writer.drain()
    for _ in range(20):
        line = await reader.readline()
        if not line:
            break
        if line.upper().startswith(b"QUIT"):
            writer.write(b"221 2.0.0 bye\r\n")
            await writer.drain()
            break
        writer.write(b"503 5.5.1 no SMTP service here\r\n")
        await writer.drain()


async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A greeting line that never ends: bytes without CRLF until the client leaves or 1 MiB is sent."""
    writer.write(b"220-endless.test ")
    chunk = b"x" * CHUNK
    sent = 0
    while sent < ENDLESS_BYTES and not writer.is_closing():
        writer.write(chunk)
        sent += CHUNK
        await writer.drain()
        await asyncio.sleep(0.001)


SERVERS: dict[str, Handler] = {"tarpit": tarpit, "reset": reset, "reject554": reject, "endless": endless}


def _bounded(handler: Handler) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    active = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal active
        if active >= MAX_CONNECTIONS:
            writer.transport.abort()
            return
        active += 1
        try:
            async with asyncio.timeout(HOLD_LIMIT):
                await handler(reader, writer)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            active -= 1
            writer.transport.abort()

    return serve


async def main(seconds: float) -> None:
    servers = {}
    for name, handler in SERVERS.items():
        servers[name] = await asyncio.start_server(_bounded(handler), HOST, 0, backlog=1024)
    ports = {name: server.sockets[0].getsockname()[1] for name, server in servers.items()}
    print(json.dumps(ports), flush=True)
    loop = asyncio.get_running_loop()
    stdin_closed = loop.create_future()

    def on_stdin() -> None:
        if not os.read(sys.stdin.fileno(), 4096) and not stdin_closed.done():
            stdin_closed.set_result(None)

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stdin_closed
    for server in servers.values():
        server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=900.0, help="stop after this long (default 900)")
    asyncio.run(main(parser.parse_args().seconds))
