"""monitor.cli.report: monitoring-plugin status lines with perfdata, certificate warnings, exit codes and JSON."""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import UTC, datetime, timedelta

from monitor.cli import report
from monitor.model.results import CertInfo, MxRecord, MxResult, Phase, Reason, Reply, SmtpResult, TlsInfo

TIMINGS = {
    "resolve": 0.0001,
    "connect": 0.001,
    "banner": 0.01,
    "ehlo": 0.002,
    "starttls": 0.003,
    "tls": 0.03,
    "ehlo_tls": 0.002,
    "quit": 0.0005,
}
PERFDATA = (
    "resolve=0.000100s connect=0.001000s banner=0.010000s ehlo=0.002000s starttls=0.003000s "
    "tls=0.030000s ehlo_tls=0.002000s quit=0.000500s total=0.052000s"
)


def tls(expires_in: timedelta, verified: bool = True, chain_expires_in: timedelta | None = None) -> TlsInfo:
    now = datetime.now(UTC)
    cert = CertInfo(
        subject="CN=mail.example",
        issuer="CN=Test CA",
        sans=("DNS:mail.example",),
        not_before=now - timedelta(days=60),
        not_after=now + expires_in,
        serial="1f",
        sha256="ab" * 32,
    )
    chain = now + chain_expires_in if chain_expires_in is not None else None
    return TlsInfo(
        version="TLSv1.3",
        cipher="TLS_AES_256_GCM_SHA384",
        verified=verified,
        verify_error="" if verified else "verification disabled",
        cert=cert,
        chain_not_after=chain,
    )


def smtp_ok(tls_info: TlsInfo | None, mode: str = "starttls", port: int = 25) -> SmtpResult:
    return SmtpResult(
        host="mail.example",
        port=port,
        tls_mode=mode,
        started_at=0.0,
        ok=True,
        timings=dict(TIMINGS),
        total=0.052,
        tls=tls_info,
    )


def smtp_failed(phase: Phase, reason: Reason, error: str, reply: Reply | None = None) -> SmtpResult:
    return SmtpResult(
        host="mail.example",
        port=25,
        tls_mode="starttls",
        started_at=0.0,
        ok=False,
        phase=phase,
        reason=reason,
        error=error,
        reply=reply,
        timings={"resolve": 0.0001},
        total=0.0012,
    )


class TestSmtpOkLine:
    def test_starttls_line_with_version_time_and_perfdata(self) -> None:
        result = smtp_ok(tls(timedelta(days=90)))
        line = report.smtp_line(result, 14)
        assert line == f"SMTP OK - mail.example:25 STARTTLS TLSv1.3 0.052s | {PERFDATA}"
        shape = r"SMTP OK - \S+:\d+ STARTTLS TLSv1\.\d \d+\.\d{3}s \| (\w+=\d+\.\d+s )*total=\d+\.\d+s"
        assert re.fullmatch(shape, line)
        assert report.smtp_exit_code(result, 14) == report.EXIT_OK == 0

    def test_implicit_tls_line(self) -> None:
        line = report.smtp_line(smtp_ok(tls(timedelta(days=90)), mode="implicit", port=465), 14)
        assert line.startswith("SMTP OK - mail.example:465 IMPLICIT TLSv1.3 0.052s | ")

    def test_plain_line_has_no_tls_words(self) -> None:
        line = report.smtp_line(smtp_ok(None, mode="none"), 14)
        assert line == f"SMTP OK - mail.example:25 0.052s | {PERFDATA}"

    def test_unverified_certificate_is_said(self) -> None:
        line = report.smtp_line(smtp_ok(tls(timedelta(days=90), verified=False)), 14)
        assert line.startswith("SMTP OK - mail.example:25 STARTTLS TLSv1.3 (certificate not verified) 0.052s | ")


class TestCertificateWarning:
    def test_certificate_expiring_within_warn_days_is_a_warning(self) -> None:
        result = smtp_ok(tls(timedelta(days=3, hours=12)))
        assert result.tls is not None
        assert result.tls.cert is not None
        expiry = f"{result.tls.cert.not_after:%Y-%m-%d}"
        line = report.smtp_line(result, 14)
        assert line == (
            f"SMTP WARNING - mail.example:25 STARTTLS TLSv1.3 certificate expires in 3 days ({expiry}) "
            f"0.052s | {PERFDATA}"
        )
        assert report.smtp_exit_code(result, 14) == report.EXIT_WARNING == 1

    def test_warn_days_zero_turns_the_warning_off(self) -> None:
        result = smtp_ok(tls(timedelta(days=3, hours=12)))
        assert report.cert_warning(result, 0) == ""
        assert report.smtp_exit_code(result, 0) == report.EXIT_OK
        assert report.smtp_line(result, 0).startswith("SMTP OK - ")

    def test_boundary_is_whole_days_left(self) -> None:
        result = smtp_ok(tls(timedelta(days=1)))
        assert result.tls is not None
        assert result.tls.cert is not None
        not_after = result.tls.cert.not_after
        assert report.cert_warning(result, 14, now=not_after - timedelta(days=14, seconds=1)) == ""
        assert report.cert_warning(result, 14, now=not_after - timedelta(days=13, hours=23)).startswith(
            "certificate expires in 13 days"
        )
        assert report.cert_warning(result, 14, now=not_after - timedelta(days=400)) == ""

    def test_chain_expiry_counts(self) -> None:
        result = smtp_ok(tls(timedelta(days=90), chain_expires_in=timedelta(days=2, hours=12)))
        assert report.cert_warning(result, 14).startswith("certificate expires in 2 days")
        assert report.smtp_exit_code(result, 14) == report.EXIT_WARNING

    def test_no_tls_no_warning(self) -> None:
        assert report.cert_warning(smtp_ok(None, mode="none"), 14) == ""


