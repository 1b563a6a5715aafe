"""A private Dovecot: IMAP and POP3 (STARTTLS/STLS and implicit TLS), LMTP on TCP, Sieve, Maildir.

The mailbox end of the delivery chain (tests/peers/mail_chain.py).  Everything runs as a
private instance on free loopback ports: `dovecot -F -c CONF` with its own base_dir, users
from a passwd-file, mail in Maildirs under a directory of the test's, owned by `nobody`.
"""

from __future__ import annotations

import email.parser
import email.policy
import os
import pwd
import shutil
import smtplib
import subprocess
import time
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

from tests.peers.lifecycle import DaemonPeer, log_tails
from tests.support.ports import HOST, free_tcp_ports, tcp_port_open, wait_for_tcp_port_closed

DOVECOT = "/usr/sbin/dovecot"
START_DEADLINE = 15.0
STOP_DEADLINE = 10.0
# The mail files' owner: Dovecot refuses root, and `nobody` exists on every Debian system.
MAIL_USER = "nobody"
# Debian's DH parameters; without them Dovecot 2.3 offers no DHE suites (ECDHE still works).
DH_FILE = Path("/usr/share/dovecot/dh.pem")
JUNK_FOLDER = "Junk"


class DovecotError(RuntimeError):
    """Dovecot could not be configured, started or stopped; the message carries its log tail."""


@dataclass(frozen=True, slots=True)
class MailAccount:
    """A mailbox login: the full address is the user name (IMAP, POP3, LMTP recipient)."""

    address: str
    password: str


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One message as it lies in a Maildir folder, read from the file system (no IMAP session)."""

    folder: str  # "INBOX" or "Junk"
    file_name: str  # Maildir base name (unique per message, stable while the message is untouched)
    flags: str  # Maildir info flags after ":2," ("S" seen, "T" deleted, ...); "" while in new/
    message_id: str
    subject: str
    raw: bytes

    def header(self, name: str) -> list[str]:
        """Every value of header `name`, in order (e.g. "Received", "Authentication-Results")."""
        parsed = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(self.raw)
        return [str(value) for value in parsed.get_all(name, [])]


@dataclass(frozen=True, slots=True)
class DovecotPorts:
    """Dovecot's listeners on 127.0.0.1."""

    imap: int  # 143-style: STARTTLS
    imaps: int  # 993-style: TLS from the first byte
    pop3: int  # 110-style: STLS
    pop3s: int  # 995-style: TLS from the first byte
    lmtp: int  # LMTP over TCP, where the MX Postfix delivers

    def all(self) -> tuple[int, ...]:
        return (self.imap, self.imaps, self.pop3, self.pop3s, self.lmtp)


