"""monitor.state.store: status transitions, counters, reconfiguration, snapshots and the events they publish."""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime, timedelta

import pytest

from monitor.config.schema import MxCheckConfig, SmtpProbeConfig
from monitor.model.results import CertInfo, MxResult, Phase, Reason, SmtpResult, Status, TlsInfo
from monitor.state.store import ProbeConfig, ResultsStore, StoreEvent


def smtp_config(name: str = "a", host: str = "mail.example", port: int = 25) -> SmtpProbeConfig:
    return SmtpProbeConfig(name=name, host=host, port=port)


def mx_config(name: str = "m", domain: str = "example.com") -> MxCheckConfig:
    return MxCheckConfig(name=name, domain=domain)


def ok(tls: TlsInfo | None = None) -> SmtpResult:
    return SmtpResult(
        host="mail.example", port=25, tls_mode="starttls", started_at=time.time(), ok=True, total=0.05, tls=tls
    )


def failed(phase: Phase = Phase.CONNECT, reason: Reason = Reason.REFUSED) -> SmtpResult:
    return SmtpResult(
        host="mail.example",
        port=25,
        tls_mode="starttls",
        started_at=time.time(),
        ok=False,
        phase=phase,
        reason=reason,
        error=f"{reason.value} in {phase.value}",
    )


