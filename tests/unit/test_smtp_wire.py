"""monitor.probes.smtp_wire: reply framing and limits, reading on demand (PulledSocket), and parse_extensions."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

import pytest

from monitor.model.failures import WireFailure
from monitor.model.results import Reason, Reply
from monitor.probes.smtp_wire import (
    MAX_BUFFER,
    MAX_LINE,
    MAX_REPLY_LINES,
    PulledSocket,
    SmtpClientProtocol,
    parse_extensions,
)
from tests.fakes.transports import RecordingTransport

T = TypeVar("T")
End = Callable[[SmtpClientProtocol], Any]


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine in a fresh loop, failing (not hanging) if it waits for more than 5 s."""
    return asyncio.run(asyncio.wait_for(coro, 5))


async def read_fed(*chunks: bytes, end: End | None = None, proto: SmtpClientProtocol | None = None) -> Reply:
    """Start read_reply(), then feed `chunks` one loop turn apart (so it waits between them), then `end`."""
    proto = proto or SmtpClientProtocol()
    reading = asyncio.create_task(proto.read_reply())
    for chunk in chunks:
        await asyncio.sleep(0)
        proto.data_received(chunk)
    if end is not None:
        await asyncio.sleep(0)
        end(proto)
    return await reading


def read_error(*chunks: bytes, end: End | None = None) -> WireFailure:
    with pytest.raises(WireFailure) as info:
        run(read_fed(*chunks, end=end))
    return info.value


def eof(proto: SmtpClientProtocol) -> None:
    proto.eof_received()


class TestReplyFraming:
    def test_single_line_reply(self) -> None:
        assert run(read_fed(b"220 mail.test ESMTP\r\n")) == Reply(220, ("mail.test ESMTP",))

    def test_multiline_reply_collects_every_line_under_one_code(self) -> None:
        reply = run(read_fed(b"250-mail.test\r\n250-SIZE 1000\r\n250 HELP\r\n"))
        assert reply == Reply(250, ("mail.test", "SIZE 1000", "HELP"))
        assert reply.text == "mail.test SIZE 1000 HELP"

    def test_reply_split_byte_by_byte_is_reassembled(self) -> None:
        data = b"250-first\r\n250 second\r\n"
        chunks = [data[i : i + 1] for i in range(len(data))]
        assert run(read_fed(*chunks)) == Reply(250, ("first", "second"))

    def test_bare_lf_ends_a_line(self) -> None:
        assert run(read_fed(b"250-a\n250 b\n")) == Reply(250, ("a", "b"))

    def test_code_alone_is_a_reply_with_empty_text(self) -> None:
        assert run(read_fed(b"250\r\n")) == Reply(250, ("",))

    def test_pipelined_replies_are_read_one_at_a_time(self) -> None:
        async def scenario() -> tuple[Reply, Reply]:
            proto = SmtpClientProtocol()
            proto.data_received(b"250 first\r\n354 second\r\n")
            return await proto.read_reply(), await proto.read_reply()

        assert run(scenario()) == (Reply(250, ("first",)), Reply(354, ("second",)))

    def test_invalid_utf8_is_replaced_not_fatal(self) -> None:
        assert run(read_fed(b"220 caf\xe9\r\n")) == Reply(220, ("caf\ufffd",))

    def test_read_waits_for_the_rest_of_an_incomplete_reply(self) -> None:
        async def scenario() -> tuple[bool, Reply]:
            proto = SmtpClientProtocol()
            reading = asyncio.create_task(proto.read_reply())
            proto.data_received(b"250-first\r\n250 sec")
            await asyncio.sleep(0.01)
            waiting = not reading.done()
            proto.data_received(b"ond\r\n")
            return waiting, await reading

        assert run(scenario()) == (True, Reply(250, ("first", "second")))

    def test_line_of_exactly_max_line_bytes_is_accepted(self) -> None:
        line = b"250 " + b"x" * (MAX_LINE - 5) + b"\r"  # MAX_LINE bytes before the LF
        reply = run(read_fed(line + b"\n"))
        assert reply.code == 250
        assert len(reply.lines[0]) == MAX_LINE - 5


