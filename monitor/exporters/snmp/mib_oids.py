"""OIDs and enumeration values of mibs/SMTP-MONITOR-MIB.txt, all derived from ENTERPRISE_OID."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final

# PLACEHOLDER: 32473 is RFC 5612's documentation enterprise number. Replace it with your
# registered Private Enterprise Number here and in the MODULE-IDENTITY of
# mibs/SMTP-MONITOR-MIB.txt (`smtpMonitorMIB ::= { enterprises 32473 }`); nothing else changes.
ENTERPRISE_OID: tuple[int, ...] = (1, 3, 6, 1, 4, 1, 32473)

Oid = tuple[int, ...]

# smtpMonitorMIB is registered at the enterprise arc itself.
MIB_ROOT: Final[Oid] = ENTERPRISE_OID

NOTIFICATIONS: Final[Oid] = (*MIB_ROOT, 1)  # smtpMonitorNotifications
NOTIFICATION_PREFIX: Final[Oid] = (*NOTIFICATIONS, 0)  # smtpMonitorNotificationPrefix
OBJECTS: Final[Oid] = (*MIB_ROOT, 2)  # smtpMonitorObjects
CONFORMANCE: Final[Oid] = (*MIB_ROOT, 3)  # smtpMonitorConformance
REGISTRATIONS: Final[Oid] = (*MIB_ROOT, 4)  # smtpMonitorRegistrations
# smtpMonitorAgentOID: the agent's sysObjectID.0, by which an NMS (LibreNMS) recognises it.
AGENT_OID: Final[Oid] = (*REGISTRATIONS, 1)

SCALARS: Final[Oid] = (*OBJECTS, 1)  # smtpMonitorScalars
SMTP_PROBE_TABLE: Final[Oid] = (*OBJECTS, 2)
SMTP_PROBE_ENTRY: Final[Oid] = (*SMTP_PROBE_TABLE, 1)
MX_CHECK_TABLE: Final[Oid] = (*OBJECTS, 3)
MX_CHECK_ENTRY: Final[Oid] = (*MX_CHECK_TABLE, 1)
MX_EXCHANGE_TABLE: Final[Oid] = (*OBJECTS, 4)
MX_EXCHANGE_ENTRY: Final[Oid] = (*MX_EXCHANGE_TABLE, 1)
MX_ADDRESS_TABLE: Final[Oid] = (*OBJECTS, 5)
MX_ADDRESS_ENTRY: Final[Oid] = (*MX_ADDRESS_TABLE, 1)
SMTP_ADDRESS_TABLE: Final[Oid] = (*OBJECTS, 6)
SMTP_ADDRESS_ENTRY: Final[Oid] = (*SMTP_ADDRESS_TABLE, 1)
DELIVERY_TABLE: Final[Oid] = (*OBJECTS, 7)
DELIVERY_ENTRY: Final[Oid] = (*DELIVERY_TABLE, 1)
DELIVERY_HOP_TABLE: Final[Oid] = (*OBJECTS, 8)
DELIVERY_HOP_ENTRY: Final[Oid] = (*DELIVERY_HOP_TABLE, 1)
MX_DNSBL_TABLE: Final[Oid] = (*OBJECTS, 9)
MX_DNSBL_ENTRY: Final[Oid] = (*MX_DNSBL_TABLE, 1)
MX_POLICY_FINDING_TABLE: Final[Oid] = (*OBJECTS, 10)
MX_POLICY_FINDING_ENTRY: Final[Oid] = (*MX_POLICY_FINDING_TABLE, 1)
DELIVERY_DNSBL_TABLE: Final[Oid] = (*OBJECTS, 11)
DELIVERY_DNSBL_ENTRY: Final[Oid] = (*DELIVERY_DNSBL_TABLE, 1)

COMPLIANCES: Final[Oid] = (*CONFORMANCE, 1)  # smtpMonitorCompliances
GROUPS: Final[Oid] = (*CONFORMANCE, 2)  # smtpMonitorGroups
COMPLIANCE: Final[Oid] = (*COMPLIANCES, 1)  # smtpMonitorCompliance


class Scalar(enum.IntEnum):
    """Scalars under smtpMonitorScalars; MIB name is smtpMonitor + CamelCase of the member."""

    PROBE_COUNT = 1
    PROBES_FAILED = 2
    MX_CHECK_COUNT = 3
    MX_CHECKS_FAILED = 4
    VERSION = 5
    CONFIG_LOAD_TIME = 6
    CONFIG_LOAD_SUCCESS = 7
    DELIVERY_COUNT = 8
    DELIVERIES_FAILED = 9
    CONFIG_LOAD_UNIX_TIME = 10  # SmtpMonitorUnixTime: Unix seconds, 0 for never


class SmtpProbeColumn(enum.IntEnum):
    """Columns of smtpProbeEntry; MIB name is smtpProbe + CamelCase of the member."""

    INDEX_NAME = 1  # not-accessible index
    NAME = 2
    HOST = 3
    PORT = 4
    TLS_MODE = 5
    INTERVAL = 6
    STATUS = 7
    LAST_ERROR = 8
    FAILED_PHASE = 9
    FAILED_REASON = 10
    REPLY_CODE = 11
    LATENCY = 12
    CONNECT_LATENCY = 13
    BANNER_LATENCY = 14
    EHLO_LATENCY = 15
    TLS_LATENCY = 16
    CONSECUTIVE_FAILURES = 17
    RUNS = 18
    FAILURES = 19
    LAST_SUCCESS = 20
    LAST_CHANGE = 21
    TLS_VERSION = 22
    TLS_CIPHER = 23
    CERT_EXPIRY = 24
    CERT_DAYS_LEFT = 25
    CERT_VERIFIED = 26
    CERT_SUBJECT = 27
    ADDRESS = 28
    TLS_SEEN = 29  # when the TLS and certificate columns were taken
    # The DateAndTime columns 20, 21, 24 and 29 again as SmtpMonitorUnixTime (0: never), for NMSs that read numbers.
    LAST_SUCCESS_UNIX_TIME = 30
    LAST_CHANGE_UNIX_TIME = 31
    CERT_EXPIRY_UNIX_TIME = 32
    TLS_SEEN_UNIX_TIME = 33


class MxCheckColumn(enum.IntEnum):
    """Columns of mxCheckEntry; MIB name is mxCheck + CamelCase of the member."""

    INDEX_NAME = 1  # not-accessible index
    NAME = 2
    DOMAIN = 3
    STATUS = 4
    LAST_ERROR = 5
    FAILED_PHASE = 6
    FAILED_REASON = 7
    RECORDS = 8
    LATENCY = 9
    CONSECUTIVE_FAILURES = 10
    RUNS = 11
    FAILURES = 12
    LAST_SUCCESS = 13
    LAST_CHANGE = 14
    IMPLICIT_MX = 15
    DNSSEC = 16
    MTA_STS = 17
    MTA_STS_MODE = 18
    SPF = 19
    DMARC = 20
    LAST_SUCCESS_UNIX_TIME = 21  # columns 13 and 14 as SmtpMonitorUnixTime (0: never)
    LAST_CHANGE_UNIX_TIME = 22


class MxExchangeColumn(enum.IntEnum):
    """Columns of mxExchangeEntry (index: check name, order); MIB name is mxExchange + CamelCase."""

    ORDER = 1  # not-accessible index
    NAME = 2
    PREFERENCE = 3
    ADDRESSES = 4
    UP = 5
    DANE = 6
    MTA_STS = 7


class MxAddressColumn(enum.IntEnum):
    """Columns of mxAddressEntry (index: check name, exchange order, address order); mxAddress + CamelCase."""

    ORDER = 1  # not-accessible index
    VALUE = 2
    UP = 3
    LAST_ERROR = 4
    PTR_NAME = 5
    PTR = 6
    SPOOF = 7  # the spoof test's outcome at this address
    SPOOF_REPLY = 8


class MxDnsblColumn(enum.IntEnum):
    """Columns of mxDnsblEntry (index: check name, address number, zone number); mxDnsbl + CamelCase."""

    ADDRESS_NUMBER = 1  # not-accessible index
    ZONE_NUMBER = 2  # not-accessible index
    ADDRESS = 3
    ZONE = 4
    STATUS = 5
    CODE = 6
    REASON = 7


class DeliveryDnsblColumn(enum.IntEnum):
    """Columns of deliveryDnsblEntry (index: probe name, address number, zone number); deliveryDnsbl + CamelCase."""

    ADDRESS_NUMBER = 1  # not-accessible index
    ZONE_NUMBER = 2  # not-accessible index
    ADDRESS = 3
    ZONE = 4
    STATUS = 5
    CODE = 6
    REASON = 7


class MxPolicyFindingColumn(enum.IntEnum):
    """Columns of mxPolicyFindingEntry (index: check name, finding number); mxPolicyFinding + CamelCase."""

    NUMBER = 1  # not-accessible index
    RECORD = 2
    NAME = 3
    LEVEL = 4
    DETAIL = 5


class SmtpAddressColumn(enum.IntEnum):
    """Columns of smtpAddressEntry (index: probe name, address order); smtpAddress + CamelCase."""

    ORDER = 1  # not-accessible index
    VALUE = 2
    UP = 3
    LAST_ERROR = 4
    FAILED_PHASE = 5
    FAILED_REASON = 6
    REPLY_CODE = 7
    LATENCY = 8


class DeliveryColumn(enum.IntEnum):
    """Columns of deliveryEntry; MIB name is delivery + CamelCase of the member."""

    INDEX_NAME = 1  # not-accessible index
    NAME = 2
    RECIPIENT = 3
    STATUS = 4
    LAST_ERROR = 5
    FAILED_PHASE = 6
    FAILED_REASON = 7
    REPLY_CODE = 8
    LATENCY = 9
    LATENCY_KNOWN = 10  # so that "no message arrived yet" is not a latency of 0
    PENDING = 11
    LATE_COUNT = 12
    LOST_COUNT = 13
    CONSECUTIVE_FAILURES = 14
    RUNS = 15
    FAILURES = 16
    LAST_SUCCESS = 17
    LAST_CHANGE = 18
    QUEUE_ID = 19
    SUBMITTED_TO = 20
    SPF = 21
    DKIM = 22
    DMARC = 23
    FOLDER = 24
    FOLDER_NAME = 25
    HOPS = 26
    HOPS_SOURCE = 27
    EVENT_LATENCY = 28  # accessible-for-notify: deliveryLate's message
    EVENT_SUBMITTED = 29  # accessible-for-notify: deliveryLate's or deliveryLost's message
    LAST_SUCCESS_UNIX_TIME = 30  # columns 17 and 18 as SmtpMonitorUnixTime (0: never)
    LAST_CHANGE_UNIX_TIME = 31


# Columns carried by notifications only (accessible-for-notify): never served by GET.
DELIVERY_EVENT_COLUMNS: Final[frozenset[DeliveryColumn]] = frozenset(
    {DeliveryColumn.EVENT_LATENCY, DeliveryColumn.EVENT_SUBMITTED}
)


class DeliveryHopColumn(enum.IntEnum):
    """Columns of deliveryHopEntry (index: probe name, hop number); deliveryHop + CamelCase."""

    NUMBER = 1  # not-accessible index
    BY = 2
    FROM = 3
    PROTOCOL = 4
    DELAY = 5
    DELAY_KNOWN = 6
    QUEUE_ID = 7
    TIME = 8
    UNIX_TIME = 9  # TIME as SmtpMonitorUnixTime (0: no readable time)


class Notification(enum.IntEnum):
    """Notifications under smtpMonitorNotificationPrefix; MIB name is lowerCamelCase of the member."""

    SMTP_PROBE_FAILED = 1
    SMTP_PROBE_RECOVERED = 2
    MX_CHECK_FAILED = 3
    MX_CHECK_RECOVERED = 4
    SMTP_CERT_EXPIRING = 5
    DELIVERY_PROBE_FAILED = 6
    DELIVERY_PROBE_RECOVERED = 7
    DELIVERY_LATE = 8
    DELIVERY_LOST = 9


class Group(enum.IntEnum):
    """Conformance groups under smtpMonitorGroups; MIB name is lowerCamelCase of the member."""

    SMTP_MONITOR_SCALAR_GROUP = 1
    SMTP_PROBE_GROUP = 2
    MX_CHECK_GROUP = 3
    MX_EXCHANGE_GROUP = 4
    SMTP_MONITOR_NOTIFICATION_GROUP = 5
    SMTP_PROBE_TLS_SEEN_GROUP = 6
    MX_CHECK_POLICY_GROUP = 7
    MX_EXCHANGE_POLICY_GROUP = 8
    MX_ADDRESS_GROUP = 9
    SMTP_ADDRESS_GROUP = 10
    DELIVERY_GROUP = 11
    DELIVERY_HOP_GROUP = 12
    DELIVERY_NOTIFICATION_GROUP = 13
    MX_DNSBL_GROUP = 17
    MX_POLICY_FINDING_GROUP = 18
    DELIVERY_DNSBL_GROUP = 19
    SMTP_MONITOR_UNIX_TIME_GROUP = 14
    MX_ADDRESS_SPOOF_GROUP = 16


# Objects each notification carries, in the order of its OBJECTS clause (columns of one row).
NotificationColumn = SmtpProbeColumn | MxCheckColumn | DeliveryColumn
NOTIFICATION_OBJECTS: Final[Mapping[Notification, tuple[NotificationColumn, ...]]] = {
    Notification.SMTP_PROBE_FAILED: (
        SmtpProbeColumn.NAME,
        SmtpProbeColumn.HOST,
        SmtpProbeColumn.PORT,
        SmtpProbeColumn.STATUS,
        SmtpProbeColumn.FAILED_PHASE,
        SmtpProbeColumn.FAILED_REASON,
        SmtpProbeColumn.LAST_ERROR,
        SmtpProbeColumn.LATENCY,
        SmtpProbeColumn.REPLY_CODE,
        SmtpProbeColumn.ADDRESS,
        SmtpProbeColumn.CONSECUTIVE_FAILURES,
    ),
    Notification.SMTP_PROBE_RECOVERED: (
        SmtpProbeColumn.NAME,
        SmtpProbeColumn.HOST,
        SmtpProbeColumn.PORT,
        SmtpProbeColumn.STATUS,
        SmtpProbeColumn.FAILED_PHASE,
        SmtpProbeColumn.FAILED_REASON,
        SmtpProbeColumn.LAST_ERROR,
        SmtpProbeColumn.LATENCY,
    ),
    Notification.MX_CHECK_FAILED: (
        MxCheckColumn.NAME,
        MxCheckColumn.DOMAIN,
        MxCheckColumn.STATUS,
        MxCheckColumn.FAILED_PHASE,
        MxCheckColumn.FAILED_REASON,
        MxCheckColumn.LAST_ERROR,
        MxCheckColumn.LATENCY,
        MxCheckColumn.CONSECUTIVE_FAILURES,
    ),
    Notification.MX_CHECK_RECOVERED: (
        MxCheckColumn.NAME,
        MxCheckColumn.DOMAIN,
        MxCheckColumn.STATUS,
        MxCheckColumn.FAILED_PHASE,
        MxCheckColumn.FAILED_REASON,
        MxCheckColumn.LAST_ERROR,
        MxCheckColumn.LATENCY,
    ),
    Notification.SMTP_CERT_EXPIRING: (
        SmtpProbeColumn.NAME,
        SmtpProbeColumn.HOST,
        SmtpProbeColumn.PORT,
        SmtpProbeColumn.STATUS,
        SmtpProbeColumn.FAILED_PHASE,
        SmtpProbeColumn.FAILED_REASON,
        SmtpProbeColumn.LAST_ERROR,
        SmtpProbeColumn.LATENCY,
        SmtpProbeColumn.CERT_EXPIRY,
        SmtpProbeColumn.CERT_DAYS_LEFT,
        SmtpProbeColumn.CERT_SUBJECT,
    ),
    Notification.DELIVERY_PROBE_FAILED: (
        DeliveryColumn.NAME,
        DeliveryColumn.RECIPIENT,
        DeliveryColumn.STATUS,
        DeliveryColumn.FAILED_PHASE,
        DeliveryColumn.FAILED_REASON,
        DeliveryColumn.LAST_ERROR,
        DeliveryColumn.REPLY_CODE,
        DeliveryColumn.PENDING,
        DeliveryColumn.CONSECUTIVE_FAILURES,
    ),
    Notification.DELIVERY_PROBE_RECOVERED: (
        DeliveryColumn.NAME,
        DeliveryColumn.RECIPIENT,
        DeliveryColumn.STATUS,
        DeliveryColumn.FAILED_PHASE,
        DeliveryColumn.FAILED_REASON,
        DeliveryColumn.LAST_ERROR,
        DeliveryColumn.LATENCY,
        DeliveryColumn.LATENCY_KNOWN,
    ),
    Notification.DELIVERY_LATE: (
        DeliveryColumn.NAME,
        DeliveryColumn.EVENT_LATENCY,
        DeliveryColumn.EVENT_SUBMITTED,
        DeliveryColumn.LATE_COUNT,
        DeliveryColumn.PENDING,
    ),
    Notification.DELIVERY_LOST: (
        DeliveryColumn.NAME,
        DeliveryColumn.LOST_COUNT,
        DeliveryColumn.EVENT_SUBMITTED,
        DeliveryColumn.PENDING,
    ),
}

# Enumerations: Python-side snake_case value -> MIB integer. The MIB label of each is the
# lowerCamelCase of the key (tls_verify -> tlsVerify).
STATUS_VALUES: Final[Mapping[str, int]] = {"ok": 1, "failed": 2, "unknown": 3}

TLS_MODE_VALUES: Final[Mapping[str, int]] = {"none": 1, "starttls": 2, "implicit": 3}

PHASE_VALUES: Final[Mapping[str, int]] = {
    "none": 1,  # the run did not fail (Python: phase None)
    "resolve": 2,
    "connect": 3,
    "tls": 4,
    "banner": 5,
    "ehlo": 6,
    "starttls": 7,
    "ehlo_tls": 8,
    "quit": 9,
    "mx": 10,
    "address": 11,
    "hosts": 12,
    "internal": 13,
    "auth": 14,
    "mail": 15,
    "rcpt": 16,
    "dane": 17,
    "mta_sts": 18,
    "reverse": 19,
    "policy": 20,
    "submit": 21,  # the delivery probe's phases (monitor.model.delivery.DeliveryPhase)
    "deliver": 22,
    "fetch": 23,
    "cleanup": 24,
    "dnsbl": 25,  # an MX check's DNS blocklist lookups
    "spoof": 26,  # an MX check's spoof test
}

REASON_VALUES: Final[Mapping[str, int]] = {
    "none": 1,  # the run did not fail (Python: reason None)
    "timeout": 2,
    "refused": 3,
    "unreachable": 4,
    "reset": 5,
    "dns": 6,
    "reply": 7,
    "protocol": 8,
    "tls": 9,
    "tls_verify": 10,
    "nxdomain": 11,
    "no_mx": 12,
    "null_mx": 13,
    "no_address": 14,
    "servfail": 15,
    "unexpected_mx": 16,
    "hosts_down": 17,
    "internal": 18,
    "unexpected_banner": 19,
    "missing_extension": 20,
    "auth_failed": 21,
    "open_relay": 22,
    "dane_mismatch": 23,
    "mta_sts_mismatch": 24,
    "no_starttls": 25,  # added after the reserved values 19-24, which keep their numbers
    "auth_unavailable": 26,
    "tls_version": 27,
    "unexpected_reply": 28,
    "dnssec": 29,
    "reverse_dns": 30,
    "policy_record": 31,
    "late": 32,  # the delivery probe's own reasons (monitor.model.delivery.DeliveryReason)
    "lost": 33,
    "wrong_folder": 34,
    "auth_verdict": 35,
    "listed": 36,  # an MX check's address on a DNS blocklist
    "spoofable": 37,  # an exchange accepted a message forged in the protected domain
}

MX_EXCHANGE_UP_VALUES: Final[Mapping[str, int]] = {"up": 1, "down": 2, "not_probed": 3}
# mxDnsblStatus, from DnsblAnswer.outcome (monitor.model.facts.DnsblOutcome)
DNSBL_STATUS_VALUES: Final[Mapping[str, int]] = {
    "not_listed": 1,
    "listed": 2,
    "refused": 3,
    "unexpected": 4,
    "error": 5,
}
# mxPolicyFindingRecord and mxPolicyFindingLevel, from PolicyFinding.record and .level
POLICY_RECORD_VALUES: Final[Mapping[str, int]] = {"spf": 1, "dmarc": 2, "tls_rpt": 3}
FINDING_LEVEL_VALUES: Final[Mapping[str, int]] = {"ok": 1, "warning": 2, "error": 3}
MX_ADDRESS_UP_VALUES: Final[Mapping[str, int]] = {"up": 1, "down": 2, "not_probed": 3}
# mxAddressSpoof, from SpoofAttempt.outcome (monitor.model.spoof.SpoofOutcome); not_tested: no attempt
SPOOF_VALUES: Final[Mapping[str, int]] = {"not_tested": 1, "refused": 2, "spoofable": 3, "inconclusive": 4, "error": 5}
SMTP_ADDRESS_UP_VALUES: Final[Mapping[str, int]] = {"up": 1, "down": 2}

# SmtpMonitorDnssec (mxCheckDnssec), from MxResult.authenticated None / True / False.
DNSSEC_VALUES: Final[Mapping[str, int]] = {"not_checked": 1, "authenticated": 2, "unauthenticated": 3}
# SmtpMonitorVerdict (mxCheckSpf, mxCheckDmarc), from MxResult.spf / .dmarc: None, valid or not.
VERDICT_VALUES: Final[Mapping[str, int]] = {"not_checked": 1, "valid": 2, "invalid": 3}
# mxCheckMtaSts, from MxResult.mta_sts: present and valid.
MTA_STS_VALUES: Final[Mapping[str, int]] = {"not_checked": 1, "absent": 2, "valid": 3, "invalid": 4}
# mxExchangeDane, from MxRecord.dane: lookup_error, records and matched.
DANE_VALUES: Final[Mapping[str, int]] = {
    "not_checked": 1,
    "no_records": 2,
    "matched": 3,
    "mismatched": 4,
    "error": 5,
    "unusable": 6,
}
# mxExchangeMtaSts, from MxResult.mta_sts.policy.uncovered of a fetched policy.
MTA_STS_COVERAGE_VALUES: Final[Mapping[str, int]] = {"not_checked": 1, "covered": 2, "not_covered": 3}
# mxAddressPtr, from the ReverseDns of the address in MxRecord.reverse.
PTR_VALUES: Final[Mapping[str, int]] = {"not_checked": 1, "confirmed": 2, "not_confirmed": 3}

# deliveryFolder, from DeliveryResult.folder: "inbox", "junk" or "" (not arrived, or POP3).
DELIVERY_FOLDER_VALUES: Final[Mapping[str, int]] = {"unknown": 1, "inbox": 2, "junk": 3}
# deliveryHopsSource: whose hops deliveryHopTable shows.
HOPS_SOURCE_VALUES: Final[Mapping[str, int]] = {"none": 1, "this_run": 2, "late_message": 3}

TRUTH_VALUES: Final[Mapping[bool, int]] = {True: 1, False: 2}  # SNMPv2-TC TruthValue

# DateAndTime for an event that has not happened: year 0, January 1, 00:00:00.0 (see the MIB).
DATE_AND_TIME_NEVER: Final[bytes] = bytes.fromhex("0000010100000000")

NAME_INDEX_MAX: Final[int] = 100  # SIZE(1..100) of smtpProbeIndexName, mxCheckIndexName, deliveryIndexName
# mxExchangeOrder, mxAddressOrder, smtpAddressOrder, deliveryHopNumber: Unsigned32 (1..65535)
ORDER_MAX: Final[int] = 65535


def name_index(name: str) -> Oid:
    """The OID index of a probe or check name: length, then one sub-identifier per octet."""
    octets = name.encode("utf-8")
    if not 1 <= len(octets) <= NAME_INDEX_MAX:
        raise ValueError(f"probe name {name!r} must be 1 to {NAME_INDEX_MAX} octets for the MIB index")
    return (len(octets), *octets)


def smtp_probe_oid(column: SmtpProbeColumn, name: str) -> Oid:
    """The instance OID of a column of the smtpProbeTable row of the probe named `name`."""
    return (*SMTP_PROBE_ENTRY, int(column), *name_index(name))


def mx_check_oid(column: MxCheckColumn, name: str) -> Oid:
    """The instance OID of a column of the mxCheckTable row of the check named `name`."""
    return (*MX_CHECK_ENTRY, int(column), *name_index(name))


def mx_exchange_oid(column: MxExchangeColumn, name: str, order: int) -> Oid:
    """The instance OID of a column of an mxExchangeTable row: check name, 1-based position."""
    if not 1 <= order <= ORDER_MAX:
        raise ValueError(f"exchange position {order} must be 1 to {ORDER_MAX}")
    return (*MX_EXCHANGE_ENTRY, int(column), *name_index(name), order)


def mx_address_oid(column: MxAddressColumn, name: str, order: int, address_order: int) -> Oid:
    """The instance OID of a column of an mxAddressTable row: check name, exchange and address positions."""
    for what, position in (("exchange", order), ("address", address_order)):
        if not 1 <= position <= ORDER_MAX:
            raise ValueError(f"{what} position {position} must be 1 to {ORDER_MAX}")
    return (*MX_ADDRESS_ENTRY, int(column), *name_index(name), order, address_order)


def mx_dnsbl_oid(column: MxDnsblColumn, name: str, address: int, zone: int) -> Oid:
    """The instance OID of a column of an mxDnsblTable row: check name, address and zone numbers."""
    for what, position in (("address", address), ("zone", zone)):
        if not 1 <= position <= ORDER_MAX:
            raise ValueError(f"{what} number {position} must be 1 to {ORDER_MAX}")
    return (*MX_DNSBL_ENTRY, int(column), *name_index(name), address, zone)


def delivery_dnsbl_oid(column: DeliveryDnsblColumn, name: str, address: int, zone: int) -> Oid:
    """The instance OID of a column of a deliveryDnsblTable row: probe name, address and zone numbers."""
    for what, position in (("address", address), ("zone", zone)):
        if not 1 <= position <= ORDER_MAX:
            raise ValueError(f"{what} number {position} must be 1 to {ORDER_MAX}")
    return (*DELIVERY_DNSBL_ENTRY, int(column), *name_index(name), address, zone)


def mx_policy_finding_oid(column: MxPolicyFindingColumn, name: str, number: int) -> Oid:
    """The instance OID of a column of an mxPolicyFindingTable row: check name, finding number."""
    if not 1 <= number <= ORDER_MAX:
        raise ValueError(f"finding number {number} must be 1 to {ORDER_MAX}")
    return (*MX_POLICY_FINDING_ENTRY, int(column), *name_index(name), number)


def smtp_address_oid(column: SmtpAddressColumn, name: str, order: int) -> Oid:
    """The instance OID of a column of an smtpAddressTable row: probe name, 1-based address position."""
    if not 1 <= order <= ORDER_MAX:
        raise ValueError(f"address position {order} must be 1 to {ORDER_MAX}")
    return (*SMTP_ADDRESS_ENTRY, int(column), *name_index(name), order)


def delivery_oid(column: DeliveryColumn, name: str) -> Oid:
    """The instance OID of a column of the deliveryTable row of the probe named `name`."""
    return (*DELIVERY_ENTRY, int(column), *name_index(name))


def delivery_hop_oid(column: DeliveryHopColumn, name: str, hop: int) -> Oid:
    """The instance OID of a column of a deliveryHopTable row: probe name, 1-based hop number."""
    if not 1 <= hop <= ORDER_MAX:
        raise ValueError(f"hop number {hop} must be 1 to {ORDER_MAX}")
    return (*DELIVERY_HOP_ENTRY, int(column), *name_index(name), hop)


def notification_object_oid(column: NotificationColumn, name: str) -> Oid:
    """The instance OID of an object a notification carries: its column in the row of `name`."""
    if isinstance(column, SmtpProbeColumn):
        return smtp_probe_oid(column, name)
    if isinstance(column, MxCheckColumn):
        return mx_check_oid(column, name)
    return delivery_oid(column, name)


def scalar_oid(scalar: Scalar) -> Oid:
    """The instance OID (with .0) of a scalar."""
    return (*SCALARS, int(scalar), 0)


def notification_oid(notification: Notification) -> Oid:
    """The snmpTrapOID.0 value of a notification."""
    return (*NOTIFICATION_PREFIX, int(notification))


def mib_label(snake: str) -> str:
    """The MIB descriptor or enumeration label for a snake_case name: tls_verify -> tlsVerify."""
    first, *rest = snake.lower().split("_")
    return first + "".join(part.capitalize() for part in rest)


def _named(prefix: str, members: type[enum.IntEnum], base: Oid) -> dict[str, Oid]:
    """Descriptor -> OID for the members of one enum: prefix + CamelCase, or lowerCamelCase."""
    named: dict[str, Oid] = {}
    for member in members:
        label = mib_label(member.name)
        named[prefix + label[0].upper() + label[1:] if prefix else label] = (*base, int(member))
    return named


# Every descriptor the MIB defines, to its OID (object types without the instance suffix).
OID_BY_NAME: Final[Mapping[str, Oid]] = {
    "smtpMonitorMIB": MIB_ROOT,
    "smtpMonitorNotifications": NOTIFICATIONS,
    "smtpMonitorNotificationPrefix": NOTIFICATION_PREFIX,
    "smtpMonitorObjects": OBJECTS,
    "smtpMonitorConformance": CONFORMANCE,
    "smtpMonitorRegistrations": REGISTRATIONS,
    "smtpMonitorAgentOID": AGENT_OID,
    "smtpMonitorScalars": SCALARS,
    "smtpProbeTable": SMTP_PROBE_TABLE,
    "smtpProbeEntry": SMTP_PROBE_ENTRY,
    "mxCheckTable": MX_CHECK_TABLE,
    "mxCheckEntry": MX_CHECK_ENTRY,
    "mxExchangeTable": MX_EXCHANGE_TABLE,
    "mxExchangeEntry": MX_EXCHANGE_ENTRY,
    "mxAddressTable": MX_ADDRESS_TABLE,
    "mxAddressEntry": MX_ADDRESS_ENTRY,
    "smtpAddressTable": SMTP_ADDRESS_TABLE,
    "smtpAddressEntry": SMTP_ADDRESS_ENTRY,
    "deliveryTable": DELIVERY_TABLE,
    "deliveryEntry": DELIVERY_ENTRY,
    "deliveryHopTable": DELIVERY_HOP_TABLE,
    "deliveryHopEntry": DELIVERY_HOP_ENTRY,
    "mxDnsblTable": MX_DNSBL_TABLE,
    "mxDnsblEntry": MX_DNSBL_ENTRY,
    "mxPolicyFindingTable": MX_POLICY_FINDING_TABLE,
    "mxPolicyFindingEntry": MX_POLICY_FINDING_ENTRY,
    "deliveryDnsblTable": DELIVERY_DNSBL_TABLE,
    "deliveryDnsblEntry": DELIVERY_DNSBL_ENTRY,
    "smtpMonitorCompliances": COMPLIANCES,
    "smtpMonitorGroups": GROUPS,
    "smtpMonitorCompliance": COMPLIANCE,
    **_named("smtpMonitor", Scalar, SCALARS),
    **_named("smtpProbe", SmtpProbeColumn, SMTP_PROBE_ENTRY),
    **_named("mxCheck", MxCheckColumn, MX_CHECK_ENTRY),
    **_named("mxExchange", MxExchangeColumn, MX_EXCHANGE_ENTRY),
    **_named("mxAddress", MxAddressColumn, MX_ADDRESS_ENTRY),
    **_named("smtpAddress", SmtpAddressColumn, SMTP_ADDRESS_ENTRY),
    **_named("delivery", DeliveryColumn, DELIVERY_ENTRY),
    **_named("deliveryHop", DeliveryHopColumn, DELIVERY_HOP_ENTRY),
    **_named("mxDnsbl", MxDnsblColumn, MX_DNSBL_ENTRY),
    **_named("mxPolicyFinding", MxPolicyFindingColumn, MX_POLICY_FINDING_ENTRY),
    **_named("deliveryDnsbl", DeliveryDnsblColumn, DELIVERY_DNSBL_ENTRY),
    **_named("", Notification, NOTIFICATION_PREFIX),
    **_named("", Group, GROUPS),
}