def tls_expiring_in(days: float, fingerprint: str = "aa" * 32, chain_days: float | None = None) -> TlsInfo:
    now = datetime.now(UTC)
    cert = CertInfo(
        subject="CN=mail.example",
        issuer="CN=Test CA",
        sans=("DNS:mail.example",),
        not_before=now - timedelta(days=30),
        not_after=now + timedelta(days=days),
        serial="1f",
        sha256=fingerprint,
    )
    chain = now + timedelta(days=chain_days) if chain_days is not None else None
    return TlsInfo(version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384", verified=True, cert=cert, chain_not_after=chain)


def store_with(
    *configs: ProbeConfig, alert_after: int = 2, warn_days: int = 14
) -> tuple[ResultsStore, list[StoreEvent]]:
    """A store with these probes and a list that collects every published event."""
    store = ResultsStore()
    store.configure([(cfg, alert_after, warn_days) for cfg in configs])
    events: list[StoreEvent] = []
    store.subscribe(events.append)
    return store, events


class TestStatusTransitions:
    def test_unknown_becomes_failed_only_after_alert_after_failures(self) -> None:
        store, events = store_with(smtp_config(), alert_after=3)
        assert store.record("a", failed()) == []
        assert store.record("a", failed()) == []
        assert store.snapshot().states["a"].status is Status.UNKNOWN
        assert events == []
        published = store.record("a", failed())
        assert [(e.kind, e.old, e.new) for e in published] == [("failed", Status.UNKNOWN, Status.FAILED)]
        assert events == published
        state = store.snapshot().states["a"]
        assert state.status is Status.FAILED
        assert state.consecutive_failures == 3
        assert published[0].state == state
        assert published[0].probe_kind == "smtp"

    def test_failed_recovers_on_first_success(self) -> None:
        store, events = store_with(smtp_config(), alert_after=1)
        store.record("a", failed())
        published = store.record("a", ok())
        assert [(e.kind, e.old, e.new) for e in published] == [("recovered", Status.FAILED, Status.OK)]
        assert [e.kind for e in events] == ["failed", "recovered"]
        assert store.snapshot().states["a"].consecutive_failures == 0

    def test_unknown_to_ok_is_a_change_without_an_event(self) -> None:
        store, events = store_with(smtp_config())
        assert store.record("a", ok()) == []
        state = store.snapshot().states["a"]
        assert state.status is Status.OK
        assert state.last_change is not None
        assert events == []

    def test_ok_becomes_failed_after_alert_after_failures(self) -> None:
        store, events = store_with(smtp_config(), alert_after=2)
        store.record("a", ok())
        assert store.record("a", failed()) == []
        assert store.snapshot().states["a"].status is Status.OK  # one failure is not an outage
        published = store.record("a", failed())
        assert [(e.kind, e.old, e.new) for e in published] == [("failed", Status.OK, Status.FAILED)]
        assert events == published

    def test_no_event_while_failing_below_alert_after(self) -> None:
        store, events = store_with(smtp_config(), alert_after=3)
        store.record("a", ok())
        for _ in range(5):
            store.record("a", failed())
            store.record("a", failed())
            store.record("a", ok())  # never three in a row
        assert events == []
        assert store.snapshot().states["a"].status is Status.OK

    def test_failing_on_is_one_event_not_one_per_run(self) -> None:
        store, events = store_with(smtp_config(), alert_after=1)
        for _ in range(4):
            store.record("a", failed())
        assert [e.kind for e in events] == ["failed"]

    def test_mx_checks_follow_the_same_rules(self) -> None:
        store, events = store_with(mx_config(), alert_after=1)
        result = MxResult(
            domain="example.com",
            started_at=time.time(),
            ok=False,
            phase=Phase.MX,
            reason=Reason.NXDOMAIN,
            error="nxdomain",
        )
        store.record("m", result)
        assert [(e.kind, e.probe_kind) for e in events] == [("failed", "mx")]
        assert store.snapshot().states["m"].failures_by_cause == {("mx", "nxdomain"): 1}


class TestCounters:
    def test_runs_failures_and_failures_by_cause(self) -> None:
        store, _ = store_with(smtp_config())
        store.record("a", failed(Phase.CONNECT, Reason.REFUSED))
        store.record("a", ok())
        store.record("a", failed(Phase.BANNER, Reason.TIMEOUT))
        store.record("a", failed(Phase.CONNECT, Reason.REFUSED))
        state = store.snapshot().states["a"]
        assert state.runs == 4
        assert state.failures == 3
        assert state.consecutive_failures == 2
        assert dict(state.failures_by_cause) == {("connect", "refused"): 2, ("banner", "timeout"): 1}

    def test_failure_without_phase_or_reason_counts_as_internal(self) -> None:
        store, _ = store_with(smtp_config())
        bare = SmtpResult(host="mail.example", port=25, tls_mode="none", started_at=0.0, ok=False)
        store.record("a", bare)
        assert store.snapshot().states["a"].failures_by_cause == {("internal", "internal"): 1}

    def test_last_success_moves_on_success_only(self) -> None:
        store, _ = store_with(smtp_config())
        assert store.snapshot().states["a"].last_success is None
        before = time.time()
        store.record("a", ok())
        first = store.snapshot().states["a"].last_success
        assert first is not None
        assert before <= first <= time.time()
        store.record("a", failed())
        assert store.snapshot().states["a"].last_success == first

    def test_last_change_moves_on_status_change_only(self) -> None:
        store, _ = store_with(smtp_config(), alert_after=1)
        assert store.snapshot().states["a"].last_change is None
        store.record("a", ok())
        became_ok = store.snapshot().states["a"].last_change
        assert became_ok is not None
        store.record("a", ok())
        assert store.snapshot().states["a"].last_change == became_ok
        time.sleep(0.01)
        store.record("a", failed())
        became_failed = store.snapshot().states["a"].last_change
        assert became_failed is not None
        assert became_failed > became_ok
        store.record("a", failed())
        assert store.snapshot().states["a"].last_change == became_failed

    def test_last_result_is_the_latest(self) -> None:
        store, _ = store_with(smtp_config())
        result = failed(Phase.TLS, Reason.TLS)
        store.record("a", ok())
        store.record("a", result)
        assert store.snapshot().states["a"].last_result == result


class TestRestore:
    def test_states_built_on_the_current_config_are_taken_others_left_alone(self) -> None:
        store, _ = store_with(smtp_config("a"), smtp_config("b"))
        current = store.snapshot().states
        saved_a = dataclasses.replace(current["a"], runs=7, status=Status.FAILED)
        # an equal config, but not the probe's own: built before a reload, it must not be taken
        saved_b = dataclasses.replace(current["b"], config=smtp_config("b"), runs=9)
        orphan = dataclasses.replace(current["a"], name="gone", runs=3)

        assert store.restore([saved_a, saved_b, orphan]) == 1
        states = store.snapshot().states
        assert (states["a"].runs, states["a"].status) == (7, Status.FAILED)
        assert states["b"].runs == 0
        assert "gone" not in states

    def test_a_taken_state_gets_the_current_thresholds(self) -> None:
        store, _ = store_with(smtp_config("a"), alert_after=3, warn_days=21)
        saved = dataclasses.replace(store.snapshot().states["a"], alert_after=1, cert_warn_days=7, runs=4)

        assert store.restore([saved]) == 1
        state = store.snapshot().states["a"]
        assert (state.runs, state.alert_after, state.cert_warn_days) == (4, 3, 21)


class TestConfigure:
    def test_first_configure_adds_everything(self) -> None:
        store = ResultsStore()
        added, removed = store.configure([(smtp_config("a"), 2, 14), (mx_config("m"), 2, 14)])
        assert (sorted(added), removed) == (["a", "m"], [])
        snap = store.snapshot()
        assert {n: (s.kind, s.status) for n, s in snap.states.items()} == {
            "a": ("smtp", Status.UNKNOWN),
            "m": ("mx", Status.UNKNOWN),
        }

    def test_unchanged_probes_keep_state_changed_reset_removed_dropped(self) -> None:
        store, _ = store_with(smtp_config("keep"), smtp_config("change"), smtp_config("drop"), alert_after=1)
        for name in ("keep", "change", "drop"):
            store.record(name, failed())
        added, removed = store.configure(
            [
                (smtp_config("keep"), 5, 7),
                (smtp_config("change", port=587), 1, 14),
                (mx_config("new"), 1, 14),
            ]
        )
        assert (sorted(added), removed) == (["change", "new"], ["drop"])
        states = store.snapshot().states
        assert set(states) == {"keep", "change", "new"}
        keep = states["keep"]
        assert (keep.status, keep.runs, keep.failures) == (Status.FAILED, 1, 1)
        assert (keep.alert_after, keep.cert_warn_days) == (5, 7)  # thresholds follow the config
        change = states["change"]
        assert (change.status, change.runs, change.last_result) == (Status.UNKNOWN, 0, None)
        assert change.config == smtp_config("change", port=587)

    def test_same_config_again_changes_nothing(self) -> None:
        store, _ = store_with(smtp_config("a"))
        store.record("a", ok())
        assert store.configure([(smtp_config("a"), 2, 14)]) == ([], [])
        assert store.snapshot().states["a"].runs == 1

    def test_result_for_a_removed_probe_is_ignored(self) -> None:
        store, events = store_with(smtp_config("a"), smtp_config("b"), alert_after=1)
        store.configure([(smtp_config("b"), 1, 14)])
        version = store.version
        assert store.record("a", failed()) == []
        assert "a" not in store.snapshot().states
        assert store.version == version
        assert events == []


class TestSnapshots:
    def test_snapshot_cannot_be_changed(self) -> None:
        store, _ = store_with(smtp_config())
        snap = store.snapshot()
        with pytest.raises(TypeError):
            snap.states["x"] = snap.states["a"]  # type: ignore[index]  # the point: a read-only mapping
        with pytest.raises(dataclasses.FrozenInstanceError):
            snap.states["a"].runs = 9  # type: ignore[misc]  # the point: a frozen dataclass
        with pytest.raises(dataclasses.FrozenInstanceError):
            snap.version = 0  # type: ignore[misc]  # as above

    def test_old_snapshot_is_unchanged_by_later_writes(self) -> None:
        store, _ = store_with(smtp_config(), alert_after=1)
        store.record("a", failed(Phase.CONNECT, Reason.REFUSED))
        old = store.snapshot()
        old_state = old.states["a"]
        store.record("a", failed(Phase.BANNER, Reason.TIMEOUT))
        store.record("a", ok())
        store.configure([(mx_config("m"), 1, 14)])
        assert old.states["a"] is old_state
        assert (old_state.runs, old_state.status) == (1, Status.FAILED)
        assert dict(old_state.failures_by_cause) == {("connect", "refused"): 1}
        assert set(old.states) == {"a"}
        new = store.snapshot()
        assert new.version > old.version
        assert set(new.states) == {"m"}

    def test_same_object_until_something_changes(self) -> None:
        store, _ = store_with(smtp_config())
        first = store.snapshot()
        assert store.snapshot() is first
        store.record("a", ok())
        second = store.snapshot()
        assert second is not first
        assert second.version == store.version
        assert store.snapshot() is second

    def test_of_kind_separates_smtp_and_mx(self) -> None:
        store, _ = store_with(smtp_config("a"), mx_config("m"))
        snap = store.snapshot()
        assert [s.name for s in snap.of_kind("smtp")] == ["a"]
        assert [s.name for s in snap.of_kind("mx")] == ["m"]


class TestSubscribers:
    def test_failing_subscriber_breaks_neither_recording_nor_other_subscribers(self) -> None:
        store = ResultsStore()
        store.configure([(smtp_config(), 1, 14)])
        seen: list[str] = []

        def broken(event: StoreEvent) -> None:
            raise RuntimeError("subscriber bug")

        store.subscribe(broken)
        store.subscribe(lambda event: seen.append(event.kind))
        events = store.record("a", failed())
        assert [e.kind for e in events] == ["failed"]
        assert seen == ["failed"]
        assert store.snapshot().states["a"].status is Status.FAILED
        store.record("a", ok())
        assert seen == ["failed", "recovered"]


class TestCertificateExpiry:
    def test_expiring_certificate_warns_once_per_certificate(self) -> None:
        store, events = store_with(smtp_config(), warn_days=14)
        published = store.record("a", ok(tls_expiring_in(3)))
        assert [(e.kind, e.old, e.new) for e in published] == [("cert_expiring", Status.OK, Status.OK)]
        assert store.snapshot().states["a"].cert_warned_for == "aa" * 32
        assert store.record("a", ok(tls_expiring_in(3))) == []
        assert store.record("a", ok(tls_expiring_in(2.9))) == []
        assert [e.kind for e in events] == ["cert_expiring"]

    def test_new_expiring_certificate_warns_again(self) -> None:
        store, events = store_with(smtp_config(), warn_days=14)
        store.record("a", ok(tls_expiring_in(3, "aa" * 32)))
        store.record("a", ok(tls_expiring_in(5, "bb" * 32)))
        assert [e.kind for e in events] == ["cert_expiring", "cert_expiring"]

    def test_certificate_far_from_expiry_does_not_warn(self) -> None:
        store, events = store_with(smtp_config(), warn_days=14)
        store.record("a", ok(tls_expiring_in(90)))
        store.record("a", ok(tls_expiring_in(14.5)))
        assert events == []

    def test_renewed_then_expiring_again_warns_again(self) -> None:
        store, events = store_with(smtp_config(), warn_days=14)
        store.record("a", ok(tls_expiring_in(3)))
        store.record("a", ok(tls_expiring_in(90, "cc" * 32)))
        assert store.snapshot().states["a"].cert_warned_for == ""
        store.record("a", ok(tls_expiring_in(3)))
        assert [e.kind for e in events] == ["cert_expiring", "cert_expiring"]

    def test_chain_expiry_counts_before_leaf_expiry(self) -> None:
        store, events = store_with(smtp_config(), warn_days=14)
        store.record("a", ok(tls_expiring_in(90, chain_days=3)))
        assert [e.kind for e in events] == ["cert_expiring"]

    def test_warn_days_zero_never_warns_before_expiry(self) -> None:
        store, events = store_with(smtp_config(), warn_days=0)
        store.record("a", ok(tls_expiring_in(0.5)))
        assert events == []

    def test_status_change_and_cert_warning_in_one_result(self) -> None:
        store, events = store_with(smtp_config(), alert_after=1, warn_days=14)
        failing = dataclasses.replace(failed(Phase.TLS, Reason.TLS_VERIFY), tls=tls_expiring_in(3))
        published = store.record("a", failing)
        assert [e.kind for e in published] == ["failed", "cert_expiring"]
        assert events == published
