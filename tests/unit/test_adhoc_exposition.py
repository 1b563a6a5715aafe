"""The metrics of one /probe result: the same samples a scheduled probe's first run gives, built without a store."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from monitor.config.schema import MxCheckConfig, SmtpProbeConfig
from monitor.exporters.prometheus.metrics import StoreCollector, single_result_registry
from monitor.model.probe_result import ProbeResult
from monitor.model.results import CertInfo, MxRecord, MxResult, Phase, Reason, Reply, SmtpResult, TlsInfo
from monitor.state.store import ProbeConfig, ResultsStore

NOW = 1_780_000_000.0
SMTP = SmtpProbeConfig(name="adhoc", host="mail.example", port=25, tls="starttls")
MX = MxCheckConfig(name="adhoc", domain="example.com")


def tls(expired: bool = False) -> TlsInfo:
    not_after = datetime(2020 if expired else 2035, 1, 1, tzinfo=UTC)
    cert = CertInfo(
        subject="CN=mail.example",
        issuer="CN=Test CA",
        sans=("DNS:mail.example",),
        not_before=datetime(2019, 1, 1, tzinfo=UTC),
        not_after=not_after,
        serial="1f",
        sha256="ab" * 32,
    )
    return TlsInfo(version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384", verified=not expired, cert=cert)


RESULTS: list[tuple[ProbeConfig, ProbeResult]] = [
    (
        SMTP,
        SmtpResult(
            host="mail.example",
            port=25,
            tls_mode="starttls",
            started_at=NOW - 1,
            ok=True,
            timings={"resolve": 0.001, "connect": 0.002, "tls": 0.02},
            total=0.05,
            tls=tls(),
        ),
    ),
    (
        SMTP,
        SmtpResult(
            host="mail.example",
            port=25,
            tls_mode="starttls",
            started_at=NOW - 1,
            ok=False,
            phase=Phase.RCPT,
            reason=Reason.REPLY,
            error="550 no",
            reply=Reply(550, ("no",)),
            timings={"resolve": 0.001},
            total=0.01,
        ),
    ),
    (
        SMTP,
        SmtpResult(
            host="mail.example",
            port=25,
            tls_mode="starttls",
            started_at=NOW - 1,
            ok=False,
            phase=Phase.TLS,
            reason=Reason.TLS_VERIFY,
            error="certificate verification failed",
            tls=tls(expired=True),
            total=0.02,
        ),
    ),
    (
        SMTP,
        SmtpResult(
            host="mail.example",
            port=25,
            tls_mode="starttls",
            started_at=NOW - 1,
            ok=False,
            error="internal error: KeyError: 'x'",
        ),
    ),  # neither phase nor reason
    (
        MX,
        MxResult(
            domain="example.com",
            started_at=NOW - 1,
            ok=True,
            records=(MxRecord(10, "mx1.example.com", ("192.0.2.1",)),),
            timings={"mx": 0.004},
            total=0.01,
        ),
    ),
    (
        MX,
        MxResult(
            domain="example.com",
            started_at=NOW - 1,
            ok=False,
            phase=Phase.MX,
            reason=Reason.NXDOMAIN,
            error="example.com: no such domain (NXDOMAIN)",
            total=0.01,
        ),
    ),
]


def via_store(probe: ProbeConfig, result: ProbeResult) -> bytes:
    """What /probe answered when it recorded the result in a store of its own."""
    store = ResultsStore(announce=False)
    store.configure([(probe, 1, 0)])
    store.record(probe.name, result)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store, None))
    return generate_latest(registry)


@pytest.mark.parametrize(("probe", "result"), RESULTS)
def test_the_samples_are_those_of_a_first_run_in_the_store(
    probe: ProbeConfig, result: ProbeResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(time, "time", lambda: NOW)
    assert generate_latest(single_result_registry(probe, result)).decode() == via_store(probe, result).decode()


def test_no_store_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a ResultsStore was built for one ad-hoc result")

    monkeypatch.setattr(ResultsStore, "__init__", refuse)
    probe, result = RESULTS[1]
    text = generate_latest(single_result_registry(probe, result)).decode()
    assert 'smtp_probe_failures_total{phase="rcpt",probe="adhoc",reason="reply"} 1.0' in text
