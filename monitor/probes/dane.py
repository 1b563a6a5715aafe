"""DANE for SMTP (RFC 7672, RFC 6698, RFC 7671): TLSA lookup and matching a presented certificate chain."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.rdtypes.ANY.TLSA
import dns.resolver
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from monitor.model.results import Reason
from monitor.probes import resolve

# Certificate usages (RFC 7218 names).  Only DANE-TA and DANE-EE apply to SMTP (RFC 7672 3.1.3).
PKIX_TA, PKIX_EE, DANE_TA, DANE_EE = 0, 1, 2, 3
SELECTOR_CERT, SELECTOR_SPKI = 0, 1
MATCH_FULL, MATCH_SHA256, MATCH_SHA512 = 0, 1, 2
_DIGEST_LENGTH = {MATCH_SHA256: 32, MATCH_SHA512: 64}
_EDNS_PAYLOAD = 1232  # the DNS flag day 2020 size: no fragmentation, TCP fallback when truncated
_MAX_CHAIN = 10  # certificates of a presented chain looked at; real chains have 2 to 4


@dataclass(frozen=True, slots=True)
class Tlsa:
    """One TLSA record: certificate usage, selector, matching type and association data."""

    usage: int
    selector: int
    mtype: int
    data: bytes

    @property
    def usable(self) -> bool:
        """Whether an SMTP client may use it (RFC 7672 3.1.3): DANE-TA/DANE-EE with known parameters."""
        if self.usage not in (DANE_TA, DANE_EE) or self.selector not in (SELECTOR_CERT, SELECTOR_SPKI):
            return False
        if self.mtype == MATCH_FULL:
            return bool(self.data)
        # A digest of the wrong length can never match: RFC 7671 5.1 calls such records unusable.
        return _DIGEST_LENGTH.get(self.mtype) == len(self.data)

    def __str__(self) -> str:
        return f"{self.usage} {self.selector} {self.mtype} {self.data.hex()}"


@dataclass(frozen=True, slots=True)
class TlsaLookup:
    """The TLSA RRset of `_{port}._tcp.{exchange}`; empty records with no error mean "no DANE"."""

    name: str
    records: tuple[Tlsa, ...] = ()
    authenticated: bool = False  # AD bit: the (validating) resolver vouches for the answer or the denial
    error: str = ""  # "" when the lookup had an answer, NXDOMAIN or NODATA
    reason: Reason | None = None  # classified error (TIMEOUT, SERVFAIL, DNS), None without error


@dataclass(frozen=True, slots=True)
class DaneOutcome:
    """Whether a presented chain satisfies a TLSA RRset, and which record did it."""

    matched: bool
    usable: int  # records an SMTP client may use (DANE-TA/DANE-EE with known parameters)
    matched_record: Tlsa | None = None
    detail: str = ""


def tlsa_name(exchange: str, port: int = 25) -> str:
    """The TLSA owner name of an SMTP server (RFC 7672 2.2.3), without the final dot."""
    return f"_{port}._tcp.{exchange.rstrip('.')}"


async def lookup_tlsa(resolver: dns.asyncresolver.Resolver, exchange: str, port: int = 25) -> TlsaLookup:
    """TLSA records of an exchange, with the AD bit asked for (EDNS DO) and reported.

    The shared resolver is copied, not changed: only TLSA queries carry DO and AD. The
    resolver's own lifetime bounds the lookup.
    """
    name = tlsa_name(exchange, port)
    dnssec = copy.copy(resolver)  # use_edns()/flags only rebind attributes: a shallow copy suffices
    dnssec.use_edns(0, dns.flags.DO, _EDNS_PAYLOAD)
    # AD in the query asks a validating resolver for the AD bit even without DO (RFC 6840 5.7).
    dnssec.flags = dns.flags.RD | dns.flags.AD
    try:
        answer = await dnssec.resolve(name, "TLSA", search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer) as exc:
        return TlsaLookup(name, authenticated=resolve.authenticated(resolve.denial_response(exc)))
    except (dns.exception.DNSException, OSError, TimeoutError) as exc:
        failed = resolve.classify(exc, name, "TLSA")
        return TlsaLookup(name, error=str(failed), reason=failed.reason)
    records = tuple(
        Tlsa(int(rdata.usage), int(rdata.selector), int(rdata.mtype), bytes(rdata.cert))
        for rdata in answer
        if isinstance(rdata, dns.rdtypes.ANY.TLSA.TLSA)
    )
    return TlsaLookup(name, records=records, authenticated=resolve.authenticated(answer.response))


# -- matching ------------------------------------------------------------------------


def association_data(der: bytes, cert: x509.Certificate | None, selector: int, mtype: int) -> bytes | None:
    """What a TLSA record with (selector, mtype) would hold for this certificate; None if not computable."""
    if selector == SELECTOR_CERT:
        selected = der
    elif selector == SELECTOR_SPKI and cert is not None:
        try:
            selected = cert.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        except (ValueError, UnsupportedAlgorithm):
            return None
    else:
        return None
    if mtype == MATCH_FULL:
        return selected
    if mtype == MATCH_SHA256:
        return hashlib.sha256(selected).digest()
    if mtype == MATCH_SHA512:
        return hashlib.sha512(selected).digest()
    return None


def _load(der: bytes) -> x509.Certificate | None:
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError:
        return None


def _matches(record: Tlsa, der: bytes, cert: x509.Certificate | None) -> bool:
    return association_data(der, cert, record.selector, record.mtype) == record.data


def _directly_issued(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Name linkage and signature; the issuer must not be marked as a non-CA."""
    try:
        constraints = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value
        if not constraints.ca:
            return False
    except x509.ExtensionNotFound:
        pass  # v1 certificates have no extensions: accepted like OpenSSL does for trust anchors
    try:
        child.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _path_to(certs: list[x509.Certificate | None], ta_index: int) -> list[int] | None:
    """Indexes of a signature path from the leaf (0) up to certs[ta_index], or None.

    Servers should send the chain in order, but some do not: each step takes any
    certificate of the chain that directly issued the current one, trying the trust anchor
    first. A depth-first search visiting each certificate once: a hostile chain of mutually
    issuing certificates costs at most n*n signature checks, not n! paths.
    """
    if certs[ta_index] is None or certs[0] is None:
        return None
    visited = {0}

    def walk(current: int) -> list[int] | None:
        if current == ta_index:
            return [current]
        child = certs[current]
        assert child is not None
        for i in [ta_index] + [i for i in range(len(certs)) if i != ta_index]:
            issuer = certs[i]
            if i in visited or issuer is None or not _directly_issued(child, issuer):
                continue
            visited.add(i)
            rest = walk(i)
            if rest is not None:
                return [current, *rest]
        return None

    return walk(0)


