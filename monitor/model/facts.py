"""Typed facts of an MX check's DANE, MTA-STS and SPF/DMARC steps: built by the probes, read by the exporters."""

from __future__ import annotations

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


_POLICY_KEYS = tuple(f.name for f in fields(MtaStsPolicyFacts))
