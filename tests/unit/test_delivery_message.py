"""The delivery probe's message, and what it reads back from the arrived headers: hops, verdicts, queue ID;
its configuration's validation."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from email import message_from_bytes
from email.policy import default
from typing import Any

import pytest
from pydantic import ValidationError

from monitor.cli import report
from monitor.config.schema import ConfigError, DeliveryProbeConfig, format_validation_error
from monitor.model.delivery import DeliveryPhase, DeliveryReason, DeliveryResult
from monitor.model.results import Reason, Reply
from monitor.model.wire import adapter
from monitor.probes.delivery import build_message, hops_of, parse_received, queue_id, verdicts_of, wire_bytes

TOKEN = "0123456789abcdef0123456789abcdef"


def config(**overrides: Any) -> DeliveryProbeConfig:
    document: dict[str, Any] = {
        "name": "probe-1",
        "submit": {"host": "msa.example.org", "auth": {"username": "probe", "password": "Submit-Pa55"}},
        "from": "probe@example.org",
        "to": "probe@example.net",
        "mailbox": {"host": "imap.example.net", "username": "probe", "password": "Mailbox-Pa55"},
        **overrides,
    }
    return DeliveryProbeConfig.model_validate(document)


def validation_error(**overrides: Any) -> str:
    with pytest.raises(ValidationError) as failed:
        config(**overrides)
    return format_validation_error("delivery.yaml", failed.value)


# A chain as the test Postfix/Dovecot chain writes it (newest first), folded as servers fold.
ARRIVED = (
    b"Return-Path: <probe@src.test>\r\n"
    b"Received: from mx.dest.test ([127.0.0.1])\r\n\tby mail.dest.test with LMTP\r\n\tid AC6eFazMFWssTwAAg+zDdQ\r\n"
    b"\t(envelope-from <probe@src.test>)\r\n\tfor <probe@dest.test>; Sun, 06 Dec 2026 20:59:44 +0000\r\n"
    b"Authentication-Results: mx.dest.test; dmarc=pass (p=reject dis=none) header.from=src.test\r\n"
    b"Authentication-Results: mx.dest.test;\r\n\tdkim=pass (1024-bit key; unprotected) header.d=src.test\r\n"
    b"Authentication-Results: mx.dest.test; spf=pass (sender SPF authorized) smtp.mailfrom=src.test\r\n"
    b"Received: from msa.src.test (localhost [127.0.0.1])\r\n"
    b"\tby mx.dest.test (Postfix) with ESMTPS id 345FE2149A8\r\n"
    b"\tfor <probe@dest.test>; Sun,  6 Dec 2026 20:59:44 +0000 (UTC)\r\n"
    b"Authentication-Results: mx.dest.test; dkim=fail; spf=fail; dmarc=fail\r\n"  # the sender's forgery, below
    b"Received: from client.example (localhost [127.0.0.1])\r\n"
    b"\tby msa.src.test (Postfix) with ESMTPSA id EAC902149A2\r\n"
    b"\tfor <probe@dest.test>; Sun,  6 Dec 2026 20:59:23 +0000 (UTC)\r\n"
    b"X-Smtp-Monitor-Token: " + TOKEN.encode() + b"\r\n\r\n"
)


class TestMessage:
    def test_headers_mark_it_as_an_automatic_probe_message_with_its_token(self) -> None:
        probe = config(extra_headers={"X-Test-Junk": "yes"})
        message = message_from_bytes(wire_bytes(build_message(probe, TOKEN))[:-3], policy=default)
        assert message["Auto-Submitted"] == "auto-generated"
        assert message["X-Smtp-Monitor-Token"] == TOKEN
        assert message["X-Smtp-Monitor-Probe"] == "probe-1"
        assert message["Message-ID"] == f"<smtp-monitor.{TOKEN}@example.org>"
        assert message["Date"]
        assert message["Precedence"] is None
        assert message["X-Test-Junk"] == "yes"
        assert (message["From"], message["To"]) == ("probe@example.org", "probe@example.net")

    def test_wire_form_has_crlf_lines_stuffed_dots_and_the_end_marker(self) -> None:
        message = build_message(config(), TOKEN, datetime(2026, 12, 6, tzinfo=UTC))
        message.set_content(".leading dot\n..two\nplain\n")
        data = wire_bytes(message)
        assert data.endswith(b"\r\n.\r\n")
        assert b"\r\n..leading dot\r\n" in data
        assert b"\r\n...two\r\n" in data
        assert b"\n" not in data.replace(b"\r\n", b"")

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("2.0.0 Ok: queued as 4ABC123DEF", "4ABC123DEF"),
            ("OK id=1tJx2a-0001Ab-3C", "1tJx2a-0001Ab-3C"),
            ("2.0.0 OK  1733511111 d2e1a72fcca58-725e5a3d2ebsi123", ""),
        ],
    )
    def test_queue_id_from_the_250(self, text: str, expected: str) -> None:
        assert queue_id(Reply(250, (text,))) == expected


class TestArrivedHeaders:
    def test_hops_in_travel_order_with_the_delay_each_added(self) -> None:
        submitted = datetime(2026, 12, 6, 20, 59, 22, 600000, tzinfo=UTC).timestamp()
        hops = hops_of(ARRIVED, submitted)
        assert [(h.from_host, h.by_host, h.protocol, h.queue_id) for h in hops] == [
            ("client.example", "msa.src.test", "ESMTPSA", "EAC902149A2"),
            ("msa.src.test", "mx.dest.test", "ESMTPS", "345FE2149A8"),
            ("mx.dest.test", "mail.dest.test", "LMTP", "AC6eFazMFWssTwAAg+zDdQ"),
        ]
        assert [h.delay for h in hops] == [1.0, 21.0, 0.0]  # the MSA held it 21 s: the MX was down

    def test_the_first_hop_stamped_in_the_second_before_the_250_has_no_delay(self) -> None:
        # The MSA stamps 20:59:23 before its 250, which came at 20:59:24.05: resolution, not -1 s.
        assert hops_of(ARRIVED, datetime(2026, 12, 6, 20, 59, 24, 50000, tzinfo=UTC).timestamp())[0].delay == 0.0
        # Five seconds apart is a clock that differs from ours, and shows as it is.
        assert hops_of(ARRIVED, datetime(2026, 12, 6, 20, 59, 28, 50000, tzinfo=UTC).timestamp())[0].delay == -5.0

    def test_a_received_header_without_a_date_or_with_garbage_still_gives_a_hop(self) -> None:
        assert parse_received("from a by b with SMTP") == ("a", "b", "SMTP", "", None)
        assert parse_received("by b (comment (nested) with X) id 7; not a date")[:4] == ("", "b", "", "7")
        assert parse_received("(((((((((((") == ("", "", "", "", None)
        arrived = b"Received: by b; yesterday\r\nReceived: from x by a; Sun, 6 Dec 2026 20:00:00 +0000\r\n\r\n"
        hops = hops_of(arrived, None)
        assert [(h.by_host, h.delay) for h in hops] == [("a", None), ("b", None)]

    def test_verdicts_come_from_the_topmost_authserv_id_only(self) -> None:
        verdicts = verdicts_of(ARRIVED, None)
        assert {(v.method, v.result) for v in verdicts} == {("dmarc", "pass"), ("dkim", "pass"), ("spf", "pass")}
        assert {v.authserv_id for v in verdicts} == {"mx.dest.test"}

    def test_a_configured_authserv_id_picks_its_headers(self) -> None:
        arrived = b"Authentication-Results: relay.example; spf=fail smtp.mailfrom=x\r\n" + ARRIVED
        assert verdicts_of(arrived, None)[0].authserv_id == "relay.example"
        assert {(v.method, v.result) for v in verdicts_of(arrived, "MX.dest.test")} >= {("spf", "pass")}
        assert verdicts_of(arrived, "nobody.example") == ()

    def test_malformed_and_oversized_results_are_skipped(self) -> None:
        arrived = (
            b"Authentication-Results: ;;; (\r\n"
            b"Authentication-Results: mx.example; spf=pass x=" + b"y" * 10_000 + b"\r\n"
            b"Authentication-Results: mx.example; dkim=pass\r\n\r\n"
        )
        assert [(v.method, v.result) for v in verdicts_of(arrived, None)] == [("dkim", "pass")]


class TestConfig:
    def test_defaults(self) -> None:
        probe = config()
        assert probe.submit.effective_port == 587
        assert probe.mailbox.effective_port == 993
        assert (probe.deliver_within, probe.lost_after) == (60.0, 3600.0)
        assert probe.mail_from == "probe@example.org"
        assert "Mailbox-Pa55" not in repr(probe)

    @pytest.mark.parametrize(
        ("overrides", "key", "message"),
        [
            ({"submit": {"via": "mx", "host": "x.example"}}, "submit", "drop host"),
            ({"submit": {"via": "submission"}}, "submit", "needs host"),
            (
                {"submit": {"host": "m.example", "tls": "none", "auth": {"username": "u", "password": "p"}}},
                "submit",
                "over TLS only",
            ),
            (
                {
                    "mailbox": {
                        "host": "h.example",
                        "username": "u",
                        "password": "p",
                        "protocol": "pop3",
                        "folders": {"junk": "Spam"},
                    }
                },
                "mailbox",
                "IMAP only",
            ),
            ({"mailbox": {"host": "h.example", "username": "u", "password": "p", "tls": "none"}}, "mailbox.tls", ""),
            ({"deliver_within": "2h"}, "(top level)", "lost_after must be longer"),
            ({"expect_auth": {"dkim": "passed"}}, "expect_auth.dkim", ""),
            ({"expect_folder": "spam"}, "expect_folder", ""),
            ({"extra_headers": {"From": "x@y"}}, "extra_headers", "written by the probe"),
            ({"extra_headers": {"X-A": "line\r\nBcc: victim@example"}}, "extra_headers", "one line"),
            ({"extra_headers": {"Bad Name": "x"}}, "extra_headers", "bad header name"),
            ({"from": "not-an-address"}, "from", "bad mail address"),
        ],
    )
    def test_errors_name_the_key(self, overrides: dict[str, Any], key: str, message: str) -> None:
        text = validation_error(**overrides)
        assert f"delivery.yaml: {key}:" in text
        assert message in text

    def test_config_error_is_the_schema_one(self) -> None:
        assert issubclass(ConfigError, Exception)


class TestPluginOutput:
    def test_late_is_a_warning_every_other_failure_critical(self) -> None:
        late = DeliveryResult(
            name="d",
            started_at=0.0,
            ok=False,
            phase=DeliveryPhase.DELIVER,
            reason=DeliveryReason.LATE,
            error="not in the mailbox within 60s",
            pending=True,
        )
        refused = replace(late, phase=DeliveryPhase.FETCH, reason=Reason.REFUSED, error="connection refused")
        wrong_folder = replace(late, reason=DeliveryReason.WRONG_FOLDER)
        assert [report.delivery_exit_code(r) for r in (late, refused, wrong_folder)] == [1, 2, 2]
        assert report.delivery_line(late, 60).startswith(
            "DELIVERY WARNING - d failed in deliver: late: not in the mailbox within 60s | latency=U hops=0"
        )

    def test_ok_line_has_latency_against_the_deadline_and_each_hop_delay(self) -> None:
        hops = hops_of(ARRIVED, datetime(2026, 12, 6, 20, 59, 22, tzinfo=UTC).timestamp())
        result = DeliveryResult(
            name="d",
            started_at=0.0,
            ok=True,
            latency=22.5,
            hops=hops,
            folder="inbox",
            verdicts=verdicts_of(ARRIVED, None),
            total=23.0,
        )
        line = report.delivery_line(result, 60)
        assert report.delivery_exit_code(result) == 0
        assert line == (
            "DELIVERY OK - d: delivered in inbox in 22.500s over 3 hops (dmarc=pass dkim=pass spf=pass)"
            " | latency=22.500s;60 hops=3 hop1_delay=1s hop2_delay=21s hop3_delay=0s total=23.000000s"
        )


class TestJson:
    def test_a_result_reads_back_from_its_json_with_kind_and_status_first(self) -> None:
        submitted = datetime(2026, 12, 6, 20, 59, 22, tzinfo=UTC).timestamp()
        result = DeliveryResult(
            name="d",
            started_at=submitted - 1,
            ok=False,
            phase=DeliveryPhase.DELIVER,
            reason=DeliveryReason.WRONG_FOLDER,
            error="landed in junk",
            token=TOKEN,
            submitted_at=submitted,
            latency=1.5,
            hops=hops_of(ARRIVED, submitted),
            verdicts=verdicts_of(ARRIVED, None),
            folder="junk",
            timings={"submit": 0.1},
            total=2.0,
        )
        wire = json.loads(json.dumps(result.as_dict()))
        assert list(wire)[:4] == ["kind", "status", "name", "started_at"]
        assert (wire["kind"], wire["status"], wire["reason"]) == ("delivery", "failed", "wrong_folder")
        assert wire["timings"] == {"submit": 0.1, "total": 2.0}
        assert wire["hops"][0]["time"] == "2026-12-06T20:59:23+00:00"
        assert adapter(DeliveryResult).validate_python(wire) == result
        refused = replace(result, reason=Reason.REFUSED, reply=Reply(554, ("5.7.1 no",)))
        assert adapter(DeliveryResult).validate_python(json.loads(json.dumps(refused.as_dict()))) == refused
