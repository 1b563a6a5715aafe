"""The MX check's spoof test against the real mail chain (tests.peers.mail_chain): protected.test has two
MXs on the same port, the chain MX Postfix (policyd-spf and OpenDMARC record verdicts but enforce
nothing) and a strict Postfix whose policyd-spf refuses an SPF fail at RCPT.  One check shows one
exchange refusing and one spoofable, the accepted forgery found in the delivery probe's mailbox with its
Authentication-Results, and deleted."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from monitor.cli.main import main
from monitor.config.schema import Config, DnsConfig, MxCheckConfig
from monitor.exporters.snmp import mib_oids as mib
from monitor.model.results import MxResult, Phase, Reason
from monitor.model.spoof import SpoofAttempt, SpoofOutcome, SpoofStep
from monitor.probes import ProbeEnv, build_resolver, mx
from tests.integration.test_deploy import exported_series_names, rules_metric_names
from tests.peers.agent import AgentProcess
from tests.peers.mail_chain import MailChain, StrictMxPostfix
from tests.peers.net_snmp import tool_env
from tests.peers.snmptrapd import TrapReceiver
from tests.support.ports import free_udp_port

MAILBOX_PROBE = "chain-mailbox"


@pytest.fixture(scope="module")
def strict_mx(mail_chain: MailChain, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StrictMxPostfix]:
    mail_chain.ensure_running()
    server = mail_chain.make_strict_mx(tmp_path_factory.mktemp("strict-mx"))
    try:
        server.start()
        yield server
    finally:
        server.close()


def config_document(chain: MailChain, **spoof: Any) -> dict[str, Any]:
    return {
        "delivery": [
            {
                "name": MAILBOX_PROBE,
                "submit": {"host": chain.host, "port": chain.msa_submission_port},
                "from": chain.submitter.address,
                "to": chain.mailbox.address,
                "mailbox": {
                    "protocol": "imap",
                    "host": chain.host,
                    "port": chain.imaps_port,
                    "tls": "implicit",
                    "username": chain.mailbox.address,
                    "password": chain.mailbox.password,
                    "ca_file": str(chain.ca_file),
                    "servername": chain.servername,
                    "poll_interval": 0.5,
                },
                "authserv_id": chain.mx_host,
                "timeouts": {"submit": 10, "mailbox": 5, "cleanup": 5},
            }
        ],
        "mx": [
            {
                "name": "protected",
                "domain": chain.protected_domain,
                "port": chain.mx_port,
                "timeout": 60,
                "spoof_test": {"recipient": chain.mailbox.address, "mailbox": MAILBOX_PROBE, "wait": 20, **spoof},
            }
        ],
    }


def check(chain: MailChain, config: MxCheckConfig) -> MxResult:
    env = ProbeEnv(resolver=build_resolver(DnsConfig(nameservers=[f"{chain.host}:{chain.dns_port}"])))
    return asyncio.run(mx.run(config, env))


def attempt_at(result: MxResult, exchange: str) -> SpoofAttempt:
    (record,) = [r for r in result.records if r.exchange == exchange]
    (attempt,) = record.spoof
    return attempt


def test_one_exchange_refuses_the_other_is_spoofable_and_the_forgery_is_read_and_deleted(
    mail_chain: MailChain, strict_mx: StrictMxPostfix, tmp_path: Path
) -> None:
    chain = mail_chain
    config = Config.model_validate(config_document(chain)).mx[0]
    result = check(chain, config)

    assert (result.ok, result.phase, result.reason) == (False, Phase.SPOOF, Reason.SPOOFABLE), result.error
    assert f"{chain.mx_host} (127.0.0.1): 250" in result.error
    assert chain.strict_mx_host not in result.error

    strict = attempt_at(result, chain.strict_mx_host)
    assert strict.address == chain.strict_mx_address
    assert (strict.outcome, strict.step, strict.reply_code) == (SpoofOutcome.REFUSED, SpoofStep.RCPT, 550)
    assert "SPF" in strict.reply, strict.reply  # policyd-spf's own refusal text
    assert strict.source_spf == "fail"

    open_mx = attempt_at(result, chain.mx_host)
    assert (open_mx.outcome, open_mx.step, open_mx.reply_code) == (SpoofOutcome.SPOOFABLE, SpoofStep.DATA, 250)
    assert (open_mx.source_address, open_mx.source_spf) == ("127.0.0.1", "fail")
    landed = open_mx.mailbox
    assert landed is not None
    assert (landed.found, landed.folder, landed.deleted, landed.error) == (True, "inbox", True, "")
    assert landed.verdict("spf") == "fail"
    assert landed.verdict("dmarc") == "fail"
    assert {v.authserv_id for v in landed.verdicts} == {chain.mx_host}
    # deleted: the forgery is gone from the Maildir
    assert all(message.message_id != open_mx.message_id for message in chain.inbox())
    assert all(message.message_id != open_mx.message_id for message in chain.junk())


def test_without_a_mailbox_the_acceptance_alone_is_reported_and_a_later_run_sweeps_the_forgery(
    mail_chain: MailChain, strict_mx: StrictMxPostfix
) -> None:
    chain = mail_chain
    document = config_document(chain)
    del document["mx"][0]["spoof_test"]["mailbox"]
    result = check(chain, Config.model_validate(document).mx[0])
    assert (result.phase, result.reason) == (Phase.SPOOF, Reason.SPOOFABLE)
    unread = attempt_at(result, chain.mx_host)
    assert (unread.outcome, unread.mailbox) == (SpoofOutcome.SPOOFABLE, None)
    assert chain.wait_for_message(unread.message_id).message_id == unread.message_id  # left where it landed

    # the next run that may read the mailbox deletes its own forgery and this check's leftovers
    again = check(chain, Config.model_validate(config_document(chain)).mx[0])
    read = attempt_at(again, chain.mx_host)
    assert read.mailbox is not None
    assert read.mailbox.deleted
    left = {message.message_id for message in chain.inbox() + chain.junk()}
    assert unread.message_id not in left
    assert read.message_id not in left


# -- the running agent: /metrics, the MIB, notifications, status; and the one-shot command --------------------

COMMUNITY = "spoof-read-5e2a"
AGENT_CHECK = "guarded-440"
ROOT = Path(__file__).resolve().parents[2]


def snmp_run(port: int, env: dict[str, str], base_mibs: Path, tool: str, *args: str) -> str:
    command = [
        tool, "-M", f"+{ROOT / 'mibs'}:{base_mibs}", "-m", "SMTP-MONITOR-MIB", "-v2c", "-c", COMMUNITY,
        "-t", "3", "-r", "2", f"udp:127.0.0.1:{port}", *args,
    ]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_agent_reports_the_spoofable_exchange_everywhere(
    mail_chain: MailChain,
    strict_mx: StrictMxPostfix,
    agent_factory: Callable[[dict[str, object]], AgentProcess],
    trap_receiver: TrapReceiver,
    base_mibs: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    chain = mail_chain
    port = free_udp_port()
    document = config_document(chain)
    document["delivery"][0]["interval"] = "1h"  # the mailbox's probe: not what this test is about
    # the scheduler starts a check at a stable offset within its interval (crc32 of the name): 2 s for this one
    document["mx"][0].update({"name": AGENT_CHECK, "interval": "10m", "alert_after": 1})
    agent = agent_factory(
        {
            **document,
            "dns": {"nameservers": [f"{chain.host}:{chain.dns_port}"]},
            "snmp": {
                "enabled": True,
                "listen": [f"udp:127.0.0.1:{port}"],
                "communities": [{"name": COMMUNITY}],
                "notify": [{"host": "127.0.0.1", "port": trap_receiver.port, "version": "2c", "community": "public"}],
            },
        }
    )
    open_mx = {"check": AGENT_CHECK, "exchange": chain.mx_host, "address": "127.0.0.1"}
    strict = {"check": AGENT_CHECK, "exchange": chain.strict_mx_host, "address": chain.strict_mx_address}
    agent.wait_until(lambda: agent.value("mx_check_spoof_accepted", **open_mx) == 1.0, 90, "no spoof verdict")

    # /metrics
    assert agent.value("mx_check_spoof_accepted", **strict) == 0.0
    assert agent.value("mx_check_spoof_outcome", **strict, outcome="refused", step="rcpt") == 1.0
    assert agent.value("mx_check_spoof_delivered", **open_mx, folder="inbox") == 1.0
    assert agent.value("mx_check_spoof_auth_result", **open_mx, method="dmarc", result="fail") == 1.0
    assert agent.value("mx_check_failures_total", check=AGENT_CHECK, phase="spoof", reason="spoofable") == 1.0
    # every spoof series deploy/'s rules read is here (tests/integration/test_deploy.py's agent runs no spoof test)
    _, body = agent.get("/metrics")
    used = {name for name in rules_metric_names() if name.startswith("mx_check_spoof_")}
    assert used
    assert used <= exported_series_names(body)

    # the MIB: mxAddressSpoof per exchange address, the check's failed phase and reason
    env = tool_env(tmp_path / "net-snmp")
    table = snmp_run(port, env, base_mibs, "snmptable", "-Ci", "-Cf", "|", "mxAddressTable")
    rows = {line.split("|")[1]: line for line in table.splitlines() if line.count("|") > 3}
    assert "spoofable" in rows["127.0.0.1"], table
    assert "refused" in rows[chain.strict_mx_address], table
    assert "550" in rows[chain.strict_mx_address], table
    checks = snmp_run(port, env, base_mibs, "snmpget", "-Oqv", f'mxCheckFailedPhase."{AGENT_CHECK}"')
    assert checks.strip() == "spoof"

    # mxCheckFailed at snmptrapd, with phase spoof(26) and reason spoofable(37)
    trap_oid = "." + ".".join(map(str, mib.notification_oid(mib.Notification.MX_CHECK_FAILED)))
    phase_oid = "." + ".".join(map(str, mib.mx_check_oid(mib.MxCheckColumn.FAILED_PHASE, AGENT_CHECK)))
    reason_oid = "." + ".".join(map(str, mib.mx_check_oid(mib.MxCheckColumn.FAILED_REASON, AGENT_CHECK)))

    def failed_traps() -> list[str]:
        return [line for line in trap_receiver.notifications() if trap_oid + "\t" in line + "\t"]

    agent.wait_until(lambda: bool(failed_traps()), 30, "no mxCheckFailed")
    (trap,) = failed_traps()
    assert f"{phase_oid} = INTEGER: 26" in trap
    assert f"{reason_oid} = INTEGER: 37" in trap
    assert chain.mailbox.password not in "".join(trap_receiver.lines())

    # smtp-monitor status, from the state the agent saved when it stopped
    agent.stop()
    assert main(["status", "-c", str(agent.config_file), "--json"]) == 2
    rows_json = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    spoofed = {s["exchange"]: s for s in rows_json[AGENT_CHECK]["spoof"]}
    assert (spoofed[chain.mx_host]["outcome"], spoofed[chain.mx_host]["landed"]) == (
        "spoofable",
        "inbox (spf=fail dkim=none dmarc=fail)",
    )
    assert (spoofed[chain.strict_mx_host]["outcome"], spoofed[chain.strict_mx_host]["step"]) == ("refused", "rcpt")


def test_the_one_shot_command_finds_the_spoofable_exchange(
    mail_chain: MailChain, strict_mx: StrictMxPostfix, capsys: pytest.CaptureFixture[str]
) -> None:
    chain = mail_chain
    argv = [
        "mx",
        chain.protected_domain,
        "--nameserver",
        f"{chain.host}:{chain.dns_port}",
        "--port",
        str(chain.mx_port),
    ]
    code = main([*argv, "--timeout", "30s", "--spoof-test", chain.mailbox.address])
    out = capsys.readouterr().out
    assert code == 2, out
    assert out.startswith(f"MX CRITICAL - {chain.protected_domain} spoofable: accepted a message forged from "), out
    assert f"{chain.mx_host} (127.0.0.1): 250" in out
    assert "spoof_refused=1 spoof_spoofable=1 spoof_inconclusive=0 spoof_error=0" in out

    # the one-shot cannot read the mailbox: a check of the same name that can sweeps its forgery
    document = config_document(chain)
    document["mx"][0]["name"] = "cli"
    check(chain, Config.model_validate(document).mx[0])
    assert not [m for m in chain.inbox() + chain.junk() if "smtp-monitor spoof test cli" in m.subject]
