"""The agent's RSS over time, past history's journal moves and retention passes (every 10 minutes).

`PYTHONPATH=. python -m bench.steady_rss [--probes 10000] [--seconds 2000] [--every 30] [--scrape-every 0]`
starts the agent with `--probes` SMTP probes every 60 s against a refused loopback port (cheap probes: what
grows is the agent's side of each result) and prints the agent process's RSS, its peak and its CPU every
`--every` seconds. The scale section measures RSS 3.5 minutes after start, before the first move, with
/metrics scraped every 10 s: this shows what the first moves add, and whether it levels off. By default
nobody scrapes /metrics, as where only SNMP is polled: the exposition stops formatting ahead 10 minutes
after start; `--scrape-every 15` scrapes like a Prometheus. The probe process is not counted: history
lives in the agent.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import AgentProcess, cpu_seconds, http_get, refused_port, refused_smtp_probes, status_field


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.steady_rss", description=__doc__)
    parser.add_argument("--probes", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=2000.0, help="how long to watch after ready")
    parser.add_argument("--every", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--scrape-every", type=float, default=0.0, help="seconds between /metrics scrapes; 0: none")
    args = parser.parse_args(argv)
    print("command: PYTHONPATH=. python -m bench.steady_rss " + shlex.join(argv), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-steady-rss-") as tmp, refused_port() as port:
        config = {
            "status_page": {"enabled": False},
            "smtp": refused_smtp_probes(args.probes, port),
        }
        with AgentProcess(Path(tmp), config) as agent:
            agent.start()
            ready = time.monotonic()
            stop = threading.Event()
            if args.scrape_every > 0:
                threading.Thread(target=_scrape, args=(agent.url, args.scrape_every, stop), daemon=True).start()
            print(f"{args.probes:,} refused probes every 60 s; seconds after ready, agent process:", flush=True)
            first = last = 0.0
            while time.monotonic() - ready < args.seconds:
                time.sleep(args.every)
                last = status_field(agent.pid, "VmRSS") / 1024
                first = first or last
                peak = status_field(agent.pid, "VmHWM") / 1024
                print(
                    f"{time.monotonic() - ready:6.0f} s  RSS {last:6.1f} MiB  peak {peak:6.1f} MiB  "
                    f"CPU {cpu_seconds(agent.pid):6.1f} s",
                    flush=True,
                )
            stop.set()
            print(f"RSS {first:.1f} MiB at the first sample, {last:.1f} MiB at the last")
    return 0


def _scrape(url: str, every: float, stop: threading.Event) -> None:
    while not stop.wait(every):
        http_get(url + "/metrics", timeout=60)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
