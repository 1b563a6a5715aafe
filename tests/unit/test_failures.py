"""monitor.model.failures: the failure kinds and the one classification of what a probe step raises."""

from __future__ import annotations

import errno
import ssl

import pytest

from monitor.model.failures import (
    LookupFailure,
    ProbeFailure,
    ReplyFailure,
    SessionFailure,
    WireFailure,
    classify,
)
from monitor.model.results import Phase, Reason, Reply


class TestClassify:
    @pytest.mark.parametrize(
        ("exc", "reason", "message"),
        [
            (TimeoutError(), Reason.TIMEOUT, "no answer within 2.5s"),
            (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), Reason.REFUSED, "connection refused"),
            (ConnectionResetError(errno.ECONNRESET, "Connection reset"), Reason.RESET, "connection reset by server"),
            (OSError(errno.ENETUNREACH, "Network is unreachable"), Reason.UNREACHABLE, "Network is unreachable"),
            (OSError(errno.EHOSTUNREACH, "No route to host"), Reason.UNREACHABLE, "No route to host"),
            (
                OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address"),
                Reason.UNREACHABLE,
                "Cannot assign requested address",
            ),
            (OSError(errno.ENETDOWN, "Network is down"), Reason.UNREACHABLE, "Network is down"),
            (OSError(errno.EPIPE, "Broken pipe"), Reason.RESET, "Broken pipe"),
            (OSError("no matching local address"), Reason.RESET, "no matching local address"),
        ],
    )
    def test_what_a_step_raises_becomes_a_reason_and_a_message(
        self, exc: OSError, reason: Reason, message: str
    ) -> None:
        failure = classify(exc, 2.5)
        assert failure.reason is reason
        assert failure.message.startswith(message)
        assert (failure.phase, failure.reply) == (None, None)  # the phase is the probe's own

    def test_an_ssl_error_is_reported_by_its_reason(self) -> None:
        exc = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1000)")
        exc.reason = "WRONG_VERSION_NUMBER"
        assert classify(exc, 1.0).message == "TLS error: WRONG_VERSION_NUMBER"

    def test_an_ssl_error_without_a_reason_is_reported_by_its_text(self) -> None:
        # raised from Python code (not by OpenSSL) it has no `reason`: still a classified failure, no crash
        exc = ssl.SSLError(1, "handshake aborted")
        assert classify(exc, 1.0).message == "TLS error: handshake aborted"

    def test_a_certificate_error_is_a_tls_error_not_a_timeout_or_reset(self) -> None:
        exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
        exc.reason = "CERTIFICATE_VERIFY_FAILED"
        assert (classify(exc, 1.0).reason, classify(exc, 1.0).message) == (
            Reason.TLS,
            "TLS error: CERTIFICATE_VERIFY_FAILED",
        )

    def test_a_classified_failure_is_kept_as_it_is(self) -> None:
        failure = ProbeFailure(Reason.NULL_MX, "example.test has a null MX", phase=Phase.MX)
        assert classify(failure, 1.0) is failure


class TestKinds:
    def test_a_reply_failure_reports_the_reply(self) -> None:
        reply = Reply(554, ("5.7.1 go away",))
        failure = ReplyFailure(reply)
        assert isinstance(failure, SessionFailure)
        assert (failure.reason, failure.message, failure.reply) == (Reason.REPLY, "554 5.7.1 go away", reply)
        assert str(failure) == "554 5.7.1 go away"

    def test_a_wire_failure_quotes_the_server_and_keeps_the_bare_message(self) -> None:
        failure = WireFailure(Reason.PROTOCOL, "not an SMTP reply", "HTTP/1.1 400")
        assert failure.message == "not an SMTP reply: 'HTTP/1.1 400'"
        assert failure.bare == "not an SMTP reply"
        assert not isinstance(failure, SessionFailure)

    @pytest.mark.parametrize(
        ("reason", "seen"),
        [
            (Reason.TIMEOUT, Reason.TIMEOUT),
            (Reason.DNS, Reason.DNS),
            (Reason.NXDOMAIN, Reason.DNS),
            (Reason.NO_ADDRESS, Reason.DNS),
            (Reason.SERVFAIL, Reason.DNS),
        ],
    )
    def test_the_lookup_of_a_probes_own_target_is_a_timeout_or_dns(self, reason: Reason, seen: Reason) -> None:
        failure = LookupFailure(reason, "mx.example.test: no such domain (NXDOMAIN)", authenticated=True)
        dns_view = failure.as_dns()
        assert (dns_view.reason, dns_view.message) == (seen, "mx.example.test: no such domain (NXDOMAIN)")
        assert failure.authenticated is True