class TestReplyRejected:
    @pytest.mark.parametrize(
        "line",
        [b"2x0 hi", b"HTTP/1.1 400 Bad Request", b"25", b"250x hi", b"", b" 250 hi", b"SSH-2.0-OpenSSH_9.6"],
    )
    def test_line_without_a_three_digit_code_is_a_protocol_error(self, line: bytes) -> None:
        error = read_error(line + b"\r\n")
        assert error.reason is Reason.PROTOCOL
        assert "not an SMTP reply" in str(error)

    def test_code_change_mid_reply_is_a_protocol_error(self) -> None:
        error = read_error(b"250-mail.test\r\n251 SIZE 1000\r\n")
        assert error.reason is Reason.PROTOCOL
        assert "250 then 251" in str(error)

    def test_line_too_long_without_a_line_end_is_a_protocol_error(self) -> None:
        error = read_error(b"220 " + b"x" * MAX_LINE)
        assert error.reason is Reason.PROTOCOL
        assert f"longer than {MAX_LINE}" in str(error)

    def test_line_one_byte_over_the_limit_is_rejected_even_with_a_line_end(self) -> None:
        line = b"250 " + b"x" * (MAX_LINE - 3)  # MAX_LINE + 1 bytes before the LF
        assert read_error(line + b"\n").reason is Reason.PROTOCOL

    def test_endless_line_in_small_chunks_is_rejected_once_over_the_limit(self) -> None:
        chunks = [b"220 "] + [b"x" * 256] * (MAX_LINE // 256 + 1)
        assert read_error(*chunks).reason is Reason.PROTOCOL

    def test_too_many_continuation_lines_is_a_protocol_error(self) -> None:
        data = b"250-x\r\n" * MAX_REPLY_LINES + b"250 end\r\n"
        error = read_error(data)
        assert error.reason is Reason.PROTOCOL
        assert f"{MAX_REPLY_LINES} lines" in str(error)

    def test_longest_allowed_reply_is_accepted(self) -> None:
        data = b"250-x\r\n" * (MAX_REPLY_LINES - 1) + b"250 end\r\n"
        assert len(run(read_fed(data)).lines) == MAX_REPLY_LINES


class TestConnectionEnd:
    def test_eof_before_any_reply_is_a_reset(self) -> None:
        error = read_error(end=eof)
        assert (error.reason, str(error)) == (Reason.RESET, "connection closed by server")

    def test_eof_mid_line_is_a_reset_in_the_middle_of_a_reply(self) -> None:
        error = read_error(b"250-first\r\n250-sec", end=eof)
        assert error.reason is Reason.RESET
        assert "in the middle of a reply" in str(error)

    def test_eof_after_a_continuation_line_is_a_reset(self) -> None:
        assert read_error(b"250-first\r\n", end=eof).reason is Reason.RESET

    def test_complete_reply_before_eof_is_still_returned(self) -> None:
        async def scenario() -> Reply:
            proto = SmtpClientProtocol()
            proto.data_received(b"221 bye\r\n")
            proto.eof_received()
            return await proto.read_reply()

        assert run(scenario()) == Reply(221, ("bye",))

    def test_eof_received_asks_the_transport_to_close(self) -> None:
        assert SmtpClientProtocol().eof_received() is False

    def test_connection_lost_with_an_os_error_is_a_reset_naming_it(self) -> None:
        error = read_error(end=lambda p: p.connection_lost(OSError("network is down")))
        assert (error.reason, str(error)) == (Reason.RESET, "network is down")

    def test_connection_lost_without_an_error_is_a_reset(self) -> None:
        assert read_error(end=lambda p: p.connection_lost(None)).reason is Reason.RESET

    def test_connection_lost_with_an_ssl_error_raises_that_ssl_error(self) -> None:
        lost = ssl.SSLError(1, "bad record mac")
        with pytest.raises(ssl.SSLError) as info:
            run(read_fed(end=lambda p: p.connection_lost(lost)))
        assert info.value is lost

    def test_first_close_reason_wins(self) -> None:
        def end(proto: SmtpClientProtocol) -> None:
            proto.connection_lost(OSError("first"))
            proto.connection_lost(OSError("second"))

        assert str(read_error(end=end)) == "first"


class TestFlowControl:
    def test_reading_pauses_above_max_buffer_and_resumes_once_drained(self) -> None:
        line = b"250 " + b"y" * 95 + b"\r\n"  # 101 bytes
        count = MAX_BUFFER // len(line) + 10

        async def scenario() -> tuple[bool, int, bool]:
            transport = RecordingTransport()
            proto = SmtpClientProtocol()
            proto.connection_made(transport)
            proto.data_received(line * count)
            paused_after_flood = transport.paused
            reads = 0
            while transport.paused:
                await proto.read_reply()
                reads += 1
            return paused_after_flood, reads, transport.paused

        paused_after_flood, reads, paused_at_end = run(scenario())
        assert paused_after_flood is True
        assert 1 <= reads <= 11  # resumed as soon as the buffer fell below MAX_BUFFER
        assert paused_at_end is False

    def test_write_sends_the_bytes(self) -> None:
        transport = RecordingTransport()
        proto = SmtpClientProtocol()
        proto.connection_made(transport)
        proto.write(b"EHLO probe.test\r\n")
        assert bytes(transport.written) == b"EHLO probe.test\r\n"

    def test_write_on_a_closing_transport_is_a_reset(self) -> None:
        transport = RecordingTransport()
        proto = SmtpClientProtocol()
        proto.connection_made(transport)
        transport.close()
        with pytest.raises(WireFailure) as info:
            proto.write(b"QUIT\r\n")
        assert info.value.reason is Reason.RESET

    def test_write_before_connection_is_a_reset(self) -> None:
        with pytest.raises(WireFailure) as info:
            SmtpClientProtocol().write(b"QUIT\r\n")
        assert info.value.reason is Reason.RESET


class TestBufferResets:
    def test_discard_buffer_drops_bytes_sent_behind_a_reply(self) -> None:
        async def scenario() -> tuple[Reply, Reply]:
            proto = SmtpClientProtocol()
            proto.data_received(b"220 ready\r\n250-INJECTED\r\n250 INJECTED\r\n")
            ready = await proto.read_reply()
            proto.discard_buffer()
            return ready, await read_fed(b"250 genuine\r\n", proto=proto)

        assert run(scenario()) == (Reply(220, ("ready",)), Reply(250, ("genuine",)))


class TestParseExtensions:
    def test_greeting_line_is_skipped_and_keywords_map_to_parameters(self) -> None:
        reply = Reply(250, ("mail.test hello", "SIZE 10240000", "AUTH PLAIN LOGIN", "8BITMIME"))
        assert parse_extensions(reply) == {"SIZE": "10240000", "AUTH": "PLAIN LOGIN", "8BITMIME": ""}

    def test_keywords_are_upper_cased_and_parameters_kept_as_sent(self) -> None:
        assert parse_extensions(Reply(250, ("hi", "starttls", "auth Plain login"))) == {
            "STARTTLS": "",
            "AUTH": "Plain login",
        }

    def test_surrounding_whitespace_is_trimmed(self) -> None:
        assert parse_extensions(Reply(250, ("hi", "  SIZE   1000  ", "\tPIPELINING "))) == {
            "SIZE": "1000",
            "PIPELINING": "",
        }

    def test_single_line_ehlo_reply_has_no_extensions(self) -> None:
        assert parse_extensions(Reply(250, ("mail.test",))) == {}

    def test_blank_lines_are_ignored(self) -> None:
        assert parse_extensions(Reply(250, ("hi", "", "   ", "DSN"))) == {"DSN": ""}

    def test_repeated_keyword_keeps_the_last_parameters(self) -> None:
        assert parse_extensions(Reply(250, ("hi", "AUTH LOGIN", "AUTH PLAIN"))) == {"AUTH": "PLAIN"}

    def test_old_style_auth_equals_stays_a_keyword_of_its_own(self) -> None:
        assert parse_extensions(Reply(250, ("hi", "AUTH=LOGIN PLAIN", "AUTH LOGIN PLAIN"))) == {
            "AUTH=LOGIN": "PLAIN",
            "AUTH": "LOGIN PLAIN",
        }


@contextlib.asynccontextmanager
async def _pulled_pair() -> AsyncIterator[tuple[SmtpClientProtocol, PulledSocket, socket.socket]]:
    """A protocol reading one end of a socketpair on demand; the other end plays the server. Both ends
    are closed on the way out, as the probe closes its socket after a dialogue."""
    ours, server = socket.socketpair()
    with ours, server:
        ours.setblocking(False)
        server.setblocking(False)
        proto = SmtpClientProtocol()
        yield proto, proto.attach_socket(ours), server


class TestPulledSocket:
    def test_a_reply_is_read_off_the_socket_when_asked_for(self) -> None:
        async def go() -> Reply:
            async with _pulled_pair() as (proto, _, server):
                server.send(b"220 ready\r\n")
                return await proto.read_reply()

        assert run(go()) == Reply(220, ("ready",))

    def test_a_reply_sent_in_pieces_is_pulled_until_complete(self) -> None:
        async def go() -> Reply:
            async with _pulled_pair() as (proto, _, server):
                reading = asyncio.create_task(proto.read_reply())
                for piece in (b"250-first\r\n", b"250 sec", b"ond\r\n"):
                    await asyncio.sleep(0.01)
                    server.send(piece)
                return await reading

        assert run(go()) == Reply(250, ("first", "second"))

    def test_a_command_reaches_the_server(self) -> None:
        async def go() -> bytes:
            async with _pulled_pair() as (proto, _, server):
                proto.write(b"EHLO probe.test\r\n")
                return await asyncio.get_running_loop().sock_recv(server, 1024)

        assert run(go()) == b"EHLO probe.test\r\n"

    def test_what_the_kernel_did_not_take_is_sent_before_the_next_read(self) -> None:
        big = b"x" * (8 * 1024 * 1024)  # more than a socketpair buffers

        async def go() -> tuple[int, Reply]:
            loop = asyncio.get_running_loop()
            async with _pulled_pair() as (proto, _, server):
                proto.write(big)
                reading = asyncio.create_task(proto.read_reply())
                got = 0
                while got < len(big):
                    got += len(await loop.sock_recv(server, 1 << 20))
                server.send(b"250 all of it\r\n")
                return got, await reading

        assert run(go()) == (len(big), Reply(250, ("all of it",)))

    def test_the_end_of_the_stream_mid_line_is_a_reset_and_closes(self) -> None:
        async def go() -> tuple[WireFailure, bool]:
            async with _pulled_pair() as (proto, pulled, server):
                server.send(b"250-first\r\n250 unfinish")
                server.close()
                with pytest.raises(WireFailure) as info:
                    await proto.read_reply()
                return info.value, pulled.is_closing()

        error, closing = run(go())
        assert error.reason is Reason.RESET
        assert "in the middle of a reply" in str(error)
        assert closing

    def test_an_endless_line_stops_being_read_at_the_line_limit(self) -> None:
        async def go() -> WireFailure:
            async with _pulled_pair() as (proto, _, server):
                server.send(b"220 " + b"x" * (4 * MAX_LINE))
                with pytest.raises(WireFailure) as info:
                    await proto.read_reply()
                return info.value

        error = run(go())
        assert error.reason is Reason.PROTOCOL
        assert f"longer than {MAX_LINE}" in str(error)

    def test_abort_closes_the_socket(self) -> None:
        async def go() -> bytes:
            async with _pulled_pair() as (_, pulled, server):
                pulled.abort()
                return await asyncio.get_running_loop().sock_recv(server, 16)

        assert run(go()) == b""  # the server sees the end of the stream
