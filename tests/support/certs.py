"""Test certificates, two kinds: a trustme CA issuing leaves (fakes), and a self-signed leaf that is its own CA (peers).

`Pki` is a throw-away CA: its file is what the probe trusts, `IssuedCert.server_context()` what a fake
server presents.  `make_self_signed_cert` writes cert.pem/key.pem for a Debian daemon (Postfix, Dovecot)
and the probe's CA file at once; with no names it leaves the SAN extension out (a CN-only certificate).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

SERVER_NAME = "mail.test"
SERVER_IP = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class IssuedCert:
    """A leaf certificate with its key, and the facts a probe is expected to report about it."""

    leaf: trustme.LeafCert
    certificate: x509.Certificate

    def server_context(
        self,
        *,
        maximum_version: ssl.TLSVersion | None = None,
        ciphers: str | None = None,
    ) -> ssl.SSLContext:
        """A server-side context presenting this certificate (and its chain)."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        if maximum_version is not None:
            ctx.maximum_version = maximum_version
        if ciphers is not None:
            ctx.set_ciphers(ciphers)
        self.leaf.configure_cert(ctx)
        return ctx

    @property
    def not_after(self) -> datetime.datetime:
        return self.certificate.not_valid_after_utc

    @property
    def subject(self) -> str:
        return self.certificate.subject.rfc4514_string()


@dataclass(frozen=True, slots=True)
class Pki:
    """A throw-away CA whose certificate is written to `ca_file` for the probe to trust."""

    ca: trustme.CA
    ca_file: Path

    @classmethod
    def create(cls, directory: Path) -> Pki:
        ca = trustme.CA()
        ca_file = directory / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        return cls(ca=ca, ca_file=ca_file)

    def issue(
        self,
        *identities: str,
        common_name: str = SERVER_NAME,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
    ) -> IssuedCert:
        """A leaf for `identities` (default mail.test and 127.0.0.1), optionally with a validity window."""
        leaf = self.ca.issue_cert(
            *(identities or (SERVER_NAME, SERVER_IP)),
            common_name=common_name,
            not_before=not_before,
            not_after=not_after,
        )
        certificate = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
        return IssuedCert(leaf=leaf, certificate=certificate)

    def issue_expired(self, *identities: str, days_ago: int = 2) -> IssuedCert:
        """A leaf whose validity ended `days_ago` days ago (and began a month before that)."""
        now = datetime.datetime.now(datetime.UTC)
        return self.issue(
            *identities,
            not_before=now - datetime.timedelta(days=days_ago + 30),
            not_after=now - datetime.timedelta(days=days_ago),
        )


def make_self_signed_cert(
    directory: Path,
    common_name: str = SERVER_NAME,
    dns_names: tuple[str, ...] = (SERVER_NAME,),
    ip_addresses: tuple[str, ...] = (SERVER_IP,),
    days: int = 30,
) -> tuple[Path, Path]:
    """Write cert.pem and key.pem into `directory` and return (cert, key).

    The certificate is its own issuer and is marked as a CA, so Python's ssl module
    accepts cert.pem as `cafile` when verifying a server that presents it.
    """
    directory.mkdir(parents=True, exist_ok=True)
    # RSA because Postfix's smtpd_tls_cert_file is documented for RSA keys
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate small clock skew
        .not_valid_after(now + datetime.timedelta(days=days))
    )
    # No names means no SAN extension at all: RFC 5280 §4.2.1.6 forbids an empty one, and
    # cryptography 51 refuses to build it. Such a certificate is named by its subject CN only.
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = (
        builder
        # CA:TRUE so OpenSSL accepts the self-signed leaf as a trust anchor
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / "cert.pem"
    key_path = directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(key_path, 0o600)  # Postfix warns about group/world-readable private keys
    return cert_path, key_path
