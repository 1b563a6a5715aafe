"""SMTP-MONITOR-MIB and monitor.exporters.snmp.mib_oids agree, read from the MIB text and the code alone.

The checks that ask smilint and net-snmp's snmptranslate are in tests/integration/test_mib_oids_net_snmp.py.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest

from monitor.config.schema import TlsMode
from monitor.exporters.snmp import mib_oids
from monitor.model.delivery import DeliveryPhase, DeliveryReason
from monitor.model.results import Phase, Reason, Status

ROOT = Path(__file__).resolve().parents[2]
MIB_FILE = ROOT / "mibs" / "SMTP-MONITOR-MIB.txt"


def test_enterprise_oid_sits_under_enterprises() -> None:
    assert mib_oids.ENTERPRISE_OID[:6] == (1, 3, 6, 1, 4, 1)
    assert len(mib_oids.ENTERPRISE_OID) == 7
    assert mib_oids.MIB_ROOT == mib_oids.ENTERPRISE_OID


def test_mib_label_is_camel_case_of_snake_case() -> None:
    assert mib_oids.mib_label("tls_verify") == "tlsVerify"
    assert mib_oids.mib_label("ehlo_tls") == "ehloTls"
    assert mib_oids.mib_label("mta_sts_mismatch") == "mtaStsMismatch"
    assert mib_oids.mib_label("nxdomain") == "nxdomain"


def test_every_python_status_phase_reason_and_tls_mode_has_a_mib_value() -> None:
    assert {s.value for s in Status} <= mib_oids.STATUS_VALUES.keys()
    assert {p.value for p in Phase} <= mib_oids.PHASE_VALUES.keys()
    assert {r.value for r in Reason} <= mib_oids.REASON_VALUES.keys()
    assert {p.value for p in DeliveryPhase} <= mib_oids.PHASE_VALUES.keys()
    assert {r.value for r in DeliveryReason} <= mib_oids.REASON_VALUES.keys()
    assert set(typing.get_args(TlsMode)) <= mib_oids.TLS_MODE_VALUES.keys()
    # A run that did not fail has no Python phase or reason: the MIB says none(1).
    assert mib_oids.PHASE_VALUES["none"] == 1
    assert mib_oids.REASON_VALUES["none"] == 1


def test_name_index_accepts_1_to_100_octets_within_the_oid_length_limit() -> None:
    assert mib_oids.name_index("a") == (1, 97)
    longest = mib_oids.mx_address_oid(mib_oids.MxAddressColumn.PTR, "n" * 100, 65535, 65535)
    assert len(longest) <= 128  # RFC 2578 limit on sub-identifiers in an OID
    with pytest.raises(ValueError, match="1 to 100"):
        mib_oids.name_index("")
    with pytest.raises(ValueError, match="1 to 100"):
        mib_oids.name_index("n" * 101)
    with pytest.raises(ValueError, match="1 to 65535"):
        mib_oids.mx_exchange_oid(mib_oids.MxExchangeColumn.UP, "n", 0)
    with pytest.raises(ValueError, match="address position 65536 must be 1 to 65535"):
        mib_oids.mx_address_oid(mib_oids.MxAddressColumn.PTR, "n", 1, 65536)
    with pytest.raises(ValueError, match="address position 0 must be 1 to 65535"):
        mib_oids.smtp_address_oid(mib_oids.SmtpAddressColumn.UP, "n", 0)
    with pytest.raises(ValueError, match="hop number 0 must be 1 to 65535"):
        mib_oids.delivery_hop_oid(mib_oids.DeliveryHopColumn.BY, "n", 0)


def test_notification_oid_is_under_the_zero_arc() -> None:
    oid = mib_oids.notification_oid(mib_oids.Notification.SMTP_CERT_EXPIRING)
    assert oid == (*mib_oids.NOTIFICATIONS, 0, 5)


def test_date_and_time_never_is_year_0_january_1() -> None:
    never = mib_oids.DATE_AND_TIME_NEVER
    assert (len(never), never[:2], never[2], never[3]) == (8, b"\0\0", 1, 1)
    assert never[4:] == bytes(4)


class TestRevisionsAndConformance:
    """The module's history and compliance, read from the MIB text (smilint checks the syntax)."""

    def test_last_updated_equals_the_newest_revision_and_revisions_run_newest_first(self) -> None:
        text = MIB_FILE.read_text()
        last_updated = re.findall(r'LAST-UPDATED\s+"(\d{12}Z)"', text)
        revisions = re.findall(r'REVISION\s+"(\d{12}Z)"', text)
        assert len(last_updated) == 1
        assert revisions == sorted(revisions, reverse=True)
        assert last_updated[0] == revisions[0]
        assert len(revisions) == len(set(revisions)) >= 2

    def test_compliance_names_every_group(self) -> None:
        text = MIB_FILE.read_text()
        compliance = text[text.index("smtpMonitorCompliance MODULE-COMPLIANCE") :]
        compliance = compliance[: compliance.index("::=")]
        named = set(re.findall(r"\b(\w+Group)\b", compliance))
        assert named == {mib_oids.mib_label(group.name) for group in mib_oids.Group}

    def test_every_readable_object_is_in_exactly_one_object_group(self) -> None:
        # net-snmp's -Td does not print a group's OBJECTS: read them from the text.
        groups = re.findall(r"(\w+) OBJECT-GROUP\s+OBJECTS\s*\{([^}]*)\}", MIB_FILE.read_text())
        notification_groups = {g for g in mib_oids.Group if g.name.endswith("NOTIFICATION_GROUP")}
        object_groups = {mib_oids.mib_label(g.name) for g in mib_oids.Group if g not in notification_groups}
        assert {name for name, _ in groups} == object_groups
        members = [word.strip() for _, objects in groups for word in objects.split(",")]
        not_accessible = {
            "smtpProbeIndexName",
            "mxCheckIndexName",
            "mxExchangeOrder",
            "mxAddressOrder",
            "smtpAddressOrder",
            "deliveryIndexName",
            "deliveryHopNumber",
            "mxDnsblAddressNumber",
            "mxDnsblZoneNumber",
            "mxPolicyFindingNumber",
            "deliveryDnsblAddressNumber",
            "deliveryDnsblZoneNumber",
        }
        tables = (
            mib_oids.SMTP_PROBE_ENTRY,
            mib_oids.MX_CHECK_ENTRY,
            mib_oids.MX_EXCHANGE_ENTRY,
            mib_oids.MX_ADDRESS_ENTRY,
            mib_oids.SMTP_ADDRESS_ENTRY,
            mib_oids.DELIVERY_ENTRY,
            mib_oids.DELIVERY_HOP_ENTRY,
            mib_oids.MX_DNSBL_ENTRY,
            mib_oids.MX_POLICY_FINDING_ENTRY,
            mib_oids.DELIVERY_DNSBL_ENTRY,
            mib_oids.SCALARS,
        )
        readable = [
            name for name, oid in mib_oids.OID_BY_NAME.items() if oid[:-1] in tables and name not in not_accessible
        ]
        assert sorted(members) == sorted(readable)
