"""Connect and banner timings from kernel timestamps: TCP_INFO's handshake RTT and the greeting's receive time."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from monitor.config.schema import DnsConfig, SmtpProbeConfig, TlsMode
from monitor.model.probe_result import result_from_dict
from monitor.model.results import Phase, Reason, SmtpResult
from monitor.probes import ProbeEnv, build_resolver, kernel_times, smtp
from tests.fakes import smtp_servers as fakes
from tests.fakes.smtp_servers import AiosmtpdServer, ScriptedSmtpServer
from tests.support.certs import SERVER_NAME, IssuedCert, Pki

T = TypeVar("T")
HANG_GUARD = 30.0  # seconds: a scenario still running after this has hung
STALL = 0.2  # seconds the probe's event loop is blocked in the stalled-loop tests
WELL_BELOW_STALL = 0.1


def run_scenario(coro: Coroutine[Any, Any, T]) -> T:
    async def guarded() -> T:
        async with asyncio.timeout(HANG_GUARD):
            return await coro

    return asyncio.run(guarded())


async def probe(
    port: int, host: str = "127.0.0.1", tls: TlsMode = "none", timeout: float = 5.0, **options: Any
) -> SmtpResult:
    config = SmtpProbeConfig(name="fake", host=host, port=port, tls=tls, timeout=timeout, helo="probe.test", **options)
    return await smtp.run(config, ProbeEnv(resolver=build_resolver(DnsConfig())))


async def probe_server(server: ScriptedSmtpServer | AiosmtpdServer, **options: Any) -> SmtpResult:
    async with server:
        return await probe(server.port, **options)


def assert_failed(result: SmtpResult, phase: Phase, reason: Reason) -> None:
    assert (result.ok, result.phase, result.reason) == (False, phase, reason), result.error


@pytest.fixture(scope="module", autouse=True)
def _stamping_switched_on() -> None:
    """The first socket asking for stamps switches them on by deferred kernel work (the probe keeps them on
    from then on): wait for it, so the first probe of the run is not the one timed by the wall clock."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        assert kernel_times.enable_rx_timestamps(sock)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(1)
        for _ in range(100):
            sock.sendto(b"?", sock.getsockname())
            if kernel_times.rx_time(sock.recvmsg(1, 64)[1]) is not None:
                return
            time.sleep(0.01)
    pytest.fail("the kernel never stamped a datagram")


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


