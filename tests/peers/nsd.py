"""An authoritative NSD server for hand-written zones on a free loopback port (UDP and TCP)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from tests.peers.lifecycle import DaemonPeer, log_tails
from tests.support.ports import HOST, free_tcp_udp_port

NSD = "/usr/sbin/nsd"
NSD_CHECKZONE = "/usr/sbin/nsd-checkzone"
START_DEADLINE = 10.0
STOP_DEADLINE = 10.0


class NsdError(RuntimeError):
    """NSD could not be configured, started or stopped; the message carries its log tail."""


class NsdServer(DaemonPeer):
    """NSD serving `zone_text_by_origin` ({"test.": "<zone file text>"}) on 127.0.0.1:`port`.

    Runs in the foreground (`nsd -d`) as root without chroot or privilege drop, with
    response rate limiting off (Debian's default limit drops answers under load).
    Everything (config, zones, log, PID file, xfrd state) lives under `tmpdir`.
    """

    host = HOST
    executable = "nsd"  # NSD renames its processes ("nsd: main", "nsd: xfrd"); /proc/PID/exe stays nsd
    error = NsdError
    stop_deadline = STOP_DEADLINE

    def __init__(self, tmpdir: Path | str, zone_text_by_origin: dict[str, str]) -> None:
        if not zone_text_by_origin:
            raise ValueError("NsdServer needs at least one zone")
        self.root = Path(tmpdir).resolve()
        self.zones = {_absolute(origin): text for origin, text in zone_text_by_origin.items()}
        self.port = free_tcp_udp_port()
        self.config_file = self.root / "nsd.conf"
        self.log_file = self.root / "nsd.log"
        self.output_file = self.root / "nsd.out"  # nsd's own stdout/stderr

    @property
    def pid_file(self) -> Path:
        """NSD's main PID, written by NSD itself."""
        return self.root / "nsd.pid"

    def _zone_file(self, origin: str) -> Path:
        return self.root / "zones" / f"{origin.rstrip('.') or 'root'}.zone"

    def _config(self) -> str:
        lines = [
            "server:",
            f"    ip-address: {HOST}",
            f"    port: {self.port}",
            "    do-ip4: yes",
            "    do-ip6: no",
            "    server-count: 1",
            '    username: ""',  # stay root: no chown of our temp files needed
            '    chroot: ""',
            '    database: ""',  # serve straight from the zone files, no nsd.db
            f'    zonesdir: "{self.root / "zones"}"',
            f'    zonelistfile: "{self.root / "zone.list"}"',
            f'    xfrdfile: "{self.root / "xfrd.state"}"',
            f'    xfrdir: "{self.root / "xfr"}"',
            f'    pidfile: "{self.pid_file}"',
            f'    logfile: "{self.log_file}"',
            "    verbosity: 1",
            "    rrl-ratelimit: 0",  # Debian's NSD rate-limits 200 qps per /24 otherwise
            "remote-control:",
            "    control-enable: no",
        ]
        for origin in self.zones:
            lines += ["zone:", f'    name: "{origin}"', f'    zonefile: "{self._zone_file(origin)}"']
        return "\n".join(lines) + "\n"

    def configure(self) -> None:
        """Write config and zone files and check each zone with nsd-checkzone."""
        (self.root / "zones").mkdir(parents=True, exist_ok=True)
        (self.root / "xfr").mkdir(exist_ok=True)
        for origin, text in self.zones.items():
            path = self._zone_file(origin)
            path.write_text(text)
            # a broken zone makes NSD start without it: fail here with the parser's words
            check = subprocess.run([NSD_CHECKZONE, origin, str(path)], capture_output=True, text=True, check=False)
            if check.returncode != 0:
                raise NsdError(f"zone {origin} is invalid:\n{check.stdout}{check.stderr}")
        self.config_file.write_text(self._config())

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of NSD's log and output, labelled, for error messages."""
        return log_tails((self.log_file, self.output_file), lines, "(no NSD log)")

    def _prepare(self) -> None:
        self.configure()
        self.pid_file.unlink(missing_ok=True)

    def _launch(self) -> subprocess.Popen[bytes]:
        with self.output_file.open("ab") as out:
            return subprocess.Popen(
                [NSD, "-d", "-c", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def _wait_ready(self) -> None:
        """Wait until NSD answers a SOA query for every zone."""
        assert self._process is not None
        wait_for_soa(self._process, self.port, self.zones, what="NSD", log_tail=self.log_tail, error=NsdError)

    def _after_stop(self, stopped: bool) -> None:
        self.pid_file.unlink(missing_ok=True)


def _absolute(origin: str) -> str:
    return origin if origin.endswith(".") else origin + "."


def wait_for_soa(
    process: subprocess.Popen[bytes],
    port: int,
    origins: Iterable[str],
    *,
    what: str,
    log_tail: Callable[[], str],
    error: type[Exception],
    checking_disabled: bool = False,
) -> None:
    """Wait until the DNS server `process` on HOST:`port` answers a SOA query for every origin.

    `checking_disabled` sets CD, so a validating resolver is ready for bogus zones too."""
    end = time.monotonic() + START_DEADLINE
    pending = list(origins)
    last_error = ""
    while pending:
        if process.poll() is not None:
            raise error(f"{what} exited with {process.returncode}\n{log_tail()}")
        origin = pending[0]
        query = dns.message.make_query(origin, dns.rdatatype.SOA)
        if checking_disabled:
            query.flags |= dns.flags.CD
        try:
            reply = dns.query.udp(query, HOST, port=port, timeout=0.5)
            if reply.rcode() == dns.rcode.NOERROR and reply.answer:
                pending.pop(0)
                continue
            last_error = f"{origin} SOA: {dns.rcode.to_text(reply.rcode())}, {len(reply.answer)} answers"
        except (dns.exception.DNSException, OSError) as exc:
            last_error = f"{origin} SOA: {exc!r}"
        if time.monotonic() >= end:
            raise error(
                f"{what} on {HOST}:{port} did not answer within {START_DEADLINE:.0f} s (last: {last_error})\n"
                f"{log_tail()}"
            )
        time.sleep(0.05)
