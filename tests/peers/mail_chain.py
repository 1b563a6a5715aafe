"""The real mail chain the delivery tests run against: MSA Postfix -> MX Postfix -> Dovecot.

    client --587/465 AUTH--> MSA Postfix (msa.src.test) --OpenDKIM signs--> smtp client
        --MX lookup of dest.test in the test DNS, port from a transport map-->
    MX Postfix (mx.dest.test): policyd-spf (SPF), OpenDKIM (DKIM verify) and OpenDMARC write
        Authentication-Results --LMTP over TCP--> Dovecot (mail.dest.test): Sieve files
        `X-Test-Junk: yes` into the SPECIAL-USE \\Junk folder and drops `X-Test-Discard: yes`;
        IMAP/POP3 read it back.

Every daemon is a private instance on free loopback ports with its files under the
session's directory (and, where an unprivileged daemon user must read them, a 0711
directory under /tmp; the milters' files, which they refuse under /tmp, in a root-only
directory under /run; both removed at the end).  Postfix's smtp client and policyd-spf
read /etc/resolv.conf, which cannot name a port: each Postfix master runs in a private
mount namespace (`unshare -m`) where a resolv.conf of ours is bind-mounted over the
host's, naming the test NSD on a loopback address of its own (127.X.Y.53, port 53,
chosen free at run time).  The host's resolv.conf is never touched.
"""

from __future__ import annotations

import concurrent.futures
import grp
import json
import os
import pwd
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.rcode

from tests.peers.dovecot import JUNK_FOLDER, DovecotServer, MailAccount, StoredMessage
from tests.peers.nsd import NsdServer
from tests.peers.opendkim import DkimKey, OpenDkimMilter, OpenDmarcMilter, make_dkim_key
from tests.peers.postfix import (
    POSTFIX,
    START_DEADLINE,
    STOP_DEADLINE,
    PostfixError,
    PostfixServer,
    read_smtp_greeting,
)
from tests.support.certs import SERVER_NAME, make_self_signed_cert
from tests.support.ports import HOST, wait_for_tcp_port_closed

POSTQUEUE = "/usr/sbin/postqueue"
SASLPASSWD2 = "/usr/sbin/saslpasswd2"
POLICYD_SPF = "/usr/bin/policyd-spf"
POSTFIX_FILES = Path("/etc/postfix/postfix-files")  # path:type:owner:group:mode:flags per line

SENDER_DOMAIN = "src.test"
RECIPIENT_DOMAIN = "dest.test"
SPOOF_DOMAIN = "spoof.test"  # publishes SPF that does not authorise loopback: spf=fail
# The spoof test's protected domain: SPF and DMARC p=reject that do not authorise loopback; its MXs are
# the chain MX (no enforcement: a forgery is delivered, with spf=fail and dmarc=fail) and a strict MX
# (StrictMxPostfix: policyd-spf refuses SPF fail at RCPT) on another loopback address, same port.
PROTECTED_DOMAIN = "protected.test"
STRICT_MX_HOST = "mx-strict.protected.test"
MSA_HOST = "msa.src.test"
MX_HOST = "mx.dest.test"
MAILBOX_HOST = "mail.dest.test"
DKIM_SELECTOR = "chain"
# opendkim-genkey takes 0.12-0.21 s for 1024 bits here, 0.34-1.3 s for 2048 (prime search): the
# smaller key keeps the key off the start-up's critical path; OpenDKIM verifies 1024 bits and up
DKIM_KEY_BITS = 1024
JUNK_HEADER, JUNK_VALUE = "X-Test-Junk", "yes"
DISCARD_HEADER = "X-Test-Discard"  # with value "yes": accepted by every hop, dropped by Sieve
# Short retries so store-and-forward shows within seconds of a hop coming back.
QUEUE_TIMES = {"queue_run_delay": "2s", "minimal_backoff_time": "2s", "maximal_backoff_time": "4s"}
# Test instances on loopback: these are not secrets.
SUBMIT_PASSWORD = "Chain-Submit-Pa55"
MAILBOX_PASSWORD = "Chain-Mailbox-Pa55"
OTHER_PASSWORD = "Chain-Other-Pa55"
SPF_SENDER = "v=spf1 ip4:127.0.0.1 -all"
SPF_SPOOF = "v=spf1 ip4:192.0.2.1 -all"
DMARC_SENDER = "v=DMARC1; p=reject; adkim=s; aspf=s"
SPF_PROTECTED = "v=spf1 ip4:192.0.2.1 -all"
DMARC_PROTECTED = "v=DMARC1; p=reject"
ZONE_ORIGINS = (f"{SENDER_DOMAIN}.", f"{RECIPIENT_DOMAIN}.", f"{SPOOF_DOMAIN}.", f"{PROTECTED_DOMAIN}.")


