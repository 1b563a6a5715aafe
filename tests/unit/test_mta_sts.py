"""monitor.probes.mta_sts pure parts: policy parsing, TXT record rules, MX pattern matching."""

from __future__ import annotations

import pytest

from monitor.probes.mta_sts import (
    MAX_AGE_LIMIT,
    Policy,
    PolicyError,
    StsPolicy,
    check_exchanges,
    mx_matches,
    parse_policy,
    parse_txt_record,
    select_txt,
)

GOOD_POLICY = "version: STSv1\nmode: enforce\nmx: mx1.good.test\nmx: *.backup.good.test\nmax_age: 86400\n"


class TestParsePolicy:
    def test_a_good_policy_gives_mode_max_age_and_mx_patterns_in_order(self) -> None:
        assert parse_policy(GOOD_POLICY) == Policy("enforce", 86400, ("mx1.good.test", "*.backup.good.test"))

    def test_crlf_and_lf_line_ends_parse_alike(self) -> None:
        assert parse_policy(GOOD_POLICY.replace("\n", "\r\n")) == parse_policy(GOOD_POLICY)

    def test_no_final_newline_and_blank_lines_are_fine(self) -> None:
        text = "\nversion: STSv1\n\nmode: testing\nmx: mx1.good.test\nmax_age: 0"
        assert parse_policy(text) == Policy("testing", 0, ("mx1.good.test",))

    def test_whitespace_around_values_is_ignored(self) -> None:
        text = "version:STSv1\nmode:   enforce  \nmx:\tmx1.good.test\nmax_age: 600 \n"
        assert parse_policy(text) == Policy("enforce", 600, ("mx1.good.test",))

    def test_unknown_keys_are_ignored(self) -> None:
        policy = parse_policy(GOOD_POLICY + "x-vendor: anything: at all\nfuture_field: 1\n")
        assert policy.mode == "enforce"

    def test_mode_none_needs_no_mx(self) -> None:
        assert parse_policy("version: STSv1\nmode: none\nmax_age: 86400\n") == Policy("none", 86400, ())

    def test_the_first_of_repeated_single_fields_counts(self) -> None:
        assert parse_policy(GOOD_POLICY + "mode: none\nmax_age: 5\n").mode == "enforce"

    def test_max_age_limit_is_inclusive(self) -> None:
        assert parse_policy(GOOD_POLICY.replace("86400", str(MAX_AGE_LIMIT))).max_age == MAX_AGE_LIMIT

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            (GOOD_POLICY.replace("version: STSv1\n", ""), "no version"),
            (GOOD_POLICY.replace("STSv1", "STSv2"), "unknown version"),
            (GOOD_POLICY.replace("enforce", "strict"), "invalid mode"),
            (GOOD_POLICY.replace("enforce", "Enforce"), "invalid mode"),
            (GOOD_POLICY.replace("mode: enforce\n", ""), "no mode"),
            (GOOD_POLICY.replace("max_age: 86400\n", ""), "no max_age"),
            (GOOD_POLICY.replace("86400", str(MAX_AGE_LIMIT + 1)), "max_age"),
            (GOOD_POLICY.replace("86400", "-1"), "max_age"),
            (GOOD_POLICY.replace("86400", "1d"), "max_age"),
            (GOOD_POLICY.replace("86400", "12345678901"), "max_age"),
            ("version: STSv1\nmode: testing\nmax_age: 60\n", "without any mx"),
            (GOOD_POLICY + "just a line\n", "line 6 is not key: value"),
            (GOOD_POLICY + "mx: bad_name.test\n", "invalid mx pattern"),
            (GOOD_POLICY + "mx: *\n", "invalid mx pattern"),
            (GOOD_POLICY + "mx: mx.*.good.test\n", "invalid mx pattern"),
            ("<html><body>not found</body></html>", "not key: value"),
        ],
        ids=[
            "missing-version",
            "wrong-version",
            "bad-mode",
            "mode-case",
            "missing-mode",
            "missing-max-age",
            "max-age-too-big",
            "max-age-negative",
            "max-age-unit",
            "max-age-11-digits",
            "testing-without-mx",
            "line-without-colon",
            "mx-underscore",
            "mx-bare-star",
            "mx-inner-star",
            "html",
        ],
    )
    def test_invalid_policies_raise_policy_error_saying_why(self, text: str, message: str) -> None:
        with pytest.raises(PolicyError, match=message):
            parse_policy(text)


