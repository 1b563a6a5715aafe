"""SMTP-MONITOR-MIB and monitor.exporters.snmp.mib_oids agree, as read by smilint and net-snmp's snmptranslate.

The checks that need no tool are in tests/unit/test_mib_oids.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest

from monitor.exporters.snmp import mib_oids
from tests.peers import net_snmp

ROOT = Path(__file__).resolve().parents[2]
MIB_DIR = ROOT / "mibs"
MIB_FILE = MIB_DIR / "SMTP-MONITOR-MIB.txt"
MODULE = "SMTP-MONITOR-MIB"


def _dotted(oid: tuple[int, ...]) -> str:
    return ".".join(str(arc) for arc in oid)


@pytest.fixture(scope="module")
def tool_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """No inherited MIB settings; net-snmp's persistent files in a private directory."""
    missing = [tool for tool in ("smilint", "snmptranslate") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"needs Debian packages smitools and snmp: {', '.join(missing)} not found")
    return net_snmp.tool_env(tmp_path_factory.mktemp("net-snmp"))


def snmptranslate(base_mibs: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["snmptranslate", "-M", f"+{MIB_DIR}:{base_mibs}", "-m", MODULE, *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=30,
    )


def mib_enum_values(base_mibs: Path, env: dict[str, str], obj: str) -> dict[str, int]:
    """The named numbers of an object's SYNTAX, from the `Values:` line of snmptranslate -Tp."""
    out = snmptranslate(base_mibs, env, "-Tp", f"{MODULE}::{obj}")
    assert out.returncode == 0, out.stderr
    match = re.search(r"Values: (.*)", out.stdout)
    assert match, out.stdout
    return {label: int(number) for label, number in re.findall(r"(\w+)\((\d+)\)", match.group(1))}


def test_smilint_level_6_reports_nothing(base_mibs: Path, tool_env: dict[str, str]) -> None:
    # smilint exits 0 even when it reports errors: any output at all is a finding.
    out = subprocess.run(
        ["smilint", "-l", "6", "-i", "namelength-32", "-s", "-m", str(MIB_FILE)],
        capture_output=True,
        text=True,
        env={**tool_env, "SMIPATH": f"{MIB_DIR}:{base_mibs}"},
        check=False,
        timeout=30,
    )
    assert out.stdout + out.stderr == ""


def test_snmptranslate_prints_the_tree_without_errors(base_mibs: Path, tool_env: dict[str, str]) -> None:
    out = snmptranslate(base_mibs, tool_env, "-Tp", f"{MODULE}::smtpMonitorMIB")
    assert out.returncode == 0
    assert out.stderr == ""
    assert f"smtpMonitorMIB({mib_oids.ENTERPRISE_OID[-1]})" in out.stdout
    assert "mxExchangeUp(5)" in out.stdout
    assert "mxAddressPtr(6)" in out.stdout
    assert "smtpAddressLatency(8)" in out.stdout
    assert "deliveryEventSubmitted(29)" in out.stdout
    assert "deliveryHopTime(8)" in out.stdout
    assert "smtpMonitorAgentOID(1)" in out.stdout  # sysObjectID.0 of the agent
    assert "smtpProbeTlsSeenUnixTime(33)" in out.stdout
    assert "deliveryHopUnixTime(9)" in out.stdout


def test_unix_time_columns_are_unsigned32_seconds_with_display_hint_d(
    base_mibs: Path, tool_env: dict[str, str]
) -> None:
    """What managers read: snmp_exporter makes a gauge of an Unsigned32, net-snmp prints it as a number."""
    names = [name for name in mib_oids.OID_BY_NAME if name.endswith("UnixTime")]
    assert len(names) == 10
    for name in names:
        out = snmptranslate(base_mibs, tool_env, "-Td", f"{MODULE}::{name}")
        assert out.returncode == 0, out.stderr
        assert "-- TEXTUAL CONVENTION SmtpMonitorUnixTime" in out.stdout, out.stdout
        assert "SYNTAX\tUnsigned32" in out.stdout, out.stdout
        assert 'DISPLAY-HINT\t"d"' in out.stdout, out.stdout
        assert 'UNITS\t\t"seconds"' in out.stdout, out.stdout


@pytest.mark.parametrize(("name", "oid"), sorted(mib_oids.OID_BY_NAME.items()), ids=sorted(mib_oids.OID_BY_NAME))
def test_oid_constant_equals_snmptranslate_numeric_oid(
    base_mibs: Path, tool_env: dict[str, str], name: str, oid: tuple[int, ...]
) -> None:
    out = snmptranslate(base_mibs, tool_env, "-On", f"{MODULE}::{name}")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "." + _dotted(oid)


def test_oid_by_name_lists_every_node_the_mib_defines(base_mibs: Path, tool_env: dict[str, str]) -> None:
    out = snmptranslate(base_mibs, tool_env, "-Tz")
    assert out.returncode == 0, out.stderr
    root = _dotted(mib_oids.MIB_ROOT)
    in_mib = {
        name: oid
        for name, oid in re.findall(r'"(\w+)"\s+"([\d.]+)"', out.stdout)
        if oid == root or oid.startswith(root + ".")
    }
    assert in_mib == {name: _dotted(oid) for name, oid in mib_oids.OID_BY_NAME.items()}


@pytest.mark.parametrize(
    ("obj", "values"),
    [
        pytest.param("smtpProbeStatus", mib_oids.STATUS_VALUES, id="smtpProbeStatus"),
        pytest.param("mxCheckStatus", mib_oids.STATUS_VALUES, id="mxCheckStatus"),
        pytest.param("smtpProbeTlsMode", mib_oids.TLS_MODE_VALUES, id="smtpProbeTlsMode"),
        pytest.param("smtpProbeFailedPhase", mib_oids.PHASE_VALUES, id="smtpProbeFailedPhase"),
        pytest.param("mxCheckFailedPhase", mib_oids.PHASE_VALUES, id="mxCheckFailedPhase"),
        pytest.param("smtpProbeFailedReason", mib_oids.REASON_VALUES, id="smtpProbeFailedReason"),
        pytest.param("mxCheckFailedReason", mib_oids.REASON_VALUES, id="mxCheckFailedReason"),
        pytest.param("mxExchangeUp", mib_oids.MX_EXCHANGE_UP_VALUES, id="mxExchangeUp"),
        pytest.param("mxCheckDnssec", mib_oids.DNSSEC_VALUES, id="mxCheckDnssec"),
        pytest.param("mxCheckMtaSts", mib_oids.MTA_STS_VALUES, id="mxCheckMtaSts"),
        pytest.param("mxCheckSpf", mib_oids.VERDICT_VALUES, id="mxCheckSpf"),
        pytest.param("mxCheckDmarc", mib_oids.VERDICT_VALUES, id="mxCheckDmarc"),
        pytest.param("mxExchangeDane", mib_oids.DANE_VALUES, id="mxExchangeDane"),
        pytest.param("mxExchangeMtaSts", mib_oids.MTA_STS_COVERAGE_VALUES, id="mxExchangeMtaSts"),
        pytest.param("mxAddressUp", mib_oids.MX_ADDRESS_UP_VALUES, id="mxAddressUp"),
        pytest.param("mxAddressPtr", mib_oids.PTR_VALUES, id="mxAddressPtr"),
        pytest.param("mxAddressSpoof", mib_oids.SPOOF_VALUES, id="mxAddressSpoof"),
        pytest.param("smtpAddressUp", mib_oids.SMTP_ADDRESS_UP_VALUES, id="smtpAddressUp"),
        pytest.param("smtpAddressFailedPhase", mib_oids.PHASE_VALUES, id="smtpAddressFailedPhase"),
        pytest.param("smtpAddressFailedReason", mib_oids.REASON_VALUES, id="smtpAddressFailedReason"),
        pytest.param("deliveryStatus", mib_oids.STATUS_VALUES, id="deliveryStatus"),
        pytest.param("deliveryFailedPhase", mib_oids.PHASE_VALUES, id="deliveryFailedPhase"),
        pytest.param("deliveryFailedReason", mib_oids.REASON_VALUES, id="deliveryFailedReason"),
        pytest.param("deliveryFolder", mib_oids.DELIVERY_FOLDER_VALUES, id="deliveryFolder"),
        pytest.param("deliveryHopsSource", mib_oids.HOPS_SOURCE_VALUES, id="deliveryHopsSource"),
        pytest.param("mxDnsblStatus", mib_oids.DNSBL_STATUS_VALUES, id="mxDnsblStatus"),
        pytest.param("deliveryDnsblStatus", mib_oids.DNSBL_STATUS_VALUES, id="deliveryDnsblStatus"),
        pytest.param("mxPolicyFindingRecord", mib_oids.POLICY_RECORD_VALUES, id="mxPolicyFindingRecord"),
        pytest.param("mxPolicyFindingLevel", mib_oids.FINDING_LEVEL_VALUES, id="mxPolicyFindingLevel"),
    ],
)
def test_enum_map_equals_mib_labels_in_camel_case(
    base_mibs: Path, tool_env: dict[str, str], obj: str, values: Mapping[str, int]
) -> None:
    expected = {mib_oids.mib_label(key): number for key, number in values.items()}
    assert mib_enum_values(base_mibs, tool_env, obj) == expected


def test_truth_values_match_snmpv2_tc(base_mibs: Path, tool_env: dict[str, str]) -> None:
    truth = {"true": mib_oids.TRUTH_VALUES[True], "false": mib_oids.TRUTH_VALUES[False]}
    for obj in ("smtpProbeCertVerified", "deliveryLatencyKnown", "deliveryHopDelayKnown"):
        assert mib_enum_values(base_mibs, tool_env, obj) == truth, obj


@pytest.mark.parametrize("notification", list(mib_oids.Notification), ids=lambda n: n.name.lower())
def test_notification_objects_match_mib_objects_clause(
    base_mibs: Path, tool_env: dict[str, str], notification: mib_oids.Notification
) -> None:
    name = mib_oids.mib_label(notification.name)
    out = snmptranslate(base_mibs, tool_env, "-Td", f"{MODULE}::{name}")
    assert out.returncode == 0, out.stderr
    match = re.search(r"OBJECTS\s*\{([^}]*)\}", out.stdout)
    assert match, out.stdout
    in_mib = [word.strip() for word in match.group(1).split(",")]
    by_oid = {oid: name for name, oid in mib_oids.OID_BY_NAME.items()}
    entry = {
        mib_oids.SmtpProbeColumn: mib_oids.SMTP_PROBE_ENTRY,
        mib_oids.MxCheckColumn: mib_oids.MX_CHECK_ENTRY,
        mib_oids.DeliveryColumn: mib_oids.DELIVERY_ENTRY,
    }
    in_code = [by_oid[(*entry[type(col)], int(col))] for col in mib_oids.NOTIFICATION_OBJECTS[notification]]
    assert in_code == in_mib


def test_instance_oids_encode_name_index_as_snmptranslate_does(base_mibs: Path, tool_env: dict[str, str]) -> None:
    cases = {
        f'{MODULE}::smtpProbeStatus."mail-1"': mib_oids.smtp_probe_oid(mib_oids.SmtpProbeColumn.STATUS, "mail-1"),
        f'{MODULE}::mxCheckDomain."ex.org"': mib_oids.mx_check_oid(mib_oids.MxCheckColumn.DOMAIN, "ex.org"),
        f'{MODULE}::mxExchangeName."ex.org".3': mib_oids.mx_exchange_oid(mib_oids.MxExchangeColumn.NAME, "ex.org", 3),
        f'{MODULE}::mxAddressPtr."ex.org".3.2': mib_oids.mx_address_oid(mib_oids.MxAddressColumn.PTR, "ex.org", 3, 2),
        f'{MODULE}::smtpAddressUp."mail-1".2': mib_oids.smtp_address_oid(mib_oids.SmtpAddressColumn.UP, "mail-1", 2),
        f"{MODULE}::smtpMonitorVersion.0": mib_oids.scalar_oid(mib_oids.Scalar.VERSION),
        f'{MODULE}::mxDnsblStatus."ex.org".2.3': mib_oids.mx_dnsbl_oid(mib_oids.MxDnsblColumn.STATUS, "ex.org", 2, 3),
        f'{MODULE}::deliveryDnsblCode."d-1".1.2': mib_oids.delivery_dnsbl_oid(
            mib_oids.DeliveryDnsblColumn.CODE, "d-1", 1, 2
        ),
        f'{MODULE}::mxPolicyFindingLevel."ex.org".7': mib_oids.mx_policy_finding_oid(
            mib_oids.MxPolicyFindingColumn.LEVEL, "ex.org", 7
        ),
        f'{MODULE}::deliveryLateCount."deliv-1"': mib_oids.delivery_oid(mib_oids.DeliveryColumn.LATE_COUNT, "deliv-1"),
        f'{MODULE}::deliveryHopDelay."deliv-1".4': mib_oids.delivery_hop_oid(
            mib_oids.DeliveryHopColumn.DELAY, "deliv-1", 4
        ),
    }
    for text, oid in cases.items():
        out = snmptranslate(base_mibs, tool_env, "-On", text)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "." + _dotted(oid), text
