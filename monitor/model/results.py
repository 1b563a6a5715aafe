"""Probe result values: what every probe returns and every exporter reads."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from monitor.model.facts import DaneFacts, MtaStsFacts, PolicyRecord


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
    not_before: datetime
    not_after: datetime
    serial: str
    sha256: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "issuer": self.issuer,
            "sans": list(self.sans),
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "serial": self.serial,
            "sha256": self.sha256,
        }


@dataclass(frozen=True, slots=True)
class TlsInfo:
    """The negotiated TLS session and the verification outcome."""

    version: str
    cipher: str
    verified: bool
    verify_error: str = ""
    cert: CertInfo | None = None
    chain_not_after: datetime | None = None  # earliest expiry in the presented chain
    # DER of the presented chain, kept only for DANE matching; never exported
    chain_der: tuple[bytes, ...] = field(default=(), repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "cipher": self.cipher,
            "verified": self.verified,
            "verify_error": self.verify_error,
            "cert": self.cert.as_dict() if self.cert else None,
            "chain_not_after": self.chain_not_after.isoformat() if self.chain_not_after else None,
        }


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

    @property
    def reply_code(self) -> int:
        return self.reply.code if self.reply else 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": "smtp",
            "status": "ok" if self.ok else "failed",
            "host": self.host,
            "port": self.port,
            "tls_mode": self.tls_mode,
            "address": self.address,
            "started_at": self.started_at,
            "phase": self.phase.value if self.phase else None,
            "reason": self.reason.value if self.reason else None,
            "error": self.error,
            "reply_code": self.reply.code if self.reply else None,
            "reply": str(self.reply) if self.reply else None,
            "timings": {**self.timings, "total": self.total},
            "timing_source": dict(self.timing_source),
            "banner": self.banner,
            "helo_fallback": self.helo_fallback,
            "extensions": dict(self.extensions),
            "tls": self.tls.as_dict() if self.tls else None,
            "addresses": [r.as_dict() for r in self.address_results],
        }


@dataclass(frozen=True, slots=True)
class ReverseDns:
    """PTR names of one address, and whether one of them resolves back to it."""

    address: str
    names: tuple[str, ...]
    confirmed: bool
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"address": self.address, "names": list(self.names), "confirmed": self.confirmed, "error": self.error}


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

    @property
    def up(self) -> bool | None:
        """Answers SMTP on at least one address; None when not probed."""
        probes = self.address_probes or ((self.probe,) if self.probe else ())
        return any(p.ok for p in probes) if probes else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "preference": self.preference,
            "exchange": self.exchange,
            "addresses": list(self.addresses),
            "error": self.error,
            "up": self.up,
            "probe": self.probe.as_dict() if self.probe else None,
            "address_probes": [p.as_dict() for p in self.address_probes],
            "reverse": [r.as_dict() for r in self.reverse],
            **({"dane": self.dane.as_dict()} if self.dane is not None else {}),
        }


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

    def as_dict(self) -> dict[str, Any]:
        facts: dict[str, Any] = {}  # keys only for the checks that ran: the JSON shape of earlier releases
        if self.mta_sts is not None:
            facts["mta_sts"] = self.mta_sts.as_dict()
        if self.spf is not None:
            facts["spf"] = self.spf.as_dict()
        if self.dmarc is not None:
            facts["dmarc"] = self.dmarc.as_dict()
        return {
            "kind": "mx",
            "authenticated": self.authenticated,
            **facts,
            "status": "ok" if self.ok else "failed",
            "domain": self.domain,
            "started_at": self.started_at,
            "phase": self.phase.value if self.phase else None,
            "reason": self.reason.value if self.reason else None,
            "error": self.error,
            "implicit_mx": self.implicit_mx,
            "missing": list(self.missing),
            "unexpected": list(self.unexpected),
            "timings": {**self.timings, "total": self.total},
            "mx": [r.as_dict() for r in self.records],
        }


ProbeResult = SmtpResult | MxResult


# -- restoring results saved with as_dict() (the state database) ----------------------


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _cert_from(d: dict[str, Any] | None) -> CertInfo | None:
    if not d:
        return None
    return CertInfo(
        subject=d["subject"],
        issuer=d["issuer"],
        sans=tuple(d["sans"]),
        not_before=datetime.fromisoformat(d["not_before"]),
        not_after=datetime.fromisoformat(d["not_after"]),
        serial=d["serial"],
        sha256=d["sha256"],
    )


def _tls_from(d: dict[str, Any] | None) -> TlsInfo | None:
    if not d:
        return None
    return TlsInfo(
        version=d["version"],
        cipher=d["cipher"],
        verified=d["verified"],
        verify_error=d.get("verify_error", ""),
        cert=_cert_from(d.get("cert")),
        chain_not_after=_dt(d.get("chain_not_after")),
    )


def _timings(d: dict[str, Any]) -> tuple[dict[str, float], float]:
    timings = dict(d.get("timings") or {})
    total = float(timings.pop("total", 0.0))
    return timings, total


def _smtp_from(d: dict[str, Any]) -> SmtpResult:
    timings, total = _timings(d)
    reply = None
    if d.get("reply_code"):
        text = (d.get("reply") or "")[4:]
        reply = Reply(int(d["reply_code"]), (text,))
    return SmtpResult(
        host=d["host"],
        port=int(d["port"]),
        tls_mode=d["tls_mode"],
        started_at=float(d["started_at"]),
        ok=d["status"] == "ok",
        phase=Phase(d["phase"]) if d.get("phase") else None,
        reason=Reason(d["reason"]) if d.get("reason") else None,
        error=d.get("error", ""),
        reply=reply,
        address=d.get("address", ""),
        timings=timings,
        total=total,
        banner=d.get("banner", ""),
        helo_fallback=bool(d.get("helo_fallback")),
        extensions=dict(d.get("extensions") or {}),
        tls=_tls_from(d.get("tls")),
        address_results=tuple(_smtp_from(a) for a in d.get("addresses") or ()),
        timing_source=dict(d.get("timing_source") or {}),
    )


def result_from_dict(d: dict[str, Any]) -> ProbeResult:
    """The inverse of as_dict(), for results saved across a restart."""
    if d.get("kind") == "smtp":
        return _smtp_from(d)
    timings, total = _timings(d)
    records = tuple(
        MxRecord(
            preference=int(r["preference"]),
            exchange=r["exchange"],
            addresses=tuple(r["addresses"]),
            error=r.get("error", ""),
            probe=_smtp_from(r["probe"]) if r.get("probe") else None,
            address_probes=tuple(_smtp_from(p) for p in r.get("address_probes") or ()),
            reverse=tuple(
                ReverseDns(x["address"], tuple(x["names"]), bool(x["confirmed"]), x.get("error", ""))
                for x in r.get("reverse") or ()
            ),
            dane=DaneFacts.from_dict(r["dane"], r["exchange"]) if r.get("dane") is not None else None,
        )
        for r in d.get("mx") or []
    )
    return MxResult(
        domain=d["domain"],
        started_at=float(d["started_at"]),
        ok=d["status"] == "ok",
        phase=Phase(d["phase"]) if d.get("phase") else None,
        reason=Reason(d["reason"]) if d.get("reason") else None,
        error=d.get("error", ""),
        records=records,
        implicit_mx=bool(d.get("implicit_mx")),
        missing=tuple(d.get("missing") or ()),
        unexpected=tuple(d.get("unexpected") or ()),
        timings=timings,
        total=total,
        authenticated=d.get("authenticated"),
        mta_sts=MtaStsFacts.from_dict(d["mta_sts"]) if d.get("mta_sts") is not None else None,
        spf=PolicyRecord.from_dict("spf", d["spf"]) if d.get("spf") is not None else None,
        dmarc=PolicyRecord.from_dict("dmarc", d["dmarc"]) if d.get("dmarc") is not None else None,
    )

