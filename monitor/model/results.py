"""Probe result values: what every probe returns and every exporter reads."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from monitor.model.facts import DaneFacts, DnsblFacts, MtaStsFacts, PolicyFinding, PolicyRecord
from monitor.model.spoof import SpoofAttempt
from monitor.model.transcript import Transcript
from monitor.model.wire import (
    IsoDatetime,
    as_object,
    ordered,
    status_and_total_in,
    status_and_total_out,
    to_wire,
)


class Status(enum.Enum):
    """Alerting status of a probe, as kept by the results store."""

    OK = "ok"
    FAILED = "failed"
    UNKNOWN = "unknown"


class Phase(enum.Enum):
    """A step of a probe; a failed result names the step it failed in."""

    RESOLVE = "resolve"
    CONNECT = "connect"
    TLS = "tls"  # the TLS handshake, implicit (465) or after STARTTLS
    BANNER = "banner"
    EHLO = "ehlo"
    STARTTLS = "starttls"
    EHLO_TLS = "ehlo_tls"  # the EHLO repeated inside TLS
    AUTH = "auth"
    MAIL = "mail"  # MAIL FROM of the envelope or relay test
    RCPT = "rcpt"  # RCPT TO of the envelope or relay test
    QUIT = "quit"
    MX = "mx"  # the MX query of an MX check
    ADDRESS = "address"  # A/AAAA lookups of the exchanges
    HOSTS = "hosts"  # SMTP probes of the exchanges
    DANE = "dane"  # TLSA lookup and matching
    MTA_STS = "mta_sts"  # the MTA-STS policy and its MX patterns
    REVERSE = "reverse"  # PTR and forward confirmation of exchange addresses
    POLICY = "policy"  # SPF and DMARC records
    SPOOF = "spoof"  # the spoof test: a message forged in the protected domain sent to each exchange
    DNSBL = "dnsbl"  # DNS blocklist lookups of the exchanges' addresses
    INTERNAL = "internal"


class Reason(enum.Enum):
    """Why a probe failed, coarse enough to alert on."""

    TIMEOUT = "timeout"
    REFUSED = "refused"
    UNREACHABLE = "unreachable"
    RESET = "reset"
    DNS = "dns"
    REPLY = "reply"  # the server answered 4xx/5xx
    PROTOCOL = "protocol"  # not SMTP, malformed or oversized reply
    TLS = "tls"
    TLS_VERIFY = "tls_verify"
    NO_STARTTLS = "no_starttls"  # STARTTLS required but not offered
    UNEXPECTED_BANNER = "unexpected_banner"
    MISSING_EXTENSION = "missing_extension"
    AUTH_FAILED = "auth_failed"  # 535: credentials refused
    AUTH_UNAVAILABLE = "auth_unavailable"  # no AUTH, or not the configured mechanism
    OPEN_RELAY = "open_relay"
    UNEXPECTED_REPLY = "unexpected_reply"  # an envelope step got another reply than expected
    TLS_VERSION = "tls_version"  # negotiated below tls_min_version
    DNSSEC = "dnssec"  # the MX answer was not authenticated (AD) but dnssec: require
    DANE_MISMATCH = "dane_mismatch"
    MTA_STS_MISMATCH = "mta_sts_mismatch"
    REVERSE_DNS = "reverse_dns"  # an exchange address without forward-confirmed PTR
    POLICY_RECORD = "policy_record"  # SPF or DMARC record missing or malformed
    SPOOFABLE = "spoofable"  # an exchange accepted a message forged in the protected domain
    LISTED = "listed"  # an exchange address is listed on a configured DNS blocklist
    NXDOMAIN = "nxdomain"
    NO_MX = "no_mx"
    NULL_MX = "null_mx"
    NO_ADDRESS = "no_address"
    SERVFAIL = "servfail"
    UNEXPECTED_MX = "unexpected_mx"
    HOSTS_DOWN = "hosts_down"
    INTERNAL = "internal"


@dataclass(frozen=True, slots=True)
class CertInfo:
    """Facts of one X.509 certificate, reported whether or not it verified."""

    subject: str
    issuer: str
    sans: tuple[str, ...]
    not_before: IsoDatetime
    not_after: IsoDatetime
    serial: str
    sha256: str


@dataclass(frozen=True, slots=True)
class TlsInfo:
    """The negotiated TLS session and the verification outcome."""

    version: str
    cipher: str
    verified: bool
    verify_error: str = ""
    cert: CertInfo | None = None
    chain_not_after: IsoDatetime | None = None  # earliest expiry in the presented chain
    # DER of the presented chain, kept only for DANE matching; never exported (nor saved)
    chain_der: Annotated[tuple[bytes, ...], Field(exclude=True)] = field(default=(), repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply: code and the text of all its lines."""

    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(self.lines)

    def __str__(self) -> str:
        return f"{self.code} {self.text}".strip()


