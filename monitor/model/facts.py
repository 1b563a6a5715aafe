"""Typed facts of an MX check's DANE, MTA-STS and SPF/DMARC steps: built by the probes, read by the exporters."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


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
        return {
            "tlsa_name": self.tlsa_name,
            "records": list(self.records),
            "authenticated": self.authenticated,
            "lookup_error": self.lookup_error,
            "usable": self.usable,
            "matched": self.matched,
            "matched_record": self.matched_record,
            "detail": self.detail,
            "cname_target": self.cname_target,
            "cname_secure": self.cname_secure,
            "reference_names": list(self.reference_names),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], exchange: str) -> DaneFacts:
        """Saved facts; a field saved before it existed means what it meant then (no alias: the exchange's name)."""
        _mapping(d)
        matched = d.get("matched")
        secure = d.get("cname_secure")
        return cls(
            tlsa_name=str(d.get("tlsa_name", "")),
            records=tuple(str(r) for r in d.get("records") or ()),
            authenticated=bool(d.get("authenticated")),
            lookup_error=str(d.get("lookup_error", "")),
            usable=int(d.get("usable", 0)),
            matched=None if matched is None else bool(matched),
            matched_record=str(d.get("matched_record", "")),
            detail=str(d.get("detail", "")),
            cname_target=str(d.get("cname_target", "")),
            cname_secure=None if secure is None else bool(secure),
            reference_names=tuple(str(n) for n in d.get("reference_names", (exchange,))),
        )


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
    cert_not_after: datetime | None  # expiry of the HTTPS server's certificate

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "max_age": self.max_age,
            "mx_patterns": list(self.mx_patterns),
            "verified": self.verified,
            "error": self.error,
            "error_kind": self.error_kind,
            "http_status": self.http_status,
            "uncovered": list(self.uncovered),
            "cert_not_after": self.cert_not_after.isoformat() if self.cert_not_after else None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MtaStsPolicyFacts:
        _mapping(d)
        max_age = d.get("max_age")
        not_after = d.get("cert_not_after")
        return cls(
            mode=str(d.get("mode") or ""),
            max_age=None if max_age is None else int(max_age),
            mx_patterns=tuple(str(p) for p in d.get("mx_patterns") or ()),
            verified=bool(d.get("verified")),
            error=str(d.get("error") or ""),
            error_kind=str(d.get("error_kind") or ""),
            http_status=int(d.get("http_status") or 0),
            uncovered=tuple(str(x) for x in d.get("uncovered") or ()),
            cert_not_after=datetime.fromisoformat(not_after) if not_after else None,
        )


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
        # the policy's keys sit at the top level: the JSON shape the facts had as a plain dict
        policy = self.policy.as_dict() if self.policy is not None else {}
        return {
            "txt_id": self.txt_id,
            "txt_error": self.txt_error,
            "txt_error_kind": self.txt_error_kind,
            "present": self.present,
            **policy,
            "valid": self.valid,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MtaStsFacts:
        _mapping(d)
        return cls(
            txt_id=str(d.get("txt_id", "")),
            txt_error=str(d.get("txt_error", "")),
            txt_error_kind=str(d.get("txt_error_kind", "")),
            present=bool(d.get("present")),
            policy=MtaStsPolicyFacts.from_dict(d) if "uncovered" in d else None,
            valid=bool(d.get("valid")),
        )


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
        return {"record": self.record, "valid": self.valid, "problem": self.problem}

    @classmethod
    def from_dict(cls, kind: str, d: dict[str, Any]) -> PolicyRecord:
        _mapping(d)
        return cls(kind, str(d["record"]), str(d["problem"]))


def _mapping(value: object) -> None:
    # TypeError is what a restore treats as an unusable saved state (monitor.state.persistence)
    if not isinstance(value, dict):
        raise TypeError(f"saved facts are {type(value).__name__}, not an object")
