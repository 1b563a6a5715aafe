"""Private milters on free loopback ports: OpenDKIM (a signer and a verifier) and OpenDMARC.

OpenDKIM resolves keys through libunbound and never reads /etc/resolv.conf: it is given an
Unbound configuration that forwards the test zones to the test NSD.  OpenDMARC uses the libc
resolver: it runs in a mount namespace where the chain's resolv.conf is bind-mounted over
/etc/resolv.conf, like the chain's Postfix.  Both log only to syslog (there is none here), so
their verdicts show only in the Authentication-Results headers they add; their stdio goes to
a file.  Both refuse a config file under a world-writable directory such as /tmp.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from tests.peers.lifecycle import DaemonPeer, log_tails
from tests.support.ports import HOST, free_tcp_port, tcp_port_open, wait_for_tcp_port_closed

OPENDKIM = "/usr/sbin/opendkim"
OPENDKIM_GENKEY = "/usr/sbin/opendkim-genkey"
OPENDMARC = "/usr/sbin/opendmarc"
START_DEADLINE = 10.0
STOP_DEADLINE = 10.0
# OpenDKIM takes about 4 s to exit after SIGTERM; neither milter keeps state worth a clean exit
# (keys and config are files of ours), so SIGKILL follows after this grace: 4 s less per session.
TERM_GRACE = 1.0


class OpenDkimError(RuntimeError):
    """A milter could not be configured, started or stopped; the message carries its output."""


@dataclass(frozen=True, slots=True)
class DkimKey:
    """A signing key made by opendkim-genkey and the TXT record that publishes it."""

    domain: str  # "src.test"
    selector: str  # "chain"
    private_key_file: Path
    txt_strings: tuple[str, ...]  # the record's character-strings, in order (a 2048-bit key needs two)

    @property
    def record_name(self) -> str:
        """Where the public key lives: `selector._domainkey.domain.` (absolute)."""
        return f"{self.selector}._domainkey.{self.domain}."

    def zone_line(self) -> str:
        """The TXT record as one zone-file line."""
        return f"{self.record_name} IN TXT {' '.join(f'{chr(34)}{s}{chr(34)}' for s in self.txt_strings)}"


def make_dkim_key(directory: Path, domain: str, selector: str, bits: int = 2048) -> DkimKey:
    """Run opendkim-genkey into `directory` and read back the key file and the TXT record."""
    directory.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [OPENDKIM_GENKEY, "-b", str(bits), "-d", domain, "-s", selector, "-D", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    private = directory / f"{selector}.private"
    record = directory / f"{selector}.txt"
    if proc.returncode != 0 or not private.exists() or not record.exists():
        raise OpenDkimError(f"opendkim-genkey exited {proc.returncode}: {proc.stdout}{proc.stderr}")
    # chain._domainkey IN TXT ( "v=DKIM1; h=sha256; k=rsa; " "p=MIIB..." "..." )  ; comment
    body = record.read_text().partition(";  -----")[0]
    strings = tuple(re.findall(r'"([^"]*)"', body))
    if not strings or not "".join(strings).startswith("v=DKIM1"):
        raise OpenDkimError(f"unexpected opendkim-genkey record: {body!r}")
    private.chmod(0o600)
    return DkimKey(domain=domain, selector=selector, private_key_file=private, txt_strings=strings)


class _Milter(DaemonPeer):
    """A milter daemon in the foreground under `root`, listening on 127.0.0.1:`port`."""

    host = HOST
    name: ClassVar[str] = "milter"
    error = OpenDkimError
    stop_deadline = TERM_GRACE

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_tcp_port()
        self.config_file = root / f"{self.name}.conf"
        self.pid_file_path = root / f"{self.name}.pid"
        self.output_file = root / f"{self.name}.out"

    @property
    def socket_spec(self) -> str:
        """How Postfix names this milter (`smtpd_milters`)."""
        return f"inet:{HOST}:{self.port}"

    def configure(self) -> None:
        raise NotImplementedError

    def _command(self) -> list[str]:
        raise NotImplementedError

    def log_tail(self, lines: int = 30) -> str:
        return log_tails((self.output_file,), lines, f"(no {self.name} output)")

    def _prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.configure()

    def _launch(self) -> subprocess.Popen[bytes]:
        with self.output_file.open("ab") as out:
            return subprocess.Popen(self._command(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)

    def _wait_ready(self) -> None:
        """Wait until the milter port accepts."""
        assert self._process is not None
        end = time.monotonic() + START_DEADLINE
        while not tcp_port_open(self.port):
            if self._process.poll() is not None or time.monotonic() >= end:
                raise OpenDkimError(f"{self.name} did not open port {self.port}\n{self.log_tail()}")
            time.sleep(0.02)

    def begin_stop(self) -> None:
        """Send SIGTERM without waiting (stop several at once); stop() then waits and kills."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()

    def _after_stop(self, stopped: bool) -> None:
        if stopped:
            wait_for_tcp_port_closed(self.port, deadline=STOP_DEADLINE)


