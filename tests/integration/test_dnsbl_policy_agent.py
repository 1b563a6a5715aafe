"""A listed address, a refused DNSBL query, an unexpected answer and the SPF/DMARC/TLS-RPT findings, end to
end: a real agent resolving through NSD (tests.peers.policy_zones) shows them in /metrics, net-snmp's
snmptable (mxDnsblTable, mxPolicyFindingTable), an mxCheckFailed at snmptrapd, `smtp-monitor status`;
and the one-shot `smtp-monitor mx` prints and exits accordingly."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from monitor.exporters.snmp import mib_oids as mib
from monitor.exporters.snmp.mib_oids import MxCheckColumn
from tests.integration.test_deploy import exported_series_names, rules_metric_names
from tests.peers import policy_zones as zones
from tests.peers.agent import AgentProcess
from tests.peers.net_snmp import tool_env
from tests.peers.nsd import NsdServer
from tests.peers.snmptrapd import TrapReceiver
from tests.support.ports import free_udp_port

ROOT = Path(__file__).resolve().parents[2]
MIB_DIR = ROOT / "mibs"
COMMUNITY = "dnsbl-read-51c7"
ZONE = zones.DNSBL_ZONE
CHECKS: dict[str, dict[str, object]] = {
    "bl-listed": {"domain": "listed.pol.test", "dnsbl": [ZONE]},
    "bl-refused": {"domain": "refused.pol.test", "dnsbl": [ZONE]},
    "bl-unexpected": {"domain": "unexpected.pol.test", "dnsbl": [ZONE]},
    "pol-none": {"domain": "none.pol.test", "spf": True, "dmarc": True, "tls_rpt": True},
    "pol-toomany": {"domain": "toomany.pol.test", "spf": True, "dmarc": True, "tls_rpt": True},
}


@pytest.fixture(scope="module")
def nsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NsdServer]:
    server = NsdServer(tmp_path_factory.mktemp("policy-nsd"), zones.policy_zones())
    try:
        server.start()
        yield server
    finally:
        server.close()


def snmp_tool(port: int, env: dict[str, str], base_mibs: Path, tool: str, *args: str) -> str:
    command = [
        tool, "-M", f"+{MIB_DIR}:{base_mibs}", "-m", "SMTP-MONITOR-MIB", "-v2c", "-c", COMMUNITY,
        "-t", "3", "-r", "2", f"udp:127.0.0.1:{port}", *args,
    ]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stderr == "", out.stderr
    return out.stdout


def table(port: int, env: dict[str, str], base_mibs: Path, name: str) -> list[dict[str, str]]:
    out = snmp_tool(port, env, base_mibs, "snmptable", "-Ci", "-Cf", "|", name)
    lines = [line for line in out.splitlines() if "|" in line]
    header = ["index", *lines[0].split("|")[1:]]
    return [dict(zip(header, line.split("|"), strict=True)) for line in lines[1:]]


def wait(check: Callable[[], bool], timeout: float, what: str, agent: AgentProcess) -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            pytest.fail(f"{what}\n--- agent log ---\n{agent.logs()[-3000:]}")
        time.sleep(0.2)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "monitor", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_listings_refusals_and_findings_on_every_surface(
    nsd: NsdServer,
    agent_factory: Callable[[dict[str, object]], AgentProcess],
    trap_receiver: TrapReceiver,
    base_mibs: Path,
    tmp_path: Path,
) -> None:
    snmp_port = free_udp_port()
    agent = agent_factory(
        {
            "defaults": {"interval": "1s", "timeout": "5s", "alert_after": 1},
            "dns": {"nameservers": [f"127.0.0.1:{nsd.port}"], "timeout": "2s"},
            "snmp": {
                "enabled": True,
                "listen": [f"udp:127.0.0.1:{snmp_port}"],
                "communities": [{"name": COMMUNITY}],
                "notify": [{"host": "127.0.0.1", "port": trap_receiver.port, "version": "2c", "community": "public"}],
            },
            "mx": [{"name": name, **settings} for name, settings in CHECKS.items()],
        }
    )
    wait(lambda: all(agent.value("mx_check_runs_total", check=name) for name in CHECKS), 30, "no runs", agent)

    # /metrics
    assert agent.value("mx_check_success", check="bl-listed", domain="listed.pol.test") == 0.0
    listed_failures = agent.value("mx_check_failures_total", check="bl-listed", phase="dnsbl", reason="listed")
    assert listed_failures is not None
    assert listed_failures >= 1
    assert agent.value("mx_check_dnsbl_listed", check="bl-listed", address=zones.LISTED_V4, zone=ZONE) == 1.0
    assert agent.value("mx_check_dnsbl_listed", check="bl-listed", address=zones.LISTED_V6, zone=ZONE) == 1.0
    assert agent.value("mx_check_success", check="bl-refused", domain="refused.pol.test") == 1.0
    refused = {"check": "bl-refused", "address": zones.REFUSED_V4, "zone": ZONE}
    assert agent.value("mx_check_dnsbl_error", **refused, error="refused") == 1.0
    assert agent.value("mx_check_dnsbl_listed", **refused) is None  # a refused query is no verdict
    unexpected = {"check": "bl-unexpected", "address": zones.UNEXPECTED_V4, "zone": ZONE}
    assert agent.value("mx_check_dnsbl_error", **unexpected, error="unexpected") == 1.0
    policy = {"check": "pol-none", "record": "dmarc", "finding": "policy"}
    assert agent.value("mx_check_policy_finding", **policy, level="warning") == 1.0
    assert agent.value("mx_check_success", check="pol-none", domain="none.pol.test") == 1.0
    too_many = {"check": "pol-toomany", "record": "spf", "finding": "dns_lookups", "level": "error"}
    assert agent.value("mx_check_policy_finding", **too_many) == 1.0
    policy_failures = agent.value(
        "mx_check_failures_total", check="pol-toomany", phase="policy", reason="policy_record"
    )
    assert policy_failures is not None
    assert policy_failures >= 1

    status_code, body = agent.get("/metrics")
    assert status_code == 200
    lint = subprocess.run(
        ["/usr/bin/promtool", "check", "metrics"], input=body, capture_output=True, text=True, timeout=60
    )
    assert (lint.returncode, lint.stdout + lint.stderr) == (0, "")
    # Every DNSBL and policy series the deploy/ rules read exists here (tests/integration/test_deploy.py's live
    # agent has no DNSBL zone to ask).
    exported = exported_series_names(body)
    used = {name for name in rules_metric_names() if name.startswith(("mx_check_dnsbl_", "mx_check_policy_"))}
    assert used
    assert used - exported == set()

    # the MIB, read by net-snmp by the MIB's names
    env = tool_env(tmp_path / "net-snmp")
    rows = {row["index"]: row for row in table(snmp_port, env, base_mibs, "mxDnsblTable")}
    listed = rows['"bl-listed".1.1']
    assert (listed["mxDnsblAddress"], listed["mxDnsblZone"], listed["mxDnsblStatus"]) == (
        zones.LISTED_V4,
        ZONE,
        "listed",
    )
    assert listed["mxDnsblCode"] == "127.0.0.2,127.0.0.4"
    assert listed["mxDnsblReason"] == zones.LISTED_REASON
    assert rows['"bl-listed".2.1']["mxDnsblAddress"] == zones.LISTED_V6
    assert rows['"bl-refused".1.1']["mxDnsblStatus"] == "refused"
    assert rows['"bl-refused".1.1']["mxDnsblCode"] == "127.255.255.254"
    assert rows['"bl-unexpected".1.1']["mxDnsblStatus"] == "unexpected"
    findings = table(snmp_port, env, base_mibs, "mxPolicyFindingTable")
    by_name = {(r["index"].split(".")[0], r["mxPolicyFindingRecord"], r["mxPolicyFindingName"]): r for r in findings}
    assert by_name[('"pol-none"', "dmarc", "policy")]["mxPolicyFindingLevel"] == "warning"
    assert by_name[('"pol-toomany"', "spf", "dns_lookups")]["mxPolicyFindingLevel"] == "error"
    assert by_name[('"pol-toomany"', "tlsRpt", "record")]["mxPolicyFindingLevel"] == "error"
    assert by_name[('"pol-none"', "spf", "dns_lookups")]["mxPolicyFindingLevel"] == "ok"
    checks = {r["mxCheckName"]: r for r in table(snmp_port, env, base_mibs, "mxCheckTable")}
    assert (checks["bl-listed"]["mxCheckFailedPhase"], checks["bl-listed"]["mxCheckFailedReason"]) == (
        "dnsbl",
        "listed",
    )
    assert checks["bl-refused"]["mxCheckStatus"] == "ok"

    # mxCheckFailed carries the phase and reason
    failed_oid = "." + ".".join(map(str, mib.notification_oid(mib.Notification.MX_CHECK_FAILED)))
    phase_oid = "." + ".".join(map(str, mib.mx_check_oid(MxCheckColumn.FAILED_PHASE, "bl-listed")))
    reason_oid = "." + ".".join(map(str, mib.mx_check_oid(MxCheckColumn.FAILED_REASON, "bl-listed")))

    def listed_trap() -> str:
        return next((line for line in trap_receiver.notifications() if failed_oid in line and phase_oid in line), "")

    wait(lambda: bool(listed_trap()), 15, "no mxCheckFailed for bl-listed", agent)
    assert re.search(re.escape(phase_oid) + rf" = INTEGER: {mib.PHASE_VALUES['dnsbl']}\b", listed_trap())
    assert re.search(re.escape(reason_oid) + rf" = INTEGER: {mib.REASON_VALUES['listed']}\b", listed_trap())

    # smtp-monitor status, from the agent's state database
    def status() -> subprocess.CompletedProcess[str]:
        return cli("status", "-c", str(agent.config_file), "--json")

    wait(lambda: all(r.get("mx") for r in json.loads(status().stdout)), 20, "not saved", agent)
    saved = {row["name"]: row for row in json.loads(status().stdout)}
    assert (saved["bl-listed"]["phase"], saved["bl-listed"]["reason"]) == ("dnsbl", "listed")
    assert saved["bl-listed"]["mx"]["dnsbl_listed"][0].startswith(f"{zones.LISTED_V4} in {ZONE} (127.0.0.2,127.0.0.4)")
    assert saved["bl-refused"]["mx"]["dnsbl_no_verdict"] == [
        f"{zones.REFUSED_V4} in {ZONE}: refused: query refused by {ZONE} (return code 127.255.255.254)"
    ]
    none_findings = saved["pol-none"]["mx"]["policy"]
    assert {"level": "warning", "finding": "DMARC subdomain_policy: sp=none"} in none_findings
    assert any(f["finding"].startswith("DMARC policy: p=none") for f in none_findings), none_findings
    text = cli("status", "-c", str(agent.config_file))
    assert text.returncode == 2  # failed checks
    assert re.search(r"^PROBE +DNSBL +POLICY +FINDINGS$", text.stdout, re.MULTILINE), text.stdout
    assert re.search(r"bl-listed\s+2 listed, 0 no verdict of 2", text.stdout), text.stdout
    assert re.search(r"pol-toomany\s+-\s+2 errors, 0 warnings", text.stdout), text.stdout


@pytest.mark.parametrize(
    ("domain", "args", "exit_code", "start"),
    [
        ("listed.pol.test", ("--dnsbl", ZONE), 2, "MX CRITICAL - listed.pol.test listed: listed on a DNSBL: "),
        ("refused.pol.test", ("--dnsbl", ZONE), 1, "MX WARNING - refused.pol.test 1 MX"),
        ("clean.pol.test", ("--dnsbl", ZONE), 0, "MX OK - clean.pol.test 1 MX"),
        ("none.pol.test", ("--spf", "--dmarc"), 1, "MX WARNING - none.pol.test 1 MX"),
        (
            "toomany.pol.test",
            ("--spf", "--tls-rpt"),
            2,
            "MX CRITICAL - toomany.pol.test policy_record: SPF dns_lookups",
        ),
        ("toomany.pol.test", ("--spf", "--no-policy-depth"), 0, "MX OK - toomany.pol.test"),
    ],
)
def test_one_shot_mx(nsd: NsdServer, domain: str, args: tuple[str, ...], exit_code: int, start: str) -> None:
    out = cli("mx", domain, "--nameserver", f"127.0.0.1:{nsd.port}", *args)
    assert out.returncode == exit_code, out.stdout + out.stderr
    assert out.stdout.startswith(start), out.stdout
    as_json = json.loads(cli("mx", domain, "--nameserver", f"127.0.0.1:{nsd.port}", "--json", *args).stdout)
    if "--dnsbl" in args:
        assert {a["zone"] for a in as_json["dnsbl"]["answers"]} == {ZONE}
    else:
        assert as_json.get("policy_findings", []) != [] or "--no-policy-depth" in args
