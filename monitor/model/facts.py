"""Typed facts of an MX check's DANE, MTA-STS and SPF/DMARC steps: built by the probes, read by the exporters."""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields
from typing import Any

from pydantic import SerializerFunctionWrapHandler, model_serializer, model_validator

from monitor.model.wire import IsoDatetime, as_object, to_wire


@dataclass(frozen=True, slots=True)
class DaneFacts:
    """One exchange's DANE state (RFC 7672): its TLSA RRset and whether the presented chain matched it."""

    tlsa_name: str  # the TLSA owner name the verdict used
    records: tuple[str, ...] = ()  # the TLSA RRset in presentation form
    authenticated: bool = False  # AD bit of the TLSA answer or of its denial
    lookup_error: str = ""
    usable: int = 0  # records an SMTP client may use (RFC 7672 3.1.3)
    matched: bool | None = None  # None: no usable record, so nothing was matched
    matched_record: str = ""
    detail: str = ""
    cname_target: str = ""  # the exchange's fully CNAME-expanded name; "" when it is no alias
    cname_secure: bool | None = None  # whether that CNAME chain was DNSSEC-authenticated; None when no alias
    reference_names: tuple[str, ...] = ()  # names a DANE-TA leaf may carry (RFC 7672 3.2.2)

    def as_dict(self) -> dict[str, Any]:
        # every field in field order; MxRecord fills in reference_names saved before it existed
        return to_wire(self)


@dataclass(frozen=True, slots=True)
class MtaStsPolicyFacts:
    """The HTTPS policy an MX check fetched (RFC 8461 3.3) and the exchanges it leaves uncovered."""

    mode: str  # enforce, testing or none; "" when no policy was had
    max_age: int | None
    mx_patterns: tuple[str, ...]
    verified: bool  # the HTTPS certificate verified for mta-sts.{domain}
    error: str  # why no policy was had ("" when one was)
    error_kind: str  # monitor.probes.mta_sts error kinds
    http_status: int
    uncovered: tuple[str, ...]  # exchanges of the MX answer no mx pattern covers
    cert_not_after: IsoDatetime | None  # expiry of the HTTPS server's certificate

    def as_dict(self) -> dict[str, Any]:
        return to_wire(self)


@dataclass(frozen=True, slots=True)
class MtaStsFacts:
    """A domain's MTA-STS state (RFC 8461): the _mta-sts TXT record and, when it is valid, the policy."""

    txt_id: str
    txt_error: str
    txt_error_kind: str  # absent, multiple, malformed or dns; "" when txt_id is set
    present: bool  # a v=STSv1 TXT record (or a failed lookup): anything but "absent"
    policy: MtaStsPolicyFacts | None  # fetched only after a valid TXT record
    valid: bool  # no problem with the record, the policy or its coverage of the exchanges

    def as_dict(self) -> dict[str, Any]:
        return to_wire(self)

    # the policy's keys sit at the top level, between "present" and "valid": the JSON shape the facts had
    # as a plain dict; a saved policy is there when its "uncovered" key is
    @model_serializer(mode="wrap")
    def _wire(self, fields_of: SerializerFunctionWrapHandler) -> dict[str, Any]:
        wire: dict[str, Any] = fields_of(self)
        policy = wire.pop("policy") or {}
        valid = wire.pop("valid")
        return {**wire, **policy, "valid": valid}

    @model_validator(mode="before")
    @classmethod
    def _unwire(cls, data: Any) -> Any:
        wire = as_object(data)
        if wire is None:
            return data
        policy = {key: wire.pop(key) for key in _POLICY_KEYS if key in wire}
        wire["policy"] = policy if "uncovered" in policy else None
        return wire


@dataclass(frozen=True, slots=True)
class PolicyRecord:
    """What was found for one record kind (SPF or DMARC), and what is wrong with it ("" when fine)."""

    kind: str  # "spf" or "dmarc"
    record: str
    problem: str

    @property
    def valid(self) -> bool:
        return not self.problem

    def as_dict(self) -> dict[str, Any]:
        return to_wire(self)

    # {"record", "valid", "problem"}: the kind is the key it is saved under (MxResult fills it in)
    @model_serializer(mode="wrap")
    def _wire(self, fields_of: SerializerFunctionWrapHandler) -> dict[str, Any]:
        wire: dict[str, Any] = fields_of(self)
        del wire["kind"]
        return {"record": wire.pop("record"), "valid": self.valid, **wire}

    @model_validator(mode="before")
    @classmethod
    def _unwire(cls, data: Any) -> Any:
        wire = as_object(data)
        if wire is None:
            return data
        wire.pop("valid", None)  # derived from the problem
        return wire