class ThreadedSmtpPeer:
    """A minimal healthy SMTP server on its own thread, so it answers while the probe's event loop is blocked.

    `on_accept()` runs in the server thread before the greeting is sent."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind((host, 0))
        self.listener.listen(8)
        self.listener.settimeout(0.05)  # to notice `stopping`
        self.port = int(self.listener.getsockname()[1])
        self.on_accept: Callable[[], None] | None = None
        self.peers: list[tuple[Any, ...]] = []
        self.greeted = threading.Event()  # set once the greeting has been written
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> ThreadedSmtpPeer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(15)
        self.listener.close()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, peer = self.listener.accept()
            except TimeoutError:
                continue
            self.peers.append(peer)
            conn.settimeout(10)
            with conn, conn.makefile("rb") as lines, contextlib.suppress(OSError):
                if self.on_accept is not None:
                    self.on_accept()
                conn.sendall(fakes.GREETING)
                self.greeted.set()
                for line in lines:
                    if line.upper().startswith(b"QUIT"):
                        conn.sendall(b"221 2.0.0 bye\r\n")
                        break
                    conn.sendall(b"250 mail.test\r\n")


class TestTcpInfoParser:
    def test_reads_rtt_and_retransmission_counts_at_the_linux_header_offsets(self) -> None:
        # Every u32 field gets its index (+1000) as value, so a wrong offset reads a wrong number.
        raw = struct.pack("=8B", 1, 2, 3, 4, 5, 6, 7, 8) + struct.pack("=24I", *range(1000, 1024))
        info = kernel_times.parse_tcp_info(raw + b"\0" * 100)
        assert info == kernel_times.TcpInfo(retransmits=3, rtt_us=1015, total_retrans=1023)

    def test_an_answer_too_short_to_hold_the_fields_is_no_answer(self) -> None:
        assert kernel_times.parse_tcp_info(b"\0" * (kernel_times.TCP_INFO_SIZE - 1)) is None

    def test_rtt_of_a_real_loopback_connection_is_positive_and_within_the_wall_connect_time(self) -> None:
        with socket.socket() as listener, socket.socket() as client:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            started = time.perf_counter()
            client.connect(listener.getsockname())
            wall = time.perf_counter() - started
            info = kernel_times.tcp_info(client)
            assert info is not None
            assert (info.retransmits, info.total_retrans) == (0, 0)
            assert 0 < info.rtt_us / 1e6 <= wall
            assert kernel_times.handshake_rtt(client) == info.rtt_us / 1e6

    def test_a_retransmitted_syn_leaves_no_handshake_rtt(self, monkeypatch: pytest.MonkeyPatch) -> None:
        with socket.socket() as listener, socket.socket() as client:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            client.connect(listener.getsockname())
            real = kernel_times.tcp_info(client)
            assert real is not None
            retransmitted = kernel_times.TcpInfo(retransmits=0, rtt_us=real.rtt_us, total_retrans=1)
            monkeypatch.setattr(kernel_times, "tcp_info", lambda sock: retransmitted)
            assert kernel_times.handshake_rtt(client) is None


class TestReceiveTimestamps:
    def test_received_data_carries_its_kernel_receive_time(self) -> None:
        async def scenario() -> tuple[float, bytes, float | None, float]:
            with socket.socket() as listener, socket.socket() as client:
                listener.bind(("127.0.0.1", 0))
                listener.listen(1)
                client.connect(listener.getsockname())
                client.setblocking(False)
                assert kernel_times.enable_rx_timestamps(client)
                server, _ = listener.accept()
                with server:
                    before = time.time()
                    server.sendall(b"220 hi\r\n")
                    data, stamp = await kernel_times.recv_stamped(client, 1024)
                    return before, data, stamp, time.time()

        before, data, stamp, after = run_scenario(scenario())
        assert data == b"220 hi\r\n"
        assert stamp is not None
        assert before <= stamp <= after

    def test_data_read_without_the_option_has_no_receive_time(self) -> None:
        async def scenario() -> float | None:
            with socket.socket() as listener, socket.socket() as client:
                listener.bind(("127.0.0.1", 0))
                listener.listen(1)
                client.connect(listener.getsockname())
                client.setblocking(False)
                server, _ = listener.accept()
                with server:
                    server.sendall(b"220 hi\r\n")
                    return (await kernel_times.recv_stamped(client, 1024))[1]

        assert run_scenario(scenario()) is None


class TestConnectTiming:
    def test_connect_is_timed_by_the_kernel_within_the_probes_wall_time(self) -> None:
        result = run_scenario(probe_server(AiosmtpdServer()))
        assert result.ok, result.error
        assert result.timing_source["connect"] == "kernel"
        assert 0 < result.timings["connect"] <= result.total

    def test_implicit_tls_probe_times_connect_by_the_kernel_and_the_greeting_by_the_wall_clock(
        self, pki: Pki, good_cert: IssuedCert
    ) -> None:
        server = AiosmtpdServer(implicit_tls=good_cert.server_context())
        result = run_scenario(probe_server(server, tls="implicit", ca_file=pki.ca_file, servername=SERVER_NAME))
        assert result.ok, result.error
        assert result.timing_source == {"connect": "kernel", "banner": "wall"}

    def test_source_address_is_bound(self) -> None:
        with ThreadedSmtpPeer() as peer:
            result = run_scenario(probe(peer.port, source_address="127.0.0.2"))
        assert result.ok, result.error
        assert peer.peers[0][0] == "127.0.0.2"

    @pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback")
    def test_ipv6_server_is_probed_with_kernel_timings(self) -> None:
        with ThreadedSmtpPeer("::1") as peer:
            result = run_scenario(probe(peer.port, host="::1", source_address="::1"))
        assert result.ok, result.error
        assert result.address == "::1"
        assert result.timing_source == {"connect": "kernel", "banner": "kernel"}


class TestConnectFailuresKeepTheirClassification:
    def test_refused_port_fails_in_connect_phase_with_refused(self, refused_port: int) -> None:
        result = run_scenario(probe(refused_port))
        assert_failed(result, Phase.CONNECT, Reason.REFUSED)
        assert result.error == "connection refused"
        assert result.timing_source == {}

    def test_source_address_not_on_this_host_fails_unreachable_with_the_bind_error(self, refused_port: int) -> None:
        result = run_scenario(probe(refused_port, source_address="198.51.100.7"))
        assert_failed(result, Phase.CONNECT, Reason.UNREACHABLE)
        assert result.error == (
            "error while attempting to bind on address ('198.51.100.7', 0): cannot assign requested address"
        )

    def test_source_address_of_the_other_family_fails_with_no_matching_local_address(self, refused_port: int) -> None:
        result = run_scenario(probe(refused_port, source_address="::1"))
        assert_failed(result, Phase.CONNECT, Reason.RESET)
        assert result.error == "no matching local address with family=<AddressFamily.AF_INET: 2> found"


class TestGreetingFailuresKeepTheirClassification:
    """The greeting's first bytes are read off the raw socket now: every way a greeting can fail still
    fails as it did when asyncio's transport read them."""

    @pytest.mark.parametrize(
        ("server", "reason", "error"),
        [
            (fakes.close_before_greeting, Reason.RESET, "connection closed by server"),
            (fakes.reset_before_greeting, Reason.RESET, "connection closed by server"),
            (fakes.http_server, Reason.PROTOCOL, "not an SMTP reply: 'HTTP/1.1 400 Bad Request'"),
            (fakes.endless_line, Reason.PROTOCOL, "reply line longer than 2048 bytes"),
            (fakes.greeting_554, Reason.REPLY, "554 5.3.2 mail.test no SMTP service here"),
            (fakes.greeting_421, Reason.REPLY, "421 4.3.2 mail.test shutting down"),
        ],
    )
    def test_failed_greeting_is_classified_as_before(
        self, server: Callable[[], ScriptedSmtpServer], reason: Reason, error: str
    ) -> None:
        result = run_scenario(probe_server(server(), timeout=30))
        assert_failed(result, Phase.BANNER, reason)
        assert result.error == error
        assert result.timing_source == {"connect": "kernel"}

    def test_tarpit_times_out_in_banner_phase_and_the_probe_hangs_up(self) -> None:
        async def scenario() -> tuple[SmtpResult, bool]:
            async with fakes.tarpit() as server:
                result = await probe(server.port, timeout=0.5)
                connections = await server.wait_finished(1)
            return result, connections[0].peer_closed

        result, peer_closed = run_scenario(scenario())
        assert_failed(result, Phase.BANNER, Reason.TIMEOUT)
        assert result.error == "no answer within 0.5s"
        assert peer_closed


