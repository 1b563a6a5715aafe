"""The agent's MIB as a sorted OID table built from store snapshots, for GET, GETNEXT and GETBULK."""

from __future__ import annotations

import math
import socket
import struct
import time
import unicodedata
import weakref
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol, TypeAlias

from pysnmp.proto import rfc1902

from monitor.config.schema import DeliveryProbeConfig, MxCheckConfig, SmtpProbeConfig
from monitor.exporters.snmp import mib_oids
from monitor.exporters.snmp.mib_oids import (
    DeliveryColumn,
    DeliveryDnsblColumn,
    DeliveryHopColumn,
    MxAddressColumn,
    MxCheckColumn,
    MxDnsblColumn,
    MxExchangeColumn,
    MxPolicyFindingColumn,
    Oid,
    Scalar,
    SmtpAddressColumn,
    SmtpProbeColumn,
)
from monitor.model.delivery import DeliveryLedger, DeliveryResult, Hop
from monitor.model.facts import DnsblFacts, MtaStsPolicyFacts, PolicyRecord
from monitor.model.results import MxRecord, MxResult, SmtpResult, Status, TlsInfo
from monitor.model.spoof import SpoofAttempt
from monitor.state.health import AgentHealth
from monitor.state.store import ProbeState, Snapshot

# pyasn1/pysnmp ship no type information: their values stay `Any` behind this one alias.
Asn1Value: TypeAlias = Any
# A cell before it becomes a pyasn1 value: building those is the slow part, so only on read.
Raw: TypeAlias = int | bytes

SYSTEM: Oid = (1, 3, 6, 1, 2, 1, 1)  # SNMPv2-MIB::system
SYS_DESCR, SYS_OBJECT_ID, SYS_UPTIME, SYS_CONTACT, SYS_NAME, SYS_LOCATION, SYS_SERVICES = (
    (*SYSTEM, n, 0) for n in range(1, 8)
)
# sysServices: applications (layer 7) and end-to-end (layer 4) = 2**6 + 2**3.
SYS_SERVICES_VALUE = 72

ADMIN_STRING_MAX = 255  # SnmpAdminString and DisplayString: SIZE (0..255)
UINT32_MAX = 2**32 - 1
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
COUNTER64_MAX = 2**64 - 1
COUNTER32_MODULO = 2**32  # a Counter32 wraps (RFC 2578 7.1.6)
EXCHANGES_MAX = mib_oids.ORDER_MAX  # mxExchangeOrder is Unsigned32 (1..65535)
ADDRESSES_MAX = mib_oids.ORDER_MAX  # mxAddressOrder is Unsigned32 (1..65535)
HOPS_MAX = mib_oids.ORDER_MAX  # deliveryHopNumber is Unsigned32 (1..65535)

# A sub-identifier larger than any legal one: prefix + (BEYOND,) sorts after the whole subtree.
BEYOND = 2**32


class SnapshotSource(Protocol):
    """What the view reads: ResultsStore, or anything else handing out snapshots."""

    def snapshot(self) -> Snapshot: ...


# -- value encodings ----------------------------------------------------------------------------


def date_and_time(value: float | datetime | None) -> bytes:
    """SNMPv2-TC DateAndTime in UTC with its offset (11 octets); the MIB's 'never' for None or 0."""
    if value is None or (not isinstance(value, datetime) and value <= 0):
        return mib_oids.DATE_AND_TIME_NEVER
    if isinstance(value, datetime):
        moment = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    else:
        moment = datetime.fromtimestamp(value, UTC)
    if not 0 <= moment.year <= 65535:
        return mib_oids.DATE_AND_TIME_NEVER
    return struct.pack(
        ">HBBBBBBcBB",
        moment.year,
        moment.month,
        moment.day,
        moment.hour,
        moment.minute,
        moment.second,
        moment.microsecond // 100_000,
        b"+",
        0,
        0,
    )