def _dns_names(cert: x509.Certificate) -> list[str]:
    """DNS-IDs, or the subject CN when there is none (RFC 7672 3.2.3)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = san.get_values_for_type(x509.DNSName)
    except (x509.ExtensionNotFound, ValueError):
        names = []
    if names:
        return names
    return [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]


def name_matches(presented: str, reference: str) -> bool:
    """A certificate name against a reference identifier: case-insensitive, "*" only as a whole leftmost label."""
    p = presented.lower().rstrip(".").split(".")
    r = reference.lower().rstrip(".").split(".")
    if len(p) != len(r) or not r[0]:
        return False
    if p[0] == "*":
        # a wildcard covers one label and never a bare public suffix such as "*.test"
        return len(p) > 2 and p[1:] == r[1:]
    return p == r


def _valid_at(cert: x509.Certificate, now: datetime) -> bool:
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def _check_ta(
    record: Tlsa, ta_index: int, certs: list[x509.Certificate | None], names: Sequence[str], now: datetime
) -> str:
    """Why a DANE-TA match at certs[ta_index] does not authenticate the leaf ("" when it does).

    RFC 7672 3.1.2/3.2: the leaf must chain to the trust anchor, the certificates below
    the trust anchor must be current (the leaf always is checked, even when it is its own
    trust anchor), and the leaf must carry one of the reference names (the MX host name).
    The trust anchor's own validity period is not checked, as for any trust anchor.
    """
    path = _path_to(certs, ta_index)
    if path is None:
        return f"{record}: matches chain certificate {ta_index} but the leaf does not chain to it"
    for i in path:
        cert = certs[i]
        assert cert is not None
        if (i != ta_index or i == 0) and not _valid_at(cert, now):
            return f"{record}: chain certificate {i} is not valid now ({cert.not_valid_after_utc:%Y-%m-%d} expiry)"
    leaf = certs[0]
    assert leaf is not None
    if not names:
        return f"{record}: matches, but no reference name to check the leaf against"
    presented = _dns_names(leaf)
    if not any(name_matches(p, r) for p in presented for r in names):
        return f"{record}: leaf names {', '.join(presented) or '(none)'} do not match {', '.join(names)}"
    return ""


def verify(
    records: Sequence[Tlsa],
    chain_der: Sequence[bytes],
    now: datetime | None = None,
    *,
    names: Sequence[str] = (),
) -> DaneOutcome:
    """Match a presented chain (leaf first, DER) against TLSA records, per RFC 7672.

    DANE-EE(3) compares the leaf only; its names and validity dates are ignored (RFC 7672
    3.1.1). DANE-TA(2) compares every presented certificate, then requires the leaf to chain
    to the matched one, be current, and carry a name in `names` (RFC 7672 3.2.2: the MX host
    name; pass the exchange, optionally also the domain). PKIX-TA(0)/PKIX-EE(1) and records
    with unknown parameters are unusable and ignored. A DANE-TA key published as "2 1 0"
    for a trust anchor absent from the chain is not supported (it does not match).
    """
    now = now or datetime.now(UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)  # naive times are taken as UTC, like the certificates' dates
    usable = [r for r in records if r.usable]
    if not usable:
        return DaneOutcome(False, 0, detail=f"no usable TLSA record among {len(records)}")
    if not chain_der:
        return DaneOutcome(False, len(usable), detail="no certificate presented")
    chain = list(chain_der[:_MAX_CHAIN])
    certs = [_load(der) for der in chain]
    problems: list[str] = []
    for record in usable:
        if record.usage == DANE_EE:
            if _matches(record, chain[0], certs[0]):
                return DaneOutcome(True, len(usable), record, f"{record}: matches the leaf (DANE-EE)")
            continue
        for i, der in enumerate(chain):
            if not _matches(record, der, certs[i]):
                continue
            why = _check_ta(record, i, certs, names, now)
            if not why:
                return DaneOutcome(True, len(usable), record, f"{record}: trust anchor is chain certificate {i}")
            problems.append(why)
    detail = "; ".join(problems) if problems else f"none of {len(usable)} usable TLSA records matches the chain"
    return DaneOutcome(False, len(usable), detail=detail)
