"""A private Postfix instance on three free loopback ports: plain+STARTTLS, implicit TLS, submission."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import weakref
from pathlib import Path

from tests.peers.lifecycle import DaemonPeer
from tests.support.certs import SERVER_NAME, make_self_signed_cert
from tests.support.ports import HOST, free_tcp_ports, wait_for_tcp_port_closed
from tests.support.procs import kill_quietly, pid_runs, read_pid_file, terminate_tree

POSTFIX = "/usr/sbin/postfix"
START_DEADLINE = 20.0
STOP_DEADLINE = 15.0

# Every service runs unchrooted (5th column "n"): a chroot would need copies of
# /etc files inside our private queue directory.  No "smtp inet" line: nothing on port 25.
_MASTER_CF_SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixError(RuntimeError):
    """Postfix could not be configured, started or stopped; the message carries its log tail."""


def read_smtp_greeting(
    port: int,
    host: str = HOST,
    timeout: float = 2.0,
    tls_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> str:
    """The first reply line on host:port, over implicit TLS when `tls_context` is given."""
    with socket.create_connection((host, port), timeout=timeout) as raw:
        sock: socket.socket = raw
        if tls_context is not None:
            sock = tls_context.wrap_socket(raw, server_hostname=server_hostname)  # takes over raw's descriptor
        with sock:
            data = b""
            while b"\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
            with contextlib.suppress(OSError):
                sock.sendall(b"QUIT\r\n")  # polite close: keeps "lost connection" noise out of the log
    return data.split(b"\n", 1)[0].decode("ascii", "replace").rstrip("\r")


def _unverified_context() -> ssl.SSLContext:
    # Readiness check only: verification is what the tests themselves pin.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _postfix_can_traverse(path: Path) -> bool:
    """Whether the postfix user can search every directory from / down to `path`."""
    pw = pwd.getpwnam("postfix")
    for directory in (path, *path.parents):
        info = directory.stat()
        if info.st_uid == pw.pw_uid:
            allowed = info.st_mode & 0o100
        elif info.st_gid == pw.pw_gid:
            allowed = info.st_mode & 0o010
        else:
            allowed = info.st_mode & 0o001
        if not allowed:
            return False
    return True


def _runtime_dir(root: Path) -> tuple[Path, bool]:
    """Where queue and data directories go, and whether that is outside `root`.

    Postfix daemons open files there as the postfix user after dropping root, so
    the postfix user must traverse the whole path; pytest's base temp dir is 0700.
    Then a private 0711 directory in a world-searchable temp dir is used instead
    (config, TLS files and maillog stay under `root`: Postfix reads them as root).
    """
    if _postfix_can_traverse(root):
        return root / "runtime", False
    for candidate in (Path(tempfile.gettempdir()), Path("/tmp"), Path("/var/tmp")):
        if candidate.is_dir() and _postfix_can_traverse(candidate):
            path = Path(tempfile.mkdtemp(prefix="peers-postfix-", dir=candidate))
            os.chmod(path, 0o711)  # noqa: S103 -- search only, for the postfix user; nobody can list it
            return path, True
    raise PostfixError(f"no directory the postfix user can traverse for the queue of {root}")


def _stop_and_remove(pid_file: Path, runtime_dir: Path | None) -> None:
    # Finalizer: never leave a master running or a queue behind, even if close() was skipped.
    pid = read_pid_file(pid_file)
    if pid is not None and pid_runs(pid, "master"):
        terminate_tree(pid, deadline=STOP_DEADLINE)
    if runtime_dir is not None:
        shutil.rmtree(runtime_dir, ignore_errors=True)


class PostfixServer(DaemonPeer):
    """A private Postfix (`postfix -c DIR`) under `tmpdir`, listening only on 127.0.0.1.

    Ports, chosen free at construction and kept across pause()/resume():
    `plain_port` (STARTTLS offered), `implicit_port` (TLS from the first byte),
    `submission_port` (STARTTLS required before MAIL).  `ca_file` verifies the
    certificate for `servername` (mail.test) and 127.0.0.1.  Nothing is relayed:
    *.test mail is discarded, anything else bounces through the error transport.
    """

    host = HOST
    servername = SERVER_NAME
    executable = "master"  # `postfix start` daemonises; master's PID is in pid_file
    error = PostfixError
    stop_deadline = STOP_DEADLINE

    def __init__(self, tmpdir: Path | str) -> None:
        self.root = Path(tmpdir).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_dir = self.root / "conf"
        self.runtime_dir, external = _runtime_dir(self.root)
        self.queue_dir = self.runtime_dir / "queue"
        self.data_dir = self.runtime_dir / "data"
        self.log_file = self.root / "maillog"
        self.plain_port, self.implicit_port, self.submission_port = free_tcp_ports(3)
        self.cert_file = self.root / "tls" / "cert.pem"
        self.key_file = self.root / "tls" / "key.pem"
        self.ca_file = self.cert_file  # self-signed: the certificate is its own CA
        self._configured = False
        self._started_once = False
        if external:
            link = self.root / "runtime"
            if link.is_symlink():
                link.unlink()  # left by an earlier instance in the same directory
            link.symlink_to(self.runtime_dir)  # findable from the test dir
        self._finalizer = weakref.finalize(
            self, _stop_and_remove, self.pid_file, self.runtime_dir if external else None
        )

    @property
    def ports(self) -> tuple[int, int, int]:
        """(plain_port, implicit_port, submission_port)."""
        return (self.plain_port, self.implicit_port, self.submission_port)

    @property
    def pid_file(self) -> Path:
        """Postfix master's PID file inside the private queue directory."""
        return self.queue_dir / "pid" / "master.pid"

    # -- configuration -------------------------------------------------------------

    def _main_cf(self) -> str:
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": SERVER_NAME,
            "mydomain": "test",
            "myorigin": "$myhostname",
            "smtpd_banner": "$myhostname ESMTP Postfix (peers test instance)",
            # loopback only, IPv4 only: the listeners below name 127.0.0.1 anyway
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            # nothing leaves the machine and nothing is delivered locally
            "relayhost": "",
            "mydestination": "",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "default_transport": "error",
            "relay_transport": "error",
            "transport_maps": "inline:{ test=discard:, .test=discard: }",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            # no reverse DNS for clients: there is no internet and 127.0.0.1 needs no name
            "smtpd_peername_lookup": "no",
            "biff": "no",
            "readme_directory": "no",
            "smtpd_tls_cert_file": str(self.cert_file),
            "smtpd_tls_key_file": str(self.key_file),
            "smtpd_tls_security_level": "may",
            # load tests open many connections from one address
            "smtpd_client_connection_count_limit": "0",
            "smtpd_client_connection_rate_limit": "0",
            "default_process_limit": "200",
            # no syslog here: log to a file through the postlog service
            "maillog_file": str(self.log_file),
            "maillog_file_prefixes": str(self.root),
        }
        return "".join(f"{key} = {value}\n" for key, value in settings.items())

    def _master_cf(self) -> str:
        listeners = (
            f"{HOST}:{self.plain_port} inet n - n - - smtpd\n"
            "  -o syslog_name=postfix/plain\n"
            f"{HOST}:{self.implicit_port} inet n - n - - smtpd\n"
            "  -o syslog_name=postfix/implicit\n"
            "  -o smtpd_tls_wrappermode=yes\n"
            f"{HOST}:{self.submission_port} inet n - n - - smtpd\n"
            "  -o syslog_name=postfix/submission\n"
            "  -o smtpd_tls_security_level=encrypt\n"
        )
        return listeners + _MASTER_CF_SERVICES

    def configure(self) -> None:
        """Write the certificate, main.cf and master.cf and let Postfix create its directories."""
        # Postfix chdirs into queue_directory before anything else: it must exist (root-owned);
        # `postfix check` then creates the subdirectories with Postfix's own owners and modes
        for directory in (self.config_dir, self.queue_dir):
            directory.mkdir(parents=True, exist_ok=True)
        make_self_signed_cert(self.cert_file.parent)
        (self.config_dir / "main.cf").write_text(self._main_cf())
        (self.config_dir / "master.cf").write_text(self._master_cf())
        self._configured = True  # `postfix start` itself creates the queue subdirectories

    # -- lifecycle -------------------------------------------------------------------

    def _postfix(self, *args: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [POSTFIX, "-c", str(self.config_dir), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if proc.returncode != 0:
            raise PostfixError(
                f"postfix {' '.join(args)} exited {proc.returncode}\n"
                f"stdout: {proc.stdout}\nstderr: {proc.stderr}\n{self.log_tail()}"
            )
        return proc

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of this instance's maillog, labelled, for error messages."""
        try:
            text = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return f"(no maillog at {self.log_file})"
        return f"maillog tail ({self.log_file}):\n" + "\n".join(text[-lines:])

    def _prepare(self) -> None:
        if not self._finalizer.alive:
            raise PostfixError("this PostfixServer was closed; make a new one")
        if not self._configured:
            self.configure()
        if self._started_once:
            # skip postfix-script's integrity checks (~1-2 s) when nothing changed since the last start
            (self.queue_dir / "quick-start").touch()

    def _launch(self) -> None:
        self._postfix("start")
        self._started_once = True

    def _wait_ready(self) -> None:
        """Wait until every listener greets with 220."""
        self._wait_greetings()

    def _wait_greetings(self) -> None:
        end = time.monotonic() + START_DEADLINE
        tls = _unverified_context()
        pending = {
            self.plain_port: None,
            self.implicit_port: tls,
            self.submission_port: None,
        }
        last_error = ""
        while pending:
            for port, context in list(pending.items()):
                try:
                    greeting = read_smtp_greeting(port, tls_context=context)
                except (OSError, ssl.SSLError) as exc:
                    last_error = f"port {port}: {exc!r}"
                    continue
                if greeting.startswith("220"):
                    del pending[port]
                else:
                    last_error = f"port {port}: greeting {greeting!r}"
            if not pending:
                return
            if time.monotonic() >= end:
                raise PostfixError(
                    f"Postfix ports {sorted(pending)} did not greet with 220 within "
                    f"{START_DEADLINE:.0f} s (last: {last_error})\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def _request_stop(self, pid: int) -> None:
        try:
            self._postfix("stop")
        except PostfixError:
            kill_quietly(pid, signal.SIGTERM)  # master ends its children on SIGTERM too

    def _after_stop(self, stopped: bool) -> None:
        """Once Postfix ran: wait until its ports refuse connections."""
        if stopped:
            for port in self.ports:
                wait_for_tcp_port_closed(port, deadline=STOP_DEADLINE)

    def pause(self) -> None:
        """Stop Postfix but keep its ports and configuration, so resume() brings it back as it was."""
        self.stop()

    def resume(self) -> None:
        """Start Postfix again on the same ports after pause()."""
        self.start()

    def close(self) -> None:
        """Stop and remove the queue and data directories if they live outside `tmpdir`.

        Config, certificate and maillog stay in `tmpdir` for post-mortems.
        """
        self.stop()
        self._finalizer()
