"""The fast path answers reads of deliveryTable and deliveryHopTable byte for byte as pysnmp does."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest

from monitor.exporters.snmp import mib_oids
from monitor.exporters.snmp.fast.fastpath import GET, GETBULK, GETNEXT
from monitor.exporters.snmp.mib_oids import DeliveryColumn, DeliveryHopColumn
from monitor.exporters.snmp.mibview import MibView
from monitor.model.delivery import EarlierMessage, Hop
from monitor.state.health import AgentHealth
from monitor.state.store import ResultsStore
from tests.unit.test_snmp_delivery import (
    HOSTILE,
    T0,
    delivery_config,
    found_late,
    late_run,
    on_time,
    submit_refused,
)
from tests.unit.test_snmp_fastpath import (
    V1,
    V2C,
    Pair,
    PysnmpAgent,
    boundary_oids,
    chunks,
    fast_path_for,
    filled_store,
    request,
    varbinds,
)

DELIVERY_ENTRY, HOP_ENTRY = mib_oids.DELIVERY_ENTRY, mib_oids.DELIVERY_HOP_ENTRY
LONG_NAME = "d" * 100  # the longest index: its OIDs need long-form BER lengths


def delivery_store() -> ResultsStore:
    """The fast path tests' store (SMTP probes and MX checks) plus delivery probes of every shape."""
    store = filled_store()
    base = [(state.config, state.alert_after, state.cert_warn_days) for state in store.snapshot().states.values()]
    names = ("loop", "late", "held", "refused", "never", "hostile", LONG_NAME)
    store.configure([*base, *((delivery_config(name), 1, 14) for name in names)])
    store.record("loop", on_time())
    store.record("late", late_run("b" * 32, T0))
    store.record("late", late_run("c" * 32, T0 + 60, earlier=(found_late("b" * 32, T0, 95.5),)))
    store.record("late", late_run("d" * 32, T0 + 120, earlier=(EarlierMessage("c" * 32, T0 + 60, "lost"),)))
    store.record("held", late_run("b" * 32, T0))
    store.record("held", late_run("c" * 32, T0 + 60, earlier=(found_late("b" * 32, T0, 95.5),)))
    store.record("refused", submit_refused())
    hostile_hops = tuple(Hop(HOSTILE, HOSTILE, HOSTILE, HOSTILE, None, -3.0) for _ in range(5))
    store.record("hostile", replace(on_time(), error=HOSTILE, hops=hostile_hops, folder_name=HOSTILE))
    store.record(LONG_NAME, on_time(latency=2**33))  # beyond Unsigned32 milliseconds
    return store


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    store, health = delivery_store(), AgentHealth()
    fast = fast_path_for(store, health)
    served = [oid for oid, _ in MibView(store, health).current().items()]
    with PysnmpAgent(store, health, tmp_path_factory.mktemp("snmp-state")) as slow:
        yield Pair(store, fast, slow, served)
    assert fast.errors == 0


def delivery_oids(served: list[mib_oids.Oid]) -> list[mib_oids.Oid]:
    tables = (DELIVERY_ENTRY, HOP_ENTRY)
    return [oid for oid in served if any(oid[: len(entry)] == entry for entry in tables)]


class TestDeliveryTablesSameAsPysnmp:
    def test_both_tables_are_served(self, pair: Pair) -> None:
        ours = delivery_oids(pair.served)
        hops = [oid for oid in ours if oid[: len(HOP_ENTRY)] == HOP_ENTRY]
        readable = len(mib_oids.DeliveryColumn) - 1 - len(mib_oids.DELIVERY_EVENT_COLUMNS)  # no index, no event
        assert readable == 28
        assert len(ours) - len(hops) == 7 * readable  # seven probes, every readable column
        # loop, held (its late message's), hostile and the long name; late's last run found a lost
        # message, which has no hops; every hop column but the index
        assert len(hops) == (len(mib_oids.DeliveryHopColumn) - 1) * (3 + 2 + 5 + 3)

    @pytest.mark.parametrize("version", [V1, V2C])
    @pytest.mark.parametrize("pdu", [GET, GETNEXT])
    def test_every_delivery_oid_and_its_neighbours(self, pair: Pair, version: int, pdu: int) -> None:
        oids = boundary_oids(delivery_oids(pair.served))
        oids += [DELIVERY_ENTRY, HOP_ENTRY, mib_oids.DELIVERY_TABLE, mib_oids.DELIVERY_HOP_TABLE]
        oids += [mib_oids.delivery_oid(column, "loop") for column in mib_oids.DELIVERY_EVENT_COLUMNS]
        for number, group in enumerate(chunks(sorted(set(oids)), seed=version * 10 + pdu)):
            pair.check(request(version, pdu, group, request_id=number), (version, pdu, group))

    @pytest.mark.parametrize("max_repetitions", [1, 7, 50])
    def test_getbulk_walks_through_both_tables(self, pair: Pair, max_repetitions: int) -> None:
        starts = [
            [mib_oids.DELIVERY_TABLE],
            [(*DELIVERY_ENTRY, int(DeliveryColumn.LATE_COUNT)), (*HOP_ENTRY, int(DeliveryHopColumn.DELAY))],
            [mib_oids.scalar_oid(mib_oids.Scalar.DELIVERY_COUNT), mib_oids.DELIVERY_HOP_TABLE],
        ]
        for number, oids in enumerate(starts):
            pair.check(request(V2C, GETBULK, oids, request_id=number, second=max_repetitions), oids)

    def test_v1_getnext_skips_the_counter64_columns_but_not_the_counter32_ones(self, pair: Pair) -> None:
        runs = (*DELIVERY_ENTRY, int(DeliveryColumn.RUNS))
        lost = (*DELIVERY_ENTRY, int(DeliveryColumn.LATE_COUNT))
        response = pair.check(request(V1, GETNEXT, [runs, lost]))
        names = [oid for oid, _, _ in varbinds(response)]
        assert names[0][: len(runs)] == (*DELIVERY_ENTRY, int(DeliveryColumn.FAILURES) + 1)
        assert names[1][: len(lost)] == lost
