"""A second private Postfix with SMTP AUTH (Cyrus SASL, sasldb), a local domain and relay control.

It is PostfixServer's instance with these changes, so the SMTP depth checks can be
pinned against a real server (tests/integration/test_smtp_checks_postfix.py):

- AUTH PLAIN and LOGIN, offered only inside TLS (`smtpd_tls_auth_only`), checked against
  a sasldb file of the instance's own holding one user (`username`, `password`).
- Not an open relay for the probe: `mynetworks` is 127.0.0.2/32 only, so 127.0.0.1 gets
  `554 5.7.1 Relay access denied` for an outside recipient unless authenticated.
- A local domain `mail.test` with one known recipient (`known_recipient`); any other
  recipient there gets `550 5.1.1 User unknown`.  Mail to it would be discarded.
- Two extra listeners: `tls12_port` (STARTTLS, TLS 1.2 at most) and `open_relay_port`
  (`mynetworks` 127.0.0.0/8 there: the probe's address may relay, as on a misconfigured
  server, and RCPT to any outside domain gets 250).

Nothing ever leaves the machine: outside domains go to the error transport.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import time
from pathlib import Path

from tests.support.ports import free_tcp_ports, wait_for_tcp_port_closed

from .postfix import STOP_DEADLINE, PostfixError, PostfixServer, read_smtp_greeting

SASLPASSWD2 = "/usr/sbin/saslpasswd2"
LOCAL_DOMAIN = "mail.test"
# saslpasswd2 -u mail.test stores the user as monitor@mail.test, and clients log in with that
# whole form.  A bare `monitor` works too, but only because Cyrus puts a realm-less name in
# the server's realm, which is myhostname (mail.test) while smtpd_sasl_local_domain is empty.
SASL_USER, SASL_REALM = "monitor", LOCAL_DOMAIN
SASL_PASSWORD = "Peers-Sasl-Pa55word"  # a test instance on loopback: not a secret
# TLS 1.2 at most; the list form because master.cf `-o` values cannot contain spaces
_TLS12_ONLY = "!SSLv2,!SSLv3,!TLSv1,!TLSv1.1,!TLSv1.3"


def _main_cf_settings(text: str) -> dict[str, str]:
    """main.cf's `key = value` lines as a dict, in order."""
    settings: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(" = ")
        if not sep:
            raise PostfixError(f"unexpected main.cf line {line!r}")
        settings[key] = value
    return settings