class MailChainError(RuntimeError):
    """The chain could not be started or inspected; the message names the daemon and its log."""


@dataclass(frozen=True, slots=True)
class QueuedRecipient:
    address: str
    delay_reason: str  # "" until a delivery attempt failed


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """One message in a Postfix queue, from `postqueue -j`."""

    queue_id: str
    queue_name: str  # "incoming", "active", "deferred", "hold", "maildrop"
    sender: str
    arrival_time: int  # Unix seconds
    recipients: tuple[QueuedRecipient, ...]


def parse_postqueue_json(text: str) -> list[QueuedMessage]:
    """`postqueue -j` output (one JSON object per line) as typed records."""
    messages: list[QueuedMessage] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        item = json.loads(line)
        messages.append(
            QueuedMessage(
                queue_id=str(item["queue_id"]),
                queue_name=str(item["queue_name"]),
                sender=str(item.get("sender", "")),
                arrival_time=int(item.get("arrival_time", 0)),
                recipients=tuple(
                    QueuedRecipient(address=str(r["address"]), delay_reason=str(r.get("delay_reason", "")))
                    for r in item.get("recipients", [])
                ),
            )
        )
    return messages


def _backdate(*paths: Path) -> None:
    # Postfix pauses 2 s per command ("to let it cool down") on a main.cf changed in the last
    # seconds; configuration written just now is dated 10 s back.
    past = time.time() - 10
    for path in paths:
        os.utime(path, (past, past))


def _expand(field: str, names: dict[str, str]) -> str:
    for name, value in names.items():
        field = field.replace(name, value)
    return field


def _settings_text(settings: dict[str, str]) -> str:
    return "".join(f"{key} = {value}\n" for key, value in settings.items())


def _parse_main_cf(text: str) -> dict[str, str]:
    settings: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(" = ")
        if not sep:
            raise PostfixError(f"unexpected main.cf line {line!r}")
        settings[key] = value
    return settings


def _bindable(address: str, port: int) -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind((address, port))
            except OSError:
                return False
    return True


def free_loopback_address(port: int, last: int, attempts: int = 50) -> str:
    """A loopback address 127.X.Y.`last` (not 127.0.0.1) whose `port` is free for UDP and TCP."""
    for _ in range(attempts):
        address = f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{last}"
        if _bindable(address, port):
            return address
    raise MailChainError(f"no free 127.X.Y.{last} address for port {port} after {attempts} attempts")


def free_daemon_dns_address(attempts: int = 50) -> str:
    """A loopback address 127.X.Y.53 whose port 53 is free for UDP and TCP (per session: no clash)."""
    for _ in range(attempts):
        address = f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.53"
        if _bindable(address, 53):
            return address
    raise MailChainError(f"no free 127.X.Y.53 address for port 53 after {attempts} attempts")


class ChainNsd(NsdServer):
    """NsdServer also listening on `daemon_address`:53, where the daemons' resolv.conf points.

    Made before its zones are known (they carry the DKIM key, made while the other daemons
    start): set_zones() before start()."""

    def __init__(self, tmpdir: Path, origins: tuple[str, ...], daemon_address: str) -> None:
        super().__init__(tmpdir, dict.fromkeys(origins, ""))
        self.daemon_address = daemon_address

    def set_zones(self, zones: dict[str, str]) -> None:
        if set(zones) != set(self.zones):
            raise MailChainError(f"zones {sorted(zones)} are not the announced {sorted(self.zones)}")
        self.zones = dict(zones)

    def _config(self) -> str:
        marker = f"    ip-address: {HOST}\n"
        text = super()._config()
        if marker not in text:
            raise MailChainError("NsdServer's config changed: no ip-address line to extend")
        return text.replace(marker, marker + f"    ip-address: {self.daemon_address}@53\n", 1)

    def _wait_ready(self) -> None:
        # NSD binds its sockets a while before it answers: a query in between waits out its whole
        # timeout (0.5 s in wait_for_soa); short timeouts make it ready about 0.4 s sooner
        assert self._process is not None
        end = time.monotonic() + 10.0
        pending = list(self.zones)
        while pending:
            if self._process.poll() is not None:
                raise MailChainError(f"NSD exited with {self._process.returncode}\n{self.log_tail()}")
            try:
                reply = dns.query.udp(dns.message.make_query(pending[0], "SOA"), HOST, port=self.port, timeout=0.05)
                if reply.rcode() == dns.rcode.NOERROR and reply.answer:
                    pending.pop(0)
                    continue
            except (dns.exception.DNSException, OSError):
                pass
            if time.monotonic() >= end:
                raise MailChainError(f"NSD did not answer SOA for {pending[0]} within 10 s\n{self.log_tail()}")
            time.sleep(0.01)