class TestBannerTiming:
    def test_one_packet_greeting_is_timed_by_the_kernel(self) -> None:
        result = run_scenario(probe_server(AiosmtpdServer()))
        assert result.ok, result.error
        assert result.timing_source == {"connect": "kernel", "banner": "kernel"}
        assert 0 <= result.timings["banner"] <= result.total

    def test_starttls_probe_times_its_greeting_by_the_kernel(self, pki: Pki, good_cert: IssuedCert) -> None:
        server = AiosmtpdServer(starttls=good_cert.server_context())
        result = run_scenario(probe_server(server, tls="starttls", ca_file=pki.ca_file, servername=SERVER_NAME))
        assert result.ok, result.error
        assert result.timing_source == {"connect": "kernel", "banner": "kernel"}
        assert {"starttls", "tls", "ehlo_tls"} <= set(result.timings)

    def test_greeting_split_across_packets_is_timed_by_the_wall_clock(self) -> None:
        result = run_scenario(probe_server(fakes.split_greeting(0.3)))
        assert result.ok, result.error
        assert result.banner == "220 mail.test ESMTP ready"
        assert result.timing_source == {"connect": "kernel", "banner": "wall"}
        assert result.timings["banner"] >= 0.25  # lower bound: the second packet came 0.3 s later

    def test_greeting_delayed_by_the_server_is_reported_in_full_by_the_kernel(self) -> None:
        result = run_scenario(probe_server(fakes.slow_greeting(0.3)))
        assert result.ok, result.error
        assert result.timing_source["banner"] == "kernel"
        assert result.timings["banner"] >= 0.25  # lower bound only


