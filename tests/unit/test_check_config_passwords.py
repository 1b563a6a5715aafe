"""check-config's password rules: RFC 3414's 8-character minimum binds SNMPv3 passphrases only.

SMTP AUTH passwords are the mail server's business and have no minimum of ours."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from monitor.cli.main import main

SHORT = "Pw4!"  # four characters: too short for SNMPv3, fine for SMTP AUTH


def write(directory: Path, text: str) -> Path:
    path = directory / "agent.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def smtp_auth_probe(password: str) -> str:
    return textwrap.dedent(f"""\
        smtp:
          - name: submission
            host: mail.example
            tls: starttls
            auth: {{username: monitor, password: {password}}}
        """)


def check_config(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["check-config", "-c", str(path)])
    out, err = capsys.readouterr()
    return code, out + err


class TestSmtpAuthPassword:
    @pytest.mark.parametrize("source", ["inline", "file", "env"])
    def test_a_four_character_smtp_password_passes(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], source: str
    ) -> None:
        secret_file = tmp_path / "smtp-password"
        secret_file.write_text(SHORT)
        monkeypatch.setenv("SMTPMON_TEST_SMTP_PASSWORD", SHORT)
        password = {
            "inline": f"'{SHORT}'",
            "file": f"{{file: {secret_file}}}",
            "env": "{env: SMTPMON_TEST_SMTP_PASSWORD}",
        }[source]
        code, output = check_config(write(tmp_path, smtp_auth_probe(password)), capsys)
        assert code == 0, output
        assert "8 characters" not in output
        assert SHORT not in output


class TestSnmpV3PassphraseStillChecked:
    """Next to a short SMTP password, short SNMPv3 passphrases are still refused, wherever they are."""

    @pytest.mark.parametrize(
        ("snmp", "key"),
        [
            ("users: [{name: ops, auth: {password: {env: SMTPMON_TEST_V3}}}]", "snmp.users[0].auth.password"),
            (
                "users: [{name: ops, auth: {password: long-enough-1}, priv: {password: {env: SMTPMON_TEST_V3}}}]",
                "snmp.users[0].priv.password",
            ),
            (
                "notify: [{host: 127.0.0.1, version: 3, user: ops, auth: {password: {env: SMTPMON_TEST_V3}}}]",
                "snmp.notify[0].auth.password",
            ),
        ],
    )
    def test_a_short_v3_passphrase_from_env_is_refused(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
        snmp: str,
        key: str,
    ) -> None:
        monkeypatch.setenv("SMTPMON_TEST_V3", "tiny7ch")
        text = smtp_auth_probe(f"'{SHORT}'") + f"snmp:\n  {snmp}\n"
        path = write(tmp_path, text)
        code, output = check_config(path, capsys)
        assert code == 2, output
        problems = [line for line in output.splitlines() if "8 characters" in line]
        assert problems, output
        assert all(f": {key}: " in line for line in problems), output  # only the SNMPv3 one
        assert "smtp[0]" not in output
        assert "tiny7ch" not in output

    def test_a_short_inline_v3_passphrase_is_refused(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        text = smtp_auth_probe(f"'{SHORT}'") + "snmp:\n  users: [{name: ops, auth: {password: tiny7ch}}]\n"
        code, output = check_config(write(tmp_path, text), capsys)
        assert code == 2, output
        assert "snmp.users[0].auth.password" in output
        assert "smtp[0]" not in output