def unix_time(value: float | datetime | None) -> int:
    """SmtpMonitorUnixTime: whole Unix seconds, 0 for never (None or not after 1970), a real time at least 1
    and at most 2**32 - 1, so that an NMS reading numbers sees never as 0, not as year 0's -6.2e10."""
    if value is None:
        return 0
    if isinstance(value, datetime):  # a naive one is UTC, as date_and_time reads it
        value = (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    if not value > 0:  # 0, negative or NaN: never
        return 0
    return UINT32_MAX if value >= UINT32_MAX else max(1, math.floor(value))


def admin_string(text: str, limit: int = ADMIN_STRING_MAX) -> bytes:
    """UTF-8 text cut to the MIB's SIZE at a character boundary (a cut character would be invalid)."""
    octets = text.encode("utf-8", "replace")
    if len(octets) <= limit:
        return octets
    return octets[:limit].decode("utf-8", "ignore").encode("utf-8")


def address_list(addresses: Sequence[str], limit: int = ADMIN_STRING_MAX) -> bytes:
    """Comma-separated addresses (or host names) cut at the last whole one that fits, never mid-item."""
    out = b""
    for address in addresses:
        candidate = (out + b"," if out else b"") + address.encode("ascii", "replace")
        if len(candidate) > limit:
            break
        out = candidate
    return out


def server_text(text: str, limit: int = ADMIN_STRING_MAX) -> bytes:
    """Text another server wrote (a header's host names, a reply, a folder name) as an SnmpAdminString:
    control characters become spaces, so a value cannot end a line of snmptrapd's log or a manager's
    table, and it is cut as admin_string cuts."""
    if text.isprintable():
        return admin_string(text, limit)
    shown = "".join(" " if unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp") else char for char in text)
    return admin_string(shown, limit)


def ms(seconds: float | None) -> int:
    """Unsigned32 milliseconds; 0 for none, negative or not a number."""
    if not seconds or not seconds > 0:
        return 0
    return UINT32_MAX if seconds * 1000 >= UINT32_MAX else round(seconds * 1000)


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def _truth(flag: bool) -> int:
    return mib_oids.TRUTH_VALUES[flag]


def _signed_ms(seconds: float) -> int:
    """Integer32 milliseconds: a hop's delay is negative when its host's clock is behind."""
    return _clamp(round(seconds * 1000), INT32_MIN, INT32_MAX)


def _phase(result: SmtpResult | MxResult | DeliveryResult | None) -> int:
    if result is None or result.phase is None:
        return mib_oids.PHASE_VALUES["none"]
    return mib_oids.PHASE_VALUES.get(result.phase.value, mib_oids.PHASE_VALUES["internal"])


def _reason(result: SmtpResult | MxResult | DeliveryResult | None) -> int:
    if result is None or result.reason is None:
        return mib_oids.REASON_VALUES["none"]
    # A reason newer than the MIB must still be a legal enumeration value.
    return mib_oids.REASON_VALUES.get(result.reason.value, mib_oids.REASON_VALUES["internal"])


def _status(status: Status) -> int:
    return mib_oids.STATUS_VALUES[status.value]


def _norm(name: str) -> str:
    return name.lower().rstrip(".")


def _dnssec(result: MxResult | None) -> int:
    """mxCheckDnssec from the AD bit of the MX answer: None when not asked (or no answer)."""
    if result is None or result.authenticated is None:
        return mib_oids.DNSSEC_VALUES["not_checked"]
    return mib_oids.DNSSEC_VALUES["authenticated" if result.authenticated else "unauthenticated"]


def _verdict(verdict: PolicyRecord | None) -> int:
    """mxCheckSpf and mxCheckDmarc from MxResult.spf and MxResult.dmarc."""
    if verdict is None:
        return mib_oids.VERDICT_VALUES["not_checked"]
    return mib_oids.VERDICT_VALUES["valid" if verdict.valid else "invalid"]


def _mta_sts(result: MxResult | None) -> int:
    """mxCheckMtaSts: no TXT record is absent, otherwise the check's own verdict."""
    facts = result.mta_sts if result else None
    if facts is None:
        return mib_oids.MTA_STS_VALUES["not_checked"]
    if not facts.present:
        return mib_oids.MTA_STS_VALUES["absent"]
    return mib_oids.MTA_STS_VALUES["valid" if facts.valid else "invalid"]


def _mta_sts_policy(result: MxResult | None) -> MtaStsPolicyFacts | None:
    """The MTA-STS policy of a run that fetched one (no TXT error, no policy error)."""
    facts = result.mta_sts if result else None
    if facts is None or not facts.present or facts.policy is None or facts.policy.error:
        return None
    return facts.policy


def _mta_sts_coverage(policy: MtaStsPolicyFacts | None, exchange: str) -> int:
    """mxExchangeMtaSts: whether the exchange is missing from the policy's uncovered list."""
    if policy is None:
        return mib_oids.MTA_STS_COVERAGE_VALUES["not_checked"]
    uncovered = {_norm(name) for name in policy.uncovered}
    return mib_oids.MTA_STS_COVERAGE_VALUES["not_covered" if _norm(exchange) in uncovered else "covered"]


def _dane(record: MxRecord) -> int:
    """mxExchangeDane from the exchange's DANE facts (monitor.probes.mx._dane_verdict)."""
    facts = record.dane
    if facts is None:
        return mib_oids.DANE_VALUES["not_checked"]
    if facts.lookup_error:
        return mib_oids.DANE_VALUES["error"]
    if not facts.records:
        return mib_oids.DANE_VALUES["no_records"]
    if facts.matched is None:  # records, but none an SMTP client may use
        return mib_oids.DANE_VALUES["unusable"]
    return mib_oids.DANE_VALUES["matched" if facts.matched else "mismatched"]


# -- column layouts -----------------------------------------------------------------------------

# The pysnmp type of every readable column, as in the MIB's SYNTAX (enumerations and TruthValue
# are INTEGER, InetPortNumber is Unsigned32, DateAndTime and SnmpAdminString are OCTET STRING).
_S, _I, _U, _G, _C = (
    rfc1902.OctetString,
    rfc1902.Integer32,
    rfc1902.Unsigned32,
    rfc1902.Gauge32,
    rfc1902.Counter64,
)
SMTP_PROBE_TYPES: dict[SmtpProbeColumn, type] = {
    SmtpProbeColumn.NAME: _S,
    SmtpProbeColumn.HOST: _S,
    SmtpProbeColumn.PORT: _U,
    SmtpProbeColumn.TLS_MODE: _I,
    SmtpProbeColumn.INTERVAL: _U,
    SmtpProbeColumn.STATUS: _I,
    SmtpProbeColumn.LAST_ERROR: _S,
    SmtpProbeColumn.FAILED_PHASE: _I,
    SmtpProbeColumn.FAILED_REASON: _I,
    SmtpProbeColumn.REPLY_CODE: _U,
    SmtpProbeColumn.LATENCY: _U,
    SmtpProbeColumn.CONNECT_LATENCY: _U,
    SmtpProbeColumn.BANNER_LATENCY: _U,
    SmtpProbeColumn.EHLO_LATENCY: _U,
    SmtpProbeColumn.TLS_LATENCY: _U,
    SmtpProbeColumn.CONSECUTIVE_FAILURES: _G,
    SmtpProbeColumn.RUNS: _C,
    SmtpProbeColumn.FAILURES: _C,
    SmtpProbeColumn.LAST_SUCCESS: _S,
    SmtpProbeColumn.LAST_CHANGE: _S,
    SmtpProbeColumn.TLS_VERSION: _S,
    SmtpProbeColumn.TLS_CIPHER: _S,
    SmtpProbeColumn.CERT_EXPIRY: _S,
    SmtpProbeColumn.CERT_DAYS_LEFT: _I,
    SmtpProbeColumn.CERT_VERIFIED: _I,
    SmtpProbeColumn.CERT_SUBJECT: _S,
    SmtpProbeColumn.ADDRESS: _S,
    SmtpProbeColumn.TLS_SEEN: _S,
    SmtpProbeColumn.LAST_SUCCESS_UNIX_TIME: _U,
    SmtpProbeColumn.LAST_CHANGE_UNIX_TIME: _U,
    SmtpProbeColumn.CERT_EXPIRY_UNIX_TIME: _U,
    SmtpProbeColumn.TLS_SEEN_UNIX_TIME: _U,
}
MX_CHECK_TYPES: dict[MxCheckColumn, type] = {
    MxCheckColumn.NAME: _S,
    MxCheckColumn.DOMAIN: _S,
    MxCheckColumn.STATUS: _I,
    MxCheckColumn.LAST_ERROR: _S,
    MxCheckColumn.FAILED_PHASE: _I,
    MxCheckColumn.FAILED_REASON: _I,
    MxCheckColumn.RECORDS: _G,
    MxCheckColumn.LATENCY: _U,
    MxCheckColumn.CONSECUTIVE_FAILURES: _G,
    MxCheckColumn.RUNS: _C,
    MxCheckColumn.FAILURES: _C,
    MxCheckColumn.LAST_SUCCESS: _S,
    MxCheckColumn.LAST_CHANGE: _S,
    MxCheckColumn.IMPLICIT_MX: _I,
    MxCheckColumn.DNSSEC: _I,
    MxCheckColumn.MTA_STS: _I,
    MxCheckColumn.MTA_STS_MODE: _S,
    MxCheckColumn.SPF: _I,
    MxCheckColumn.DMARC: _I,
    MxCheckColumn.LAST_SUCCESS_UNIX_TIME: _U,
    MxCheckColumn.LAST_CHANGE_UNIX_TIME: _U,
}
MX_EXCHANGE_TYPES: dict[MxExchangeColumn, type] = {
    MxExchangeColumn.NAME: _S,
    MxExchangeColumn.PREFERENCE: _U,
    MxExchangeColumn.ADDRESSES: _S,
    MxExchangeColumn.UP: _I,
    MxExchangeColumn.DANE: _I,
    MxExchangeColumn.MTA_STS: _I,
}
SMTP_ADDRESS_TYPES: dict[SmtpAddressColumn, type] = {
    SmtpAddressColumn.VALUE: _S,
    SmtpAddressColumn.UP: _I,
    SmtpAddressColumn.LAST_ERROR: _S,
    SmtpAddressColumn.FAILED_PHASE: _I,
    SmtpAddressColumn.FAILED_REASON: _I,
    SmtpAddressColumn.REPLY_CODE: _U,
    SmtpAddressColumn.LATENCY: _U,
}
MX_ADDRESS_TYPES: dict[MxAddressColumn, type] = {
    MxAddressColumn.VALUE: _S,
    MxAddressColumn.UP: _I,
    MxAddressColumn.LAST_ERROR: _S,
    MxAddressColumn.PTR_NAME: _S,
    MxAddressColumn.PTR: _I,
    MxAddressColumn.SPOOF: _I,
    MxAddressColumn.SPOOF_REPLY: _S,
}
MX_DNSBL_TYPES: dict[MxDnsblColumn, type] = {
    MxDnsblColumn.ADDRESS: _S,
    MxDnsblColumn.ZONE: _S,
    MxDnsblColumn.STATUS: _I,
    MxDnsblColumn.CODE: _S,
    MxDnsblColumn.REASON: _S,
}
DELIVERY_DNSBL_TYPES: dict[DeliveryDnsblColumn, type] = {
    DeliveryDnsblColumn.ADDRESS: _S,
    DeliveryDnsblColumn.ZONE: _S,
    DeliveryDnsblColumn.STATUS: _I,
    DeliveryDnsblColumn.CODE: _S,
    DeliveryDnsblColumn.REASON: _S,
}
MX_POLICY_FINDING_TYPES: dict[MxPolicyFindingColumn, type] = {
    MxPolicyFindingColumn.RECORD: _I,
    MxPolicyFindingColumn.NAME: _S,
    MxPolicyFindingColumn.LEVEL: _I,
    MxPolicyFindingColumn.DETAIL: _S,
}
# Every deliveryEntry column but the index; the accessible-for-notify ones only go into notifications.
DELIVERY_TYPES: dict[DeliveryColumn, type] = {
    DeliveryColumn.NAME: _S,
    DeliveryColumn.RECIPIENT: _S,
    DeliveryColumn.STATUS: _I,
    DeliveryColumn.LAST_ERROR: _S,
    DeliveryColumn.FAILED_PHASE: _I,
    DeliveryColumn.FAILED_REASON: _I,
    DeliveryColumn.REPLY_CODE: _U,
    DeliveryColumn.LATENCY: _U,
    DeliveryColumn.LATENCY_KNOWN: _I,
    DeliveryColumn.PENDING: _G,
    DeliveryColumn.LATE_COUNT: rfc1902.Counter32,
    DeliveryColumn.LOST_COUNT: rfc1902.Counter32,
    DeliveryColumn.CONSECUTIVE_FAILURES: _G,
    DeliveryColumn.RUNS: _C,
    DeliveryColumn.FAILURES: _C,
    DeliveryColumn.LAST_SUCCESS: _S,
    DeliveryColumn.LAST_CHANGE: _S,
    DeliveryColumn.QUEUE_ID: _S,
    DeliveryColumn.SUBMITTED_TO: _S,
    DeliveryColumn.SPF: _S,
    DeliveryColumn.DKIM: _S,
    DeliveryColumn.DMARC: _S,
    DeliveryColumn.FOLDER: _I,
    DeliveryColumn.FOLDER_NAME: _S,
    DeliveryColumn.HOPS: _G,
    DeliveryColumn.HOPS_SOURCE: _I,
    DeliveryColumn.EVENT_LATENCY: _U,
    DeliveryColumn.EVENT_SUBMITTED: _S,
    DeliveryColumn.LAST_SUCCESS_UNIX_TIME: _U,
    DeliveryColumn.LAST_CHANGE_UNIX_TIME: _U,
}
DELIVERY_HOP_TYPES: dict[DeliveryHopColumn, type] = {
    DeliveryHopColumn.BY: _S,
    DeliveryHopColumn.FROM: _S,
    DeliveryHopColumn.PROTOCOL: _S,
    DeliveryHopColumn.DELAY: _I,
    DeliveryHopColumn.DELAY_KNOWN: _I,
    DeliveryHopColumn.QUEUE_ID: _S,
    DeliveryHopColumn.TIME: _S,
    DeliveryHopColumn.UNIX_TIME: _U,
}

# Row tuples hold the readable columns in these orders (ascending column number).
_SMTP_COLUMNS = tuple(sorted(SMTP_PROBE_TYPES))
_MX_COLUMNS = tuple(sorted(MX_CHECK_TYPES))
_EXCHANGE_COLUMNS = tuple(sorted(MX_EXCHANGE_TYPES))
_ADDRESS_COLUMNS = tuple(sorted(MX_ADDRESS_TYPES))
_SMTP_ADDRESS_COLUMNS = tuple(sorted(SMTP_ADDRESS_TYPES))
_DNSBL_COLUMNS = tuple(sorted(MX_DNSBL_TYPES))
_FINDING_COLUMNS = tuple(sorted(MX_POLICY_FINDING_TYPES))
_DELIVERY_DNSBL_COLUMNS = tuple(sorted(DELIVERY_DNSBL_TYPES))
# The served delivery columns: a row's cells stop before the accessible-for-notify ones.
_DELIVERY_COLUMNS = tuple(sorted(c for c in DELIVERY_TYPES if c not in mib_oids.DELIVERY_EVENT_COLUMNS))
_DELIVERY_HOP_COLUMNS = tuple(sorted(DELIVERY_HOP_TYPES))


# -- rows ---------------------------------------------------------------------------------------


def _tls_cells(tls: TlsInfo, started_at: float) -> tuple[Raw, ...]:
    """TLS version .. certificate subject of one completed handshake."""
    cert = tls.cert
    if cert is None:
        expiry, days, subject = mib_oids.DATE_AND_TIME_NEVER, 0, b""
    else:
        # The earliest expiry in the presented chain, as the MIB and smtpCertExpiring say.
        earliest = tls.chain_not_after or cert.not_after
        not_after = earliest if earliest.tzinfo else earliest.replace(tzinfo=UTC)
        left = (not_after - datetime.fromtimestamp(started_at, UTC)).total_seconds() / 86400
        expiry, days, subject = date_and_time(not_after), math.floor(left), admin_string(cert.subject)
    return (
        admin_string(tls.version),
        admin_string(tls.cipher),
        expiry,
        _clamp(days, INT32_MIN, INT32_MAX),
        _truth(cert is not None and tls.verified),
        subject,
    )


_NO_TLS: tuple[Raw, ...] = (b"", b"", mib_oids.DATE_AND_TIME_NEVER, 0, _truth(False), b"")


def _cert_expiry(tls: TlsInfo | None) -> datetime | None:
    """The earliest expiry in the chain of a handshake (what smtpProbeCertExpiry shows); None without a certificate."""
    if tls is None or tls.cert is None:
        return None
    return tls.chain_not_after or tls.cert.not_after


def smtp_probe_row(state: ProbeState, default_interval: float) -> tuple[Raw, ...]:
    """The cells of one smtpProbeTable row, in _SMTP_COLUMNS order.

    The TLS and certificate cells come from the latest run that completed a handshake, so
    they stay known while the server is down; smtpProbeTlsSeen says when that run started."""
    config = state.config
    assert isinstance(config, SmtpProbeConfig)
    result = state.last_result if isinstance(state.last_result, SmtpResult) else None
    timings = result.timings if result else {}
    tls = _tls_cells(state.last_tls, state.last_tls_at or 0.0) if state.last_tls is not None else _NO_TLS
    interval = config.interval or default_interval
    return (
        admin_string(state.name),
        admin_string(config.host),
        config.effective_port,
        mib_oids.TLS_MODE_VALUES[config.tls],
        _clamp(math.ceil(interval), 0, UINT32_MAX),
        _status(state.status),
        admin_string(result.error) if result and not result.ok else b"",
        _phase(result),
        _reason(result),
        _clamp(result.reply_code, 0, 999) if result else 0,
        ms(result.total) if result else 0,
        ms(timings.get("connect")),
        ms(timings.get("banner")),
        ms(timings.get("ehlo")),
        ms(timings.get("tls")),
        _clamp(state.consecutive_failures, 0, UINT32_MAX),
        _clamp(state.runs, 0, COUNTER64_MAX),
        _clamp(state.failures, 0, COUNTER64_MAX),
        date_and_time(state.last_success),
        date_and_time(state.last_change),
        *tls,
        admin_string(result.address) if result else b"",
        date_and_time(state.last_tls_at if state.last_tls is not None else None),
        unix_time(state.last_success),
        unix_time(state.last_change),
        unix_time(_cert_expiry(state.last_tls)),
        unix_time(state.last_tls_at if state.last_tls is not None else None),
    )


def smtp_address_rows(name_index: Oid, result: SmtpResult | None) -> list[tuple[Oid, tuple[Raw, ...]]]:
    """(index, cells) of the smtpAddressTable rows of one probe (address_family: both), in index order."""
    if result is None:
        return []
    rows = []
    for order, probe in enumerate(result.address_results[:ADDRESSES_MAX], start=1):
        cells: tuple[Raw, ...] = (
            admin_string(probe.address),
            mib_oids.SMTP_ADDRESS_UP_VALUES["up" if probe.ok else "down"],
            b"" if probe.ok else admin_string(probe.error),
            _phase(probe),
            _reason(probe),
            _clamp(probe.reply_code, 0, 999),
            ms(probe.total),
        )
        rows.append(((*name_index, order), cells))
    return rows


def mx_check_row(state: ProbeState) -> tuple[Raw, ...]:
    """The cells of one mxCheckTable row, in _MX_COLUMNS order."""
    config = state.config
    assert isinstance(config, MxCheckConfig)
    result = state.last_result if isinstance(state.last_result, MxResult) else None
    policy = _mta_sts_policy(result)
    return (
        admin_string(state.name),
        admin_string(config.domain),
        _status(state.status),
        admin_string(result.error) if result and not result.ok else b"",
        _phase(result),
        _reason(result),
        len(mx_exchanges(result)),
        ms(result.total) if result else 0,
        _clamp(state.consecutive_failures, 0, UINT32_MAX),
        _clamp(state.runs, 0, COUNTER64_MAX),
        _clamp(state.failures, 0, COUNTER64_MAX),
        date_and_time(state.last_success),
        date_and_time(state.last_change),
        _truth(bool(result and result.implicit_mx)),
        _dnssec(result),
        _mta_sts(result),
        admin_string(policy.mode) if policy is not None else b"",
        _verdict(result.spf if result else None),
        _verdict(result.dmarc if result else None),
        unix_time(state.last_success),
        unix_time(state.last_change),
    )


def mx_exchanges(result: MxResult | None) -> list[MxRecord]:
    """The exchanges of the MX answer in mxExchangeOrder: preference, then name.

    An implicit MX (no MX records, RFC 5321 5.1) is no record of the answer: the MIB counts 0."""
    if result is None or result.implicit_mx:
        return []
    ordered = sorted(result.records, key=lambda r: (r.preference, r.exchange.rstrip(".").lower()))
    return ordered[:EXCHANGES_MAX]


def mx_exchange_rows(name_index: Oid, result: MxResult | None) -> list[tuple[Oid, tuple[Raw, ...]]]:
    """(index, cells) of the mxExchangeTable rows of one check, in index order."""
    rows = []
    policy = _mta_sts_policy(result)
    for order, record in enumerate(mx_exchanges(result), start=1):
        up = "not_probed" if record.probe is None else ("up" if record.probe.ok else "down")
        cells: tuple[Raw, ...] = (
            admin_string(record.exchange.rstrip(".")),
            _clamp(record.preference, 0, 65535),
            address_list(record.addresses),
            mib_oids.MX_EXCHANGE_UP_VALUES[up],
            _dane(record),
            _mta_sts_coverage(policy, record.exchange),
        )
        rows.append(((*name_index, order), cells))
    return rows


def _address_probe(record: MxRecord, position: int, address: str) -> SmtpResult | None:
    """The probe of one address: its own (probe_hosts: all_addresses), else the exchange's
    probe for the first address (probe_hosts: true)."""
    for probe in record.address_probes:
        if probe.address == address:
            return probe
    return record.probe if position == 1 else None


def _spoof_cells(attempt: SpoofAttempt | None) -> tuple[Raw, Raw]:
    """mxAddressSpoof and mxAddressSpoofReply: the deciding reply, else why there is no verdict."""
    if attempt is None:
        return mib_oids.SPOOF_VALUES["not_tested"], b""
    return mib_oids.SPOOF_VALUES[attempt.outcome.value], admin_string(attempt.reply or attempt.error)


def mx_address_rows(name_index: Oid, result: MxResult | None) -> list[tuple[Oid, tuple[Raw, ...]]]:
    """(index, cells) of the mxAddressTable rows of one check, in index order."""
    rows = []
    for order, record in enumerate(mx_exchanges(result), start=1):
        reverse = {rev.address: rev for rev in record.reverse}
        spoofs = {attempt.address: attempt for attempt in record.spoof}
        for position, address in enumerate(record.addresses[:ADDRESSES_MAX], start=1):
            probe = _address_probe(record, position, address)
            up = "not_probed" if probe is None else ("up" if probe.ok else "down")
            rev = reverse.get(address)
            ptr = "not_checked" if rev is None else ("confirmed" if rev.confirmed else "not_confirmed")
            cells: tuple[Raw, ...] = (
                admin_string(address),
                mib_oids.MX_ADDRESS_UP_VALUES[up],
                admin_string(probe.error) if probe is not None and not probe.ok else b"",
                address_list([name.rstrip(".") for name in rev.names]) if rev is not None else b"",
                mib_oids.PTR_VALUES[ptr],
                *_spoof_cells(spoofs.get(address)),
            )
            rows.append(((*name_index, order, position), cells))
    return rows


def mx_dnsbl_rows(name_index: Oid, result: MxResult | None) -> list[tuple[Oid, tuple[Raw, ...]]]:
    """(index, cells) of the mxDnsblTable rows of one check, in index order (address, then zone number)."""
    return dnsbl_rows(name_index, result.dnsbl if result is not None else None)


def delivery_dnsbl_rows(name_index: Oid, result: DeliveryResult | None) -> list[tuple[Oid, tuple[Raw, ...]]]:
    """(index, cells) of the deliveryDnsblTable rows of one probe, in index order."""
    return dnsbl_rows(name_index, result.dnsbl if result is not None else None)


def dnsbl_rows(name_index: Oid, facts: DnsblFacts | None) -> list[tuple[Oid, tuple[Raw, ...]]]:
    """The rows of a DNSBL table (mxDnsblTable, deliveryDnsblTable) for one probe's answers."""
    if facts is None:
        return []
    address_number = {address: n for n, address in enumerate(facts.addresses[:ADDRESSES_MAX], start=1)}
    zone_number = {zone: n for n, zone in enumerate(facts.zones[: mib_oids.ORDER_MAX], start=1)}
    rows = []
    for answer in facts.answers:
        address, zone = address_number.get(answer.address), zone_number.get(answer.zone)
        if address is None or zone is None:
            continue
        cells: tuple[Raw, ...] = (
            admin_string(answer.address),
            admin_string(answer.zone),
            mib_oids.DNSBL_STATUS_VALUES[answer.outcome.value],
            address_list(answer.codes),
            server_text(answer.reason or answer.error),
        )
        rows.append(((*name_index, address, zone), cells))
    return sorted(rows)


def mx_policy_finding_rows(name_index: Oid, result: MxResult | None) -> list[tuple[Oid, tuple[Raw, ...]]]:
    """(index, cells) of the mxPolicyFindingTable rows of one check, in the run's order."""
    findings = result.policy_findings[: mib_oids.ORDER_MAX] if result is not None else ()
    return [
        (
            (*name_index, number),
            (
                mib_oids.POLICY_RECORD_VALUES[finding.record],
                admin_string(finding.finding),
                mib_oids.FINDING_LEVEL_VALUES[finding.level.value],
                server_text(finding.detail),
            ),
        )
        for number, finding in enumerate(findings, start=1)
    ]


def shown_hops(result: DeliveryResult | None) -> tuple[str, tuple[Hop, ...]]:
    """(deliveryHopsSource, hops) of a delivery row: the latest run's own message if it arrived, else the
    most recently submitted late message that run found (where mail was held), else none."""
    if result is None:
        return "none", ()
    if result.arrived_at is not None or result.hops:
        return "this_run", result.hops
    late = [earlier for earlier in result.earlier if earlier.outcome == "late"]
    if late:
        return "late_message", max(late, key=lambda earlier: earlier.submitted_at).hops
    return "none", ()


def delivery_row(state: ProbeState) -> tuple[Raw, ...]:
    """The cells of one deliveryTable row, in _DELIVERY_COLUMNS order."""
    config = state.config
    assert isinstance(config, DeliveryProbeConfig)
    result = state.last_result if isinstance(state.last_result, DeliveryResult) else None
    ledger = state.delivery or DeliveryLedger()
    source, hops = shown_hops(result)
    folder = result.folder if result is not None and result.folder in mib_oids.DELIVERY_FOLDER_VALUES else "unknown"
    reply = result.reply if result is not None and not result.ok else None

    def verdict(method: str) -> bytes:
        return server_text(result.verdict(method) or "") if result is not None else b""

    return (
        admin_string(state.name),
        admin_string(config.to),
        _status(state.status),
        server_text(result.error) if result and not result.ok else b"",
        _phase(result),
        _reason(result),
        _clamp(reply.code, 0, 999) if reply is not None else 0,
        ms(ledger.last_latency),
        _truth(ledger.last_latency is not None),
        _clamp(len(ledger.pending), 0, UINT32_MAX),
        ledger.late % COUNTER32_MODULO,
        ledger.lost % COUNTER32_MODULO,
        _clamp(state.consecutive_failures, 0, UINT32_MAX),
        _clamp(state.runs, 0, COUNTER64_MAX),
        _clamp(state.failures, 0, COUNTER64_MAX),
        date_and_time(state.last_success),
        date_and_time(state.last_change),
        server_text(result.queue_id) if result else b"",
        server_text(result.submitted_to) if result else b"",
        verdict("spf"),
        verdict("dkim"),
        verdict("dmarc"),
        mib_oids.DELIVERY_FOLDER_VALUES[folder],
        server_text(result.folder_name) if result else b"",
        min(len(hops), HOPS_MAX),
        mib_oids.HOPS_SOURCE_VALUES[source],
        unix_time(state.last_success),
        unix_time(state.last_change),
    )


def delivery_hop_rows(name_index: Oid, result: DeliveryResult | None) -> list[tuple[Oid, tuple[Raw, ...]]]:
    """(index, cells) of the deliveryHopTable rows of one probe, in index order."""
    rows = []
    for number, hop in enumerate(shown_hops(result)[1][:HOPS_MAX], start=1):
        cells: tuple[Raw, ...] = (
            server_text(hop.by_host),
            server_text(hop.from_host),
            server_text(hop.protocol),
            _signed_ms(hop.delay) if hop.delay is not None and math.isfinite(hop.delay) else 0,
            _truth(hop.delay is not None and math.isfinite(hop.delay)),
            server_text(hop.queue_id),
            date_and_time(hop.time),
            unix_time(hop.time),
        )
        rows.append(((*name_index, number), cells))
    return rows


# -- the table ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ColumnRows:
    """One conceptual table: row indexes in OID order and their cells."""

    indexes: Sequence[Oid]
    cells: Sequence[tuple[Raw, ...]]


@dataclass(frozen=True, slots=True)
class ScalarNode:
    """A scalar instance; `read` builds its value at the moment of the request."""

    read: Callable[[], Asn1Value]


@dataclass(frozen=True, slots=True)
class ColumnNode:
    """One column of a table: every instance is the column OID + a row index."""

    rows: ColumnRows
    position: int
    syntax: type


MibNode = ScalarNode | ColumnNode


class MibTable:
    """The served OIDs at one store version: a sorted list of scalars and columns.

    No node's OID is a prefix of another's, so one bisect finds the node that can hold an OID,
    and a second bisect over that table's row indexes finds the instance."""

    def __init__(self, version: int, nodes: Sequence[tuple[Oid, MibNode]]) -> None:
        self.version = version
        ordered = sorted(nodes, key=lambda item: item[0])
        self._keys = [oid for oid, _ in ordered]
        self._nodes = [node for _, node in ordered]

    @property
    def node_oids(self) -> Sequence[Oid]:
        """Every node's OID (a scalar instance's or a column's), sorted: a bisect finds the node of an OID."""
        return self._keys

    @property
    def nodes(self) -> Sequence[MibNode]:
        """The nodes in the order of `node_oids`: what the fast path compiles its encodings from."""
        return self._nodes

    def get(self, oid: Oid) -> Asn1Value | None:
        """The value of exactly this instance, or None."""
        i = bisect_right(self._keys, oid) - 1
        if i < 0:
            return None
        key, node = self._keys[i], self._nodes[i]
        if isinstance(node, ScalarNode):
            return node.read() if oid == key else None
        if oid[: len(key)] != key:
            return None
        index = oid[len(key) :]
        rows = node.rows
        j = bisect_left(rows.indexes, index)
        if j < len(rows.indexes) and rows.indexes[j] == index:
            return node.syntax(rows.cells[j][node.position])
        return None

    def next(self, oid: Oid) -> tuple[Oid, Asn1Value] | None:
        """The first instance strictly after `oid` with its value, or None at the end of the MIB."""
        i = bisect_right(self._keys, oid) - 1
        if i < 0 or oid[: len(self._keys[i])] != self._keys[i]:
            i += 1  # oid is not inside node i: start with the first node after it
        for k in range(i, len(self._keys)):
            key, node = self._keys[k], self._nodes[k]
            if isinstance(node, ScalarNode):
                if key > oid:
                    return key, node.read()
                continue
            rows = node.rows
            # Inside this column: the first row after oid's index; else the column starts after oid.
            j = bisect_right(rows.indexes, oid[len(key) :]) if oid[: len(key)] == key else 0
            if j < len(rows.indexes):
                return key + rows.indexes[j], node.syntax(rows.cells[j][node.position])
        return None

    def node_key(self, oid: Oid) -> Oid | None:
        """The scalar instance or column OID that `oid` belongs to, if any."""
        i = bisect_right(self._keys, oid) - 1
        if i >= 0 and oid[: len(self._keys[i])] == self._keys[i]:
            return self._keys[i]
        return None

    def is_object(self, oid: Oid) -> bool:
        """Whether `oid` names an instance of an object this agent serves (noSuchInstance vs noSuchObject)."""
        i = bisect_right(self._keys, oid) - 1
        if i >= 0 and isinstance(self._nodes[i], ColumnNode):
            return oid[: len(self._keys[i])] == self._keys[i]
        # A scalar instance is object + (0,): compare object OIDs. Its key may sort after oid.
        for k in (i, i + 1):
            if 0 <= k < len(self._keys) and isinstance(self._nodes[k], ScalarNode):
                obj = self._keys[k][:-1]
                if oid[: len(obj)] == obj:
                    return True
        return False

    def items(self) -> Iterator[tuple[Oid, Asn1Value]]:
        """Every instance in OID order (what a full walk returns)."""
        for key, node in zip(self._keys, self._nodes, strict=True):
            if isinstance(node, ScalarNode):
                yield key, node.read()
            else:
                for index, cells in zip(node.rows.indexes, node.rows.cells, strict=True):
                    yield key + index, node.syntax(cells[node.position])

    def __len__(self) -> int:
        return sum(1 if isinstance(n, ScalarNode) else len(n.rows.indexes) for n in self._nodes)


class RowInputs(NamedTuple):
    """What a row's cells are made from, by value or by long-lived reference (the config).

    A run is known by its start time, a handshake by its time: the key holds neither result
    nor TLS facts, so keeping it keeps no previous result alive."""

    config: object
    run: tuple[type, float] | None
    status: Status
    runs: int
    failures: int
    consecutive_failures: int
    last_success: float | None
    last_change: float | None
    tls_at: float | None

    @classmethod
    def of(cls, state: ProbeState) -> RowInputs:
        result = state.last_result
        return cls(
            state.config,
            None if result is None else (type(result), result.started_at),
            state.status,
            state.runs,
            state.failures,
            state.consecutive_failures,
            state.last_success,
            state.last_change,
            state.last_tls_at if state.last_tls is not None else None,
        )


@dataclass(frozen=True, slots=True)
class _CachedRow:
    """A row's cells and what they were made from.

    The state is held weakly: between two rebuilds the store replaces every state that ran, and a
    strong reference here would keep each one's previous result (TLS facts, chain) alive until
    the next SNMP request, tens of MiB with 10,000 probes."""

    made_from: weakref.ref[ProbeState]
    inputs: RowInputs
    index: Oid
    cells: tuple[Raw, ...]
    exchanges: tuple[tuple[Oid, tuple[Raw, ...]], ...] = ()
    addresses: tuple[tuple[Oid, tuple[Raw, ...]], ...] = ()  # mxAddressTable or smtpAddressTable rows
    hops: tuple[tuple[Oid, tuple[Raw, ...]], ...] = ()  # deliveryHopTable rows
    dnsbl: tuple[tuple[Oid, tuple[Raw, ...]], ...] = ()  # mxDnsblTable or deliveryDnsblTable rows
    findings: tuple[tuple[Oid, tuple[Raw, ...]], ...] = ()  # mxPolicyFindingTable rows

    @classmethod
    def of(
        cls,
        state: ProbeState,
        index: Oid,
        cells: tuple[Raw, ...],
        exchanges: tuple[tuple[Oid, tuple[Raw, ...]], ...] = (),
        addresses: tuple[tuple[Oid, tuple[Raw, ...]], ...] = (),
        hops: tuple[tuple[Oid, tuple[Raw, ...]], ...] = (),
        dnsbl: tuple[tuple[Oid, tuple[Raw, ...]], ...] = (),
        findings: tuple[tuple[Oid, tuple[Raw, ...]], ...] = (),
    ) -> _CachedRow:
        return cls(weakref.ref(state), RowInputs.of(state), index, cells, exchanges, addresses, hops, dnsbl, findings)

    @property
    def failed(self) -> bool:
        return self.inputs.status is Status.FAILED

    def made_of(self, state: ProbeState) -> bool:
        """Whether this row was made from `state` itself."""
        return self.made_from() is state


RowMaker = Callable[[str, ProbeState, "_CachedRow | None"], _CachedRow]


class _RowTable:
    """The rows of one kind, kept in index order and patched in place as states change."""

    def __init__(self, kind: str, make: RowMaker) -> None:
        self.kind = kind
        self._make = make
        self.rows: dict[str, _CachedRow] = {}
        self.order: list[str] = []
        self._position: dict[str, int] = {}
        self.indexes: list[Oid] = []
        self.cells: list[tuple[Raw, ...]] = []
        self.failed = 0  # rows whose status is failed, kept up to date incrementally

    def apply(self, changed: Sequence[tuple[str, ProbeState]], count: int, snapshot: Snapshot) -> bool:
        """Take the `changed` (new or replaced) states; `count` rows of this kind exist now.

        True if any row was added, removed or changed."""
        rows = self.rows
        for name, state in changed:
            old = rows.get(name)
            rows[name] = self._make(name, state, old)
            self.failed += (state.status is Status.FAILED) - (old is not None and old.failed)
        if len(rows) != count or any(name not in self._position for name, _ in changed):
            # Rows came or went (a reload): sort again. Index order is length, then octets.
            if len(rows) != count:
                kind = self.kind
                self.rows = rows = {name: rows[name] for name, s in snapshot.states.items() if s.kind == kind}
                self.failed = sum(row.failed for row in rows.values())
            self.order = sorted(rows, key=lambda name: rows[name].index)
            self._position = {name: i for i, name in enumerate(self.order)}
            self.indexes = [rows[name].index for name in self.order]
            self.cells = [rows[name].cells for name in self.order]
            return True
        if changed:
            cells = list(self.cells)  # a fresh list: tables handed out earlier stay as they were
            for name, _ in changed:
                cells[self._position[name]] = rows[name].cells
            self.cells = cells
        return bool(changed)


class MibView:
    """Serves the system group and SMTP-MONITOR-MIB from a store; rebuilt when the store changes.

    Rows are cached by ProbeState identity (the store replaces, never mutates, a state), so a
    rebuild after one probe result recomputes one row. Nothing here reads credentials: the
    store holds probe settings and results only."""

    def __init__(
        self,
        store: SnapshotSource,
        health: AgentHealth,
        *,
        default_interval: float = 60.0,
        sys_name: str | None = None,
        sys_contact: str = "",
        sys_location: str = "",
        clock: Callable[[], float] = time.monotonic,
        max_staleness: float = 0.0,
    ) -> None:
        self._store = store
        # Rebuild at most this often: with 10,000 probes the store changes ~170 times a second,
        # and rebuilding (and re-snapshotting) per request would starve a walk. 0: always fresh.
        self._max_staleness = max_staleness
        self._built_at = float("-inf")
        self._health = health
        self._default_interval = default_interval
        self._clock = clock
        self._started = clock()
        self._sys_name = admin_string(socket.gethostname() if sys_name is None else sys_name)
        self._sys_contact = admin_string(sys_contact)
        self._sys_location = admin_string(sys_location)
        self._table: MibTable | None = None
        self._smtp = _RowTable("smtp", self._smtp_row)
        self._mx = _RowTable("mx", self._mx_row)
        self._delivery = _RowTable("delivery", self._delivery_row)
        self._hops = ColumnRows([], [])
        self._delivery_dnsbl = ColumnRows([], [])
        self._exchanges = ColumnRows([], [])
        self._addresses = ColumnRows([], [])
        self._smtp_addresses = ColumnRows([], [])
        self._dnsbl = ColumnRows([], [])
        self._findings = ColumnRows([], [])
        self.last_build_seconds = 0.0

    def set_sys_location(self, text: str) -> None:
        """sysLocation.0 from now on (a reload). The fast path encodes the system group once per table,
        so a new value drops the table: the next request builds one."""
        location = admin_string(text)
        if location != self._sys_location:
            self._sys_location = location
            self._table = None

    def restart_uptime(self) -> None:
        """sysUpTime counts from now (the agent's (re)start)."""
        self._started = self._clock()

    def uptime_ticks(self) -> int:
        return int((self._clock() - self._started) * 100) % 2**32

    def current(self) -> MibTable:
        """The table for the store's current snapshot, rebuilt only if the version moved (and, with
        max_staleness, no more often than that)."""
        table = self._table
        if table is not None and self._clock() - self._built_at < self._max_staleness:
            return table
        snapshot = self._store.snapshot()
        if table is None or table.version != snapshot.version:
            started = time.perf_counter()
            table = self._table = self._build(snapshot)
            self.last_build_seconds = time.perf_counter() - started
            self._built_at = self._clock()
        return table

    def get(self, oid: Oid) -> Asn1Value | None:
        return self.current().get(oid)

    def next(self, oid: Oid) -> tuple[Oid, Asn1Value] | None:
        return self.current().next(oid)

    # -- building ---------------------------------------------------------------------------

    def _build(self, snapshot: Snapshot) -> MibTable:
        # One pass finding the states the store replaced since the last build: usually few.
        smtp_rows, mx_rows, delivery_rows = self._smtp.rows, self._mx.rows, self._delivery.rows
        smtp_changed: list[tuple[str, ProbeState]] = []
        mx_changed: list[tuple[str, ProbeState]] = []
        delivery_changed: list[tuple[str, ProbeState]] = []
        smtp_count = delivery_count = 0
        for name, state in snapshot.states.items():
            if state.kind == "smtp":
                smtp_count += 1
                old = smtp_rows.get(name)
                if old is None or not old.made_of(state):
                    smtp_changed.append((name, state))
            elif state.kind == "delivery":
                delivery_count += 1
                old = delivery_rows.get(name)
                if old is None or not old.made_of(state):
                    delivery_changed.append((name, state))
            else:
                old = mx_rows.get(name)
                if old is None or not old.made_of(state):
                    mx_changed.append((name, state))
        mx_count = len(snapshot.states) - smtp_count - delivery_count
        if self._smtp.apply(smtp_changed, smtp_count, snapshot):
            rows = self._smtp.rows
            flat = [address for name in self._smtp.order for address in rows[name].addresses]
            self._smtp_addresses = ColumnRows([index for index, _ in flat], [cells for _, cells in flat])
        if self._mx.apply(mx_changed, mx_count, snapshot):
            rows = self._mx.rows
            flat = [exchange for name in self._mx.order for exchange in rows[name].exchanges]
            self._exchanges = ColumnRows([index for index, _ in flat], [cells for _, cells in flat])
            flat = [address for name in self._mx.order for address in rows[name].addresses]
            self._addresses = ColumnRows([index for index, _ in flat], [cells for _, cells in flat])
            flat = [answer for name in self._mx.order for answer in rows[name].dnsbl]
            self._dnsbl = ColumnRows([index for index, _ in flat], [cells for _, cells in flat])
            flat = [finding for name in self._mx.order for finding in rows[name].findings]
            self._findings = ColumnRows([index for index, _ in flat], [cells for _, cells in flat])
        if self._delivery.apply(delivery_changed, delivery_count, snapshot):
            rows = self._delivery.rows
            flat = [hop for name in self._delivery.order for hop in rows[name].hops]
            self._hops = ColumnRows([index for index, _ in flat], [cells for _, cells in flat])
            flat = [answer for name in self._delivery.order for answer in rows[name].dnsbl]
            self._delivery_dnsbl = ColumnRows([index for index, _ in flat], [cells for _, cells in flat])

        nodes: list[tuple[Oid, MibNode]] = self._system_nodes()
        nodes += self._scalar_nodes(
            smtp_count, self._smtp.failed, mx_count, self._mx.failed, delivery_count, self._delivery.failed
        )
        smtp_table = ColumnRows(self._smtp.indexes, self._smtp.cells)
        mx_table = ColumnRows(self._mx.indexes, self._mx.cells)
        for position, column in enumerate(_SMTP_COLUMNS):
            syntax = SMTP_PROBE_TYPES[column]
            nodes.append(((*mib_oids.SMTP_PROBE_ENTRY, int(column)), ColumnNode(smtp_table, position, syntax)))
        for position, mx_column in enumerate(_MX_COLUMNS):
            syntax = MX_CHECK_TYPES[mx_column]
            nodes.append(((*mib_oids.MX_CHECK_ENTRY, int(mx_column)), ColumnNode(mx_table, position, syntax)))
        for position, exchange_column in enumerate(_EXCHANGE_COLUMNS):
            syntax = MX_EXCHANGE_TYPES[exchange_column]
            nodes.append(
                ((*mib_oids.MX_EXCHANGE_ENTRY, int(exchange_column)), ColumnNode(self._exchanges, position, syntax))
            )
        for position, address_column in enumerate(_ADDRESS_COLUMNS):
            syntax = MX_ADDRESS_TYPES[address_column]
            nodes.append(
                ((*mib_oids.MX_ADDRESS_ENTRY, int(address_column)), ColumnNode(self._addresses, position, syntax))
            )
        for position, smtp_address_column in enumerate(_SMTP_ADDRESS_COLUMNS):
            syntax = SMTP_ADDRESS_TYPES[smtp_address_column]
            nodes.append(
                (
                    (*mib_oids.SMTP_ADDRESS_ENTRY, int(smtp_address_column)),
                    ColumnNode(self._smtp_addresses, position, syntax),
                )
            )
        delivery_table = ColumnRows(self._delivery.indexes, self._delivery.cells)
        for position, delivery_column in enumerate(_DELIVERY_COLUMNS):
            syntax = DELIVERY_TYPES[delivery_column]
            nodes.append(
                ((*mib_oids.DELIVERY_ENTRY, int(delivery_column)), ColumnNode(delivery_table, position, syntax))
            )
        for position, hop_column in enumerate(_DELIVERY_HOP_COLUMNS):
            syntax = DELIVERY_HOP_TYPES[hop_column]
            nodes.append(((*mib_oids.DELIVERY_HOP_ENTRY, int(hop_column)), ColumnNode(self._hops, position, syntax)))
        for position, dnsbl_column in enumerate(_DNSBL_COLUMNS):
            syntax = MX_DNSBL_TYPES[dnsbl_column]
            nodes.append(((*mib_oids.MX_DNSBL_ENTRY, int(dnsbl_column)), ColumnNode(self._dnsbl, position, syntax)))
        for position, finding_column in enumerate(_FINDING_COLUMNS):
            syntax = MX_POLICY_FINDING_TYPES[finding_column]
            node = ColumnNode(self._findings, position, syntax)
            nodes.append(((*mib_oids.MX_POLICY_FINDING_ENTRY, int(finding_column)), node))
        for position, delivery_dnsbl_column in enumerate(_DELIVERY_DNSBL_COLUMNS):
            syntax = DELIVERY_DNSBL_TYPES[delivery_dnsbl_column]
            node = ColumnNode(self._delivery_dnsbl, position, syntax)
            nodes.append(((*mib_oids.DELIVERY_DNSBL_ENTRY, int(delivery_dnsbl_column)), node))
        return MibTable(snapshot.version, nodes)

    def _smtp_row(self, name: str, state: ProbeState, old: _CachedRow | None) -> _CachedRow:
        if old is not None and old.inputs == RowInputs.of(state):  # a reload keeps config and result
            return _CachedRow.of(state, old.index, old.cells, addresses=old.addresses)
        index = old.index if old is not None else mib_oids.name_index(name)
        result = state.last_result if isinstance(state.last_result, SmtpResult) else None
        cells = smtp_probe_row(state, self._default_interval)
        return _CachedRow.of(state, index, cells, addresses=tuple(smtp_address_rows(index, result)))

    def _mx_row(self, name: str, state: ProbeState, old: _CachedRow | None) -> _CachedRow:
        if old is not None and old.inputs == RowInputs.of(state):
            return _CachedRow.of(
                state, old.index, old.cells, old.exchanges, old.addresses, dnsbl=old.dnsbl, findings=old.findings
            )
        index = old.index if old is not None else mib_oids.name_index(name)
        result = state.last_result if isinstance(state.last_result, MxResult) else None
        return _CachedRow.of(
            state,
            index,
            mx_check_row(state),
            tuple(mx_exchange_rows(index, result)),
            tuple(mx_address_rows(index, result)),
            dnsbl=tuple(mx_dnsbl_rows(index, result)),
            findings=tuple(mx_policy_finding_rows(index, result)),
        )

    def _delivery_row(self, name: str, state: ProbeState, old: _CachedRow | None) -> _CachedRow:
        # Always made afresh: the ledger (pending, late, lost) is not in RowInputs, and delivery
        # probes are few (hundreds at most, each run minutes apart).
        index = old.index if old is not None else mib_oids.name_index(name)
        result = state.last_result if isinstance(state.last_result, DeliveryResult) else None
        return _CachedRow.of(
            state,
            index,
            delivery_row(state),
            hops=tuple(delivery_hop_rows(index, result)),
            dnsbl=tuple(delivery_dnsbl_rows(index, result)),
        )

    def _system_nodes(self) -> list[tuple[Oid, MibNode]]:
        descr = admin_string(f"smtp-monitor {self._health.version}: SMTP and MX monitoring agent")
        return [
            (SYS_DESCR, ScalarNode(lambda: rfc1902.OctetString(descr))),
            (SYS_OBJECT_ID, ScalarNode(lambda: rfc1902.ObjectIdentifier(mib_oids.AGENT_OID))),
            (SYS_UPTIME, ScalarNode(lambda: rfc1902.TimeTicks(self.uptime_ticks()))),
            (SYS_CONTACT, ScalarNode(lambda: rfc1902.OctetString(self._sys_contact))),
            (SYS_NAME, ScalarNode(lambda: rfc1902.OctetString(self._sys_name))),
            (SYS_LOCATION, ScalarNode(lambda: rfc1902.OctetString(self._sys_location))),
            (SYS_SERVICES, ScalarNode(lambda: rfc1902.Integer32(SYS_SERVICES_VALUE))),
        ]

    def _scalar_nodes(
        self, probes: int, probes_failed: int, checks: int, checks_failed: int, deliveries: int, deliveries_failed: int
    ) -> list[tuple[Oid, MibNode]]:
        health = self._health

        def gauge(value: int) -> ScalarNode:
            return ScalarNode(lambda: rfc1902.Gauge32(_clamp(value, 0, UINT32_MAX)))

        # Health facts change without a store version: read them at request time.
        readers: dict[Scalar, ScalarNode] = {
            Scalar.PROBE_COUNT: gauge(probes),
            Scalar.PROBES_FAILED: gauge(probes_failed),
            Scalar.MX_CHECK_COUNT: gauge(checks),
            Scalar.MX_CHECKS_FAILED: gauge(checks_failed),
            Scalar.VERSION: ScalarNode(lambda: rfc1902.OctetString(admin_string(health.version))),
            Scalar.CONFIG_LOAD_TIME: ScalarNode(
                lambda: rfc1902.OctetString(date_and_time(health.config_attempted_at or health.config_loaded_at))
            ),
            Scalar.CONFIG_LOAD_SUCCESS: ScalarNode(lambda: rfc1902.Integer32(_truth(health.config_load_success))),
            Scalar.DELIVERY_COUNT: gauge(deliveries),
            Scalar.DELIVERIES_FAILED: gauge(deliveries_failed),
            Scalar.CONFIG_LOAD_UNIX_TIME: ScalarNode(
                lambda: rfc1902.Unsigned32(unix_time(health.config_attempted_at or health.config_loaded_at))
            ),
        }
        return [(mib_oids.scalar_oid(scalar), reader) for scalar, reader in readers.items()]


def row_values(state: ProbeState, columns: Sequence[mib_oids.NotificationColumn]) -> list[Asn1Value]:
    """The values the agent serves for these columns of a probe's row: notifications carry the
    same values an NMS reads from the table. (The accessible-for-notify columns of deliveryTable
    are no row's: monitor.exporters.snmp.notify fills them from the event.)"""
    if state.kind == "smtp":
        cells = smtp_probe_row(state, 0.0)
        # The kind says which table's columns these are; their type is the union of all notification columns.
        return [SMTP_PROBE_TYPES[c](cells[_SMTP_COLUMNS.index(c)]) for c in columns]  # type: ignore[index]
    if state.kind == "delivery":
        cells = delivery_row(state)
        return [DELIVERY_TYPES[c](cells[_DELIVERY_COLUMNS.index(c)]) for c in columns]  # type: ignore[index]  # as above
    cells = mx_check_row(state)
    return [MX_CHECK_TYPES[c](cells[_MX_COLUMNS.index(c)]) for c in columns]  # type: ignore[index]  # as above