class FindingLevel(enum.Enum):
    """How bad a policy finding is: an error fails the MX check (reason policy_record), a warning does not."""

    OK = "ok"
    WARNING = "warning"
    ERROR = "error"


# The named verdicts of the policy-depth checks, per record: the label values of
# mx_check_policy_finding and the rows of mxPolicyFindingTable come from these names only.
POLICY_FINDINGS: dict[str, tuple[str, ...]] = {
    # RFC 7208: the record evaluated recursively, as a receiver would for any sender address
    "spf": ("dns_lookups", "void_lookups", "include_loop", "include_missing", "multiple_records", "ptr", "lookup"),
    # RFC 7489: the policy, and the report destinations (7.1 authorisation, MX of their domains)
    "dmarc": ("policy", "subdomain_policy", "pct", "report_authorization", "report_mx", "lookup"),
    # RFC 8460: the _smtp._tls TXT record
    "tls_rpt": ("record", "lookup"),
}
MAX_FINDING_DETAIL = 300


@dataclass(frozen=True, slots=True)
class PolicyFinding:
    """One named verdict on a domain's SPF, DMARC or TLS-RPT record, with its level and why."""

    record: str  # spf, dmarc or tls_rpt
    finding: str  # one of POLICY_FINDINGS[record]
    level: FindingLevel
    detail: str = ""  # at most MAX_FINDING_DETAIL characters


class DnsblOutcome(enum.Enum):
    """What one DNSBL zone said about one address (RFC 5782)."""

    NOT_LISTED = "not_listed"  # NXDOMAIN (or no A record)
    LISTED = "listed"  # an A record in 127.0.0.0/8 that is neither 127.0.0.1 nor an error code of the zone
    REFUSED = "refused"  # 127.0.0.1 or the zone's error codes: query refused, over quota, public resolver
    UNEXPECTED = "unexpected"  # an A record outside 127.0.0.0/8 (RFC 5782 2.1): a wildcard or hijacked answer
    ERROR = "error"  # the lookup failed: timeout, SERVFAIL, malformed answer


MAX_DNSBL_CODES = 8  # A records kept per answer
MAX_DNSBL_TEXT = 255  # characters of a listing's TXT reason, or of an error


@dataclass(frozen=True, slots=True)
class DnsblAnswer:
    """One address against one zone: the outcome, the return codes and the zone's TXT reason."""

    address: str
    zone: str
    outcome: DnsblOutcome
    codes: tuple[str, ...] = ()  # the A records (at most MAX_DNSBL_CODES), e.g. 127.0.0.2
    reason: str = ""  # the TXT record of a listing (bounded); "" when none was published
    error: str = ""  # why the outcome is refused, unexpected or error


@dataclass(frozen=True, slots=True)
class DnsblFacts:
    """The DNSBL lookups of one run: every address against every configured zone."""

    zones: tuple[str, ...]  # in configured order: a zone's number is its position + 1
    addresses: tuple[str, ...]  # the distinct addresses looked up, in order of first appearance
    answers: tuple[DnsblAnswer, ...]  # address-major, zone-minor
    queries: int = 0  # DNS queries sent (A and TXT)

    @property
    def listed(self) -> tuple[DnsblAnswer, ...]:
        return tuple(a for a in self.answers if a.outcome is DnsblOutcome.LISTED)

    @property
    def failed(self) -> tuple[DnsblAnswer, ...]:
        """Answers that are no verdict: refused, unexpected or failed lookups (a warning, not a listing)."""
        verdicts = (DnsblOutcome.LISTED, DnsblOutcome.NOT_LISTED)
        return tuple(a for a in self.answers if a.outcome not in verdicts)


_POLICY_KEYS = tuple(f.name for f in fields(MtaStsPolicyFacts))
