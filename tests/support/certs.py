"""trustme certificates for fake TLS peers: a CA file for the probe, server contexts for the fakes."""

from __future__ import annotations

import datetime
import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography import x509

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