class _ChainPostfix(PostfixServer):
    """A PostfixServer sharing the chain's certificate, started inside a mount namespace whose
    /etc/resolv.conf names the test DNS."""

    def __init__(self, tmpdir: Path, *, cert_file: Path, key_file: Path, resolv_conf: Path) -> None:
        super().__init__(tmpdir)
        self.cert_file = cert_file
        self.key_file = key_file
        self.ca_file = cert_file
        self.resolv_conf = resolv_conf

    def _settings(self) -> dict[str, str]:
        settings = _parse_main_cf(super()._main_cf())
        settings.update(QUEUE_TIMES)
        settings["smtpd_peername_lookup"] = "yes"  # Received: shows the client's name (test DNS)
        return settings

    def _main_cf(self) -> str:
        return _settings_text(self._settings())

    def _extra_files(self) -> None:
        """Files a subclass writes before start (SASL, policy config)."""

    def configure(self) -> None:
        for directory in (self.config_dir, self.queue_dir):
            directory.mkdir(parents=True, exist_ok=True)
        main_cf, master_cf = self.config_dir / "main.cf", self.config_dir / "master.cf"
        main_cf.write_text(self._main_cf())
        master_cf.write_text(self._master_cf())
        _backdate(main_cf, master_cf)
        self._extra_files()
        if self._make_queue_directories():
            # postfix-script's first-start checks would only create these (about 0.9 s per instance)
            (self.queue_dir / "quick-start").touch()
        self._configured = True

    def _make_queue_directories(self) -> bool:
        """Create the queue and data directories as Postfix's own list says (owner, group, mode).

        False (Postfix creates them itself on start) when the list is not where Debian puts it."""
        try:
            listing = POSTFIX_FILES.read_text()
        except OSError:
            return False
        names = {
            "$queue_directory": str(self.queue_dir),
            "$data_directory": str(self.data_dir),
            "$mail_owner": "postfix",
            "$setgid_group": "postdrop",
        }
        for line in listing.splitlines():
            fields = line.split(":")
            if len(fields) < 5 or fields[1] != "d" or not fields[0].startswith(("$queue_directory", "$data_directory")):
                continue
            path, _, owner, group, mode = (_expand(field, names) for field in fields[:5])
            directory = Path(path)
            directory.mkdir(parents=True, exist_ok=True)
            os.chown(directory, pwd.getpwnam(owner).pw_uid, -1 if group == "-" else grp.getgrnam(group).gr_gid)
            os.chmod(directory, int(mode, 8))
        return True

    def _postfix(self, *args: str) -> subprocess.CompletedProcess[str]:
        if args != ("start",):
            return super()._postfix(*args)
        # the master (and every daemon it spawns) sees our resolv.conf; the host keeps its own
        script = 'mount -n --bind "$1" /etc/resolv.conf && exec "$2" -c "$3" start'
        proc = subprocess.run(
            ["unshare", "-m", "sh", "-c", script, "sh", str(self.resolv_conf), POSTFIX, str(self.config_dir)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if proc.returncode != 0:
            raise PostfixError(
                f"postfix start (in a mount namespace) exited {proc.returncode}\n"
                f"stdout: {proc.stdout}\nstderr: {proc.stderr}\n{self.log_tail()}"
            )
        return proc

    def queue(self) -> list[QueuedMessage]:
        """Every message in this instance's queues now."""
        proc = subprocess.run(
            [POSTQUEUE, "-c", str(self.config_dir), "-j"], capture_output=True, text=True, timeout=30, check=False
        )
        if proc.returncode != 0:
            raise PostfixError(f"postqueue -j exited {proc.returncode}: {proc.stderr}")
        return parse_postqueue_json(proc.stdout)

    def flush(self) -> None:
        """Ask for an immediate delivery attempt of everything deferred (`postqueue -f`)."""
        subprocess.run([POSTQUEUE, "-c", str(self.config_dir), "-f"], capture_output=True, timeout=30, check=True)

    def maillog(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class MxPostfix(_ChainPostfix):
    """The recipient domain's MX: accepts mail for the Dovecot users only, checks SPF with
    policyd-spf, DKIM and DMARC with the milters in `milter` (each writes Authentication-Results),
    and delivers over LMTP.  `plain_port` is its port 25."""

    def __init__(
        self,
        tmpdir: Path,
        *,
        cert_file: Path,
        key_file: Path,
        resolv_conf: Path,
        recipients: tuple[str, ...],
        lmtp_port: int,
        milter: str,
    ) -> None:
        super().__init__(tmpdir, cert_file=cert_file, key_file=key_file, resolv_conf=resolv_conf)
        self.recipients = recipients
        self.lmtp_port = lmtp_port
        self.milter = milter
        # spawned as the policyd-spf user: it must be able to read it
        self.policy_config = self.runtime_dir / "policyd-spf.conf"

    def _settings(self) -> dict[str, str]:
        settings = super()._settings()
        mailboxes = ", ".join(f"{address}=ok" for address in self.recipients)
        settings.update(
            {
                "myhostname": MX_HOST,
                "mydomain": RECIPIENT_DOMAIN,
                "smtpd_banner": "$myhostname ESMTP Postfix (chain MX)",
                "mynetworks": "192.0.2.1/32",  # nobody is trusted: every client gets the checks
                "transport_maps": "",
                "virtual_mailbox_domains": RECIPIENT_DOMAIN,
                "virtual_mailbox_maps": f"inline:{{ {mailboxes} }}",
                "virtual_transport": f"lmtp:inet:{HOST}:{self.lmtp_port}",
                "smtpd_relay_restrictions": "reject_unauth_destination",
                "smtpd_recipient_restrictions": (
                    "reject_unlisted_recipient, check_policy_service unix:private/policyd-spf"
                ),
                "policyd-spf_time_limit": "3600",
                "smtpd_milters": self.milter,
                "milter_default_action": "tempfail",  # an unverified message waits rather than passes
            }
        )
        return settings

    def _master_cf(self) -> str:
        return super()._master_cf() + (
            f"policyd-spf unix - n n - 0 spawn\n  user=policyd-spf argv={POLICYD_SPF} {self.policy_config}\n"
        )

    def _extra_files(self) -> None:
        self.policy_config.write_text(
            "debugLevel = 1\n"
            "TestOnly = 1\n"
            "HELO_reject = False\n"  # record the verdict, never reject: the tests read it
            "Mail_From_reject = False\n"
            "PermError_reject = False\n"
            "TempError_Defer = False\n"
            # the default skips loopback (spf=none); an empty list crashes 2.9.3: TEST-NET-1
            "skip_addresses = 192.0.2.0/24\n"
            "Header_Type = AR\n"
            f"Authserv_Id = {MX_HOST}\n"
            "Hide_Receiver = No\n"
        )
        os.chmod(self.policy_config, 0o644)


class StrictMxPostfix(MxPostfix):
    """A second MX of the protected domain that enforces SPF: policyd-spf refuses a MAIL FROM whose SPF
    fails (550 at RCPT).  It listens on `address` (another loopback address) on the chain MX's port, so
    that one MX check with one port reaches both exchanges.  No milters: nothing reaches DATA."""

    def __init__(
        self,
        tmpdir: Path,
        *,
        address: str,
        port: int,
        cert_file: Path,
        key_file: Path,
        resolv_conf: Path,
        recipients: tuple[str, ...],
        lmtp_port: int,
    ) -> None:
        super().__init__(
            tmpdir,
            cert_file=cert_file,
            key_file=key_file,
            resolv_conf=resolv_conf,
            recipients=recipients,
            lmtp_port=lmtp_port,
            milter="",
        )
        self.host = address
        self.plain_port = port

    def _settings(self) -> dict[str, str]:
        settings = super()._settings()
        settings.update(
            {
                "myhostname": STRICT_MX_HOST,
                "smtpd_banner": "$myhostname ESMTP Postfix (strict MX)",
            }
        )
        return settings

    def _master_cf(self) -> str:
        # every listener on our own address
        return super()._master_cf().replace(f"{HOST}:", f"{self.host}:")

    def _extra_files(self) -> None:
        super()._extra_files()
        text = self.policy_config.read_text().replace("Mail_From_reject = False\n", "Mail_From_reject = Fail\n")
        self.policy_config.write_text(text)

    def _after_stop(self, stopped: bool) -> None:
        # our ports on our own address (127.0.0.1 has the chain MX on the same port)
        if stopped:
            for port in self.ports:
                wait_for_tcp_port_closed(port, host=self.host, deadline=STOP_DEADLINE)

    def _wait_ready(self) -> None:
        end = time.monotonic() + START_DEADLINE
        while True:
            try:
                if read_smtp_greeting(self.plain_port, host=self.host).startswith("220"):
                    return
            except OSError:
                pass
            if time.monotonic() >= end:
                raise PostfixError(f"strict MX {self.host}:{self.plain_port} did not greet\n{self.log_tail()}")
            time.sleep(0.1)


class MsaPostfix(_ChainPostfix):
    """The sender's submission server: AUTH (Cyrus sasldb, inside TLS only) on every port,
    `submission_port` (STARTTLS required), `implicit_port` (465-style), `plain_port`
    (STARTTLS offered); signs with the signing OpenDKIM; relays the recipient domain to its
    MX found in the test DNS, on the MX's port from a transport map."""

    def __init__(
        self,
        tmpdir: Path,
        *,
        cert_file: Path,
        key_file: Path,
        resolv_conf: Path,
        account: MailAccount,
        mx_port: int,
        milter: str,
    ) -> None:
        super().__init__(tmpdir, cert_file=cert_file, key_file=key_file, resolv_conf=resolv_conf)
        self.account = account
        self.mx_port = mx_port
        self.milter = milter
        # Debian's Postfix reads smtpd.conf from $config_directory/sasl only
        self.sasl_config_dir = self.config_dir / "sasl"
        # opened by smtpd as the postfix user at AUTH time
        self.sasldb_file = self.runtime_dir / "sasl" / "sasldb2"

    def _settings(self) -> dict[str, str]:
        settings = super()._settings()
        settings.update(
            {
                "myhostname": MSA_HOST,
                "mydomain": SENDER_DOMAIN,
                "myorigin": SENDER_DOMAIN,
                "smtpd_banner": "$myhostname ESMTP Postfix (chain MSA)",
                "mynetworks": "192.0.2.1/32",  # relaying needs AUTH, also from loopback
                # the real MX lookup of dest.test in the test DNS, on the MX's test port
                "transport_maps": f"inline:{{ {RECIPIENT_DOMAIN}=smtp:{RECIPIENT_DOMAIN}:{self.mx_port} }}",
                "smtpd_relay_restrictions": "permit_sasl_authenticated, reject_unauth_destination",
                "smtp_tls_security_level": "may",
                "smtpd_sasl_auth_enable": "yes",
                "smtpd_sasl_type": "cyrus",
                "smtpd_sasl_path": "smtpd",
                "cyrus_sasl_config_path": str(self.sasl_config_dir),
                "smtpd_sasl_security_options": "noanonymous",
                "smtpd_tls_auth_only": "yes",
                "smtpd_milters": self.milter,
                "milter_default_action": "tempfail",  # unsigned mail is never relayed by mistake
            }
        )
        return settings

    def _extra_files(self) -> None:
        user, _, realm = self.account.address.partition("@")
        postfix_gid = pwd.getpwnam("postfix").pw_gid
        self.sasl_config_dir.mkdir(parents=True, exist_ok=True)
        (self.sasl_config_dir / "smtpd.conf").write_text(
            "pwcheck_method: auxprop\n"
            "auxprop_plugin: sasldb\n"
            f"sasldb_path: {self.sasldb_file}\n"
            "mech_list: PLAIN LOGIN\n"
        )
        sasl_dir = self.sasldb_file.parent
        sasl_dir.mkdir(parents=True, exist_ok=True)
        os.chown(sasl_dir, 0, postfix_gid)
        os.chmod(sasl_dir, 0o750)  # noqa: S103 -- root and the postfix group only
        self.sasldb_file.unlink(missing_ok=True)
        proc = subprocess.run(
            [SASLPASSWD2, "-f", str(self.sasldb_file), "-p", "-c", "-u", realm, user],
            input=self.account.password,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if proc.returncode != 0 or not self.sasldb_file.exists():
            raise PostfixError(f"saslpasswd2 exited {proc.returncode}: {proc.stdout}{proc.stderr}")
        os.chown(self.sasldb_file, 0, postfix_gid)
        os.chmod(self.sasldb_file, 0o640)


def _zone(origin: str, records: list[str]) -> str:
    head = [
        f"$ORIGIN {origin}",
        "$TTL 60",
        f"@ IN SOA ns.{origin} hostmaster.{origin} 1 3600 600 86400 60",
        f"@ IN NS ns.{origin}",
        f"ns.{origin} IN A {HOST}",
    ]
    return "\n".join(head + records) + "\n"


def chain_zones(dkim: DkimKey, strict_mx_address: str = HOST) -> dict[str, str]:
    """The sender, recipient, spoofing and protected domains' zones."""
    src, dest, spoof = f"{SENDER_DOMAIN}.", f"{RECIPIENT_DOMAIN}.", f"{SPOOF_DOMAIN}."
    protected = f"{PROTECTED_DOMAIN}."
    return {
        src: _zone(
            src,
            [
                f'{src} IN TXT "{SPF_SENDER}"',
                f'_dmarc.{src} IN TXT "{DMARC_SENDER}"',
                f"{MSA_HOST}. IN A {HOST}",
                f'{MSA_HOST}. IN TXT "{SPF_SENDER}"',  # the MSA's HELO name passes SPF too
                dkim.zone_line(),
            ],
        ),
        dest: _zone(
            dest,
            [
                f"{dest} IN MX 10 {MX_HOST}.",
                f"{MX_HOST}. IN A {HOST}",
                f"{MAILBOX_HOST}. IN A {HOST}",
            ],
        ),
        spoof: _zone(spoof, [f'{spoof} IN TXT "{SPF_SPOOF}"', f'_dmarc.{spoof} IN TXT "v=DMARC1; p=reject"']),
        protected: _zone(
            protected,
            [
                f"{protected} IN MX 10 {MX_HOST}.",
                f"{protected} IN MX 20 {STRICT_MX_HOST}.",
                f"{STRICT_MX_HOST}. IN A {strict_mx_address}",
                f'{protected} IN TXT "{SPF_PROTECTED}"',
                f'_dmarc.{protected} IN TXT "{DMARC_PROTECTED}"',
            ],
        ),
    }


def _world_traversable_dir(prefix: str) -> Path:
    # Daemon users (dovecot, dovenull, nobody, policyd-spf) must reach their files; pytest's
    # temp dirs are 0700.  0711: searchable, not listable.
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(path, 0o711)  # noqa: S103 -- search only, nobody can list it
    return path


class MailChain:
    """The whole chain under `root`; `start()` brings it up, `close()` stops every process.

    Endpoints (all on 127.0.0.1): `msa_submission_port` (587-style, STARTTLS then AUTH),
    `msa_implicit_port` (465-style), `mx_port` (the MX's port 25), `imap_port`/`imaps_port`,
    `pop3_port`/`pop3s_port`, `lmtp_port`; `dns_port` (the test NSD on 127.0.0.1), and
    `dns_daemon_address` (the same NSD on port 53 of its own loopback address).
    TLS everywhere presents one certificate for `servername` (mail.test) and 127.0.0.1:
    `ca_file` verifies it.  Accounts: `submitter` (SASL at the MSA, From: src.test),
    `mailbox` (the probe's mailbox at dest.test), `other_mailbox` (a second user).
    """

    host = HOST
    servername = SERVER_NAME
    sender_domain = SENDER_DOMAIN
    recipient_domain = RECIPIENT_DOMAIN
    spoof_domain = SPOOF_DOMAIN
    protected_domain = PROTECTED_DOMAIN
    strict_mx_host = STRICT_MX_HOST
    msa_host = MSA_HOST
    mx_host = MX_HOST
    mailbox_host = MAILBOX_HOST
    dkim_selector = DKIM_SELECTOR
    junk_header = JUNK_HEADER
    junk_value = JUNK_VALUE
    discard_header = DISCARD_HEADER
    junk_folder = JUNK_FOLDER
    submitter = MailAccount(f"probe@{SENDER_DOMAIN}", SUBMIT_PASSWORD)
    mailbox = MailAccount(f"probe@{RECIPIENT_DOMAIN}", MAILBOX_PASSWORD)
    other_mailbox = MailAccount(f"other@{RECIPIENT_DOMAIN}", OTHER_PASSWORD)

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.runtime_dir = _world_traversable_dir("peers-mailchain-")
        # OpenDKIM refuses a config file under a world-writable directory such as /tmp
        # ("/tmp can be read or written by other users"): its files and the DKIM key go to a
        # root-only directory under /run
        self.opendkim_dir = Path(tempfile.mkdtemp(prefix="peers-mailchain-", dir="/run"))
        try:
            self._make_parts()
        except BaseException:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
            shutil.rmtree(self.opendkim_dir, ignore_errors=True)
            raise

    def _make_parts(self) -> None:
        for name, target in (("runtime", self.runtime_dir), ("opendkim", self.opendkim_dir)):
            link = self.root / name
            if link.is_symlink():
                link.unlink()
            link.symlink_to(target)  # findable from the session dir for post-mortems
        self.cert_file = self.root / "tls" / "cert.pem"
        self.key_file = self.root / "tls" / "key.pem"
        self.ca_file = self.cert_file  # self-signed: the certificate is its own CA
        self.dns_daemon_address = free_daemon_dns_address()
        self.resolv_conf = self.root / "resolv.conf"
        self.dovecot = DovecotServer(
            self.root / "dovecot",
            self.runtime_dir / "dovecot",
            cert_file=self.cert_file,
            key_file=self.key_file,
            accounts=(self.mailbox, self.other_mailbox),
            hostname=MAILBOX_HOST,
            junk_header=JUNK_HEADER,
            junk_value=JUNK_VALUE,
            discard_header=DISCARD_HEADER,
        )
        self.nsd = ChainNsd(self.root / "nsd", ZONE_ORIGINS, self.dns_daemon_address)
        self.signer = OpenDkimMilter(
            self.opendkim_dir / "sign", "s", authserv_id=MSA_HOST, dns_port=self.nsd.port, dns_zones=ZONE_ORIGINS
        )
        self.verifier = OpenDkimMilter(
            self.opendkim_dir / "verify", "v", authserv_id=MX_HOST, dns_port=self.nsd.port, dns_zones=ZONE_ORIGINS
        )
        self.dmarc = OpenDmarcMilter(self.opendkim_dir / "dmarc", authserv_id=MX_HOST, resolv_conf=self.resolv_conf)
        self.mx = MxPostfix(
            self.root / "postfix-mx",
            cert_file=self.cert_file,
            key_file=self.key_file,
            resolv_conf=self.resolv_conf,
            recipients=(self.mailbox.address, self.other_mailbox.address),
            lmtp_port=self.dovecot.ports.lmtp,
            # DMARC after DKIM: OpenDMARC reads the SPF and DKIM Authentication-Results
            milter=f"{self.verifier.socket_spec}, {self.dmarc.socket_spec}",
        )
        self.msa = MsaPostfix(
            self.root / "postfix-msa",
            cert_file=self.cert_file,
            key_file=self.key_file,
            resolv_conf=self.resolv_conf,
            account=self.submitter,
            mx_port=self.mx.plain_port,
            milter=self.signer.socket_spec,
        )
        # where make_strict_mx() listens: free for the MX's port now, named in the protected zone
        self.strict_mx_address = free_loopback_address(self.mx.plain_port, 25)
        self.startup_seconds = 0.0  # start() to every listener ready

    # -- endpoints ----------------------------------------------------------------------------

    @property
    def msa_submission_port(self) -> int:
        return self.msa.submission_port

    @property
    def msa_implicit_port(self) -> int:
        return self.msa.implicit_port

    @property
    def mx_port(self) -> int:
        return self.mx.plain_port

    @property
    def imap_port(self) -> int:
        return self.dovecot.ports.imap

    @property
    def imaps_port(self) -> int:
        return self.dovecot.ports.imaps

    @property
    def pop3_port(self) -> int:
        return self.dovecot.ports.pop3

    @property
    def pop3s_port(self) -> int:
        return self.dovecot.ports.pop3s

    @property
    def lmtp_port(self) -> int:
        return self.dovecot.ports.lmtp

    @property
    def dns_port(self) -> int:
        return self.nsd.port

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Make keys and configs, then start every daemon at once and wait until all are ready."""
        began = time.monotonic()
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        self.startup_seconds = time.monotonic() - began

    def _start(self) -> None:
        self.resolv_conf.write_text(f"nameserver {self.dns_daemon_address}\noptions timeout:1 attempts:2\n")
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            # the DKIM key is needed only by NSD's zone and the signer: every
            # other daemon starts meanwhile, as soon as the TLS certificate is there
            key_job = pool.submit(
                make_dkim_key, self.opendkim_dir / "dkim", SENDER_DOMAIN, DKIM_SELECTOR, DKIM_KEY_BITS
            )
            make_self_signed_cert(self.cert_file.parent)
            starts: list[Callable[[], None]] = [
                self.dovecot.start,
                self.verifier.start,
                self.dmarc.start,
                self.mx.start,
                self.msa.start,
            ]
            jobs = [pool.submit(start) for start in starts]
            key_error = key_job.exception()
            if key_error is None:
                key = key_job.result()
                self.signer.key = key
                self.nsd.set_zones(chain_zones(key, self.strict_mx_address))
                jobs += [pool.submit(self.nsd.start), pool.submit(self.signer.start)]
            errors = [key_error, *(job.exception() for job in jobs)]
        failures = [error for error in errors if error is not None]
        if failures:
            raise MailChainError("mail chain did not start:\n" + "\n".join(str(error) for error in failures))

    def close(self) -> None:
        """Stop every process (OpenDKIM's slow exits overlap the rest) and remove the runtime dir."""
        milters = (self.signer, self.verifier, self.dmarc)
        for milter in milters:
            milter.begin_stop()
        stops: list[Callable[[], None]] = [milter.stop for milter in milters]
        stops += [self.msa.close, self.mx.close, self.nsd.close, self.dovecot.stop]
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(stops)) as pool:
            errors = [job.exception() for job in [pool.submit(stop) for stop in stops]]
        shutil.rmtree(self.runtime_dir, ignore_errors=True)
        shutil.rmtree(self.opendkim_dir, ignore_errors=True)
        failures = [error for error in errors if error is not None]
        if failures:
            raise MailChainError("mail chain did not stop cleanly:\n" + "\n".join(str(error) for error in failures))

    # -- controls for the tests ----------------------------------------------------------------

    def stop_mx(self) -> None:
        """Take the MX Postfix down (its port refuses): mail waits in the MSA's queue."""
        self.mx.stop()

    def start_mx(self) -> None:
        """Bring the MX back on the same port."""
        self.mx.start()

    def stop_dovecot(self) -> None:
        """Take Dovecot down (IMAP, POP3 and LMTP refuse): mail waits in the MX's queue."""
        self.dovecot.stop()

    def start_dovecot(self) -> None:
        self.dovecot.start()

    def make_strict_mx(self, root: Path) -> StrictMxPostfix:
        """The protected domain's second MX, not started: the caller starts and closes it."""
        return StrictMxPostfix(
            root,
            address=self.strict_mx_address,
            port=self.mx.plain_port,
            cert_file=self.cert_file,
            key_file=self.key_file,
            resolv_conf=self.resolv_conf,
            recipients=(self.mailbox.address, self.other_mailbox.address),
            lmtp_port=self.dovecot.ports.lmtp,
        )

    def ensure_running(self) -> None:
        """Restart whatever a test left stopped (MX Postfix, Dovecot)."""
        if not self.mx.running():
            self.mx.start()
        if not self.dovecot.running():
            self.dovecot.start()

    def msa_queue(self) -> list[QueuedMessage]:
        """What the MSA holds now (deferred while the MX is down)."""
        return self.msa.queue()

    def mx_queue(self) -> list[QueuedMessage]:
        """What the MX holds now (deferred while Dovecot is down)."""
        return self.mx.queue()

    def delivery_probe(self, name: str = "chain", **overrides: Any) -> dict[str, Any]:
        """A delivery probe's config document through this chain: submission with STARTTLS and AUTH, IMAP
        with implicit TLS, every certificate verified by the chain's CA. `overrides` replace keys; a dict
        given for `submit` or `mailbox` is merged into that section."""
        document: dict[str, Any] = {
            "name": name,
            "submit": {
                "host": self.host,
                "port": self.msa_submission_port,
                "tls": "starttls",
                "auth": {"username": self.submitter.address, "password": self.submitter.password},
                "ca_file": str(self.ca_file),
                "servername": self.servername,
            },
            "from": self.submitter.address,
            "to": self.mailbox.address,
            "mailbox": {
                "protocol": "imap",
                "host": self.host,
                "port": self.imaps_port,
                "tls": "implicit",
                "username": self.mailbox.address,
                "password": self.mailbox.password,
                "ca_file": str(self.ca_file),
                "servername": self.servername,
                "poll_interval": 0.5,
            },
            "deliver_within": 20,
            "timeouts": {"submit": 10, "mailbox": 5, "cleanup": 5},
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(document.get(key), dict):
                document[key] = {**document[key], **value}
            else:
                document[key] = value
        return document

    def deliver_to_mailbox(self, message: EmailMessage | bytes, account: MailAccount | None = None) -> None:
        """Put a message straight into a mailbox over LMTP (bypassing both Postfix): e.g. unrelated mail."""
        self.dovecot.deliver(account or self.mailbox, message)

    def inbox(self, account: MailAccount | None = None) -> list[StoredMessage]:
        """What INBOX holds now, read from the Maildir (no IMAP session, flags untouched)."""
        return self.dovecot.messages(account or self.mailbox, "INBOX")

    def junk(self, account: MailAccount | None = None) -> list[StoredMessage]:
        """What the \\Junk folder holds now."""
        return self.dovecot.messages(account or self.mailbox, JUNK_FOLDER)

    def wait_for_message(
        self, message_id: str, folder: str = "INBOX", timeout: float = 15.0, account: MailAccount | None = None
    ) -> StoredMessage:
        """Poll the Maildir every 20 ms until the message with `message_id` is there."""
        end = time.monotonic() + timeout
        while True:
            for message in self.dovecot.messages(account or self.mailbox, folder):
                if message.message_id == message_id:
                    return message
            if time.monotonic() >= end:
                raise MailChainError(
                    f"{message_id} not in {folder} within {timeout:.0f} s\n"
                    f"MSA queue: {self.msa_queue()}\nMX queue: {self.mx_queue()}\n"
                    f"{self.msa.log_tail(15)}\n{self.mx.log_tail(15)}\n{self.dovecot.log_tail(15)}"
                )
            time.sleep(0.02)
