"""The status page at scale: the overview and a probe's page for 10,000 probes, with the real History behind them.

Targets (issue 21): the overview for 10,000 probes served in < 300 ms, a probe page in < 50 ms. The store holds
10,000 probes (nine in ten SMTP with TLS facts and a transcript, one in ten MX checks with two exchanges; 5 % failing)
and the History (monitor.state.history, in a state database of a temp dir) `--hours` of results at 60 s per probe,
written through its own batches with a fake clock. Measured: the render in the calling thread (what the worker
thread of a request does), and whole HTTP requests to the page's own listener on loopback (median and p95).

Standalone: `python bench/status_page.py` (10,000 probes, 1 h of history: about a minute on a 2-core machine).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypedDict

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root: monitor.*

from monitor.config.schema import HistoryConfig, MxCheckConfig, SmtpProbeConfig
from monitor.exporters.web.pages import StatusPage, StatusPageServer
from monitor.exporters.web.view import Filters
from monitor.model.probe_result import ProbeResult
from monitor.model.results import CertInfo, MxRecord, MxResult, Phase, Reason, Reply, SmtpResult, TlsInfo
from monitor.model.transcript import TranscriptRecorder
from monitor.state.history import History
from monitor.state.store import ProbeConfig, ResultsStore

INTERVAL = 60.0
SLOT = 5.0  # the history writer's flush interval: one batch per slot
FAILING = 0.05


def _tls(now: float) -> TlsInfo:
    at = datetime.fromtimestamp(now, UTC)
    cert = CertInfo("CN=mail.example", "CN=Example CA", ("DNS:mail.example",), at - timedelta(days=30),
                    at + timedelta(days=60), "1f", "ab" * 32)  # fmt: skip
    return TlsInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", True, cert=cert)


class _Connection(TypedDict):
    """The SmtpResult fields every result of _smtp has alike."""

    host: str
    port: int
    tls_mode: str
    started_at: float
    address: str


def _smtp(name: str, ok: bool, now: float, transcript: bool) -> SmtpResult:
    recorder = TranscriptRecorder()
    if transcript:
        recorder.note("trying 192.0.2.1 port 25")
        recorder.received("220 mail.example ESMTP")
        if ok:
            for line in ("EHLO monitor.example", "250-mail.example", "250-PIPELINING", "250 STARTTLS", "STARTTLS",
                         "220 2.0.0 ready", "EHLO monitor.example", "250-mail.example", "250 SIZE 10240000", "QUIT",
                         "221 bye"):  # fmt: skip
                recorder.sent(line) if line[0].isalpha() else recorder.received(line)
            recorder.tls("TLSv1.3 TLS_AES_256_GCM_SHA384 CN=mail.example")
        else:
            recorder.received("554 5.7.1 no service")
            recorder.note("failed in banner: reply: 554 5.7.1 no service")
    common: _Connection = {
        "host": "192.0.2.1",
        "port": 25,
        "tls_mode": "starttls",
        "started_at": now,
        "address": "192.0.2.1",
    }
    if not ok:
        return SmtpResult(**common, ok=False, phase=Phase.BANNER, reason=Reason.REPLY, error="554 5.7.1 no service",
                          reply=Reply(554, ("5.7.1 no service",)), timings={"connect": 0.002}, total=0.004,
                          transcript=recorder.transcript() if transcript else None)  # fmt: skip
    return SmtpResult(**common, ok=True, banner="mail.example ESMTP", total=0.031,
                      timings={"resolve": 0.001, "connect": 0.002, "banner": 0.003, "ehlo": 0.001, "tls": 0.012},
                      extensions={"PIPELINING": "", "SIZE": "10240000"}, tls=_tls(now),
                      transcript=recorder.transcript() if transcript else None)  # fmt: skip


def _mx(domain: str, ok: bool, now: float) -> MxResult:
    records = tuple(
        MxRecord(10 * i, f"mx{i}.{domain}", (f"192.0.2.{i}",), probe=_smtp(domain, True, now, False)) for i in (1, 2)
    )
    if ok:
        return MxResult(domain, now, True, records=records, total=0.05)
    return MxResult(domain, now, False, Phase.MX, Reason.SERVFAIL, "SERVFAIL", total=0.05)


def build(probes: int, hours: float, workdir: Path, log: Callable[[str], None]) -> tuple[ResultsStore, History]:
    rng = random.Random(21)
    configs: list[ProbeConfig] = [
        MxCheckConfig(name=f"mx-{i:05d}", domain=f"d{i}.example") if i % 10 == 0
        else SmtpProbeConfig(name=f"smtp-{i:05d}", host=f"mail{i}.example", port=25)
        for i in range(probes)
    ]  # fmt: skip
    failing = {c.name for c in configs if rng.random() < FAILING}
    clock = [time.time() - hours * 3600]
    history = History(workdir / "state.db", HistoryConfig(), clock=lambda: clock[0])
    history.open()
    logging.getLogger("smtp_monitor").setLevel(logging.ERROR)  # status changes are announced: not logged here
    store = ResultsStore()
    store.configure([(c, 1, 14) for c in configs])
    store.subscribe(history.on_event)
    slots = int(hours * 3600 / SLOT)
    per_slot = int(INTERVAL / SLOT)
    for slot in range(slots):
        now = clock[0] = time.time() - hours * 3600 + slot * SLOT
        last = slot >= slots - per_slot
        for config in configs[slot % per_slot :: per_slot]:
            ok = config.name not in failing and rng.random() > 0.01
            result: ProbeResult = (
                _mx(config.domain, ok, now) if isinstance(config, MxCheckConfig)
                else _smtp(config.name, ok, now, transcript=last or not ok)
            )  # fmt: skip
            history.on_result(config.name, result)
            if last or not ok:  # the store's last result and last failure; the rest is history only
                store.record(config.name, result)
        history.flush()
        if slot % 240 == 0:
            log(f"  history: {slot * SLOT / 60:.0f} min of {hours * 60:.0f} simulated")
    clock[0] = time.time()
    history.flush()
    return store, history


def _times(call: Callable[[], object], repeat: int) -> tuple[float, float]:
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        call()
        samples.append(time.perf_counter() - t0)
    samples.sort()
    return 1000 * statistics.median(samples), 1000 * samples[min(len(samples) - 1, int(len(samples) * 0.95))]


async def _http(page: StatusPage, paths: list[str], repeat: int) -> dict[str, tuple[float, float, int]]:
    server = StatusPageServer(page, "127.0.0.1", 0)
    await server.start()
    out = {}
    try:
        async with aiohttp.ClientSession() as session:
            for path in paths:
                samples, size = [], 0
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    async with session.get(f"http://127.0.0.1:{server.port}{path}") as resp:
                        body = await resp.read()
                        assert resp.status == 200, (path, resp.status)
                    samples.append(time.perf_counter() - t0)
                    size = len(body)
                samples.sort()
                p95 = samples[min(len(samples) - 1, int(len(samples) * 0.95))]
                out[path] = (1000 * statistics.median(samples), 1000 * p95, size)
    finally:
        await server.stop()
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/status_page.py", description=__doc__)
    parser.add_argument("--probes", type=int, default=10_000)
    parser.add_argument("--hours", type=float, default=1.0, help="history per probe at 60 s (default 1 h: 60 runs)")
    parser.add_argument("--repeat", type=int, default=21)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-status-page-") as tmp:
        started = time.monotonic()
        store, history = build(args.probes, args.hours, Path(tmp), print)
        print(
            f"{args.probes:,} probes, {args.hours:g} h of history at 60 s, built in {time.monotonic() - started:.0f} s"
        )
        try:
            page = StatusPage(store, history)
            states = store.snapshot().states
            failed = next(name for name, s in states.items() if s.status.value == "failed" and s.kind == "smtp")
            healthy = next(name for name, s in states.items() if s.status.value == "ok" and s.kind == "smtp")
            mx = next(name for name, s in states.items() if s.status.value == "ok" and s.kind == "mx")
            renders = {
                "overview, page 1 (failed first)": lambda: page.render_overview(Filters()),
                "overview, page 50": lambda: page.render_overview(Filters(page=50)),
                "overview, status=failed": lambda: page.render_overview(Filters(status="failed")),
                "overview, q=smtp-0999": lambda: page.render_overview(Filters(name="smtp-0999")),
                "/api/probes page 1": lambda: page.overview_json(Filters()),
                f"probe page, failed SMTP ({failed})": lambda: page.render_probe(failed),
                f"probe page, ok SMTP ({healthy})": lambda: page.render_probe(healthy),
                f"probe page, MX check ({mx})": lambda: page.render_probe(mx),
                f"/api/probes/{failed}": lambda: page.probe_json(failed),
            }
            print(f"\nrender in the calling thread, ms (median / p95 of {args.repeat}):")
            for what, call in renders.items():
                median, p95 = _times(call, args.repeat)
                print(f"  {what:48} {median:8.1f} / {p95:6.1f}")
            paths = ["/", "/?page=50", "/?status=failed", f"/probe/{failed}", f"/probe/{healthy}", f"/probe/{mx}"]
            print(f"\nHTTP GET on loopback (aiohttp client), ms (median / p95 of {args.repeat}), bytes:")
            for path, (median, p95, size) in asyncio.run(_http(page, paths, args.repeat)).items():
                print(f"  {path:48} {median:8.1f} / {p95:6.1f}   {size:,}")
        finally:
            history.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
