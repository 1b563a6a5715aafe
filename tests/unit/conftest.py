"""Fixtures the unit tests of the SMTP probe share: a throwaway PKI and a port that refuses."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.support.certs import SERVER_IP, IssuedCert, Pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throw-away CA per module; its ca_file is what the probe trusts."""
    return Pki.create(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def good_cert(pki: Pki) -> IssuedCert:
    """A valid leaf from pki for mail.test and 127.0.0.1."""
    return pki.issue()


@pytest.fixture(scope="module")
def expired_cert(pki: Pki) -> IssuedCert:
    """A leaf from pki whose validity ended two days ago."""
    return pki.issue_expired()


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A port bound on 127.0.0.1 but not listening: connecting to it is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((SERVER_IP, 0))
        yield int(sock.getsockname()[1])
