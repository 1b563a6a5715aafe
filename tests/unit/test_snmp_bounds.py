"""SNMP resource bounds: the decoded-bindings caches stay under their byte bound, whatever managers send."""

from __future__ import annotations

import random
import tracemalloc
from collections.abc import Sequence

from monitor.exporters.snmp.agent import READ_SUBTREES
from monitor.exporters.snmp.fast.ber import oid_body, tlv
from monitor.exporters.snmp.fast.fastpath import (
    BINDINGS_CACHE_OCTETS,
    MAX_REQUEST_BINDINGS,
    MAX_VARBINDS,
    BindingsCache,
    FastPath,
    decode_request,
)
from monitor.exporters.snmp.mib_oids import Oid
from monitor.exporters.snmp.mibview import MibView
from monitor.state.health import AgentHealth
from monitor.state.store import ResultsStore


def v2c_get(oids: Sequence[Oid], request_id: int = 1) -> bytes:
    binds = b"".join(tlv(0x30, tlv(0x06, oid_body(oid)) + b"\x05\x00") for oid in oids)
    pdu = tlv(0xA0, tlv(0x02, request_id.to_bytes(4, "big")) + b"\x02\x01\x00\x02\x01\x00" + tlv(0x30, binds))
    return tlv(0x30, b"\x02\x01\x01" + tlv(0x04, b"public") + pdu)


def large_distinct_gets(count: int, seed: int = 7) -> list[bytes]:
    """GETs of 64 OIDs of 123 arcs, each arc above 256 (an int object of its own): ~16 KiB each,
    the largest the agent reads, and the costliest to keep decoded."""
    rnd = random.Random(seed)
    out = []
    for _ in range(count):
        oids = [(1, 3, 6, *(rnd.randrange(300, 16_000) for _ in range(120))) for _ in range(MAX_VARBINDS)]
        out.append(v2c_get(oids))
    return out


def small_distinct_gets(count: int) -> list[bytes]:
    return [v2c_get([(1, 3, 6, 1, 4, 1, 32473, 2, 2, 1, 3, n)]) for n in range(count)]


class TestBindingsCaches:
    def test_large_requests_leave_the_cache_under_its_bound_in_accounting_and_in_memory(self) -> None:
        requests = large_distinct_gets(120)  # 120 x ~360 KB decoded: 43 MB if each were kept
        assert all(15_000 < len(request) <= 16_384 for request in requests)
        cache = BindingsCache()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for request in requests:
                decode_request(request, cache)
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert cache.octets <= BINDINGS_CACHE_OCTETS
        assert held <= BINDINGS_CACHE_OCTETS

    def test_small_requests_fill_it_up_to_the_bound_and_no_further(self) -> None:
        cache = BindingsCache(max_octets=64 * 1024)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for request in small_distinct_gets(2_000):
                decode_request(request, cache)
                assert cache.octets <= 64 * 1024
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert len(cache) > 20  # still a cache: polls of one OID are kept
        assert held <= 64 * 1024  # the accounting over-estimates what entries really cost

    def test_a_cached_request_decodes_as_an_uncached_one(self) -> None:
        cache = BindingsCache()
        request = small_distinct_gets(1)[0]
        first = decode_request(request, cache)
        assert len(cache) == 1
        assert decode_request(request, cache) == first == decode_request(request)

    def test_the_fast_path_cache_stays_under_its_bound(self) -> None:
        fast = FastPath(MibView(ResultsStore(), AgentHealth()), subtrees=READ_SUBTREES)
        for request in large_distinct_gets(60, seed=3) + small_distinct_gets(500):
            assert fast.respond(request) is not None
        cache = fast._bindings
        assert isinstance(cache, BindingsCache)
        assert 0 < cache.octets <= BINDINGS_CACHE_OCTETS


def get_request(version: int, oids: Sequence[Oid]) -> bytes:
    binds = b"".join(tlv(0x30, tlv(0x06, oid_body(oid)) + b"\x05\x00") for oid in oids)
    pdu = tlv(0xA0, b"\x02\x01\x09\x02\x01\x00\x02\x01\x00" + tlv(0x30, binds))
    return tlv(0x30, bytes([0x02, 0x01, version]) + tlv(0x04, b"public") + pdu)


class TestTooManyBindings:
    SYS_DESCR: Oid = (1, 3, 6, 1, 2, 1, 1, 1, 0)

    def fast(self) -> FastPath:
        return FastPath(MibView(ResultsStore(), AgentHealth()), subtrees=READ_SUBTREES)

    def test_more_than_the_cap_is_answered_too_big_without_pysnmp(self) -> None:
        fast = self.fast()
        response = fast.respond(get_request(1, [self.SYS_DESCR] * (MAX_REQUEST_BINDINGS + 1)))
        assert response is not None
        assert (fast.answered, fast.fallbacks, fast.errors) == (1, 0, 0)
        # v2c: error-status tooBig (1), error-index 0, no bindings
        assert response.endswith(b"\xa2\x0b\x02\x01\x09\x02\x01\x01\x02\x01\x00\x30\x00")

    def test_snmpv1_echoes_the_bindings(self) -> None:
        fast = self.fast()
        request = get_request(0, [self.SYS_DESCR] * 1100)
        response = fast.respond(request)
        assert response is not None
        binds = request[request.index(b"\x02\x01\x00\x02\x01\x00") + 6 :]
        assert response.endswith(b"\x02\x01\x01\x02\x01\x00" + binds)

    def test_between_the_fast_paths_limit_and_the_cap_pysnmp_answers(self) -> None:
        fast = self.fast()
        assert fast.respond(get_request(1, [self.SYS_DESCR] * MAX_REQUEST_BINDINGS)) is None
        assert fast.fallbacks == 1

    def test_a_malformed_binding_past_the_fast_paths_limit_is_left_to_pysnmp(self) -> None:
        fast = self.fast()
        broken = bytearray(get_request(1, [self.SYS_DESCR] * 200))
        broken[-2:] = b"\x04\x00"  # the last binding's value is an OCTET STRING, not NULL
        assert fast.respond(bytes(broken)) is None
        assert fast.fallbacks == 1