class TestTxtRecord:
    @pytest.mark.parametrize(
        ("text", "sts_id"),
        [
            ("v=STSv1; id=20240101T000000;", "20240101T000000"),
            ("v=STSv1;id=abc", "abc"),
            ("v=STSv1 ;\tid=abc ; ", "abc"),
            ("v=STSv1; ext=value; id=X1", "X1"),
            ("v=STSv1; id=" + "a" * 32, "a" * 32),
        ],
    )
    def test_valid_records_give_their_id(self, text: str, sts_id: str) -> None:
        assert parse_txt_record(text) == sts_id

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("v=STSv1;", "no id"),
            ("v=STSv1; id=", "letters and digits"),
            ("v=STSv1; id=abc-def", "letters and digits"),
            ("v=STSv1; id=" + "a" * 33, "letters and digits"),
            ("v=STSv1; id=a; id=b", "more than one id"),
            ("v=STSv1; id=a;; ", "not key=value"),
            ("v=STSv1; id=a; garbage", "not key=value"),
            ("v=STSv1; id=a; ext=semi=colon", "invalid extension"),
            ("v=STSv2; id=a", "does not start with v=STSv1"),
            ("id=a; v=STSv1", "does not start with v=STSv1"),
        ],
    )
    def test_invalid_records_raise_value_error_saying_why(self, text: str, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            parse_txt_record(text)

    def test_select_ignores_records_that_are_not_stsv1(self) -> None:
        txt = select_txt("_mta-sts.good.test", ["v=spf1 -all", "v=STSv1; id=1;", "hello"])
        assert (txt.ok, txt.id, txt.records, txt.error_kind) == (True, "1", ("v=STSv1; id=1;",), "")

    def test_select_without_any_stsv1_record_is_absent(self) -> None:
        txt = select_txt("_mta-sts.good.test", ["v=spf1 -all"])
        assert (txt.ok, txt.id, txt.error_kind) == (False, "", "absent")

    def test_select_with_two_stsv1_records_is_no_policy(self) -> None:
        # RFC 8461 3.1: more than one STSv1 record means no policy, even when both are valid
        txt = select_txt("_mta-sts.good.test", ["v=STSv1; id=1;", "v=STSv1; id=2;"])
        assert (txt.ok, txt.id, txt.error_kind) == (False, "", "multiple")
        assert "2 v=STSv1 TXT records" in txt.error

    def test_select_with_one_malformed_stsv1_record_reports_it(self) -> None:
        txt = select_txt("_mta-sts.good.test", ["v=STSv1; id=not valid!"])
        assert (txt.ok, txt.id, txt.error_kind) == (False, "", "malformed")
        assert txt.error.startswith("_mta-sts.good.test: id ")


class TestMxMatches:
    @pytest.mark.parametrize(
        ("pattern", "exchange", "expected"),
        [
            ("mx1.good.test", "mx1.good.test", True),
            ("MX1.Good.Test", "mx1.good.test.", True),
            ("mx1.good.test.", "MX1.GOOD.TEST", True),
            ("*.good.test", "mx1.good.test", True),
            ("*.good.test", "MX2.GOOD.TEST.", True),
            ("*.good.test", "good.test", False),
            ("*.good.test", "a.mx1.good.test", False),
            ("*.good.test", ".good.test", False),
            ("*.good.test", "mx1.notgood.test", False),
            ("mx1.good.test", "mx2.good.test", False),
            ("mx1.good.test", "a.mx1.good.test", False),
            ("", "mx1.good.test", False),
            ("mx1.good.test", "", False),
        ],
    )
    def test_matching_rules(self, pattern: str, exchange: str, expected: bool) -> None:
        assert mx_matches(pattern, exchange) is expected


class TestCheckExchanges:
    def test_returns_exchanges_no_pattern_covers_in_input_order(self) -> None:
        policy = parse_policy(GOOD_POLICY)
        exchanges = ["mx9.good.test", "mx1.good.test.", "b.backup.good.test", "mail.other.test"]
        assert check_exchanges(policy, exchanges) == ["mx9.good.test", "mail.other.test"]

    def test_works_on_a_fetched_policy_too(self) -> None:
        fetched = StsPolicy(
            "good.test",
            "https://mta-sts.good.test/.well-known/mta-sts.txt",
            mode="testing",
            max_age=60,
            mx_patterns=("*.good.test",),
            verified=True,
        )
        assert check_exchanges(fetched, ["mx1.good.test", "mx2.good.test"]) == []

    def test_a_policy_without_patterns_covers_nothing(self) -> None:
        assert check_exchanges(Policy("none", 60, ()), ["mx1.good.test"]) == ["mx1.good.test"]
