"""A net-snmp snmptrapd on a free loopback UDP port that logs every notification, one line each."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from tests.peers.lifecycle import DaemonPeer
from tests.support.ports import HOST, free_udp_port

SNMPTRAPD = "/usr/sbin/snmptrapd"
START_DEADLINE = 10.0
STOP_DEADLINE = 10.0
READY_LINE = "NET-SNMP version"

# One line per notification: "%P" is "TRAP2, SNMP v2c, community public" or
# "INFORM, SNMP v3, user NAME, context ", then the source, then the varbinds
# (numeric OIDs because of -On) separated by tabs.
_FORMAT2 = r"%P [%b]: %v\n"
_FORMAT1 = r"%P [%b]: enterprise %N generic %w specific %q: %v\n"


class V3User(NamedTuple):
    """A USM user; a plain 5-tuple (user, authproto, authpass, privproto, privpass) converts to this.

    authproto: MD5/SHA/SHA-224/SHA-256/SHA-384/SHA-512; privproto: DES/AES (or None for authNoPriv).
    engine_id ("0x80...") is the *sender's* engine ID, needed for v3 traps; informs use
    snmptrapd's own engine ID, which senders discover, so they need none.
    """

    user: str
    auth_proto: str
    auth_pass: str
    priv_proto: str | None = None
    priv_pass: str | None = None
    engine_id: str | None = None


class TrapReceiverError(RuntimeError):
    """snmptrapd could not be started or stopped; the message carries its log."""


class TrapReceiver(DaemonPeer):
    """`snmptrapd -f -C -c CONF -Lf LOG -On udp:127.0.0.1:PORT` with everything under `tmpdir`.

    By default (`accept_all=True`) the config says `disableAuthorization yes`, so every
    community and every user that authenticates is logged; `%P` in each line names the
    community or user, for tests to assert on.  With accept_all=False only `community`
    and the given v3 users are logged.
    """

    host = HOST
    executable = "snmptrapd"
    error = TrapReceiverError
    stop_deadline = STOP_DEADLINE

    def __init__(
        self,
        tmpdir: Path | str,
        community: str = "public",
        v3_users: Iterable[V3User | tuple[str, str, str, str | None, str | None]] = (),
        accept_all: bool = True,
    ) -> None:
        self.root = Path(tmpdir).resolve()
        self.community = community
        self.v3_users = [u if isinstance(u, V3User) else V3User(*u) for u in v3_users]
        self.accept_all = accept_all
        self.port = free_udp_port()
        self.config_file = self.root / "snmptrapd.conf"
        self.log_file = self.root / "snmptrapd.log"
        self.output_file = self.root / "snmptrapd.out"
        self.persistent_dir = self.root / "persist"

    @property
    def pid_file(self) -> Path:
        """snmptrapd's PID (-p)."""
        return self.root / "snmptrapd.pid"

    @property
    def address(self) -> str:
        """net-snmp style target, e.g. for `snmptrap ... udp:127.0.0.1:PORT`."""
        return f"udp:{HOST}:{self.port}"

    def _config(self) -> str:
        lines = [f"format1 {_FORMAT1}", f"format2 {_FORMAT2}"]
        if self.accept_all:
            lines.append("disableAuthorization yes")
        lines.append(f"authCommunity log {self.community}")
        for u in self.v3_users:
            secret = f"{u.auth_proto} {u.auth_pass}"
            if u.priv_proto is not None:
                secret += f" {u.priv_proto} {u.priv_pass}"
            lines.append(f"createUser {u.user} {secret}")  # for informs (our engine ID)
            if u.engine_id is not None:
                lines.append(f"createUser -e {u.engine_id} {u.user} {secret}")  # for traps
            lines.append(f"authUser log {u.user} {'priv' if u.priv_proto else 'auth'}")
        return "\n".join(lines) + "\n"

    def _prepare(self) -> None:
        self.persistent_dir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(self._config())
        self.log_file.unlink(missing_ok=True)  # a fresh log per start: lines() shows this run only

    def _launch(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ, SNMP_PERSISTENT_DIR=str(self.persistent_dir))  # must be absolute
        argv = [
            SNMPTRAPD,
            "-f",  # foreground: we own the process
            "-C",  # read no config but ours
            "-c", str(self.config_file),
            "-Lf", str(self.log_file),
            "-On",  # numeric OIDs
            "-n",  # no reverse DNS for senders
            "-m", "",  # load no MIBs: Debian ships no IETF MIB text, so the default list only makes noise
            "-p", str(self.pid_file),
            f"udp:{HOST}:{self.port}",  # listen address only here, not in the config (double bind)
        ]  # fmt: skip
        with self.output_file.open("ab") as out:
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)

    def _wait_ready(self) -> None:
        """Wait until snmptrapd has logged its start line and bound its port."""
        end = time.monotonic() + START_DEADLINE
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                raise TrapReceiverError(f"snmptrapd exited with {self._process.returncode}\n{self._log_dump()}")
            if any(READY_LINE in line for line in self.lines()) and _udp_port_bound(self.port):
                return
            if time.monotonic() >= end:
                raise TrapReceiverError(
                    f"snmptrapd did not come up on {self.address} within {START_DEADLINE:.0f} s\n{self._log_dump()}"
                )
            time.sleep(0.05)

    def lines(self) -> list[str]:
        """Every line snmptrapd has logged so far (startup line included)."""
        try:
            return self.log_file.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def notifications(self) -> list[str]:
        """Only the logged notifications (TRAP, TRAP2, INFORM lines)."""
        return [line for line in self.lines() if re.match(r"(TRAP|TRAP2|INFORM), ", line)]

    def wait_for(self, pattern: str | re.Pattern[str], timeout: float = 5.0) -> str:
        """The first log line matching regex `pattern`, polling until `timeout`; TimeoutError if none."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        end = time.monotonic() + timeout
        while True:
            for line in self.lines():
                if regex.search(line):
                    return line
            if time.monotonic() >= end:
                raise TimeoutError(
                    f"no snmptrapd log line matched {regex.pattern!r} within {timeout:.1f} s\n{self._log_dump()}"
                )
            time.sleep(0.05)

    def _log_dump(self, lines: int = 30) -> str:
        parts = [f"{self.log_file}:\n" + "\n".join(self.lines()[-lines:])]
        with contextlib.suppress(OSError):
            parts.append(f"{self.output_file}:\n" + self.output_file.read_text(errors="replace")[-4000:])
        return "\n".join(parts)


def _udp_port_bound(port: int) -> bool:
    # read /proc rather than trying to bind: a probe bind could steal the port from snmptrapd
    wanted = f"0100007F:{port:04X}"  # 127.0.0.1 in /proc's little-endian hex
    try:
        table = Path("/proc/net/udp").read_text().splitlines()[1:]
    except OSError:
        return True  # no /proc: rely on the startup log line alone
    return any(line.split()[1] == wanted for line in table if len(line.split()) > 1)
