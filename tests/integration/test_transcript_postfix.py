"""Transcripts of probes failing against a real Postfix (tests/peers): in the CLI, in /probe?debug=true, and
from a live agent in the state database, where the last failure's transcript survives a recovery, a
kill -9 and a restart; no form of a password anywhere."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from monitor.config.schema import DeliveryProbeConfig, DnsConfig
from monitor.model.probe_result import result_to_json
from monitor.probes import ProbeEnv, build_resolver, delivery
from tests.fakes.auth_secrets import leaks, secret_forms
from tests.peers.agent import AgentProcess
from tests.peers.mail_chain import MailChain
from tests.peers.postfix_sasl import PostfixSaslServer

pytestmark = pytest.mark.peers

SENDER = "monitor@smtp-monitor.invalid"
WRONG = "Wrong-Numbat-Passphrase-2026-xyz"  # long: every base64 form of it is distinctive
LINE = re.compile(r"^ +\d+\.\d{3} +(C|S|TLS|--) (.*)$")


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "monitor", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def dialogue(text: str) -> list[tuple[str, str]]:
    return [(m[1], m[2]) for m in map(LINE.match, text.splitlines()) if m]


def no_password(text: str, right: str) -> None:
    assert leaks(text, secret_forms("monitor@mail.test", WRONG)) == []
    for form in (right, base64.b64encode(right.encode()).decode().rstrip("=")):
        assert form not in text


def test_cli_prints_the_dialogue_of_a_refused_envelope(postfix_sasl: PostfixSaslServer) -> None:
    server = postfix_sasl
    proc = cli(
        "probe",
        f"127.0.0.1:{server.plain_port}",
        "--ca-file",
        str(server.ca_file),
        "--servername",
        server.servername,
        "--helo",
        "probe.test",
        "--mail-from",
        SENDER,
        "--rcpt-to",
        server.unknown_recipient,
        "--transcript",
    )
    assert proc.returncode == 2, proc.stderr
    first, *rest = proc.stdout.splitlines()
    assert first.startswith("SMTP CRITICAL - 127.0.0.1:")
    assert "failed in rcpt: unexpected_reply" in first
    lines = dialogue("\n".join(rest))
    assert len(lines) == len(rest)  # every line after the plugin line is the transcript
    assert lines[0] == ("--", f"trying 127.0.0.1 port {server.plain_port}")
    assert ("S", "220 mail.test ESMTP Postfix (sasl test instance)") in lines
    tls = [text for who, text in lines if who == "TLS"]
    assert len(tls) == 1
    assert "subject CN=mail.test" in tls[0]
    assert tls[0].endswith(", verified")
    rcpt = lines.index(("C", f"RCPT TO:<{server.unknown_recipient}>"))
    assert lines[rcpt + 1][0] == "S"
    assert lines[rcpt + 1][1].startswith("550 5.1.1 ")
    assert lines[rcpt + 2 : rcpt + 4] == [("C", "RSET"), ("S", "250 2.0.0 Ok")]  # the polite end
    assert lines[-1][0] == "--"
    assert lines[-1][1].startswith("failed in rcpt: unexpected_reply: RCPT TO:<")


def _state(agent: AgentProcess) -> dict[str, Any]:
    path = agent.workdir / "state" / "state.db"
    if not path.exists():
        return {}
    conn = sqlite3.connect(path, timeout=5)
    try:
        row = conn.execute(
            "SELECT status, runs, last_result, last_failure FROM probe_state WHERE name='sasl'"
        ).fetchone()
    except sqlite3.OperationalError:
        return {}
    finally:
        conn.close()
    if row is None:
        return {}
    status, runs, last_result, last_failure = row
    return {
        "status": status,
        "runs": runs,
        "last_result": json.loads(last_result) if last_result else None,
        "last_failure": last_failure,
    }


def _failure_of(state: dict[str, Any]) -> dict[str, Any]:
    saved = state["last_failure"]
    failure = state["last_result"] if saved == "=" else json.loads(saved)
    assert isinstance(failure, dict)
    return failure


def _texts(result: dict[str, Any]) -> list[tuple[str, str]]:
    return [(who, text) for _, who, text in result["transcript"]["lines"]]


def test_a_live_agent_keeps_the_failed_transcript_past_recovery_kill_and_restart(
    postfix_sasl: PostfixSaslServer, tmp_path: Path
) -> None:
    server = postfix_sasl
    password_file = tmp_path / "smtp-password"
    password_file.write_text(WRONG + "\n")
    config: dict[str, Any] = {
        "defaults": {"interval": "1s", "timeout": "10s", "alert_after": 1},
        "smtp": [
            {
                "name": "sasl",
                "host": "127.0.0.1",
                "port": server.plain_port,
                "tls": "starttls",
                "ca_file": str(server.ca_file),
                "servername": server.servername,
                "helo": "probe.test",
                "auth": {"username": server.username, "password": {"file": str(password_file)}, "mechanism": "PLAIN"},
            }
        ],
        "prometheus_probe": {"allow": {"networks": ["127.0.0.0/8"], "ports": [server.plain_port]}},
    }
    agent = AgentProcess(tmp_path, config)
    agent.start()
    try:
        agent.wait_until(
            lambda: _state(agent).get("status") == "failed", 30, "the AUTH failure never reached the state"
        )
        failed = _failure_of(_state(agent))
        assert (failed["phase"], failed["reason"]) == ("auth", "auth_failed")
        lines = _texts(failed)
        assert ("C", "AUTH PLAIN <redacted>") in lines
        assert ("S", "535 <redacted>") in lines
        assert lines[-1][0] == "--"
        assert lines[-1][1].startswith("failed in auth: auth_failed: credentials refused: 535")

        # /probe?debug=true: Postfix's self-signed certificate does not verify without its CA file
        query = urllib.parse.urlencode({"target": f"127.0.0.1:{server.plain_port}", "tls": "starttls", "debug": "true"})
        status, page = agent.get(f"/probe?{query}")
        assert status == 200
        assert page.startswith("Transcript of the probe (failed in tls: tls_verify: certificate verification failed")
        debug_lines = dialogue(page.split("\n\nMetrics that would have been returned:\n")[0])
        assert ("S", "220 mail.test ESMTP Postfix (sasl test instance)") in debug_lines
        assert ("C", "STARTTLS") in debug_lines
        second_look = [text for who, text in debug_lines if who == "TLS"]
        assert len(second_look) == 1
        assert "subject CN=mail.test" in second_look[0]
        assert "smtp_probe_success{" in page
        assert f"Probe configuration:\nname: adhoc\nhost: 127.0.0.1\nport: {server.plain_port}\n" in page

        password_file.write_text(server.password + "\n")  # re-read every run: the probe recovers
        agent.wait_until(lambda: _state(agent).get("status") == "ok", 30, "the probe never recovered")
        recovered = _state(agent)
        assert _failure_of(recovered)["started_at"] == failed["started_at"]  # kept past the recovery
        assert ("C", "AUTH PLAIN <redacted>") in _texts(recovered["last_result"])
        assert ("S", "235 <redacted>") in _texts(recovered["last_result"])
        runs_before_kill = recovered["runs"]
    finally:
        agent.stop()  # SIGKILL: nothing flushed on the way out

    on_disk = _state(agent)
    assert on_disk["status"] == "ok"
    assert _failure_of(on_disk)["started_at"] == failed["started_at"]

    again = AgentProcess(tmp_path, config)
    again.start()
    try:
        again.wait_until(lambda: _state(again).get("runs", 0) > runs_before_kill + 1, 30, "no run after the restart")
        again.signal(signal.SIGTERM)
        assert again.proc is not None
        again.proc.wait(15)
    finally:
        again.stop()
    restarted = _state(again)
    assert restarted["status"] == "ok"
    kept = _failure_of(restarted)  # restored into the store at start-up and saved again from there
    assert kept["started_at"] == failed["started_at"]
    assert _texts(kept) == _texts(failed)

    # the operator's view of the same, from the state database
    shown_status = cli("status", "-c", str(again.config_file), "--transcript", "sasl")
    assert shown_status.returncode == 0, shown_status.stderr
    shown = shown_status.stdout.split("=== last run: ")
    assert shown[0].startswith("=== last failed run: ")
    assert ", failed in auth\n" in shown[0]
    assert ("C", "AUTH PLAIN <redacted>") in dialogue(shown[0])
    assert ("S", "535 <redacted>") in dialogue(shown[0])
    assert ("S", "235 <redacted>") in dialogue(shown[1])

    state_bytes = (tmp_path / "state" / "state.db").read_bytes().decode("latin-1")
    for text in (state_bytes, agent.logs(), again.logs(), page, shown_status.stdout):
        no_password(text, server.password)


@pytest.mark.parametrize(("protocol", "tls"), [("imap", "starttls"), ("pop3", "implicit")])
def test_a_delivery_through_the_real_chain_records_both_sides_without_a_password(
    mail_chain: MailChain, protocol: str, tls: str
) -> None:
    chain = mail_chain
    port = {
        ("imap", "starttls"): chain.imap_port,
        ("pop3", "implicit"): chain.pop3s_port,
    }[(protocol, tls)]
    config = DeliveryProbeConfig.model_validate(
        chain.delivery_probe("chain-transcript", mailbox={"protocol": protocol, "port": port, "tls": tls})
    )
    env = ProbeEnv(resolver=build_resolver(DnsConfig(nameservers=[f"{chain.host}:{chain.dns_port}"])))
    result = asyncio.run(delivery.run(config, env))
    assert result.ok, result.error
    assert result.transcript is not None
    text = result.transcript.as_text()
    lines = dialogue(text)
    sent = [line for who, line in lines if who == "C"]
    assert "AUTH PLAIN <redacted>" in sent
    assert ("S", "235 <redacted>") in lines
    assert any(line.startswith("DATA") for line in sent)
    tls_lines = [line for who, line in lines if who == "TLS"]
    assert len(tls_lines) >= 2  # the submission's STARTTLS and the mailbox's
    assert all(line.endswith(", verified") for line in tls_lines)
    if protocol == "imap":
        assert any(line.endswith("LOGIN <redacted>") for line in sent), text
        assert any(" UID FETCH " in f" {line}" for line in sent), text
    else:
        assert "PASS <redacted>" in sent
        assert "STAT" in sent
    saved = result_to_json(result)
    for secret in (chain.submitter.password, chain.mailbox.password):
        for form in (secret, base64.b64encode(secret.encode()).decode().rstrip("=")):
            assert form not in text
            assert form not in saved
