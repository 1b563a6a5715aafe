"""monitor.probes.dane.verify and helpers against trustme chains: DANE-EE, DANE-TA, unusable records."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from monitor.probes.dane import Tlsa, name_matches, tlsa_name, verify
from tests.support.certs import make_self_signed_cert

EXCHANGE = "mx1.good.test"


def der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def spki(cert_der: bytes) -> bytes:
    return (
        x509.load_der_x509_certificate(cert_der)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


@dataclass(frozen=True)
class Chain:
    """A root CA, an intermediate CA and a leaf for EXCHANGE, as DER."""

    root: bytes
    intermediate: bytes
    leaf: bytes

    @property
    def presented(self) -> list[bytes]:
        return [self.leaf, self.intermediate, self.root]


def make_chain(
    *identities: str,
    key_type: trustme.KeyType = trustme.KeyType.ECDSA,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> Chain:
    root = trustme.CA(key_type=key_type)
    intermediate = root.create_child_ca(key_type=key_type)
    leaf = intermediate.issue_cert(
        *(identities or (EXCHANGE,)), key_type=key_type, not_before=not_before, not_after=not_after
    )
    return Chain(
        root=der(root.cert_pem.bytes()),
        intermediate=der(intermediate.cert_pem.bytes()),
        leaf=der(leaf.cert_chain_pems[0].bytes()),
    )


@pytest.fixture(scope="module")
def chain() -> Chain:
    return make_chain()


@pytest.fixture(scope="module")
def ca_and_leaf() -> tuple[bytes, bytes]:
    """(CA, leaf) DER: a CA issuing the leaf directly."""
    ca = trustme.CA()
    leaf = ca.issue_cert(EXCHANGE)
    return der(ca.cert_pem.bytes()), der(leaf.cert_chain_pems[0].bytes())


class TestDaneEe:
    def test_3_1_1_matches_sha256_of_the_leaf_spki(self, chain: Chain) -> None:
        record = Tlsa(3, 1, 1, sha256(spki(chain.leaf)))
        outcome = verify([record], chain.presented)
        assert outcome.matched
        assert outcome.usable == 1
        assert outcome.matched_record == record

    def test_3_0_1_matches_sha256_of_the_full_leaf_certificate(self, chain: Chain) -> None:
        assert verify([Tlsa(3, 0, 1, sha256(chain.leaf))], chain.presented).matched

    def test_3_1_2_matches_sha512_of_the_leaf_spki(self, chain: Chain) -> None:
        assert verify([Tlsa(3, 1, 2, hashlib.sha512(spki(chain.leaf)).digest())], chain.presented).matched

    def test_3_0_0_matches_the_exact_leaf_certificate(self, chain: Chain) -> None:
        assert verify([Tlsa(3, 0, 0, chain.leaf)], chain.presented).matched

    def test_3_1_0_matches_the_exact_leaf_spki(self, chain: Chain) -> None:
        assert verify([Tlsa(3, 1, 0, spki(chain.leaf))], chain.presented).matched

    def test_a_wrong_digest_of_the_right_length_is_usable_but_does_not_match(self, chain: Chain) -> None:
        outcome = verify([Tlsa(3, 1, 1, bytes(32))], chain.presented)
        assert not outcome.matched
        assert outcome.usable == 1
        assert outcome.matched_record is None
        assert "none of 1 usable" in outcome.detail

    def test_matches_only_the_leaf_not_an_issuer_in_the_chain(self, chain: Chain) -> None:
        assert not verify([Tlsa(3, 0, 1, sha256(chain.intermediate))], chain.presented).matched

    def test_ignores_the_leaf_name_and_expiry(self) -> None:
        # RFC 7672 3.1.1: a DANE-EE match authenticates by the key alone
        past = datetime.now(UTC) - timedelta(days=10)
        expired = make_chain("other.example", not_before=past, not_after=past + timedelta(days=1))
        outcome = verify([Tlsa(3, 1, 1, sha256(spki(expired.leaf)))], [expired.leaf], names=[EXCHANGE])
        assert outcome.matched

    def test_matches_an_rsa_leaf(self) -> None:
        rsa = make_chain(key_type=trustme.KeyType.RSA)
        assert verify([Tlsa(3, 1, 1, sha256(spki(rsa.leaf)))], [rsa.leaf]).matched


class TestDaneTa:
    def test_2_0_1_of_the_ca_matches_a_chain_of_leaf_and_ca(self, ca_and_leaf: tuple[bytes, bytes]) -> None:
        ca, leaf = ca_and_leaf
        record = Tlsa(2, 0, 1, sha256(ca))
        outcome = verify([record], [leaf, ca], names=[EXCHANGE])
        assert outcome.matched, outcome.detail
        assert outcome.matched_record == record
        assert "chain certificate 1" in outcome.detail

    def test_2_1_1_of_the_root_matches_through_an_intermediate(self, chain: Chain) -> None:
        assert verify([Tlsa(2, 1, 1, sha256(spki(chain.root)))], chain.presented, names=[EXCHANGE]).matched

    def test_2_0_1_of_the_intermediate_matches_without_the_root_presented(self, chain: Chain) -> None:
        outcome = verify(
            [Tlsa(2, 0, 1, sha256(chain.intermediate))], [chain.leaf, chain.intermediate], names=[EXCHANGE]
        )
        assert outcome.matched, outcome.detail

    def test_a_chain_sent_out_of_order_still_builds_a_path(self, chain: Chain) -> None:
        presented = [chain.leaf, chain.root, chain.intermediate]
        assert verify([Tlsa(2, 0, 1, sha256(chain.root))], presented, names=[EXCHANGE]).matched

    def test_a_trust_anchor_absent_from_the_chain_does_not_match(self, chain: Chain) -> None:
        outcome = verify([Tlsa(2, 0, 1, sha256(chain.root))], [chain.leaf, chain.intermediate], names=[EXCHANGE])
        assert not outcome.matched
        assert outcome.usable == 1

    def test_a_presented_trust_anchor_that_did_not_issue_the_leaf_does_not_match(self, chain: Chain) -> None:
        stranger = make_chain("stranger.test")
        presented = [chain.leaf, stranger.root]
        outcome = verify([Tlsa(2, 0, 1, sha256(stranger.root))], presented, names=[EXCHANGE])
        assert not outcome.matched
        assert "does not chain" in outcome.detail

    def test_fails_the_name_check_when_the_leaf_does_not_name_the_exchange(self, chain: Chain) -> None:
        outcome = verify([Tlsa(2, 0, 1, sha256(chain.root))], chain.presented, names=["mx2.good.test"])
        assert not outcome.matched
        assert "do not match mx2.good.test" in outcome.detail

    def test_needs_a_reference_name(self, chain: Chain) -> None:
        outcome = verify([Tlsa(2, 0, 1, sha256(chain.root))], chain.presented)
        assert not outcome.matched
        assert "no reference name" in outcome.detail

    def test_any_of_several_reference_names_may_match(self, chain: Chain) -> None:
        names = ["good.test", EXCHANGE]  # the domain and the MX host
        assert verify([Tlsa(2, 0, 1, sha256(chain.root))], chain.presented, names=names).matched

    def test_a_wildcard_leaf_name_covers_the_exchange(self) -> None:
        wild = make_chain("*.good.test")
        assert verify([Tlsa(2, 0, 1, sha256(wild.root))], wild.presented, names=[EXCHANGE]).matched

    def test_an_expired_leaf_fails(self) -> None:
        past = datetime.now(UTC) - timedelta(days=10)
        expired = make_chain(not_before=past, not_after=past + timedelta(days=1))
        outcome = verify([Tlsa(2, 0, 1, sha256(expired.root))], expired.presented, names=[EXCHANGE])
        assert not outcome.matched
        assert "not valid now" in outcome.detail

    def test_now_decides_validity(self, chain: Chain) -> None:
        record = Tlsa(2, 0, 1, sha256(chain.root))
        leaf = x509.load_der_x509_certificate(chain.leaf)
        after = leaf.not_valid_after_utc + timedelta(seconds=1)
        before = leaf.not_valid_before_utc - timedelta(seconds=1)
        for when in (after, before):
            assert not verify([record], chain.presented, when, names=[EXCHANGE]).matched, when
        assert verify([record], chain.presented, datetime.now(UTC), names=[EXCHANGE]).matched
        naive_now = datetime.now(UTC).replace(tzinfo=None)  # taken as UTC
        assert verify([record], chain.presented, naive_now, names=[EXCHANGE]).matched

    def test_a_self_signed_leaf_may_be_its_own_trust_anchor(self, tmp_path: Path) -> None:
        cert_file, _ = make_self_signed_cert(tmp_path, common_name=EXCHANGE, dns_names=(EXCHANGE,))
        leaf = der(cert_file.read_bytes())
        record = Tlsa(2, 0, 1, sha256(leaf))
        assert verify([record], [leaf], names=[EXCHANGE]).matched
        assert "do not match" in verify([record], [leaf], names=["mx2.good.test"]).detail

    def test_the_subject_cn_counts_only_when_there_is_no_dns_san(self, tmp_path: Path) -> None:
        cn_only, _ = make_self_signed_cert(tmp_path / "cn", common_name=EXCHANGE, dns_names=(), ip_addresses=())
        with_san, _ = make_self_signed_cert(tmp_path / "san", common_name=EXCHANGE, dns_names=("other.test",))
        for cert_file, expected in ((cn_only, True), (with_san, False)):
            leaf = der(cert_file.read_bytes())
            assert verify([Tlsa(2, 0, 1, sha256(leaf))], [leaf], names=[EXCHANGE]).matched is expected

    def test_a_hostile_chain_of_mutually_issuing_certificates_ends_quickly(self) -> None:
        # nine CA certificates with one name and one key all "issue" each other and the leaf;
        # the trust anchor is presented but issued nothing: every path must be ruled out
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "loop")])
        start = datetime.now(UTC) - timedelta(days=1)

        def cert(subject: x509.Name, ca: bool) -> bytes:
            builder = (
                x509.CertificateBuilder()
                .subject_name(subject)
                .issuer_name(name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(start)
                .not_valid_after(start + timedelta(days=30))
                .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            )
            if not ca:
                builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(EXCHANGE)]), critical=False)
            return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)

        leaf = cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, EXCHANGE)]), ca=False)
        stranger = make_chain("stranger.test").root
        presented = [leaf, *(cert(name, ca=True) for _ in range(8)), stranger]
        started = time.monotonic()
        outcome = verify([Tlsa(2, 0, 1, sha256(stranger))], presented, names=[EXCHANGE])
        assert not outcome.matched
        assert "does not chain" in outcome.detail
        assert time.monotonic() - started < 2.0


class TestUsability:
    @pytest.mark.parametrize("usage", [0, 1])
    def test_pkix_usages_are_unusable_even_when_they_would_match(self, chain: Chain, usage: int) -> None:
        outcome = verify([Tlsa(usage, 1, 1, sha256(spki(chain.leaf)))], chain.presented, names=[EXCHANGE])
        assert not outcome.matched
        assert outcome.usable == 0
        assert "no usable TLSA record among 1" in outcome.detail

    @pytest.mark.parametrize(
        ("selector", "mtype", "length"),
        [(2, 1, 32), (1, 3, 32), (1, 1, 31), (1, 2, 32), (0, 0, 0)],
        ids=["unknown-selector", "unknown-mtype", "short-sha256", "sha512-of-sha256-length", "empty-full"],
    )
    def test_unknown_parameters_and_wrong_lengths_are_unusable(
        self, chain: Chain, selector: int, mtype: int, length: int
    ) -> None:
        assert verify([Tlsa(3, selector, mtype, bytes(length))], chain.presented).usable == 0

    def test_mixed_records_count_only_usable_ones_and_report_the_matching_one(self, chain: Chain) -> None:
        good = Tlsa(3, 1, 1, sha256(spki(chain.leaf)))
        records = [
            Tlsa(1, 1, 1, sha256(spki(chain.leaf))),
            Tlsa(0, 0, 1, sha256(chain.root)),
            Tlsa(3, 1, 1, bytes(32)),
            good,
        ]
        outcome = verify(records, chain.presented)
        assert outcome.matched
        assert outcome.usable == 2
        assert outcome.matched_record == good

    def test_no_records_at_all(self, chain: Chain) -> None:
        outcome = verify([], chain.presented)
        assert (outcome.matched, outcome.usable) == (False, 0)

    def test_no_certificate_presented(self, chain: Chain) -> None:
        outcome = verify([Tlsa(3, 1, 1, sha256(spki(chain.leaf)))], [])
        assert (outcome.matched, outcome.usable, outcome.detail) == (False, 1, "no certificate presented")

    def test_garbage_in_the_chain_matches_nothing_and_raises_nothing(self, chain: Chain) -> None:
        outcome = verify([Tlsa(3, 1, 1, bytes(32)), Tlsa(2, 1, 1, bytes(32))], [b"not a certificate"])
        assert not outcome.matched

    def test_full_certificate_match_works_on_unparseable_bytes(self) -> None:
        # selector 0 compares bytes: a DANE-EE "3 0 1" needs no parsing
        assert verify([Tlsa(3, 0, 1, sha256(b"opaque"))], [b"opaque"]).matched


class TestHelpers:
    def test_tlsa_name_is_port_and_tcp_under_the_exchange(self) -> None:
        assert tlsa_name("mx1.good.test.") == "_25._tcp.mx1.good.test"
        assert tlsa_name("mx1.good.test", 2525) == "_2525._tcp.mx1.good.test"

    def test_tlsa_text_is_presentation_format(self) -> None:
        assert str(Tlsa(3, 1, 1, b"\x01\xab")) == "3 1 1 01ab"

    @pytest.mark.parametrize(
        ("presented", "reference", "expected"),
        [
            ("mx1.good.test", "MX1.Good.Test.", True),
            ("*.good.test", "mx1.good.test", True),
            ("*.good.test", "a.mx1.good.test", False),
            ("*.good.test", "good.test", False),
            ("*.test", "good.test", False),
            ("mx*.good.test", "mx1.good.test", False),
            ("mx2.good.test", "mx1.good.test", False),
        ],
    )
    def test_name_matches(self, presented: str, reference: str, expected: bool) -> None:
        assert name_matches(presented, reference) is expected
