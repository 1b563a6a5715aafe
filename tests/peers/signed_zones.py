"""DNSSEC test zones signed at run time with dnspython: a secure zone, bogus names, and an unsigned zone.

Three origins under `.test` (RFC 2606, never seen by a real resolver), for one NsdServer and a
validating Unbound (tests.peers.unbound) that holds trust anchors for the two signed ones:

- `signed.test.`: signed with a fresh ECDSAP256SHA256 key whose DS is the anchor; its answers
  validate (AD).  Inside it two names are broken on purpose: the MX of `tampered.signed.test.`
  was changed after signing (its RRSIG no longer verifies) and the MX RRSIG of
  `expired.signed.test.` expired yesterday.  A validator answers both SERVFAIL.
- `bogus.test.`: correctly signed, but with a key the anchor does not name (a DS that points at
  another key, as after a botched key rollover): every answer is bogus.
- `plain.test.`: not signed and without an anchor: insecure, resolvable, never AD.

Names are absolute (trailing dot), as dnspython prints them.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import dns.dnssec
import dns.dnssectypes
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.DNSKEY
import dns.rdtypes.dnskeybase
import dns.rrset
import dns.zone
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

LOOPBACK_V4 = "127.0.0.1"
TTL = 300
ALGORITHM = dns.dnssectypes.Algorithm.ECDSAP256SHA256
SIGNATURE_LIFETIME = datetime.timedelta(days=7)

SIGNED_ORIGIN = "signed.test."
SIGNED_DOMAIN = SIGNED_ORIGIN  # the zone apex carries the MX
SIGNED_MX1 = "mx1.signed.test."
SIGNED_MX2 = "mx2.signed.test."
SIGNED_MX: tuple[tuple[int, str], ...] = ((10, SIGNED_MX1), (20, SIGNED_MX2))
SIGNED_IMPLICIT_DOMAIN = "implicit.signed.test."  # no MX, an A record: a validated NODATA then the address
TAMPERED_DOMAIN = "tampered.signed.test."  # MX rdata replaced after signing
TAMPERED_MX_SIGNED = SIGNED_MX1  # what the RRSIG covers
TAMPERED_MX_SERVED = SIGNED_MX2  # what the zone serves
EXPIRED_DOMAIN = "expired.signed.test."  # MX RRSIG valid from 10 days ago until yesterday

BOGUS_ORIGIN = "bogus.test."
BOGUS_DOMAIN = BOGUS_ORIGIN
BOGUS_MX = "mx.bogus.test."

PLAIN_ORIGIN = "plain.test."
PLAIN_DOMAIN = PLAIN_ORIGIN
PLAIN_MX = "mx.plain.test."


@dataclass(frozen=True)
class SignedZones:
    """Zone texts for NsdServer ({origin: text}) and the DS trust anchors a validator needs."""

    zones: dict[str, str]
    trust_anchors: tuple[str, ...]  # "signed.test. IN DS ..." lines, one per signed origin
    signed_ds: str  # the DS record text of signed.test.'s key
    bogus_ds: str  # the DS anchored for bogus.test.: of a key the zone does not use

    @property
    def secure_origins(self) -> tuple[str, ...]:
        return (SIGNED_ORIGIN, BOGUS_ORIGIN)


def _new_key() -> tuple[ec.EllipticCurvePrivateKey, dns.rdtypes.ANY.DNSKEY.DNSKEY]:
    """A fresh P-256 key and its DNSKEY with the SEP flag (one key signs everything: a CSK)."""
    private = ec.generate_private_key(ec.SECP256R1())
    flags = dns.rdtypes.dnskeybase.Flag.ZONE | dns.rdtypes.dnskeybase.Flag.SEP
    return private, dns.dnssec.make_dnskey(private.public_key(), ALGORITHM, flags=flags)


def _head(origin: str) -> list[str]:
    return [
        f"$ORIGIN {origin}",
        f"$TTL {TTL}",
        f"@ IN SOA ns.{origin} hostmaster.{origin} 1 3600 600 86400 {TTL}",
        f"@ IN NS ns.{origin}",
        f"ns IN A {LOOPBACK_V4}",
    ]


def tlsa_3_1_1(cert_pem: bytes) -> str:
    """The TLSA rdata "3 1 1 <sha256 of the SPKI>" (DANE-EE, public key, SHA-256) of a PEM certificate."""
    spki = (
        x509.load_pem_x509_certificate(cert_pem)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return f"3 1 1 {hashlib.sha256(spki).hexdigest()}"


def signed_zone_source(extra_records: Iterable[str] = ()) -> str:
    """signed.test. before signing, with `extra_records` (zone file lines, absolute names) added."""
    lines = _head(SIGNED_ORIGIN)
    lines += [f"@ IN MX {pref} {host}" for pref, host in SIGNED_MX]
    lines += [
        f"{SIGNED_MX1} IN A {LOOPBACK_V4}",
        f"{SIGNED_MX2} IN A {LOOPBACK_V4}",
        f"{SIGNED_IMPLICIT_DOMAIN} IN A {LOOPBACK_V4}",
        f"{TAMPERED_DOMAIN} IN MX 10 {TAMPERED_MX_SIGNED}",
        f"{EXPIRED_DOMAIN} IN MX 10 {SIGNED_MX1}",
        *extra_records,
    ]
    return "\n".join(lines) + "\n"


def bogus_zone_source() -> str:
    lines = [*_head(BOGUS_ORIGIN), f"@ IN MX 10 {BOGUS_MX}", f"{BOGUS_MX} IN A {LOOPBACK_V4}"]
    return "\n".join(lines) + "\n"


def plain_zone_text() -> str:
    lines = [*_head(PLAIN_ORIGIN), f"@ IN MX 10 {PLAIN_MX}", f"{PLAIN_MX} IN A {LOOPBACK_V4}"]
    return "\n".join(lines) + "\n"


def _sign(
    source: str,
    origin: str,
    key: tuple[ec.EllipticCurvePrivateKey, dns.rdtypes.ANY.DNSKEY.DNSKEY],
    now: datetime.datetime,
) -> dns.zone.Zone:
    zone = dns.zone.from_text(source, origin, relativize=False)
    # inception an hour back: a validator whose clock is a little behind still accepts the signatures
    dns.dnssec.sign_zone(
        zone, keys=[key], inception=now - datetime.timedelta(hours=1), expiration=now + SIGNATURE_LIFETIME
    )
    return zone


def _break_signed_zone(
    zone: dns.zone.Zone,
    key: tuple[ec.EllipticCurvePrivateKey, dns.rdtypes.ANY.DNSKEY.DNSKEY],
    now: datetime.datetime,
) -> None:
    """Tamper with tampered.signed.test.'s MX and re-sign expired.signed.test.'s MX in the past."""
    origin = dns.name.from_text(SIGNED_ORIGIN)
    with zone.writer() as txn:
        tampered = dns.rrset.from_text(TAMPERED_DOMAIN, TTL, "IN", "MX", f"10 {TAMPERED_MX_SERVED}")
        txn.replace(tampered.name, tampered)  # the RRSIG(MX) at the name stays: it covers the old data
        expired_mx = txn.get(EXPIRED_DOMAIN, dns.rdatatype.MX)
        assert expired_mx is not None
        rrsig = dns.dnssec.sign(
            (dns.name.from_text(EXPIRED_DOMAIN), expired_mx),
            key[0],
            origin,
            key[1],
            inception=now - datetime.timedelta(days=10),
            expiration=now - datetime.timedelta(days=1),
        )
        sigs = dns.rrset.from_rdata(EXPIRED_DOMAIN, TTL, rrsig)
        txn.replace(sigs.name, sigs)  # replaces only the RRSIG set covering MX


def _zone_text(zone: dns.zone.Zone) -> str:
    return zone.to_text(relativize=False, want_origin=True)


def build(extra_signed_records: Iterable[str] = (), now: datetime.datetime | None = None) -> SignedZones:
    """Fresh keys; signed.test. (plus `extra_signed_records`) and bogus.test. signed with signatures
    valid for a week from `now`; plain.test. unsigned."""
    now = now or datetime.datetime.now(datetime.UTC)
    signed_key, bogus_key, anchored_instead = _new_key(), _new_key(), _new_key()

    signed = _sign(signed_zone_source(extra_signed_records), SIGNED_ORIGIN, signed_key, now)
    _break_signed_zone(signed, signed_key, now)
    bogus = _sign(bogus_zone_source(), BOGUS_ORIGIN, bogus_key, now)

    signed_ds = dns.dnssec.make_ds(SIGNED_ORIGIN, signed_key[1], "SHA256")
    bogus_ds = dns.dnssec.make_ds(BOGUS_ORIGIN, anchored_instead[1], "SHA256")
    return SignedZones(
        zones={SIGNED_ORIGIN: _zone_text(signed), BOGUS_ORIGIN: _zone_text(bogus), PLAIN_ORIGIN: plain_zone_text()},
        trust_anchors=(f"{SIGNED_ORIGIN} IN DS {signed_ds}", f"{BOGUS_ORIGIN} IN DS {bogus_ds}"),
        signed_ds=str(signed_ds),
        bogus_ds=str(bogus_ds),
    )
