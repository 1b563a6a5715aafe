"""`smtp-monitor probe` and `smtp-monitor mx` as a user runs them, against real Postfix and NSD."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.peers import zone
from tests.peers.nsd import NsdServer
from tests.peers.postfix import PostfixServer


def cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "monitor", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def probe_json(*args: str) -> tuple[int, dict[str, Any]]:
    proc = cli("probe", *args, "--json")
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


@pytest.fixture
def tarpit() -> Iterator[int]:
    """A port whose listener accepts TCP connections (kernel backlog) and never speaks."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@pytest.fixture
def refusing_server() -> Iterator[int]:
    """A server that greets every client with 554 and closes."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(b"554 5.3.2 mail.test no SMTP service here\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        thread.join(2)
        sock.close()


class TestProbeAgainstPostfix:
    def test_plain_dialogue_reports_banner_extensions_and_phase_timings(self, postfix: PostfixServer) -> None:
        code, result = probe_json(f"127.0.0.1:{postfix.plain_port}", "--tls", "none")
        assert code == 0, result
        assert result["status"] == "ok"
        assert result["banner"].startswith("220 mail.test")
        assert {"PIPELINING", "SIZE", "STARTTLS", "8BITMIME"} <= set(result["extensions"])
        assert result["extensions"]["SIZE"] == "10240000"
        assert set(result["timings"]) >= {"connect", "banner", "ehlo", "quit", "total"}
        assert result["tls"] is None

    def test_starttls_verifies_certificate_given_the_ca_file(self, postfix: PostfixServer) -> None:
        code, result = probe_json(
            f"127.0.0.1:{postfix.plain_port}",
            "--tls",
            "starttls",
            "--ca-file",
            str(postfix.ca_file),
            "--servername",
            "mail.test",
        )
        assert code == 0, result
        tls = result["tls"]
        assert tls["verified"] is True
        assert tls["version"].startswith("TLSv1")
        assert tls["cipher"]
        assert "DNS:mail.test" in tls["cert"]["sans"]
        assert tls["cert"]["not_after"] > time.strftime("%Y-%m-%d")
        assert {"starttls", "tls", "ehlo_tls"} <= set(result["timings"])

    def test_implicit_tls_handshakes_before_the_greeting(self, postfix: PostfixServer) -> None:
        code, result = probe_json(
            f"127.0.0.1:{postfix.implicit_port}",
            "--tls",
            "implicit",
            "--ca-file",
            str(postfix.ca_file),
            "--servername",
            "mail.test",
        )
        assert code == 0, result
        assert result["tls"]["verified"] is True
        assert "starttls" not in result["timings"]
        assert result["timings"]["tls"] > 0

    def test_submission_port_with_starttls_required(self, postfix: PostfixServer) -> None:
        code, result = probe_json(
            f"127.0.0.1:{postfix.submission_port}",
            "--tls",
            "starttls",
            "--ca-file",
            str(postfix.ca_file),
            "--servername",
            "mail.test",
        )
        assert code == 0, result
        assert result["tls"]["verified"] is True

    def test_plugin_line_carries_status_tls_version_and_perfdata(self, postfix: PostfixServer) -> None:
        proc = cli(
            "probe",
            f"127.0.0.1:{postfix.plain_port}",
            "--ca-file",
            str(postfix.ca_file),
            "--servername",
            "mail.test",
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stdout.startswith(f"SMTP OK - 127.0.0.1:{postfix.plain_port} STARTTLS TLSv1")
        perfdata = proc.stdout.split("|", 1)[1]
        assert "connect=" in perfdata
        assert "total=" in perfdata

    def test_wrong_servername_fails_verification_but_still_reports_expiry(self, postfix: PostfixServer) -> None:
        code, result = probe_json(
            f"127.0.0.1:{postfix.plain_port}",
            "--ca-file",
            str(postfix.ca_file),
            "--servername",
            "other.test",
        )
        assert code == 2
        assert (result["phase"], result["reason"]) == ("tls", "tls_verify")
        assert result["tls"]["verified"] is False
        assert result["tls"]["cert"]["not_after"]

    def test_system_cas_do_not_trust_the_self_signed_certificate(self, postfix: PostfixServer) -> None:
        code, result = probe_json(
            f"127.0.0.1:{postfix.implicit_port}", "--tls", "implicit", "--servername", "mail.test"
        )
        assert code == 2
        assert result["reason"] == "tls_verify"


class TestProbeFailures:
    def test_closed_port_fails_in_connect_as_refused(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # bound but not listening: connections are refused
            code, result = probe_json(f"127.0.0.1:{port}", "--tls", "none")
        assert code == 2
        assert (result["phase"], result["reason"]) == ("connect", "refused")

    def test_tarpit_fails_in_banner_phase_at_the_deadline(self, tarpit: int) -> None:
        started = time.monotonic()
        code, result = probe_json(f"127.0.0.1:{tarpit}", "--timeout", "1s")
        elapsed = time.monotonic() - started
        assert code == 2
        assert (result["phase"], result["reason"]) == ("banner", "timeout")
        assert elapsed < 10  # hang guard only

    def test_554_greeting_fails_at_once_with_the_reply(self, refusing_server: int) -> None:
        code, result = probe_json(f"127.0.0.1:{refusing_server}", "--timeout", "30s")
        assert code == 2
        assert (result["phase"], result["reason"]) == ("banner", "reply")
        assert result["reply_code"] == 554
        assert "no SMTP service" in result["error"]
        assert result["timings"]["total"] < 5  # did not wait for the 30 s deadline

    def test_usage_error_exits_unknown(self) -> None:
        proc = cli("probe", "127.0.0.1:99999")
        assert proc.returncode == 3
        assert "Traceback" not in proc.stderr


class TestMxAgainstNsd:
    def ns(self, dns_server: NsdServer) -> list[str]:
        return ["--nameserver", f"{dns_server.host}:{dns_server.port}"]

    def mx(self, dns_server: NsdServer, domain: str, *extra: str) -> tuple[int, dict[str, Any]]:
        proc = cli("mx", domain.rstrip("."), *self.ns(dns_server), "--json", *extra)
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc.returncode, json.loads(proc.stdout)

    def test_exchanges_come_in_preference_order_with_addresses(self, dns_server: NsdServer) -> None:
        code, result = self.mx(dns_server, zone.GOOD_DOMAIN)
        assert code == 0, result
        assert [(r["preference"], r["exchange"]) for r in result["mx"]] == [
            (pref, host.rstrip(".")) for pref, host in zone.GOOD_MX
        ]
        assert result["mx"][0]["addresses"] == ["127.0.0.1"]
        assert sorted(result["mx"][1]["addresses"]) == ["127.0.0.1", "::1"]
        assert "mx" in result["timings"]

    def test_nxdomain_is_classified(self, dns_server: NsdServer) -> None:
        code, result = self.mx(dns_server, zone.MISSING_DOMAIN)
        assert code == 2
        assert result["reason"] == "nxdomain"

    def test_null_mx_fails_the_check(self, dns_server: NsdServer) -> None:
        code, result = self.mx(dns_server, zone.NULLMX_DOMAIN)
        assert code == 2
        assert result["reason"] == "null_mx"

    def test_implicit_mx_is_reported_and_ok_unless_mx_required(self, dns_server: NsdServer) -> None:
        code, result = self.mx(dns_server, zone.IMPLICIT_DOMAIN)
        assert code == 0
        assert result["implicit_mx"] is True
        assert result["mx"][0]["addresses"] == ["127.0.0.1"]
        code, result = self.mx(dns_server, zone.IMPLICIT_DOMAIN, "--require-mx")
        assert code == 2
        assert result["reason"] == "no_mx"

    def test_exchange_without_address_is_classified(self, dns_server: NsdServer) -> None:
        code, result = self.mx(dns_server, zone.NOADDR_DOMAIN)
        assert code == 2
        assert result["reason"] == "no_address"
        assert result["mx"][0]["addresses"] == []

    def test_dangling_exchange_is_an_exchange_without_address(self, dns_server: NsdServer) -> None:
        code, result = self.mx(dns_server, zone.DANGLING_DOMAIN)
        assert code == 2
        assert result["reason"] == "no_address"
        assert "NXDOMAIN" in result["error"]

    def test_expected_set_names_missing_and_unexpected_exchanges(self, dns_server: NsdServer) -> None:
        code, result = self.mx(
            dns_server, zone.GOOD_DOMAIN, "--expect", zone.GOOD_MX1.rstrip("."), "--expect", "mx9.good.test"
        )
        assert code == 2
        assert result["reason"] == "unexpected_mx"
        assert result["missing"] == ["mx9.good.test"]
        assert result["unexpected"] == [zone.GOOD_MX2.rstrip(".")]

    def test_unreachable_nameserver_times_out(self, tarpit: int) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
            silent.bind(("127.0.0.1", 0))  # bound, never answers
            port = silent.getsockname()[1]
            proc = cli("mx", "good.test", "--nameserver", f"127.0.0.1:{port}", "--timeout", "1s", "--json")
        assert proc.returncode == 2
        assert json.loads(proc.stdout)["reason"] == "timeout"


class TestMxDepthAgainstNsd:
    def mx(self, dns_server: NsdServer, domain: str, *extra: str) -> tuple[int, dict[str, Any]]:
        proc = cli("mx", domain.rstrip("."), "--nameserver", f"{dns_server.host}:{dns_server.port}", "--json", *extra)
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc.returncode, json.loads(proc.stdout)

    def test_authoritative_answer_is_reported_unauthenticated_and_require_fails(self, dns_server: NsdServer) -> None:
        code, result = self.mx(dns_server, zone.GOOD_DOMAIN)
        assert code == 0
        assert result["authenticated"] is False  # an authoritative server never sets AD
        code, result = self.mx(dns_server, zone.GOOD_DOMAIN, "--dnssec", "require")
        assert code == 2
        assert (result["phase"], result["reason"]) == ("mx", "dnssec")

    def test_reverse_dns_reports_each_address_and_require_names_the_unconfirmed(self, dns_server: NsdServer) -> None:
        code, result = self.mx(dns_server, zone.GOOD_DOMAIN, "--reverse-dns", "report")
        assert code == 0
        reverse = {r["address"]: r for record in result["mx"] for r in record["reverse"]}
        assert reverse["127.0.0.1"]["confirmed"] is True
        assert reverse["127.0.0.1"]["names"] == [zone.GOOD_MX1.rstrip(".")]
        assert reverse["::1"]["confirmed"] is False
        code, result = self.mx(dns_server, zone.GOOD_DOMAIN, "--reverse-dns", "require")
        assert code == 2
        assert result["reason"] == "reverse_dns"
        assert "::1" in result["error"]

    def test_valid_spf_and_dmarc_pass(self, dns_server: NsdServer) -> None:
        code, result = self.mx(dns_server, zone.GOOD_DOMAIN, "--spf", "--dmarc")
        assert code == 0, result
        assert result["spf"] == {"record": zone.SPF_GOOD, "valid": True, "problem": ""}
        assert result["dmarc"]["valid"] is True

    def test_malformed_spf_and_dmarc_fail_with_the_problem(self, dns_server: NsdServer) -> None:
        code, result = self.mx(dns_server, zone.BADPOLICY_DOMAIN, "--spf", "--dmarc")
        assert code == 2
        assert (result["phase"], result["reason"]) == ("policy", "policy_record")
        assert "300.1.2.3" in result["spf"]["problem"]
        assert "p=" in result["dmarc"]["problem"]

    def test_missing_spf_fails(self, dns_server: NsdServer) -> None:
        code, result = self.mx(dns_server, zone.IMPLICIT_DOMAIN, "--spf")
        assert code == 2
        assert "no SPF record" in result["spf"]["problem"]

    def test_every_address_of_every_exchange_is_probed_and_reported(
        self,
        dns_server: NsdServer,
        postfix: PostfixServer,
    ) -> None:
        code, result = self.mx(
            dns_server,
            zone.GOOD_DOMAIN,
            "--probe-all-addresses",
            "--port",
            str(postfix.plain_port),
            "--tls",
            "none",
        )
        assert code == 0, result
        mx2 = result["mx"][1]
        probed = {p["address"]: p["status"] for p in mx2["address_probes"]}
        # Postfix listens on 127.0.0.1 only: ::1 fails, reported one by one while the check is ok
        assert probed == {"127.0.0.1": "ok", "::1": "failed"}
        assert mx2["up"] is True


class TestEveryAddressOfAHost:
    def test_both_families_probe_each_address_and_name_the_failing_one(
        self,
        dns_server: NsdServer,
        postfix: PostfixServer,
    ) -> None:
        # mx2.good.test has 127.0.0.1 and ::1; Postfix listens on 127.0.0.1 only
        code, result = probe_json(
            f"{zone.GOOD_MX2.rstrip('.')}:{postfix.plain_port}",
            "--tls",
            "none",
            "--address-family",
            "both",
            "--nameserver",
            f"{dns_server.host}:{dns_server.port}",
        )
        assert code == 2
        by_address = {r["address"]: r for r in result["addresses"]}
        assert by_address["127.0.0.1"]["status"] == "ok"
        assert (by_address["::1"]["status"], by_address["::1"]["phase"]) == ("failed", "connect")
        assert result["error"].startswith("::1: ")
        assert result["host"] == zone.GOOD_MX2.rstrip(".")