@dataclass(frozen=True, slots=True)
class SmtpResult:
    """Outcome of one SMTP handshake probe."""

    host: str
    port: int
    tls_mode: str
    started_at: float  # wall-clock time (epoch seconds) the probe started
    ok: bool
    phase: Phase | None = None  # the failed phase; None when ok
    reason: Reason | None = None
    error: str = ""
    reply: Reply | None = None  # the failing reply, when a reply failed the probe
    address: str = ""  # the IP address connected to
    timings: dict[str, float] = field(default_factory=dict)  # phase value -> seconds
    total: float = 0.0
    banner: str = ""
    helo_fallback: bool = False  # EHLO was refused and HELO used instead
    extensions: dict[str, str] = field(default_factory=dict)  # keyword -> parameters
    tls: TlsInfo | None = None
    address_results: tuple[SmtpResult, ...] = ()  # every address, with address_family: both
    # connect/banner -> "kernel" (kernel timestamps, free of our own scheduling delay) or "wall"; other
    # phases are always wall clock; empty in results saved before it existed.
    timing_source: dict[str, str] = field(default_factory=dict)
    transcript: Transcript | None = None  # the dialogue, bounded and redacted; None when not recorded

    @property
    def reply_code(self) -> int:
        return self.reply.code if self.reply else 0

    def as_dict(self) -> dict[str, Any]:
        """The JSON of `--json` and of the state database."""
        return to_wire(self)

    # The JSON shape earlier releases printed and saved: "kind" and "status" first, the reply as its code and
    # text, the total inside "timings", address_results as "addresses"; other fields follow in field order.
    @model_serializer(mode="wrap")
    def _wire(self, fields_of: SerializerFunctionWrapHandler) -> dict[str, Any]:
        wire: dict[str, Any] = fields_of(self)
        status_and_total_out(wire)
        del wire["reply"]
        wire["reply_code"] = self.reply.code if self.reply else None
        wire["reply"] = str(self.reply) if self.reply else None
        wire["addresses"] = wire.pop("address_results")
        if wire["transcript"] is None:  # not recorded: the JSON of results from before transcripts existed
            del wire["transcript"]
        return {"kind": "smtp", **ordered(wire, _SMTP_FIRST)}

    @model_validator(mode="before")
    @classmethod
    def _unwire(cls, data: Any) -> Any:
        wire = as_object(data)
        if wire is None:
            return data
        status_and_total_in(wire)
        code, text = wire.pop("reply_code", None), wire.pop("reply", None)
        # the lines were saved joined behind the code: they come back as one line
        wire["reply"] = {"code": code, "lines": [str(text or "")[4:]]} if code else None
        wire["address_results"] = wire.pop("addresses", ())
        return wire


_SMTP_FIRST = (
    "status",
    "host",
    "port",
    "tls_mode",
    "address",
    "started_at",
    "phase",
    "reason",
    "error",
    "reply_code",
    "reply",
    "timings",
    "timing_source",
)


@dataclass(frozen=True, slots=True)
class ReverseDns:
    """PTR names of one address, and whether one of them resolves back to it."""

    address: str
    names: tuple[str, ...]
    confirmed: bool
    error: str = ""


