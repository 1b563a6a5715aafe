"""monitor.state.shared_facts: equal facts of unpickled results held once, results unchanged, the pool bounded."""

from __future__ import annotations

import pickle
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from monitor.config.schema import SmtpProbeConfig
from monitor.model.delivery import DeliveryResult
from monitor.model.results import CertInfo, MxRecord, MxResult, SmtpResult, TlsInfo
from monitor.model.transcript import TranscriptRecorder
from monitor.state.shared_facts import SharedFacts
from monitor.state.store import ResultsStore


def tls_info(chain: tuple[bytes, ...] = ()) -> TlsInfo:
    now = datetime(2026, 11, 1, tzinfo=UTC)
    cert = CertInfo(
        subject="CN=mail.example", issuer="CN=Test CA", sans=("DNS:mail.example",),
        not_before=now, not_after=now + timedelta(days=90), serial="1f", sha256="ab" * 32,
    )  # fmt: skip
    return TlsInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", True, cert=cert, chain_not_after=now, chain_der=chain)


def starttls_result(address: str = "192.0.2.25", chain: tuple[bytes, ...] = ()) -> SmtpResult:
    """As the agent gets it from the probe process: unpickled, so every fact is a copy of its own."""
    result = SmtpResult(
        "mail.example", 25, "starttls", time.time(), ok=True, address=address,
        timings={"connect": 0.001, "banner": 0.002}, total=0.01, banner="mail.example ESMTP",
        extensions={"PIPELINING": "", "SIZE": "10240000", "STARTTLS": ""}, tls=tls_info(chain),
        timing_source={"connect": "kernel", "banner": "kernel"},
    )  # fmt: skip
    copy: SmtpResult = pickle.loads(pickle.dumps(result))  # noqa: S301 - our own bytes
    return copy


class TestSharedFacts:
    def test_results_of_one_server_share_tls_extensions_timing_sources_and_strings(self) -> None:
        facts = SharedFacts()
        first, second = facts.smtp(starttls_result()), facts.smtp(starttls_result())

        assert first.tls is second.tls
        assert first.extensions is second.extensions
        assert first.timing_source is second.timing_source
        assert first.banner is second.banner
        assert first.address is second.address
        assert first.timings is not second.timings  # a run's own measurements stay its own

    def test_transcripts_of_one_server_share_their_lines_and_keep_their_own_times(self) -> None:
        def dialogue() -> SmtpResult:
            recorder = TranscriptRecorder()
            recorder.received("220 mail.example ESMTP")
            recorder.sent("EHLO probe.example")
            recorder.received("250 mail.example")
            result = replace(starttls_result(), transcript=recorder.transcript())
            copy: SmtpResult = pickle.loads(pickle.dumps(result))  # noqa: S301 - our own bytes
            return copy

        facts = SharedFacts()
        one, other = dialogue(), dialogue()
        first, second = facts.smtp(one), facts.smtp(other)

        assert first == one
        assert second == other
        assert first.transcript is not None
        assert second.transcript is not None
        assert first.transcript._texts is second.transcript._texts
        assert first.transcript._at is not second.transcript._at  # the times are each run's own
        delivered = DeliveryResult("probe", time.time(), ok=True, transcript=other.transcript)
        assert facts.result(delivered) == delivered
        shared_result = facts.result(delivered)
        assert isinstance(shared_result, DeliveryResult)
        shared = shared_result.transcript
        assert shared is not None
        assert shared._texts is first.transcript._texts

    def test_a_shared_result_equals_the_result_it_came_from(self) -> None:
        result = starttls_result()
        assert SharedFacts().smtp(result) == result

    def test_tls_facts_with_different_chains_are_never_merged(self) -> None:
        # TlsInfo equality ignores the chain kept for DANE: merging would swap one server's chain for another's
        facts = SharedFacts()
        first = facts.smtp(starttls_result(chain=(b"chain one",)))
        second = facts.smtp(starttls_result(chain=(b"chain two",)))

        assert first.tls is not None
        assert second.tls is not None
        assert (first.tls.chain_der, second.tls.chain_der) == ((b"chain one",), (b"chain two",))

    def test_the_probes_of_an_mx_check_share_facts_too(self) -> None:
        facts = SharedFacts()
        records = tuple(
            MxRecord(10, f"mx{i}.example", ("192.0.2.25",), probe=starttls_result(),
                     address_probes=(starttls_result(),))
            for i in (1, 2)
        )  # fmt: skip
        result = facts.result(MxResult("example", time.time(), ok=True, records=records))

        assert isinstance(result, MxResult)
        probes = [p for r in result.records for p in (r.probe, *r.address_probes) if p is not None]
        assert len(probes) == 4
        assert all(p.tls is probes[0].tls for p in probes)

    def test_the_pool_starts_afresh_past_its_limit(self) -> None:
        facts = SharedFacts(limit=2)
        for size in range(5):
            facts.smtp(SmtpResult("h", 25, "none", 0.0, ok=True, extensions={"SIZE": str(size)}))
        assert len(facts) <= 2


class TestStoreSharing:
    def test_two_probes_of_one_server_hold_one_copy_of_its_tls_facts(self) -> None:
        store = ResultsStore(announce=False)
        store.configure([(SmtpProbeConfig(name=n, host="mail.example", port=25), 2, 14) for n in ("a", "b")])
        store.record("a", starttls_result())
        store.record("b", starttls_result())

        states = store.snapshot().states
        assert states["a"].last_tls is states["b"].last_tls is not None
        a, b = states["a"].last_result, states["b"].last_result
        assert isinstance(a, SmtpResult)
        assert isinstance(b, SmtpResult)
        assert a.extensions is b.extensions