class DovecotServer(DaemonPeer):
    """Dovecot under `root` (config, logs) and `runtime_dir` (base_dir, users, Maildirs, Sieve).

    `runtime_dir` must be traversable by Dovecot's unprivileged users (dovecot, dovenull,
    nobody); pytest's temp dirs are 0700, so the chain gives a 0711 directory elsewhere.
    Users: `accounts`, passwords in PLAIN scheme.  Each has INBOX and an auto-created
    `Junk` folder marked SPECIAL-USE \\Junk.  A Sieve script run before delivery files any
    message whose header `junk_header` has the value `junk_value` into Junk, and silently
    discards one whose header `discard_header` is "yes" (mail that is accepted by every hop
    and never arrives).
    """

    host = HOST
    executable = "dovecot"
    error = DovecotError
    stop_deadline = STOP_DEADLINE

    def __init__(
        self,
        root: Path,
        runtime_dir: Path,
        *,
        cert_file: Path,
        key_file: Path,
        accounts: tuple[MailAccount, ...],
        hostname: str = "mail.test",
        junk_header: str = "X-Test-Junk",
        junk_value: str = "yes",
        discard_header: str = "X-Test-Discard",
    ) -> None:
        self.root = root
        self.runtime_dir = runtime_dir
        self.cert_file = cert_file
        self.key_file = key_file
        self.accounts = accounts
        self.hostname = hostname
        self.junk_header = junk_header
        self.junk_value = junk_value
        self.discard_header = discard_header
        self.ports = DovecotPorts(*free_tcp_ports(5))
        self.config_file = root / "dovecot.conf"
        self.log_file = root / "dovecot.log"
        self.output_file = root / "dovecot.out"  # the master's stdio: a file, never a pipe
        self.base_dir = runtime_dir / "run"
        self.mail_root = runtime_dir / "mail"
        self.users_file = runtime_dir / "users"
        self.sieve_dir = runtime_dir / "sieve"

    # -- configuration -------------------------------------------------------------

    def _config(self) -> str:
        mail = pwd.getpwnam(MAIL_USER)
        ports = self.ports
        dh = f"ssl_dh = <{DH_FILE}\n" if DH_FILE.exists() else ""
        return f"""\
# private test instance: nothing here is read from /etc/dovecot
instance_name = dovecot-chain-{ports.lmtp}
base_dir = {self.base_dir}
hostname = {self.hostname}
state_dir = {self.runtime_dir / "state"}
protocols = imap pop3 lmtp
listen = {HOST}
log_path = {self.log_file}
info_log_path = {self.log_file}
shutdown_clients = yes
ssl = required
ssl_cert = <{self.cert_file}
ssl_key = <{self.key_file}
{dh}auth_mechanisms = plain login
disable_plaintext_auth = yes
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%Lu {self.users_file}
}}
userdb {{
  driver = static
  args = uid={mail.pw_uid} gid={mail.pw_gid} home={self.mail_root}/%Lu
}}
first_valid_uid = 1
mail_location = maildir:~/Maildir
namespace inbox {{
  inbox = yes
  separator = /
  mailbox {JUNK_FOLDER} {{
    special_use = \\Junk
    auto = create
  }}
}}
protocol lmtp {{
  mail_plugins = $mail_plugins sieve
  postmaster_address = postmaster@{self.hostname}
}}
lmtp_save_to_detail_mailbox = no
plugin {{
  sieve_before = {self.sieve_dir / "junk.sieve"}
  sieve = file:~/sieve;active=~/.dovecot.sieve
}}
service imap-login {{
  inet_listener imap {{
    address = {HOST}
    port = {ports.imap}
  }}
  inet_listener imaps {{
    address = {HOST}
    port = {ports.imaps}
    ssl = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = {HOST}
    port = {ports.pop3}
  }}
  inet_listener pop3s {{
    address = {HOST}
    port = {ports.pop3s}
    ssl = yes
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = {HOST}
    port = {ports.lmtp}
  }}
}}
# POP3 sees every message of INBOX, with UIDLs stable across sessions
pop3_uidl_format = %08Xu%08Xv
"""

    def _sieve_script(self) -> str:
        return (
            'require ["fileinto"];\n'
            f'if header :is "{self.discard_header}" "yes" {{\n'
            "  discard;\n"
            "  stop;\n"
            "}\n"
            f'if header :is "{self.junk_header}" "{self.junk_value}" {{\n'
            f'  fileinto "{JUNK_FOLDER}";\n'
            "  stop;\n"
            "}\n"
        )

    def configure(self) -> None:
        """Write config, users, Sieve script; make each user's home owned by the mail user."""
        mail = pwd.getpwnam(MAIL_USER)
        self.root.mkdir(parents=True, exist_ok=True)
        for directory in (self.base_dir, self.mail_root, self.sieve_dir, self.runtime_dir / "state"):
            directory.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(self._config())
        # read by the auth process as the dovecot user: its group only
        self.users_file.write_text("".join(f"{a.address.lower()}:{{PLAIN}}{a.password}\n" for a in self.accounts))
        os.chown(self.users_file, 0, pwd.getpwnam("dovecot").pw_gid)
        os.chmod(self.users_file, 0o640)
        # the Sieve binary is compiled at first delivery next to the script, as the mail user
        (self.sieve_dir / "junk.sieve").write_text(self._sieve_script())
        for path in (self.sieve_dir, self.sieve_dir / "junk.sieve", self.mail_root):
            os.chown(path, mail.pw_uid, mail.pw_gid)
        for account in self.accounts:
            home = self.mail_root / account.address.lower()
            home.mkdir(exist_ok=True)
            os.chown(home, mail.pw_uid, mail.pw_gid)
            os.chmod(home, 0o700)

    # -- lifecycle -------------------------------------------------------------------

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of Dovecot's log and output, labelled, for error messages."""
        return log_tails((self.log_file, self.output_file), lines, "(no Dovecot log)")

    def _prepare(self) -> None:
        if not self.config_file.exists():
            self.configure()  # once: a restart keeps the mail

    def _launch(self) -> subprocess.Popen[bytes]:
        """The master in the foreground (`-F`); its stdio goes to a file (it keeps a pipe open for ever)."""
        with self.output_file.open("ab") as out:
            return subprocess.Popen(
                [DOVECOT, "-F", "-c", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def _wait_ready(self) -> None:
        """Wait until every listener accepts."""
        assert self._process is not None
        end = time.monotonic() + START_DEADLINE
        pending = list(self.ports.all())
        while pending:
            if self._process.poll() is not None:
                raise DovecotError(f"Dovecot exited with {self._process.returncode}\n{self.log_tail()}")
            pending = [port for port in pending if not tcp_port_open(port)]
            if not pending:
                return
            if time.monotonic() >= end:
                raise DovecotError(f"Dovecot ports {pending} did not open in {START_DEADLINE:.0f} s\n{self.log_tail()}")
            time.sleep(0.02)

    def _after_stop(self, stopped: bool) -> None:
        if stopped:
            for port in self.ports.all():
                wait_for_tcp_port_closed(port, deadline=STOP_DEADLINE)

    def remove_runtime(self) -> None:
        """Delete the runtime directory (mail, users); only after stop()."""
        shutil.rmtree(self.runtime_dir, ignore_errors=True)

    # -- mail access for tests ----------------------------------------------------------

    def deliver(self, account: MailAccount, message: EmailMessage | bytes, sender: str = "") -> None:
        """Hand `message` to `account` over LMTP, as the MX does (Sieve runs: the junk rule applies)."""
        data = message if isinstance(message, bytes) else message.as_bytes()
        with smtplib.LMTP(HOST, self.ports.lmtp, timeout=10) as lmtp:
            refused = lmtp.sendmail(sender or f"tests@{HOST}", [account.address], data)
        if refused:
            raise DovecotError(f"LMTP refused {refused}")

    def maildir(self, account: MailAccount, folder: str = "INBOX") -> Path:
        """The Maildir of `folder` ("INBOX" or "Junk") for `account`."""
        base = self.mail_root / account.address.lower() / "Maildir"
        return base if folder == "INBOX" else base / f".{folder}"

    def messages(self, account: MailAccount, folder: str = "INBOX") -> list[StoredMessage]:
        """What `folder` holds now, read from the Maildir (no IMAP session, no flag changes), by name."""
        directory = self.maildir(account, folder)
        found: list[StoredMessage] = []
        for sub in ("new", "cur"):
            try:
                names = sorted(os.listdir(directory / sub))
            except FileNotFoundError:
                continue
            for name in names:
                try:
                    raw = (directory / sub / name).read_bytes()
                except FileNotFoundError:
                    continue  # moved from new/ to cur/ or expunged meanwhile
                base, _, info = name.partition(":2,")
                headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)
                found.append(
                    StoredMessage(
                        folder=folder,
                        file_name=base,
                        flags=info,
                        message_id=str(headers.get("Message-ID", "")).strip(),
                        subject=str(headers.get("Subject", "")),
                        raw=raw,
                    )
                )
        return sorted(found, key=lambda message: message.file_name)