@dataclass(frozen=True, slots=True)
class MxRecord:
    """One exchange of an MX answer, with its addresses and, if probed, its SMTP results."""

    preference: int
    exchange: str
    addresses: tuple[str, ...]
    error: str = ""  # why the addresses could not be had
    probe: SmtpResult | None = None  # the first address's probe (or the only one)
    address_probes: tuple[SmtpResult, ...] = ()  # every address, with probe_hosts: all_addresses
    reverse: tuple[ReverseDns, ...] = ()
    dane: DaneFacts | None = None  # None when DANE was not checked
    spoof: tuple[SpoofAttempt, ...] = ()  # the spoof test, one attempt per address; () when not run

    @property
    def up(self) -> bool | None:
        """Answers SMTP on at least one address; None when not probed."""
        probes = self.address_probes or ((self.probe,) if self.probe else ())
        return any(p.ok for p in probes) if probes else None

    # "up" (derived) after "error"; "dane" only when DANE was checked
    @model_serializer(mode="wrap")
    def _wire(self, fields_of: SerializerFunctionWrapHandler) -> dict[str, Any]:
        wire: dict[str, Any] = fields_of(self)
        wire["up"] = self.up
        if wire["dane"] is None:
            del wire["dane"]
        if not wire["spoof"]:  # the JSON of checks without a spoof test, as before it existed
            del wire["spoof"]
        return ordered(wire, ("preference", "exchange", "addresses", "error", "up"))

    @model_validator(mode="before")
    @classmethod
    def _unwire(cls, data: Any) -> Any:
        wire = as_object(data)
        if wire is None:
            return data
        wire.pop("up", None)
        dane = wire.get("dane")
        if isinstance(dane, dict) and "reference_names" not in dane:
            # saved before DANE followed CNAMEs: the exchange's name was the only reference name
            wire["dane"] = {**dane, "reference_names": [wire.get("exchange")]}
        return wire


@dataclass(frozen=True, slots=True)
class MxResult:
    """Outcome of one MX check of a domain."""

    domain: str
    started_at: float
    ok: bool
    phase: Phase | None = None
    reason: Reason | None = None
    error: str = ""
    records: tuple[MxRecord, ...] = ()
    implicit_mx: bool = False  # no MX: the domain's own address is the exchange (RFC 5321 5.1)
    missing: tuple[str, ...] = ()  # expected exchanges not in the answer
    unexpected: tuple[str, ...] = ()  # exchanges in the answer not expected
    timings: dict[str, float] = field(default_factory=dict)
    total: float = 0.0
    authenticated: bool | None = None  # AD bit of the MX answer; None when not asked
    # None when the check did not run (or, for SPF and DMARC, its lookup failed)
    mta_sts: MtaStsFacts | None = None
    spf: PolicyRecord | None = None
    dmarc: PolicyRecord | None = None
    # the SPF/DMARC/TLS-RPT depth verdicts (monitor.probes.policy_records); () when none ran
    policy_findings: tuple[PolicyFinding, ...] = ()
    dnsbl: DnsblFacts | None = None  # None when no DNSBL zone is configured (or the run ended before)

    def as_dict(self) -> dict[str, Any]:
        """The JSON of `--json` and of the state database."""
        return to_wire(self)

    # The JSON shape earlier releases printed and saved: "kind", "authenticated" and the facts first (a fact's
    # key only when its check ran), "status" for ok, the total inside "timings", the records as "mx" last.
    @model_serializer(mode="wrap")
    def _wire(self, fields_of: SerializerFunctionWrapHandler) -> dict[str, Any]:
        wire: dict[str, Any] = fields_of(self)
        for fact in _MX_FACTS:
            if wire[fact] is None:
                del wire[fact]
        if not wire["policy_findings"]:  # the JSON of checks without policy depth, as before it existed
            del wire["policy_findings"]
        status_and_total_out(wire)
        wire["mx"] = wire.pop("records")
        return {"kind": "mx", **ordered(wire, _MX_FIRST)}

    @model_validator(mode="before")
    @classmethod
    def _unwire(cls, data: Any) -> Any:
        wire = as_object(data)
        if wire is None:
            return data
        status_and_total_in(wire)
        wire["records"] = wire.pop("mx", ())
        for kind in ("spf", "dmarc"):  # a policy record is saved without its kind: the key says it
            if isinstance(wire.get(kind), dict):
                wire[kind] = {**wire[kind], "kind": kind}
        return wire


_MX_FACTS = ("mta_sts", "spf", "dmarc", "dnsbl")
_MX_FIRST = (
    "authenticated",
    *_MX_FACTS,
    "status",
    "domain",
    "started_at",
    "phase",
    "reason",
    "error",
    "implicit_mx",
    "missing",
    "unexpected",
    "timings",
)
