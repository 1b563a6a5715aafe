"""monitor/runtime/sharding.py: every kind of probe runs on exactly one shard."""

from __future__ import annotations

from monitor.config.schema import parse_config
from monitor.runtime.sharding import Shard
from tests.unit.test_delivery_ledger import delivery_document


def test_each_probe_of_every_kind_is_on_exactly_one_shard() -> None:
    config = parse_config(
        {
            "dns": {"nameservers": ["127.0.0.1:9"]},
            "smtp": [{"name": f"s{i}", "host": "127.0.0.1", "port": 25, "tls": "none"} for i in range(20)],
            "mx": [{"name": f"m{i}", "domain": "example.test"} for i in range(20)],
            "delivery": [delivery_document(f"d{i}") for i in range(20)],
        }
    )
    shards = [Shard(index, 3).apply(config) for index in range(3)]
    for kind in ("smtp", "mx", "delivery"):
        names = [probe.name for shard in shards for probe in getattr(shard, kind)]
        assert sorted(names) == sorted(probe.name for probe in getattr(config, kind)), kind  # each once
        assert all(getattr(shard, kind) for shard in shards), kind  # 20 names spread over all three
