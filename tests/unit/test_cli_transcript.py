"""`smtp-monitor probe ... --transcript`: the dialogue after the plugin line, swaks style, with no secret."""

from __future__ import annotations

import re

import pytest

from monitor.cli import report
from monitor.cli.main import main
from monitor.model.results import MxRecord, MxResult, SmtpResult
from monitor.model.transcript import TranscriptRecorder
from tests.fakes import smtp_servers as fakes
from tests.fakes.auth_secrets import leaks, secret_forms
from tests.fakes.smtp_servers import EchoingAuthServer, ServerThread
from tests.support.certs import SERVER_NAME, IssuedCert, Pki

PASSWORD = "Quokka-Zebra-Hunter2-Passphrase"
LINE = re.compile(r"^ +\d+\.\d{3} +(C|S|TLS|--) ")


def test_the_transcript_follows_the_plugin_line(capsys: pytest.CaptureFixture[str]) -> None:
    with ServerThread(fakes.greeting_554()) as server:
        code = main(["probe", f"127.0.0.1:{server.port}", "--tls", "none", "--helo", "probe.test", "--transcript"])
    out = capsys.readouterr().out.splitlines()
    assert code == report.EXIT_CRITICAL
    assert out[0].startswith("SMTP CRITICAL - 127.0.0.1:")
    assert all(LINE.match(line) for line in out[1:]), out
    assert re.fullmatch(r" +\d+\.\d{3} +S 554 5\.3\.2 mail\.test no SMTP service here", out[3])
    assert out[1].endswith(f"-- trying 127.0.0.1 port {server.port}")
    assert out[-1].endswith("-- failed in banner: reply: 554 5.3.2 mail.test no SMTP service here")


def test_without_the_flag_only_the_plugin_line(capsys: pytest.CaptureFixture[str]) -> None:
    with ServerThread(fakes.greeting_554()) as server:
        main(["probe", f"127.0.0.1:{server.port}", "--tls", "none"])
    assert len(capsys.readouterr().out.splitlines()) == 1


def test_auth_in_the_printed_transcript_gives_no_form_of_the_password_away(
    pki: Pki, good_cert: IssuedCert, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLI_TRANSCRIPT_PASSWORD", PASSWORD)
    echoing = EchoingAuthServer(good_cert.server_context(), reply="535 5.7.8 bad {echo} ({decoded})")
    with ServerThread(echoing) as server:
        code = main(
            [
                "probe",
                f"127.0.0.1:{server.port}",
                "--ca-file",
                str(pki.ca_file),
                "--servername",
                SERVER_NAME,
                "--auth-user",
                "ab",
                "--auth-password-env",
                "CLI_TRANSCRIPT_PASSWORD",
                "--auth-mechanism",
                "LOGIN",
                "--transcript",
            ]
        )
    out = capsys.readouterr().out
    assert code == report.EXIT_CRITICAL
    assert "AUTH LOGIN" in out
    assert "TLSv1.3" in out
    assert leaks(out, secret_forms("ab", PASSWORD)) == [], out


def test_every_probed_exchange_of_an_mx_check_has_its_section() -> None:
    def probed(address: str, banner: str) -> SmtpResult:
        recorder = TranscriptRecorder()
        recorder.received(banner)
        return SmtpResult("mx", 25, "starttls", 0.0, True, address=address, transcript=recorder.transcript())

    result = MxResult(
        "example.test",
        0.0,
        True,
        records=(
            MxRecord(10, "mx1.example.test", ("192.0.2.1",), probe=probed("192.0.2.1", "220 one")),
            MxRecord(20, "mx2.example.test", ("192.0.2.2",), probe=probed("192.0.2.2", "220 two")),
        ),
    )
    text = report.transcript_text(result).splitlines()
    assert text[0] == "=== MX 10 mx1.example.test 192.0.2.1"
    assert text[1].endswith("S 220 one")
    assert text[2] == "=== MX 20 mx2.example.test 192.0.2.2"
    assert text[3].endswith("S 220 two")
    assert report.transcript_text(MxResult("example.test", 0.0, True)).startswith("=== no SMTP dialogue")
