"""SPF and DMARC record syntax verdicts."""

from __future__ import annotations

import pytest

from monitor.probes.policy_records import check_dmarc, check_spf


class TestSpf:
    @pytest.mark.parametrize(
        "record",
        [
            "v=spf1 -all",
            "v=spf1 mx a:mail.example.org/24 ip4:192.0.2.0/24 ip6:2001:db8::/32 include:_spf.example.org ~all",
            "v=spf1 redirect=_spf.example.org",
            "v=spf1 exists:%{i}.spf.example.org ?all",
        ],
    )
    def test_valid_records_have_no_problem(self, record: str) -> None:
        assert check_spf(["google-site-verification=x", record]).problem == ""

    def test_absent_record_is_a_problem(self) -> None:
        assert "no SPF record" in check_spf(["v=DMARC1; p=none"]).problem

    def test_two_records_are_a_permerror(self) -> None:
        assert "permerror" in check_spf(["v=spf1 -all", "v=spf1 mx -all"]).problem

    @pytest.mark.parametrize(
        ("record", "named"),
        [
            ("v=spf1 ip4:300.0.0.1 -all", "300.0.0.1"),
            ("v=spf1 ip4:2001:db8::1 -all", "wrong address family"),
            ("v=spf1 mx bogus -all", "bogus"),
        ],
    )
    def test_malformed_terms_are_named(self, record: str, named: str) -> None:
        assert named in check_spf([record]).problem

    def test_spf1x_is_not_an_spf_record(self) -> None:
        assert "no SPF record" in check_spf(["v=spf10 -all"]).problem


class TestDmarc:
    def test_valid_record(self) -> None:
        verdict = check_dmarc(["v=DMARC1; p=quarantine; pct=50; rua=mailto:a@example.org,mailto:b@example.org"])
        assert verdict.problem == ""

    @pytest.mark.parametrize(
        ("record", "named"),
        [
            ("v=DMARC1", "p="),
            ("v=DMARC1; p=maybe", "p="),
            ("v=DMARC1; p=none; sp=never", "sp="),
            ("v=DMARC1; p=none; pct=150", "pct="),
            ("v=DMARC1; p=none; rua=https://example.org/", "mailto"),
            ("v=DMARC1; p=none; garbage", "malformed"),
        ],
    )
    def test_malformed_records_are_named(self, record: str, named: str) -> None:
        assert named in check_dmarc([record]).problem

    def test_absent_and_duplicate_records(self) -> None:
        assert "no DMARC record" in check_dmarc([]).problem
        assert "2 DMARC records" in check_dmarc(["v=DMARC1; p=none", "v=DMARC1; p=reject"]).problem
