"""A live agent probing an SMTP server that echoes whatever AUTH sent: the password shows nowhere.

Six probes (usernames of three lengths mod 3, AUTH PLAIN and LOGIN) fail against the echoing
server; the password and every base64 form of it must be absent from the agent's log, v2c and
v3 walks of the MIB, the v2c traps snmptrapd received, the state database's file bytes and the
CLI's `status --json` and `probe --json` output. Each place is first shown to carry the failure
(the enhanced status code 5.7.8), so an absent secret is not an absent text."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from monitor.exporters.snmp import mib_oids as mib
from tests.fakes.auth_secrets import leaks, secret_forms
from tests.fakes.smtp_servers import EchoingAuthServer, ServerThread
from tests.peers.agent import AgentProcess
from tests.peers.net_snmp import tool_env
from tests.peers.snmptrapd import TrapReceiver
from tests.support.certs import SERVER_NAME, Pki
from tests.support.ports import free_udp_port

PASSWORD = "Quokka-Zebra-Hunter2-Passphrase"
USERNAMES = ("a", "ab", "abc")  # len("\0user\0") mod 3 = 0, 1, 2
MECHANISMS = ("PLAIN", "LOGIN")
COMMUNITY = "c0mmunity-auth-leak"
V3_USER, V3_AUTH, V3_PRIV = "ops", "v3-auth-passphrase", "v3-priv-passphrase"
FAILED_OID = ".".join(map(str, mib.notification_oid(mib.Notification.SMTP_PROBE_FAILED)))
MIB_ROOT = ".".join(map(str, mib.MIB_ROOT))
ECHO = "535 5.7.8 Authentication failed for token {echo} ({decoded})"


def probe_name(username: str, mechanism: str) -> str:
    return f"auth-{username}-{mechanism.lower()}"


def all_forms() -> dict[str, str]:
    return {
        f"{name} (user {username!r})": form
        for username in USERNAMES
        for name, form in secret_forms(username, PASSWORD).items()
    }


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    pytest.fail(what)


def failure_traps(receiver: TrapReceiver) -> list[str]:
    return [line for line in receiver.notifications() if FAILED_OID in line]


def state_bytes(state_dir: Path) -> bytes:
    """Every file of the state directory (the database with its -wal and -shm files), raw."""
    return b"".join(path.read_bytes() for path in sorted(state_dir.iterdir()) if path.is_file())


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "monitor", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


class TestEchoedCredentialsStayHidden:
    def test_password_absent_from_log_walks_traps_state_and_cli(
        self, tmp_path: Path, trap_receiver: TrapReceiver
    ) -> None:
        pki = Pki.create(tmp_path)
        server = EchoingAuthServer(pki.issue().server_context(), reply=ECHO)
        (tmp_path / "pw").write_text(PASSWORD)
        snmp_port = free_udp_port()
        config: dict[str, object] = {
            "defaults": {"interval": "0.5s", "timeout": "5s", "alert_after": 1},
            "snmp": {
                "listen": [f"udp:127.0.0.1:{snmp_port}"],
                "communities": [{"name": COMMUNITY}],
                "users": [
                    {
                        "name": V3_USER,
                        "auth": {"protocol": "sha256", "password": V3_AUTH},
                        "priv": {"protocol": "aes128", "password": V3_PRIV},
                    }
                ],
                "notify": [
                    {
                        "host": "127.0.0.1",
                        "port": trap_receiver.port,
                        "version": "2c",
                        "community": "public",
                        "type": "trap",
                    }
                ],
            },
        }
        tools = tool_env(tmp_path / "net-snmp")
        address = f"udp:127.0.0.1:{snmp_port}"
        workdir = tmp_path / "agent"
        workdir.mkdir()
        with ServerThread(server) as running:
            config["smtp"] = [
                {
                    "name": probe_name(username, mechanism),
                    "host": "127.0.0.1",
                    "port": running.port,
                    "tls": "starttls",
                    "ca_file": str(pki.ca_file),
                    "servername": SERVER_NAME,
                    "auth": {"username": username, "mechanism": mechanism, "password": {"file": str(tmp_path / "pw")}},
                }
                for username in USERNAMES
                for mechanism in MECHANISMS
            ]
            agent = AgentProcess(workdir, config, ("--log-level", "debug"))
            agent.start()
            try:
                wait_for(
                    lambda: len(failure_traps(trap_receiver)) >= 6,
                    30,
                    "not every probe's failure was notified:\n"
                    + "\n".join(trap_receiver.notifications())
                    + "\n"
                    + agent.logs()[-3000:],
                )
                # last results reach the database at its next flush (every 5 s)
                wait_for(
                    lambda: state_bytes(workdir / "state").count(b"5.7.8") >= 6,
                    20,
                    "the failures never reached the state database",
                )
                v2c = subprocess.run(
                    ["snmpwalk", "-v2c", "-c", COMMUNITY, "-On", "-t", "5", address, MIB_ROOT],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                    env=tools,
                )
                v2c_hex = subprocess.run(
                    ["snmpwalk", "-v2c", "-c", COMMUNITY, "-On", "-Ox", "-t", "5", address, MIB_ROOT],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                    env=tools,
                )
                v3 = subprocess.run(
                    [
                        "snmpwalk",
                        "-v3",
                        "-l",
                        "authPriv",
                        "-u",
                        V3_USER,
                        "-a",
                        "SHA-256",
                        "-A",
                        V3_AUTH,
                        "-x",
                        "AES",
                        "-X",
                        V3_PRIV,
                        "-On",
                        "-t",
                        "5",
                        address,
                        MIB_ROOT,
                    ],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                    env=tools,
                )
                one_shot = cli(
                    "probe",
                    f"127.0.0.1:{running.port}",
                    "--tls",
                    "starttls",
                    "--ca-file",
                    str(pki.ca_file),
                    "--servername",
                    SERVER_NAME,
                    "--auth-user",
                    "ab",
                    "--auth-password-env",
                    "SMTPMON_TEST_PW",
                    "--json",
                    env=dict(os.environ, SMTPMON_TEST_PW=PASSWORD),
                )
            finally:
                agent.stop()
        # the credentials really went out, at every alignment and with both mechanisms
        sent = b"\n".join(server.received).decode()
        for username in USERNAMES:
            assert secret_forms(username, PASSWORD)["PLAIN token"] in sent
        assert secret_forms("a", PASSWORD)["base64(password)"] in sent  # AUTH LOGIN's password line

        status = cli("status", "-c", str(agent.config_file), "--json")
        outputs = {
            "agent log": agent.logs(),
            "v2c walk": v2c.stdout + v2c.stderr,
            "v2c walk (hex)": v2c_hex.stdout + v2c_hex.stderr,
            "v3 walk": v3.stdout + v3.stderr,
            "v2c traps": "\n".join(trap_receiver.lines()),
            "status --json": status.stdout + status.stderr,
            "probe --json": one_shot.stdout + one_shot.stderr,
        }
        for where in ("v2c walk", "v3 walk", "v2c traps", "status --json", "probe --json"):
            assert "5.7.8" in outputs[where], f"{where} does not carry the failure: {outputs[where][-2000:]}"
        assert len(re.findall(r"5\.7\.8", outputs["v2c walk"])) >= 6  # smtpProbeLastError of every probe
        assert "auth_failed" in outputs["status --json"]
        forms = all_forms()
        leaked = {where: leaks(text, forms) for where, text in outputs.items()}
        database = state_bytes(workdir / "state")
        assert b"5.7.8" in database
        leaked["state database"] = [
            name
            for name, form in forms.items()
            if form.encode() in database or form.encode().hex().encode() in database
        ]
        assert not any(leaked.values()), "\n".join(f"{where}: {names}" for where, names in leaked.items() if names)
