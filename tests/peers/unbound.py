"""A validating Unbound resolver on a free loopback port, for stub zones on local NSD servers only."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

from tests.peers.lifecycle import DaemonPeer, log_tails
from tests.peers.nsd import wait_for_soa
from tests.support.ports import HOST, free_tcp_udp_port

UNBOUND = "/usr/sbin/unbound"
UNBOUND_CHECKCONF = "/usr/sbin/unbound-checkconf"
STOP_DEADLINE = 10.0


class UnboundError(RuntimeError):
    """Unbound could not be configured, started or stopped; the message carries its log tail."""


class UnboundResolver(DaemonPeer):
    """Unbound validating ("validator iterator") on 127.0.0.1:`port` for `stub_zones` only.

    `stub_zones` maps a zone origin to the port of the server that is authoritative for it on
    127.0.0.1 (an NsdServer's port); `trust_anchors` are DS or DNSKEY records in zone file
    format ("signed.test. IN DS ..."): zones under an anchor validate (AD, or SERVFAIL when
    bogus), zones without one are insecure.  There is no root anchor and no root hints in
    use: every other name is REFUSED by a local zone for ".", so nothing ever leaves the
    machine.  Foreground (`unbound -d`), root without chroot or privilege drop, no remote
    control; config, log and PID file live under `tmpdir`.
    """

    host = HOST
    executable = "unbound"
    error = UnboundError
    stop_deadline = STOP_DEADLINE

    def __init__(self, tmpdir: Path | str, stub_zones: Mapping[str, int], trust_anchors: Iterable[str] = ()) -> None:
        if not stub_zones:
            raise ValueError("UnboundResolver needs at least one stub zone")
        self.root = Path(tmpdir).resolve()
        self.stub_zones = {_absolute(origin): port for origin, port in stub_zones.items()}
        self.trust_anchors = tuple(trust_anchors)
        self.port = free_tcp_udp_port()
        self.config_file = self.root / "unbound.conf"
        self.log_file = self.root / "unbound.log"
        self.output_file = self.root / "unbound.out"  # unbound's own stdout/stderr

    @property
    def pid_file(self) -> Path:
        """Unbound's PID, written by Unbound itself."""
        return self.root / "unbound.pid"

    def _config(self) -> str:
        lines = [
            "server:",
            f"    interface: {HOST}",
            f"    port: {self.port}",
            "    do-ip4: yes",
            "    do-ip6: no",
            "    do-udp: yes",
            "    do-tcp: yes",
            "    so-reuseport: no",  # a port someone else holds is a bind error, not a shared socket
            f"    outgoing-interface: {HOST}",
            "    num-threads: 1",
            "    do-daemonize: no",
            '    username: ""',  # stay root: no chown of our temp files needed
            '    chroot: ""',
            f'    directory: "{self.root}"',
            f'    pidfile: "{self.pid_file}"',
            f'    logfile: "{self.log_file}"',
            "    use-syslog: no",
            "    log-time-ascii: yes",
            "    verbosity: 1",
            "    val-log-level: 2",  # why an answer is bogus, in the log
            "    log-servfail: yes",
            "    ede: yes",  # RFC 8914 extended errors (DNSSEC Bogus, Signature Expired) on SERVFAIL
            f"    access-control: {HOST}/32 allow",
            "    do-not-query-localhost: no",  # the stub zones' servers are on 127.0.0.1
            '    module-config: "validator iterator"',
            "    trust-anchor-signaling: no",  # no RFC 8145 _ta-XXXX queries to the stub servers
            # no root anchor, no root hints used: everything outside the stub zones is refused
            '    local-zone: "." refuse',
        ]
        # .test is one of Unbound's default local zones (static, NXDOMAIN): open each stub zone
        lines += [f'    local-zone: "{origin}" transparent' for origin in self.stub_zones]
        lines += [f'    trust-anchor: "{anchor}"' for anchor in self.trust_anchors]
        lines += ["remote-control:", "    control-enable: no"]
        for origin, port in self.stub_zones.items():
            lines += ["stub-zone:", f'    name: "{origin}"', f"    stub-addr: {HOST}@{port}"]
        return "\n".join(lines) + "\n"

    def configure(self) -> None:
        """Write the config and check it with unbound-checkconf."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(self._config())
        check = subprocess.run([UNBOUND_CHECKCONF, str(self.config_file)], capture_output=True, text=True, check=False)
        if check.returncode != 0:
            raise UnboundError(f"unbound config {self.config_file} is invalid:\n{check.stdout}{check.stderr}")

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of Unbound's log and output, labelled, for error messages."""
        return log_tails((self.log_file, self.output_file), lines, "(no Unbound log)")

    def _prepare(self) -> None:
        self.configure()
        self.pid_file.unlink(missing_ok=True)

    def _launch(self) -> subprocess.Popen[bytes]:
        with self.output_file.open("ab") as out:
            return subprocess.Popen(
                [UNBOUND, "-d", "-c", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def _wait_ready(self) -> None:
        """Wait until Unbound resolves every stub zone's SOA (checking disabled)."""
        # CD (checking disabled): a bogus zone is ready too; the answer proves the stub is reachable.
        # Unbound caches it as unchecked and validates before a later query without CD may use it.
        assert self._process is not None
        wait_for_soa(
            self._process,
            self.port,
            self.stub_zones,
            what="Unbound",
            log_tail=self.log_tail,
            error=UnboundError,
            checking_disabled=True,
        )

    def _after_stop(self, stopped: bool) -> None:
        self.pid_file.unlink(missing_ok=True)


def _absolute(origin: str) -> str:
    return origin if origin.endswith(".") else origin + "."
