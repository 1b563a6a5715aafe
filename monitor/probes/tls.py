"""TLS contexts for probes, and certificate facts read from a handshake."""

from __future__ import annotations

import _ssl  # ENCODING_DER lives here only; the ssl module does not re-export it
import functools
import hashlib
import ssl
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import ExtensionOID

from monitor.model.results import CertInfo, TlsInfo


class TlsContexts:
    """Client SSL contexts, built once per (CA file, verify) pair.

    Loading the system CA store costs tens of milliseconds of CPU; doing it per
    probe would dominate the cost of a TLS probe.
    """

    def __init__(self) -> None:
        self._contexts: dict[tuple[str | None, bool], ssl.SSLContext] = {}

    def get(self, ca_file: Path | None, verify: bool) -> ssl.SSLContext:
        key = (str(ca_file) if ca_file else None, verify)
        ctx = self._contexts.get(key)
        if ctx is None:
            ctx = self._contexts[key] = _build(ca_file, verify)
        return ctx


def _build(ca_file: Path | None, verify: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    # Probes observe what servers offer: accept down to TLS 1.0 and report the version,
    # rather than failing old servers at the handshake without saying why.
    ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def unverified_context() -> ssl.SSLContext:
    """For the second look at a certificate that failed verification."""
    return _build(None, verify=False)


def tls_facts(ssl_object: Any, verified: bool, verify_error: str = "", keep_chain: bool = False) -> TlsInfo:
    """Version, cipher and certificate facts of an established TLS session."""
    cipher = ssl_object.cipher()
    leaf_der = ssl_object.getpeercert(binary_form=True)
    leaf = cert_info(leaf_der) if leaf_der else None
    chain = _chain_der(ssl_object) or ([leaf_der] if leaf_der else [])
    expiries = [e for e in map(_not_after, chain) if e is not None]
    chain_not_after = min(expiries) if expiries else None
    return TlsInfo(
        version=ssl_object.version() or "",
        cipher=cipher[0] if cipher else "",
        verified=verified,
        verify_error=verify_error,
        cert=leaf,
        chain_not_after=chain_not_after,
        chain_der=tuple(chain) if keep_chain else (),
    )


def tls_summary(tls: TlsInfo) -> str:
    """The handshake in one transcript line: version, cipher, the certificate's subject, verification."""
    subject = tls.cert.subject if tls.cert is not None else "(no certificate)"
    if tls.verified:
        outcome = "verified"
    else:
        outcome = f"not verified: {tls.verify_error}" if tls.verify_error else "not verified"
    return f"{tls.version} {tls.cipher}, subject {subject}, {outcome}"


def _chain_der(ssl_object: Any) -> list[bytes]:
    # get_unverified_chain() is public from Python 3.13; 3.11/3.12 expose it on _sslobj.
    getter = getattr(ssl_object, "get_unverified_chain", None)
    if getter is None:
        getter = getattr(getattr(ssl_object, "_sslobj", None), "get_unverified_chain", None)
    if getter is None:
        return []
    try:
        chain = getter() or []
    except (ssl.SSLError, ValueError):
        return []
    out = []
    for cert in chain:
        if isinstance(cert, bytes):
            out.append(cert)
        else:
            # Fix: was ssl.ENCODING_DER, which does not exist (AttributeError on 3.11/3.12,
            # escaping run() on every TLS handshake). The constant is _ssl.ENCODING_DER.
            out.append(cert.public_bytes(_ssl.ENCODING_DER))
    return out


@functools.lru_cache(maxsize=4096)
def _not_after(der: bytes) -> datetime | None:
    try:
        return x509.load_der_x509_certificate(der).not_valid_after_utc
    except ValueError:
        return None


# Servers present the same certificate run after run: parse each one once.
@functools.lru_cache(maxsize=4096)
def cert_info(der: bytes) -> CertInfo | None:
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return None
    sans: list[str] = []
    try:
        ext = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
        san = ext.value
        assert isinstance(san, x509.SubjectAlternativeName)
        sans += [f"DNS:{n}" for n in san.get_values_for_type(x509.DNSName)]
        sans += [f"IP:{ip}" for ip in san.get_values_for_type(x509.IPAddress)]
    except (x509.ExtensionNotFound, ValueError):
        pass
    return CertInfo(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        sans=tuple(sans),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        serial=format(cert.serial_number, "x"),
        sha256=hashlib.sha256(der).hexdigest(),
    )


def days_left(not_after: datetime, now: datetime) -> int:
    """Whole days until expiry, negative once expired."""
    return int((not_after - now).total_seconds() // 86400)
