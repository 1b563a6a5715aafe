"""What policy depth, TLS-RPT and DNSBL lookups add to an MX check: CPU and DNS queries per check.

`PYTHONPATH=. python -m bench.mx_policy_cost [--checks N] [--rounds R]` starts NSD with the test zones of
tests.peers.policy_zones and runs, in one process, R rounds of N MX checks per variant, the variants taking
turns so that the machine's drift hits each alike:

  base        MX and address lookups only
  syntax      + SPF and DMARC presence and syntax (policy_depth: false), what existed before
  depth       + SPF evaluated recursively, DMARC policy and report destinations (policy_depth: true)
  tls_rpt     + the TLS-RPT record
  dnsbl       base + 2 DNSBL zones (the exchange has an IPv4 and an IPv6 address: 4 lookups)

The domain is sound.pol.test (an include, an mx term, a report destination of its own: what a small
domain publishes). The figure is this thread's CPU (time.thread_time; NSD is another process) per check,
and the DNS queries per check, counted at monitor.probes.resolve.query.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from typing import Any

import dns.asyncresolver
import dns.resolver

from monitor.config.schema import DnsConfig, MxCheckConfig
from monitor.probes import ProbeEnv, build_resolver, mx, resolve
from tests.support.peers import NsdServer, policy_zones

DOMAIN = "sound.pol.test"
DNSBL_DOMAIN = "clean.pol.test"
VARIANTS: dict[str, dict[str, Any]] = {
    "base": {"domain": DOMAIN},
    "syntax": {"domain": DOMAIN, "spf": True, "dmarc": True, "policy_depth": False},
    "depth": {"domain": DOMAIN, "spf": True, "dmarc": True},
    "tls_rpt": {"domain": DOMAIN, "spf": True, "dmarc": True, "tls_rpt": True},
    "dnsbl_base": {"domain": DNSBL_DOMAIN},
    "dnsbl": {"domain": DNSBL_DOMAIN, "dnsbl": [policy_zones.DNSBL_ZONE, "second.dnsbl.test"]},
}


class _Counted:
    queries = 0


def _count_queries() -> None:
    original = resolve.query

    async def counted(resolver: dns.asyncresolver.Resolver, name: str, rdtype: str) -> dns.resolver.Answer:
        _Counted.queries += 1
        return await original(resolver, name, rdtype)

    resolve.query = counted


async def _round(env: ProbeEnv, config: MxCheckConfig, checks: int) -> tuple[float, float]:
    queries = _Counted.queries
    cpu = time.thread_time()
    for _ in range(checks):
        result = await mx.run(config, env)
        assert result.ok, result.error
    return (time.thread_time() - cpu) / checks, (_Counted.queries - queries) / checks


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checks", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    _count_queries()
    with tempfile.TemporaryDirectory() as tmp:
        server = NsdServer(tmp, policy_zones.policy_zones())
        server.start()
        try:
            env = ProbeEnv(resolver=build_resolver(DnsConfig(nameservers=[f"127.0.0.1:{server.port}"])))
            configs = {name: MxCheckConfig(name=name, timeout=10, **v) for name, v in VARIANTS.items()}
            cpu: dict[str, list[float]] = {name: [] for name in VARIANTS}
            queries: dict[str, float] = {}
            for _ in range(args.rounds):
                for name, config in configs.items():
                    seconds, asked = asyncio.run(_round(env, config, args.checks))
                    cpu[name].append(seconds)
                    queries[name] = asked
        finally:
            server.close()
    out = {
        name: {"cpu_us_per_check": round(statistics.median(cpu[name]) * 1e6), "queries_per_check": queries[name]}
        for name in VARIANTS
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
