"""Where the agent's time goes per SNMP GET: one replayed GET under py-spy, in microseconds per GET.

`PYTHONPATH=. python -m bench.snmp_get_profile [--version v3] [--rows 1000] [--seconds 12]` starts the
agent with `--rows` SMTP probe rows (the snmp section's config, the probes against a closed port),
replays the datagram snmpget sends for smtpProbeStatus of the first row (`snmp_tools.get_loop`, 32 in
flight) and samples the agent with py-spy meanwhile. The agent's loop runs at a full core, so a function's
share of the samples times the time per GET (1 / GET/s) is what it costs per GET: two trees profiled this
way can be compared function by function, which the snmp section's GET/s (noisy by 10-30 % between runs)
cannot. The raw stacks stay in the work directory for flamegraph.pl or speedscope.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench import snmp_tools
from bench.common import AgentProcess, wait_settled
from bench.profile import record, sample_counts
from bench.snmp import FIRST_ROW_STATUS, table_agent_config
from tests.support.ports import free_tcp_port, free_udp_port


def per_get(raw: Path, rate: float, top: int) -> list[str]:
    """The `top` functions by inclusive samples, each as microseconds per GET."""
    _, inclusive, total = sample_counts(raw)
    if not total or not rate:
        return ["(no samples)"]
    us_per_get = 1e6 / rate
    return [f"  {count / total * us_per_get:7.2f} µs  {frame}" for frame, count in inclusive.most_common(top)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", choices=("v2c", "v3"), default="v3")
    parser.add_argument("--rows", type=int, default=1_000)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="snmp-get-profile-"))
    ca_file = workdir / "ca.pem"
    ca_file.write_text("")  # never read: every probe fails to connect first
    port = free_udp_port()
    agent = AgentProcess(workdir / "agent", table_agent_config(args.rows, port, free_tcp_port(), str(ca_file)))
    agent.start()
    try:
        wait_settled(agent.pid)
        packet = snmp_tools.capture_request(port, args.version, FIRST_ROW_STATUS)
        with ThreadPoolExecutor(max_workers=1) as sampler:  # py-spy samples while this thread sends
            sampled = sampler.submit(record, agent.pid, args.seconds, workdir / "stacks")
            got = snmp_tools.get_loop(port, packet, args.seconds)
            raw = sampled.result()
    finally:
        agent.stop()
    print(f"$ PYTHONPATH=. {Path(sys.executable).name} -m bench.snmp_get_profile " + " ".join(sys.argv[1:]))
    print(f"{args.version} GET of smtpProbeStatus, {args.rows:,} rows: {got.rate:,.0f} GET/s, {got.lost} lost")
    if raw is not None:
        print(f"per GET, inclusive (py-spy stacks in {raw}):")
        print("\n".join(per_get(raw, got.rate, args.top)))


if __name__ == "__main__":
    main()
