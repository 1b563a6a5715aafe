"""SNMP surface of delivery probes: deliveryTable and deliveryHopTable rows from the store, and the
deliveryProbeFailed, deliveryProbeRecovered, deliveryLate and deliveryLost notifications' varbinds."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from pysnmp.proto import rfc1902

from monitor.config.schema import DeliveryProbeConfig, MxCheckConfig, SmtpProbeConfig
from monitor.exporters.snmp import mib_oids as mib
from monitor.exporters.snmp.mib_oids import DeliveryColumn, DeliveryHopColumn, Scalar
from monitor.exporters.snmp.mibview import (
    DELIVERY_HOP_TYPES,
    DELIVERY_TYPES,
    MibTable,
    MibView,
    date_and_time,
    delivery_row,
    row_values,
)
from monitor.exporters.snmp.notify import SNMP_TRAP_OID, SYS_UP_TIME, build_notification, from_payload, to_payload
from monitor.model.delivery import (
    AuthVerdict,
    DeliveryLedger,
    DeliveryPhase,
    DeliveryReason,
    DeliveryResult,
    EarlierMessage,
    Hop,
    PendingMessage,
)
from monitor.model.results import Phase, Reason, Reply, SmtpResult
from monitor.state.health import AgentHealth
from monitor.state.store import ProbeConfig, ResultsStore, StoreEvent

T0 = 1_800_000_000.0
PASSWORD = "mailbox-secret-9f2c"
SUBMIT_PASSWORD = "submit-secret-51ab"
NEVER = mib.DATE_AND_TIME_NEVER
# The columns a deliveryTable row serves, in delivery_row's order: all but the notification-only ones.
SERVED_COLUMNS = tuple(sorted(c for c in DELIVERY_TYPES if c not in mib.DELIVERY_EVENT_COLUMNS))
HOPS = (
    Hop("client.example", "msa.example", "ESMTPSA", "Q1", None, 0.0),
    Hop("msa.example", "mx.example.net", "ESMTPS", "Q2", None, 2.25),
    Hop("mx.example.net", "imap.example.net", "LMTP", "Q3", None, 1.0),
)
HELD_HOPS = (
    Hop("client.example", "msa.example", "ESMTPSA", "H1", None, 0.0),
    Hop("msa.example", "mx.example.net", "ESMTPS", "H2", None, 21.0),  # the MX was down: held at the MSA
)


def delivery_config(name: str = "loop", **overrides: Any) -> DeliveryProbeConfig:
    document: dict[str, Any] = {
        "name": name,
        "submit": {
            "host": "msa.example",
            "port": 587,
            "tls": "starttls",
            "auth": {"username": "probe", "password": SUBMIT_PASSWORD},
        },
        "from": "probe@example.org",
        "to": "probe@example.net",
        "mailbox": {"host": "imap.example.net", "username": "probe", "password": PASSWORD},
        "deliver_within": "60s",
        "lost_after": "1h",
    }
    return DeliveryProbeConfig.model_validate({**document, **overrides})


def on_time(latency: float = 1.5, **overrides: Any) -> DeliveryResult:
    result = DeliveryResult(
        name="loop",
        started_at=T0,
        ok=True,
        token="a" * 32,
        queue_id="4XyZq1Abc0z",
        submitted_to="msa.example:587",
        submitted_at=T0 + 0.1,
        arrived_at=T0 + 0.1 + latency,
        latency=latency,
        hops=HOPS,
        verdicts=(
            AuthVerdict("spf", "pass", "mx.example.net"),
            AuthVerdict("dkim", "pass", "mx.example.net"),
            AuthVerdict("dkim", "fail", "mx.example.net"),  # a second signature: the first counts
            AuthVerdict("dmarc", "fail", "mx.example.net"),
        ),
        folder="inbox",
        folder_name="INBOX",
        deleted=True,
        total=latency + 0.4,
    )
    return replace(result, **overrides)


def late_run(token: str = "b" * 32, submitted_at: float = T0 + 0.1, **overrides: Any) -> DeliveryResult:
    result = DeliveryResult(
        name="loop",
        started_at=T0,
        ok=False,
        phase=DeliveryPhase.DELIVER,
        reason=DeliveryReason.LATE,
        error="not in the mailbox within 60s of submission",
        token=token,
        queue_id="5LateQ",
        submitted_to="msa.example:587",
        submitted_at=submitted_at,
        pending=True,
        late=True,
        total=60.3,
    )
    return replace(result, **overrides)


def found_late(token: str = "b" * 32, submitted_at: float = T0 + 0.1, latency: float = 95.5) -> EarlierMessage:
    return EarlierMessage(token, submitted_at, "late", submitted_at + latency, latency, HELD_HOPS, True)


def submit_refused() -> DeliveryResult:
    return DeliveryResult(
        name="loop",
        started_at=T0,
        ok=False,
        phase=DeliveryPhase.SUBMIT,
        reason=Reason.AUTH_FAILED,
        error="535 5.7.8 Error: authentication failed",
        reply=Reply(535, ("5.7.8 Error: authentication failed",)),
        total=0.2,
    )


def store_of(*configs: ProbeConfig, alert_after: int = 1) -> ResultsStore:
    store = ResultsStore(announce=False)
    store.configure([(config, alert_after, 14) for config in configs])
    return store


def view_of(store: ResultsStore) -> MibView:
    return MibView(store, AgentHealth(), sys_name="monitor-host")


def cell(view: MibView | MibTable, column: DeliveryColumn, name: str = "loop") -> Any:
    value = view.get(mib.delivery_oid(column, name))
    assert value is not None, f"no instance of {column.name} for {name}"
    return value


def hop_cell(view: MibView, column: DeliveryHopColumn, hop: int, name: str = "loop") -> Any:
    value = view.get(mib.delivery_hop_oid(column, name, hop))
    assert value is not None, f"no instance of hop {hop} {column.name} for {name}"
    return value


def hop_numbers(view: MibView, name: str = "loop") -> list[int]:
    prefix = (*mib.DELIVERY_HOP_ENTRY, int(DeliveryHopColumn.BY), *mib.name_index(name))
    return [oid[-1] for oid, _ in view.current().items() if oid[: len(prefix)] == prefix]


def text(value: Any) -> str:
    return bytes(value).decode("utf-8")


# -- deliveryTable ------------------------------------------------------------------------------


class TestDeliveryRow:
    def test_before_the_first_run_nothing_is_known_and_nothing_reads_as_zero_latency(self) -> None:
        view = view_of(store_of(delivery_config()))
        assert text(cell(view, DeliveryColumn.NAME)) == "loop"
        assert text(cell(view, DeliveryColumn.RECIPIENT)) == "probe@example.net"
        assert int(cell(view, DeliveryColumn.STATUS)) == mib.STATUS_VALUES["unknown"]
        assert int(cell(view, DeliveryColumn.FAILED_PHASE)) == mib.PHASE_VALUES["none"]
        assert int(cell(view, DeliveryColumn.FAILED_REASON)) == mib.REASON_VALUES["none"]
        assert int(cell(view, DeliveryColumn.LATENCY)) == 0
        assert int(cell(view, DeliveryColumn.LATENCY_KNOWN)) == mib.TRUTH_VALUES[False]
        assert int(cell(view, DeliveryColumn.PENDING)) == 0
        assert int(cell(view, DeliveryColumn.LATE_COUNT)) == int(cell(view, DeliveryColumn.LOST_COUNT)) == 0
        assert bytes(cell(view, DeliveryColumn.LAST_SUCCESS)) == NEVER
        assert int(cell(view, DeliveryColumn.FOLDER)) == mib.DELIVERY_FOLDER_VALUES["unknown"]
        assert int(cell(view, DeliveryColumn.HOPS)) == 0
        assert int(cell(view, DeliveryColumn.HOPS_SOURCE)) == mib.HOPS_SOURCE_VALUES["none"]
        assert hop_numbers(view) == []

    def test_a_run_on_time_shows_latency_queue_id_verdicts_folder_and_hops(self) -> None:
        store = store_of(delivery_config())
        store.record("loop", on_time(latency=1.5))
        view = view_of(store)
        assert int(cell(view, DeliveryColumn.STATUS)) == mib.STATUS_VALUES["ok"]
        assert bytes(cell(view, DeliveryColumn.LAST_ERROR)) == b""
        assert int(cell(view, DeliveryColumn.LATENCY)) == 1500
        assert int(cell(view, DeliveryColumn.LATENCY_KNOWN)) == mib.TRUTH_VALUES[True]
        assert text(cell(view, DeliveryColumn.QUEUE_ID)) == "4XyZq1Abc0z"
        assert text(cell(view, DeliveryColumn.SUBMITTED_TO)) == "msa.example:587"
        assert text(cell(view, DeliveryColumn.SPF)) == "pass"
        assert text(cell(view, DeliveryColumn.DKIM)) == "pass"
        assert text(cell(view, DeliveryColumn.DMARC)) == "fail"
        assert int(cell(view, DeliveryColumn.FOLDER)) == mib.DELIVERY_FOLDER_VALUES["inbox"]
        assert text(cell(view, DeliveryColumn.FOLDER_NAME)) == "INBOX"
        assert int(cell(view, DeliveryColumn.RUNS)) == 1
        assert int(cell(view, DeliveryColumn.FAILURES)) == 0
        assert bytes(cell(view, DeliveryColumn.LAST_SUCCESS)) != NEVER
        assert int(cell(view, DeliveryColumn.HOPS)) == 3
        assert int(cell(view, DeliveryColumn.HOPS_SOURCE)) == mib.HOPS_SOURCE_VALUES["this_run"]

    def test_junk_placement(self) -> None:
        store = store_of(delivery_config())
        store.record("loop", on_time(folder="junk", folder_name="Junk"))
        view = view_of(store)
        assert int(cell(view, DeliveryColumn.FOLDER)) == mib.DELIVERY_FOLDER_VALUES["junk"]
        assert text(cell(view, DeliveryColumn.FOLDER_NAME)) == "Junk"

    def test_a_late_run_fails_in_deliver_as_late_and_leaves_one_pending_without_a_latency(self) -> None:
        store = store_of(delivery_config())
        store.record("loop", late_run())
        view = view_of(store)
        assert int(cell(view, DeliveryColumn.STATUS)) == mib.STATUS_VALUES["failed"]
        assert int(cell(view, DeliveryColumn.FAILED_PHASE)) == mib.PHASE_VALUES["deliver"] == 22
        assert int(cell(view, DeliveryColumn.FAILED_REASON)) == mib.REASON_VALUES["late"] == 32
        assert text(cell(view, DeliveryColumn.LAST_ERROR)) == "not in the mailbox within 60s of submission"
        assert int(cell(view, DeliveryColumn.PENDING)) == 1
        assert int(cell(view, DeliveryColumn.LATENCY_KNOWN)) == mib.TRUTH_VALUES[False]
        assert text(cell(view, DeliveryColumn.QUEUE_ID)) == "5LateQ"
        assert bytes(cell(view, DeliveryColumn.SPF)) == b""  # the message has not arrived
        assert int(cell(view, DeliveryColumn.FOLDER)) == mib.DELIVERY_FOLDER_VALUES["unknown"]
        assert int(cell(view, DeliveryColumn.HOPS_SOURCE)) == mib.HOPS_SOURCE_VALUES["none"]
        assert int(cell(view, DeliveryColumn.CONSECUTIVE_FAILURES)) == 1

    def test_the_late_message_found_later_counts_late_with_its_latency_and_shows_its_hops(self) -> None:
        store = store_of(delivery_config())
        store.record("loop", late_run())
        # The next run is late too, but finds the first message: its hops show where it was held.
        store.record("loop", late_run(token="c" * 32, submitted_at=T0 + 60, earlier=(found_late(latency=95.5),)))
        view = view_of(store)
        assert int(cell(view, DeliveryColumn.LATE_COUNT)) == 1
        assert int(cell(view, DeliveryColumn.PENDING)) == 1  # the second run's own message
        assert int(cell(view, DeliveryColumn.LATENCY)) == 95500
        assert int(cell(view, DeliveryColumn.LATENCY_KNOWN)) == mib.TRUTH_VALUES[True]
        assert int(cell(view, DeliveryColumn.HOPS_SOURCE)) == mib.HOPS_SOURCE_VALUES["late_message"]
        assert hop_numbers(view) == [1, 2]
        assert text(hop_cell(view, DeliveryHopColumn.QUEUE_ID, 2)) == "H2"
        assert int(hop_cell(view, DeliveryHopColumn.DELAY, 2)) == 21000

    def test_of_several_late_messages_the_most_recently_submitted_ones_hops_are_shown(self) -> None:
        older = replace(found_late("b" * 32, T0), hops=HOPS)
        newer = found_late("c" * 32, T0 + 60)
        store = store_of(delivery_config())
        store.record("loop", late_run(token="d" * 32, earlier=(newer, older)))
        view = view_of(store)
        assert [text(hop_cell(view, DeliveryHopColumn.QUEUE_ID, n)) for n in hop_numbers(view)] == ["H1", "H2"]

    def test_a_run_whose_own_message_arrived_shows_its_own_hops_not_the_late_ones(self) -> None:
        store = store_of(delivery_config())
        store.record("loop", late_run())
        store.record("loop", on_time(earlier=(found_late(),)))
        view = view_of(store)
        assert int(cell(view, DeliveryColumn.HOPS_SOURCE)) == mib.HOPS_SOURCE_VALUES["this_run"]
        assert [text(hop_cell(view, DeliveryHopColumn.QUEUE_ID, n)) for n in hop_numbers(view)] == ["Q1", "Q2", "Q3"]
        assert int(cell(view, DeliveryColumn.LATE_COUNT)) == 1
        # The ledger takes the run's own latency first, then the late one's: the latest arrival.
        assert int(cell(view, DeliveryColumn.LATENCY)) == 95500

    def test_lost_messages_count_and_leave_pending(self) -> None:
        store = store_of(delivery_config())
        store.record("loop", late_run())
        lost = EarlierMessage("b" * 32, T0 + 0.1, "lost")
        store.record("loop", on_time(earlier=(lost,)))
        view = view_of(store)
        assert int(cell(view, DeliveryColumn.LOST_COUNT)) == 1
        assert int(cell(view, DeliveryColumn.LATE_COUNT)) == 0
        assert int(cell(view, DeliveryColumn.PENDING)) == 0

    def test_a_refused_submission_names_submit_the_reason_and_the_reply_code(self) -> None:
        store = store_of(delivery_config())
        store.record("loop", submit_refused())
        view = view_of(store)
        assert int(cell(view, DeliveryColumn.FAILED_PHASE)) == mib.PHASE_VALUES["submit"]
        assert int(cell(view, DeliveryColumn.FAILED_REASON)) == mib.REASON_VALUES["auth_failed"]
        assert int(cell(view, DeliveryColumn.REPLY_CODE)) == 535
        assert bytes(cell(view, DeliveryColumn.QUEUE_ID)) == b""

    @pytest.mark.parametrize("phase", list(DeliveryPhase))
    def test_every_delivery_phase_has_its_own_mib_value(self, phase: DeliveryPhase) -> None:
        store = store_of(delivery_config())
        store.record("loop", replace(submit_refused(), phase=phase))
        assert int(cell(view_of(store), DeliveryColumn.FAILED_PHASE)) == mib.PHASE_VALUES[phase.value]

    @pytest.mark.parametrize("reason", list(DeliveryReason))
    def test_every_delivery_reason_has_its_own_mib_value(self, reason: DeliveryReason) -> None:
        store = store_of(delivery_config())
        store.record("loop", replace(late_run(), reason=reason))
        assert int(cell(view_of(store), DeliveryColumn.FAILED_REASON)) == mib.REASON_VALUES[reason.value]

    def test_late_and_lost_are_counter32_and_wrap_runs_are_counter64(self) -> None:
        store = store_of(delivery_config())
        store.record("loop", on_time())
        state = store.snapshot().states["loop"]
        wrapped = replace(state, delivery=DeliveryLedger(late=2**32 + 5, lost=2**32 - 1))
        cells = dict(zip(SERVED_COLUMNS, delivery_row(wrapped), strict=True))
        assert cells[DeliveryColumn.LATE_COUNT] == 5
        assert cells[DeliveryColumn.LOST_COUNT] == 2**32 - 1
        view = view_of(store)
        assert isinstance(cell(view, DeliveryColumn.LATE_COUNT), rfc1902.Counter32)
        assert isinstance(cell(view, DeliveryColumn.LOST_COUNT), rfc1902.Counter32)
        assert isinstance(cell(view, DeliveryColumn.RUNS), rfc1902.Counter64)
        assert isinstance(cell(view, DeliveryColumn.PENDING), rfc1902.Gauge32)
        assert isinstance(cell(view, DeliveryColumn.LATENCY), rfc1902.Unsigned32)

    def test_pending_counts_the_ledgers_messages(self) -> None:
        store = store_of(delivery_config())
        store.record("loop", on_time())
        state = store.snapshot().states["loop"]
        pending = tuple(PendingMessage(f"{n:032x}", T0 + n) for n in range(7))
        cells = delivery_row(replace(state, delivery=DeliveryLedger(pending=pending)))
        assert cells[SERVED_COLUMNS.index(DeliveryColumn.PENDING)] == 7

    def test_the_notification_only_columns_are_not_served(self) -> None:
        store = store_of(delivery_config())
        store.record("loop", on_time())
        table = view_of(store).current()
        for column in mib.DELIVERY_EVENT_COLUMNS:
            assert table.get(mib.delivery_oid(column, "loop")) is None
            assert not table.is_object(mib.delivery_oid(column, "loop"))
        columns = {
            oid[len(mib.DELIVERY_ENTRY)]
            for oid, _ in table.items()
            if oid[: len(mib.DELIVERY_ENTRY)] == mib.DELIVERY_ENTRY
        }
        assert columns == {int(c) for c in DELIVERY_TYPES} - {int(c) for c in mib.DELIVERY_EVENT_COLUMNS}


# -- deliveryHopTable ---------------------------------------------------------------------------


class TestDeliveryHops:
    def test_one_row_per_hop_in_travel_order_with_by_from_protocol_delay_and_queue_id(self) -> None:
        store = store_of(delivery_config())
        store.record("loop", on_time())
        view = view_of(store)
        assert hop_numbers(view) == [1, 2, 3]
        assert [text(hop_cell(view, DeliveryHopColumn.BY, n)) for n in (1, 2, 3)] == [
            "msa.example",
            "mx.example.net",
            "imap.example.net",
        ]
        assert text(hop_cell(view, DeliveryHopColumn.FROM, 1)) == "client.example"
        assert [text(hop_cell(view, DeliveryHopColumn.PROTOCOL, n)) for n in (1, 2, 3)] == ["ESMTPSA", "ESMTPS", "LMTP"]
        assert [int(hop_cell(view, DeliveryHopColumn.DELAY, n)) for n in (1, 2, 3)] == [0, 2250, 1000]
        assert int(hop_cell(view, DeliveryHopColumn.DELAY_KNOWN, 1)) == mib.TRUTH_VALUES[True]
        assert bytes(hop_cell(view, DeliveryHopColumn.TIME, 1)) == NEVER
        for column, syntax in DELIVERY_HOP_TYPES.items():
            assert isinstance(hop_cell(view, column, 2), syntax)

    @pytest.mark.parametrize(
        ("delay", "value", "known"),
        [
            pytest.param(None, 0, False, id="unknown"),
            pytest.param(-5.0, -5000, True, id="clock-behind"),
            pytest.param(float("nan"), 0, False, id="nan"),
            pytest.param(float("inf"), 0, False, id="inf"),
            pytest.param(1e12, 2**31 - 1, True, id="huge"),
            pytest.param(-1e12, -(2**31), True, id="huge-negative"),
        ],
    )
    def test_delay_known_unknown_and_bounded(self, delay: float | None, value: int, known: bool) -> None:
        store = store_of(delivery_config())
        store.record("loop", on_time(hops=(Hop("a", "b", "ESMTP", "", None, delay),)))
        view = view_of(store)
        assert int(hop_cell(view, DeliveryHopColumn.DELAY, 1)) == value
        assert int(hop_cell(view, DeliveryHopColumn.DELAY_KNOWN, 1)) == mib.TRUTH_VALUES[known]

    def test_the_header_time_is_a_date_and_time(self) -> None:
        when = datetime(2026, 12, 6, 21, 30, 5, tzinfo=UTC)
        store = store_of(delivery_config())
        store.record("loop", on_time(hops=(Hop("a", "b", "ESMTP", "", when, 0.0),)))
        assert bytes(hop_cell(view_of(store), DeliveryHopColumn.TIME, 1)) == date_and_time(when)

    def test_rows_follow_each_run_and_the_probes_walk_in_index_order(self) -> None:
        store = store_of(delivery_config("loop"), delivery_config("b"))
        store.record("loop", on_time())
        store.record("b", on_time(hops=HOPS[:1]))
        view = view_of(store)
        by_column = (*mib.DELIVERY_HOP_ENTRY, int(DeliveryHopColumn.BY))
        indexes = [oid[len(by_column) :] for oid, _ in view.current().items() if oid[: len(by_column)] == by_column]
        b, loop = mib.name_index("b"), mib.name_index("loop")
        assert indexes == [(*b, 1), (*loop, 1), (*loop, 2), (*loop, 3)]
        store.record("loop", late_run())  # no arrival, no late message found: the rows go
        assert hop_numbers(view) == []
        assert int(cell(view, DeliveryColumn.HOPS)) == 0
        assert hop_numbers(view, "b") == [1]


# -- bounded, admin-string safe text -----------------------------------------------------------


HOSTILE = "evil\x1b[31m\r\n\x00\u202e" + "\u00e9" * 300  # controls, a bidi override, then 600 octets


def safe(value: Any) -> None:
    octets = bytes(value)
    assert len(octets) <= 255
    decoded = octets.decode("utf-8")  # valid UTF-8, cut on a character boundary
    assert decoded.isprintable(), repr(decoded[:40])


class TestServerText:
    def test_hostile_hop_hosts_protocol_and_queue_id_are_bounded_printable_utf8(self) -> None:
        store = store_of(delivery_config())
        store.record("loop", on_time(hops=(Hop(HOSTILE, HOSTILE, HOSTILE, HOSTILE, None, 1.0),)))
        view = view_of(store)
        for column in (DeliveryHopColumn.BY, DeliveryHopColumn.FROM, DeliveryHopColumn.PROTOCOL):
            safe(hop_cell(view, column, 1))
        assert text(hop_cell(view, DeliveryHopColumn.BY, 1)).startswith("evil [31m")
        safe(hop_cell(view, DeliveryHopColumn.QUEUE_ID, 1))

    def test_hostile_error_verdicts_folder_and_queue_id_are_bounded_printable_utf8(self) -> None:
        store = store_of(delivery_config())
        hostile = replace(
            late_run(),
            error=HOSTILE,
            queue_id=HOSTILE,
            submitted_to=HOSTILE,
            folder_name=HOSTILE,
            folder="spam\nfolder",  # not one the MIB knows: unknown
            verdicts=(AuthVerdict("spf", HOSTILE, "x"), AuthVerdict("dkim", HOSTILE, "x")),
        )
        store.record("loop", hostile)
        view = view_of(store)
        for column in (
            DeliveryColumn.LAST_ERROR,
            DeliveryColumn.QUEUE_ID,
            DeliveryColumn.SUBMITTED_TO,
            DeliveryColumn.FOLDER_NAME,
            DeliveryColumn.SPF,
            DeliveryColumn.DKIM,
        ):
            safe(cell(view, column))
        assert int(cell(view, DeliveryColumn.FOLDER)) == mib.DELIVERY_FOLDER_VALUES["unknown"]

    def test_no_password_in_any_served_value(self) -> None:
        store = store_of(delivery_config(), delivery_config("second"))
        store.record("loop", on_time())
        store.record("second", submit_refused())
        for _, value in view_of(store).current().items():
            if isinstance(value, rfc1902.OctetString):
                assert PASSWORD.encode() not in bytes(value)
                assert SUBMIT_PASSWORD.encode() not in bytes(value)


# -- the scalars and the other tables ------------------------------------------------------------


class TestWithOtherKinds:
    def test_delivery_probes_have_their_own_counts_and_leave_the_mx_counts_alone(self) -> None:
        store = store_of(
            SmtpProbeConfig(name="s", host="mail.example"),
            MxCheckConfig(name="m", domain="example.com"),
            delivery_config("loop"),
            delivery_config("other"),
        )
        store.record("loop", late_run())
        store.record("other", on_time())
        view = view_of(store)

        def scalar(which: Scalar) -> int:
            value = view.get(mib.scalar_oid(which))
            assert value is not None
            return int(value)

        assert scalar(Scalar.PROBE_COUNT) == 1
        assert scalar(Scalar.MX_CHECK_COUNT) == 1
        assert scalar(Scalar.MX_CHECKS_FAILED) == 0
        assert scalar(Scalar.DELIVERY_COUNT) == 2
        assert scalar(Scalar.DELIVERIES_FAILED) == 1
        store.record("loop", on_time())
        assert scalar(Scalar.DELIVERIES_FAILED) == 0
        store.configure([(delivery_config("other"), 1, 14)])  # a reload removes the rest
        assert scalar(Scalar.DELIVERY_COUNT) == 1
        assert view.get(mib.delivery_oid(DeliveryColumn.NAME, "loop")) is None

    def test_a_full_walk_is_strictly_increasing(self) -> None:
        store = store_of(SmtpProbeConfig(name="s", host="mail.example"), delivery_config("loop"))
        store.record("loop", on_time())
        oids = [oid for oid, _ in view_of(store).current().items()]
        assert oids == sorted(set(oids))
        assert any(oid[: len(mib.DELIVERY_HOP_ENTRY)] == mib.DELIVERY_HOP_ENTRY for oid in oids)


# -- notifications -------------------------------------------------------------------------------


def events_of(store: ResultsStore) -> list[StoreEvent]:
    seen: list[StoreEvent] = []
    store.subscribe(seen.append)
    return seen


def announcing_store(alert_after: int = 1) -> tuple[ResultsStore, list[StoreEvent]]:
    store = ResultsStore()
    store.configure([(delivery_config(), alert_after, 14)])
    return store, events_of(store)


def varbind_map(event: StoreEvent) -> tuple[mib.Notification, dict[tuple[int, ...], Any]]:
    notification = build_notification(event, T0 - 100)
    assert notification is not None
    oids = [oid for oid, _ in notification.varbinds]
    assert oids[:2] == [SYS_UP_TIME, SNMP_TRAP_OID]
    trap_oid = tuple(notification.varbinds[1][1])
    which = mib.Notification(trap_oid[-1])
    assert trap_oid == mib.notification_oid(which)
    expected = []
    for column in mib.NOTIFICATION_OBJECTS[which]:
        assert isinstance(column, DeliveryColumn)  # a delivery probe's notification carries its own columns
        expected.append(mib.delivery_oid(column, event.name))
    assert oids[2:] == expected  # the MIB's OBJECTS order
    return which, dict(notification.varbinds[2:])


def vb(values: dict[tuple[int, ...], Any], column: DeliveryColumn) -> Any:
    return values[mib.delivery_oid(column, "loop")]


class TestNotifications:
    def test_failed_carries_phase_reason_error_reply_code_pending_and_failures_in_a_row(self) -> None:
        store, events = announcing_store(alert_after=2)
        store.record("loop", late_run())
        store.record("loop", submit_refused())
        (failed,) = [e for e in events if e.kind == "failed"]
        which, values = varbind_map(failed)
        assert which is mib.Notification.DELIVERY_PROBE_FAILED
        assert label_of(failed) == "deliveryProbeFailed"
        assert bytes(vb(values, DeliveryColumn.NAME)) == b"loop"
        assert bytes(vb(values, DeliveryColumn.RECIPIENT)) == b"probe@example.net"
        assert int(vb(values, DeliveryColumn.STATUS)) == mib.STATUS_VALUES["failed"]
        assert int(vb(values, DeliveryColumn.FAILED_PHASE)) == mib.PHASE_VALUES["submit"]
        assert int(vb(values, DeliveryColumn.FAILED_REASON)) == mib.REASON_VALUES["auth_failed"]
        assert bytes(vb(values, DeliveryColumn.LAST_ERROR)) == b"535 5.7.8 Error: authentication failed"
        assert int(vb(values, DeliveryColumn.REPLY_CODE)) == 535
        assert int(vb(values, DeliveryColumn.PENDING)) == 1
        assert int(vb(values, DeliveryColumn.CONSECUTIVE_FAILURES)) == 2

    def test_recovered_carries_ok_none_and_the_latency(self) -> None:
        store, events = announcing_store()
        store.record("loop", submit_refused())
        store.record("loop", on_time(latency=2.0))
        (recovered,) = [e for e in events if e.kind == "recovered"]
        which, values = varbind_map(recovered)
        assert which is mib.Notification.DELIVERY_PROBE_RECOVERED
        assert int(vb(values, DeliveryColumn.STATUS)) == mib.STATUS_VALUES["ok"]
        assert int(vb(values, DeliveryColumn.FAILED_PHASE)) == mib.PHASE_VALUES["none"]
        assert bytes(vb(values, DeliveryColumn.LAST_ERROR)) == b""
        assert int(vb(values, DeliveryColumn.LATENCY)) == 2000
        assert int(vb(values, DeliveryColumn.LATENCY_KNOWN)) == mib.TRUTH_VALUES[True]

    def test_each_late_message_gets_its_own_latency_and_submission_time(self) -> None:
        store, events = announcing_store()
        store.record("loop", late_run("b" * 32, T0))
        store.record("loop", late_run("c" * 32, T0 + 60))
        first, second = found_late("b" * 32, T0, 120.0), found_late("c" * 32, T0 + 60, 61.25)
        store.record("loop", on_time(earlier=(first, second)))
        late = [e for e in events if e.kind == "delivery_late"]
        assert len(late) == 2
        carried = []
        for event in late:
            which, values = varbind_map(event)
            assert which is mib.Notification.DELIVERY_LATE
            assert isinstance(vb(values, DeliveryColumn.LATE_COUNT), rfc1902.Counter32)
            assert int(vb(values, DeliveryColumn.LATE_COUNT)) == 2
            assert int(vb(values, DeliveryColumn.PENDING)) == 0
            carried.append(
                (int(vb(values, DeliveryColumn.EVENT_LATENCY)), bytes(vb(values, DeliveryColumn.EVENT_SUBMITTED)))
            )
        assert carried == [(120000, date_and_time(T0)), (61250, date_and_time(T0 + 60))]

    def test_lost_carries_the_lost_count_and_the_submission_time(self) -> None:
        store, events = announcing_store()
        store.record("loop", late_run("b" * 32, T0))
        store.record("loop", late_run("c" * 32, T0 + 3700, earlier=(EarlierMessage("b" * 32, T0, "lost"),)))
        (lost,) = [e for e in events if e.kind == "delivery_lost"]
        which, values = varbind_map(lost)
        assert which is mib.Notification.DELIVERY_LOST
        assert int(vb(values, DeliveryColumn.LOST_COUNT)) == 1
        assert bytes(vb(values, DeliveryColumn.EVENT_SUBMITTED)) == date_and_time(T0)
        assert int(vb(values, DeliveryColumn.PENDING)) == 1

    def test_pending_changed_sends_nothing(self) -> None:
        store, events = announcing_store(alert_after=5)
        store.record("loop", late_run())
        kinds = [e.kind for e in events]
        assert kinds == ["pending_changed"]
        assert build_notification(events[0], T0) is None

    def test_hostile_error_in_a_notification_is_bounded_printable_utf8(self) -> None:
        store, events = announcing_store()
        store.record("loop", replace(submit_refused(), error=HOSTILE))
        (failed,) = [e for e in events if e.kind == "failed"]
        _, values = varbind_map(failed)
        safe(vb(values, DeliveryColumn.LAST_ERROR))

    def test_a_delivery_notification_survives_the_outbox(self) -> None:
        store, events = announcing_store()
        store.record("loop", late_run("b" * 32, T0))
        store.record("loop", on_time(earlier=(found_late("b" * 32, T0, 90.0),)))
        (late,) = [e for e in events if e.kind == "delivery_late"]
        notification = build_notification(late, T0)
        assert notification is not None
        again = from_payload(to_payload(notification))
        assert [(oid, type(value), bytes(value) if isinstance(value, rfc1902.OctetString) else int(value))
                for oid, value in again.varbinds[2:]] == [
            (oid, type(value), bytes(value) if isinstance(value, rfc1902.OctetString) else int(value))
            for oid, value in notification.varbinds[2:]
        ]  # fmt: skip


def label_of(event: StoreEvent) -> str:
    notification = build_notification(event, T0)
    assert notification is not None
    return notification.label


class TestOtherKindsNotifications:
    def test_smtp_and_mx_notifications_carry_their_row_values_also_in_columns_numbered_like_event_objects(
        self,
    ) -> None:
        # smtpProbeAddress is column 28 and smtpProbeTlsSeen 29, the numbers of deliveryEventLatency and
        # deliveryEventSubmitted: they are still read from the SMTP probe's row.
        store = ResultsStore()
        store.configure([(SmtpProbeConfig(name="s", host="mail.example"), 1, 14)])
        events = events_of(store)
        store.record(
            "s",
            SmtpResult(
                "mail.example", 25, "starttls", T0, False, phase=Phase.CONNECT, reason=Reason.REFUSED,
                error="refused", address="192.0.2.7", total=0.012,
            ),
        )  # fmt: skip
        (failed,) = events
        notification = build_notification(failed, T0 - 100)
        assert notification is not None
        columns = mib.NOTIFICATION_OBJECTS[mib.Notification.SMTP_PROBE_FAILED]
        assert mib.SmtpProbeColumn.ADDRESS in columns
        expected = row_values(failed.state, columns)
        got = [value for _, value in notification.varbinds[2:]]
        assert [(type(v), bytes(v) if isinstance(v, rfc1902.OctetString) else int(v)) for v in got] == [
            (type(v), bytes(v) if isinstance(v, rfc1902.OctetString) else int(v)) for v in expected
        ]
        address = notification.varbinds[2 + columns.index(mib.SmtpProbeColumn.ADDRESS)]
        assert address == (mib.smtp_probe_oid(mib.SmtpProbeColumn.ADDRESS, "s"), rfc1902.OctetString(b"192.0.2.7"))