class TestSmtpCriticalLine:
    def test_line_names_phase_reason_and_error(self) -> None:
        result = smtp_failed(Phase.CONNECT, Reason.REFUSED, "connection refused")
        line = report.smtp_line(result, 14)
        assert line == (
            "SMTP CRITICAL - mail.example:25 failed in connect: refused: connection refused "
            "| resolve=0.000100s total=0.001200s"
        )
        assert report.smtp_exit_code(result, 14) == report.EXIT_CRITICAL == 2

    def test_reply_failure(self) -> None:
        reply = Reply(554, ("5.7.1 go away",))
        line = report.smtp_line(smtp_failed(Phase.BANNER, Reason.REPLY, str(reply), reply), 14)
        assert line.startswith("SMTP CRITICAL - mail.example:25 failed in banner: reply: 554 5.7.1 go away | ")

    def test_failure_outranks_an_expiring_certificate(self) -> None:
        failed = smtp_failed(Phase.EHLO_TLS, Reason.TIMEOUT, "no answer within 10s")
        result = dataclasses.replace(failed, tls=tls(timedelta(days=1)))
        assert report.smtp_exit_code(result, 14) == report.EXIT_CRITICAL
        assert "failed in ehlo_tls: timeout" in report.smtp_line(result, 14)

    def test_exit_codes_follow_the_plugin_convention(self) -> None:
        assert (report.EXIT_OK, report.EXIT_WARNING, report.EXIT_CRITICAL, report.EXIT_UNKNOWN) == (0, 1, 2, 3)


class TestMxLine:
    def test_ok_line_lists_exchanges_by_preference(self) -> None:
        result = MxResult(
            domain="example.com",
            started_at=0.0,
            ok=True,
            records=(MxRecord(10, "mx1.example.com", ("192.0.2.1",)), MxRecord(20, "mx2.example.com", ())),
            timings={"mx": 0.004, "address": 0.002},
            total=0.0071,
        )
        assert report.mx_line(result) == (
            "MX OK - example.com 2 MX (10 mx1.example.com, 20 mx2.example.com) 0.007s "
            "| mx=0.004000s address=0.002000s total=0.007100s"
        )
        assert report.mx_exit_code(result) == report.EXIT_OK

    def test_implicit_mx_is_said(self) -> None:
        result = MxResult(
            domain="example.com",
            started_at=0.0,
            ok=True,
            implicit_mx=True,
            records=(MxRecord(0, "example.com", ("192.0.2.1",)),),
            total=0.002,
        )
        assert report.mx_line(result).startswith("MX OK - example.com implicit MX (no MX record) (0 example.com) ")

    def test_failed_line_names_reason_and_error(self) -> None:
        result = MxResult(
            domain="nope.example",
            started_at=0.0,
            ok=False,
            phase=Phase.MX,
            reason=Reason.NXDOMAIN,
            error="nope.example: no such domain (NXDOMAIN)",
            timings={},
            total=0.003,
        )
        assert report.mx_line(result) == (
            "MX CRITICAL - nope.example nxdomain: nope.example: no such domain (NXDOMAIN) | total=0.003000s"
        )
        assert report.mx_exit_code(result) == report.EXIT_CRITICAL


class TestJson:
    def test_smtp_json_round_trips_the_result(self) -> None:
        result = smtp_ok(tls(timedelta(days=90)))
        data = json.loads(report.as_json(result))
        assert data == json.loads(json.dumps(result.as_dict()))
        assert data["status"] == "ok"
        assert data["timings"]["total"] == 0.052
        assert data["tls"]["version"] == "TLSv1.3"

    def test_mx_json(self) -> None:
        result = MxResult(
            domain="example.com", started_at=0.0, ok=False, phase=Phase.MX, reason=Reason.NO_MX, error="no MX"
        )
        data = json.loads(report.as_json(result))
        assert (data["kind"], data["status"], data["phase"], data["reason"]) == ("mx", "failed", "mx", "no_mx")