class PostfixSaslServer(PostfixServer):
    """PostfixServer plus SASL AUTH over TLS, a local domain, no relay for 127.0.0.1, and two more ports.

    Ports: the inherited `plain_port` (STARTTLS offered; AUTH after it), `implicit_port`,
    `submission_port`, and `tls12_port`, `open_relay_port`.  Credentials: `username`
    (`monitor@mail.test`) and `password`.  `known_recipient` is accepted, `unknown_recipient`
    refused with 550.  Maillog in `log_file`; `queued_messages()` lists what the queue holds.
    """

    local_domain = LOCAL_DOMAIN
    username = f"{SASL_USER}@{SASL_REALM}"
    password = SASL_PASSWORD
    known_recipient = f"postmaster@{LOCAL_DOMAIN}"
    unknown_recipient = f"nobody@{LOCAL_DOMAIN}"

    def __init__(self, tmpdir: Path | str) -> None:
        super().__init__(tmpdir)
        taken = set(self.ports)
        while True:  # the base ports' sockets are closed by now: do not get one of them again
            extra = free_tcp_ports(2)
            if not taken & set(extra):
                break
        self.tls12_port, self.open_relay_port = extra
        # smtpd.conf is read by smtpd while still root; Debian's Postfix (patch 07_sasl_config)
        # looks only in $config_directory/sasl and ignores cyrus_sasl_config_path
        self.sasl_config_dir = self.config_dir / "sasl"
        # the sasldb is opened at AUTH time by smtpd as the postfix user: keep it with the
        # queue, in the runtime dir that user can traverse
        self.sasldb_dir = self.runtime_dir / "sasl"
        self.sasldb_file = self.sasldb_dir / "sasldb2"

    @property
    def all_ports(self) -> tuple[int, ...]:
        """Every listener: plain, implicit, submission, tls12, open relay."""
        return (*self.ports, self.tls12_port, self.open_relay_port)

    # -- configuration -------------------------------------------------------------

    def _main_cf(self) -> str:
        settings = _main_cf_settings(super()._main_cf())
        settings.update(
            {
                "smtpd_banner": "$myhostname ESMTP Postfix (sasl test instance)",
                # 127.0.0.1 (the probe) is outside mynetworks: relaying needs AUTH
                "mynetworks": "127.0.0.2/32",
                "smtpd_relay_restrictions": "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination",
                # one local domain with one mailbox; unknown users refused at RCPT, mail discarded
                "virtual_mailbox_domains": LOCAL_DOMAIN,
                "virtual_mailbox_maps": f"inline:{{ {self.known_recipient}=ok }}",
                "virtual_transport": "discard:",
                "smtpd_reject_unlisted_recipient": "yes",
                "relay_transport": "error",
                # Cyrus SASL with the instance's own sasldb; AUTH only inside TLS
                "smtpd_sasl_auth_enable": "yes",
                "smtpd_sasl_type": "cyrus",
                "smtpd_sasl_path": "smtpd",  # Cyrus reads smtpd.conf from cyrus_sasl_config_path
                "cyrus_sasl_config_path": str(self.sasl_config_dir),  # upstream Postfix honours it
                "smtpd_sasl_security_options": "noanonymous",
                "smtpd_tls_auth_only": "yes",
            }
        )
        return "".join(f"{key} = {value}\n" for key, value in settings.items())

    def _master_cf(self) -> str:
        extra = (
            f"{self.host}:{self.tls12_port} inet n - n - - smtpd\n"
            "  -o syslog_name=postfix/tls12\n"
            f"  -o smtpd_tls_protocols={_TLS12_ONLY}\n"
            f"  -o smtpd_tls_mandatory_protocols={_TLS12_ONLY}\n"
            f"{self.host}:{self.open_relay_port} inet n - n - - smtpd\n"
            "  -o syslog_name=postfix/openrelay\n"
            "  -o mynetworks=127.0.0.0/8\n"
            # outside domains resolve to the error transport, which reject_unlisted_recipient
            # would refuse at RCPT; off here, the RCPT is accepted (DATA would bounce, never leave)
            "  -o smtpd_reject_unlisted_recipient=no\n"
        )
        return extra + super()._master_cf()

    def _write_sasl(self) -> None:
        """smtpd.conf, and a sasldb holding the one user that only root and the postfix group can read."""
        postfix_gid = pwd.getpwnam("postfix").pw_gid
        self.sasl_config_dir.mkdir(parents=True, exist_ok=True)
        (self.sasl_config_dir / "smtpd.conf").write_text(
            "pwcheck_method: auxprop\n"
            "auxprop_plugin: sasldb\n"
            f"sasldb_path: {self.sasldb_file}\n"
            "mech_list: PLAIN LOGIN\n"
        )
        self.sasldb_dir.mkdir(parents=True, exist_ok=True)
        os.chown(self.sasldb_dir, 0, postfix_gid)
        os.chmod(self.sasldb_dir, 0o750)  # noqa: S103 -- root and the postfix group only
        self.sasldb_file.unlink(missing_ok=True)
        # -p: the password from standard input, no prompt; -c: create; -u: the realm
        proc = subprocess.run(
            [SASLPASSWD2, "-f", str(self.sasldb_file), "-p", "-c", "-u", SASL_REALM, SASL_USER],
            input=self.password,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if proc.returncode != 0 or not self.sasldb_file.exists():
            raise PostfixError(
                f"saslpasswd2 exited {proc.returncode} (is sasl2-bin installed? scripts/test-deps.sh)\n"
                f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
            )
        os.chown(self.sasldb_file, 0, postfix_gid)
        os.chmod(self.sasldb_file, 0o640)

    def configure(self) -> None:
        """The base configuration plus the SASL files (the user is written afresh each time)."""
        super().configure()
        self._write_sasl()

    # -- lifecycle -------------------------------------------------------------------

    def _wait_greetings(self) -> None:
        super()._wait_greetings()  # plain, implicit, submission
        end = time.monotonic() + 10.0
        pending = [self.tls12_port, self.open_relay_port]
        last_error = ""
        while pending:
            for port in list(pending):
                try:
                    greeting = read_smtp_greeting(port)
                except OSError as exc:
                    last_error = f"port {port}: {exc!r}"
                    continue
                if greeting.startswith("220"):
                    pending.remove(port)
                else:
                    last_error = f"port {port}: greeting {greeting!r}"
            if pending and time.monotonic() >= end:
                raise PostfixError(f"Postfix ports {pending} did not greet with 220 ({last_error})\n{self.log_tail()}")
            if pending:
                time.sleep(0.1)

    def _after_stop(self, stopped: bool) -> None:
        """The base clean-up, then also wait for the two extra ports to close."""
        super()._after_stop(stopped)
        if stopped:
            for port in (self.tls12_port, self.open_relay_port):
                wait_for_tcp_port_closed(port, deadline=STOP_DEADLINE)

    # -- inspection ------------------------------------------------------------------

    def maillog(self) -> str:
        """This instance's maillog so far ("" before the first line)."""
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def queued_messages(self) -> list[str]:
        """Queue IDs of every message in any queue (`postqueue -j`); empty when nothing was accepted."""
        proc = subprocess.run(
            ["/usr/sbin/postqueue", "-c", str(self.config_dir), "-j"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if proc.returncode != 0:
            raise PostfixError(f"postqueue -j exited {proc.returncode}: {proc.stderr}")
        # one JSON object per line, one line per message
        return [json.loads(line)["queue_id"] for line in proc.stdout.splitlines() if line.strip()]