class TestStalledEventLoop:
    """What this is for: the probe's own process waiting for a CPU is not the server's latency."""

    def test_loop_stalled_right_after_connect_starts_does_not_inflate_connect_or_banner(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        in_progress: list[bool] = []
        connect = socket.socket.connect

        def connect_then_stall(sock: socket.socket, address: Any) -> None:
            try:
                connect(sock, address)
            except BlockingIOError:
                in_progress.append(True)
                raise
            finally:
                # Runs before the loop sees the connection complete: the wall clock counts it as connect time.
                asyncio.get_running_loop().call_soon(time.sleep, STALL)

        with ThreadedSmtpPeer() as peer, monkeypatch.context() as patch:
            patch.setattr(socket.socket, "connect", connect_then_stall)
            result = run_scenario(probe(peer.port))
        assert in_progress == [True]  # the stall fell inside the connect phase
        assert result.ok, result.error
        assert result.total >= STALL  # what the wall clock saw
        assert result.timing_source == {"connect": "kernel", "banner": "kernel"}
        assert result.timings["connect"] < WELL_BELOW_STALL
        assert result.timings["banner"] < WELL_BELOW_STALL

    def test_loop_stalled_with_the_greeting_in_the_socket_buffer_does_not_inflate_the_banner(self) -> None:
        peer = ThreadedSmtpPeer()
        probe_loop: list[asyncio.AbstractEventLoop] = []

        def stall_once_greeted() -> None:
            peer.greeted.wait(5)
            time.sleep(STALL)

        def on_accept() -> None:
            time.sleep(0.02)  # let the probe get to waiting for the greeting
            # Queued before the greeting is sent: the loop runs it before it can read the greeting.
            probe_loop[0].call_soon_threadsafe(stall_once_greeted)

        async def scenario() -> SmtpResult:
            probe_loop.append(asyncio.get_running_loop())
            return await probe(peer.port)

        peer.on_accept = on_accept
        with peer:
            result = run_scenario(scenario())
        assert result.ok, result.error
        assert result.total >= STALL  # what the wall clock saw
        assert result.timing_source == {"connect": "kernel", "banner": "kernel"}
        assert result.timings["banner"] < WELL_BELOW_STALL
        assert result.timings["connect"] < WELL_BELOW_STALL


class TestTimingSourceInResults:
    def test_one_shot_json_carries_the_sources_beside_unchanged_timings(self) -> None:
        result = run_scenario(probe_server(fakes.healthy()))
        data = result.as_dict()
        assert data["timing_source"] == {"connect": "kernel", "banner": "kernel"}
        assert set(data["timings"]) == {"resolve", "connect", "banner", "ehlo", "quit", "total"}
        assert all(isinstance(v, float) for v in data["timings"].values())

    def test_saved_result_comes_back_with_its_sources(self) -> None:
        result = run_scenario(probe_server(fakes.healthy()))
        restored = result_from_dict(result.as_dict())
        assert isinstance(restored, SmtpResult)
        assert restored.timing_source == result.timing_source
        assert restored.timings == result.timings

    def test_result_saved_before_sources_existed_loads_with_none(self) -> None:
        old = SmtpResult("mail.test", 25, "none", time.time(), True, timings={"connect": 0.001}).as_dict()
        del old["timing_source"]
        restored = result_from_dict(old)
        assert isinstance(restored, SmtpResult)
        assert restored.timing_source == {}
        assert restored.timings == {"connect": 0.001}