class OpenDkimMilter(_Milter):
    """`opendkim -f -x CONF` under `root`, a milter on 127.0.0.1:`port`.

    mode "s": signs mail from `key.domain` submitted by any loopback client (InternalHosts);
    `key` may be set after construction, before start().
    mode "v": verifies every message (no internal hosts) and always adds Authentication-Results
    with `authserv_id`, "dkim=none" for unsigned mail.  DNS: the zones in `dns_zones` are
    forwarded to 127.0.0.1:`dns_port`.
    """

    name = "opendkim"
    executable = "opendkim"

    def __init__(
        self,
        root: Path,
        mode: Literal["s", "v"],
        *,
        authserv_id: str,
        dns_port: int,
        dns_zones: tuple[str, ...],
        key: DkimKey | None = None,
    ) -> None:
        super().__init__(root)
        self.mode = mode
        self.authserv_id = authserv_id
        self.dns_port = dns_port
        self.dns_zones = dns_zones
        self.key = key
        self.resolver_file = root / "unbound.conf"

    def _command(self) -> list[str]:
        return [OPENDKIM, "-f", "-x", str(self.config_file)]

    def _resolver_config(self) -> str:
        lines = [
            "server:",
            "    do-not-query-localhost: no",  # the test NSD is on loopback
            # libunbound answers NXDOMAIN for .test by itself unless told otherwise
            '    local-zone: "test." nodefault',
        ]
        for zone in self.dns_zones:
            lines += ["forward-zone:", f'    name: "{zone}"', f"    forward-addr: {HOST}@{self.dns_port}"]
        return "\n".join(lines) + "\n"

    def _config(self) -> str:
        lines = [
            f"Mode {self.mode}",
            f"Socket inet:{self.port}@{HOST}",
            f"PidFile {self.pid_file_path}",
            "Syslog no",
            f"AuthservID {self.authserv_id}",
            "Canonicalization relaxed/simple",
            f"ResolverConfiguration {self.resolver_file}",
            "SoftwareHeader no",
        ]
        if self.mode == "s":
            if self.key is None:
                raise OpenDkimError("a signing OpenDKIM needs a key: set `key` before start()")
            lines += [
                f"Domain {self.key.domain}",
                f"Selector {self.key.selector}",
                f"KeyFile {self.key.private_key_file}",
                "InternalHosts 127.0.0.0/8",  # every loopback client submits: sign its mail
            ]
        else:
            lines += [
                "InternalHosts 192.0.2.1",  # none of ours (TEST-NET-1): verify mail from loopback too
                "AlwaysAddARHeader yes",  # dkim=none for unsigned mail, instead of no header
            ]
        return "\n".join(lines) + "\n"

    def configure(self) -> None:
        self.resolver_file.write_text(self._resolver_config())
        self.config_file.write_text(self._config())


class OpenDmarcMilter(_Milter):
    """`opendmarc -f -c CONF` under `root` in a mount namespace whose /etc/resolv.conf is
    `resolv_conf`: adds Authentication-Results "dmarc=..." with `authserv_id`, from the SPF and
    DKIM results that policyd-spf and the verifying OpenDKIM wrote before it under the same
    authserv-id (aligned SPF pass or aligned DKIM pass gives dmarc=pass).  Never rejects."""

    name = "opendmarc"
    executable = "opendmarc"  # after unshare and sh exec it

    def __init__(self, root: Path, *, authserv_id: str, resolv_conf: Path) -> None:
        super().__init__(root)
        self.authserv_id = authserv_id
        self.resolv_conf = resolv_conf
        self.ignore_file = root / "ignore-hosts"

    def _command(self) -> list[str]:
        script = 'mount -n --bind "$1" /etc/resolv.conf && exec "$2" -f -c "$3"'
        return ["unshare", "-m", "sh", "-c", script, "sh", str(self.resolv_conf), OPENDMARC, str(self.config_file)]

    def configure(self) -> None:
        self.ignore_file.write_text("192.0.2.1\n")  # none of ours: mail from loopback is evaluated
        self.config_file.write_text(
            f"Socket inet:{self.port}@{HOST}\n"
            f"PidFile {self.pid_file_path}\n"
            "Syslog false\n"
            f"AuthservID {self.authserv_id}\n"
            f"TrustedAuthservIDs {self.authserv_id}\n"
            f"IgnoreHosts {self.ignore_file}\n"
            # its own SPF check passes anything from 127.0.0.1 and adds a second, false "spf=pass":
            # it takes policyd-spf's result from that header instead
            "SPFSelfValidate false\n"
            "RejectFailures false\n"
            "RequiredHeaders false\n"
            "FailureReports false\n"
            "SoftwareHeader false\n"
        )
