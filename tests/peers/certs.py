"""A self-signed TLS certificate for mail.test / 127.0.0.1 that doubles as its own CA file."""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

SERVER_NAME = "mail.test"
SERVER_IP = "127.0.0.1"


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
