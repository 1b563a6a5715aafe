"""What recording the dialogue adds to an SMTP probe's CPU: the same probes with the recorder on and off.

`PYTHONPATH=. python -m bench.transcript_cost [--probes N] [--rounds R]` runs, in one process, R rounds of
N probes per variant against an aiosmtpd server in a thread of its own (STARTTLS with a verified
certificate, and plain), the variants taking turns so that the machine's drift hits both alike. The
figure is this thread's CPU (time.thread_time: the server's thread is not counted) per probe, for the
probe alone and for the probe plus what the agent does with its result (the pickle from the probe
process and the JSON of the state database). "off" replaces the recorder by one that keeps nothing
(its calls remain, a few tens of nanoseconds each) and leaves the result's transcript None.

A probe's CPU is mostly system calls (connect, send, epoll), whose cost swings with the machine's load
by more than the recorder costs; so the rounds are many and short, and the recorder's own cost is also
measured alone: one probe's recorded lines replayed through a fresh recorder ("replayed_us"), which is
what recording adds to each probe, against the probe's CPU without it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pickle
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from monitor.config.schema import DnsConfig, SmtpProbeConfig
from monitor.model.probe_result import result_to_json
from monitor.model.transcript import Transcript, TranscriptRecorder
from monitor.model.wire import adapter
from monitor.probes import ProbeEnv, build_resolver, smtp
from tests.support.certs import SERVER_IP, SERVER_NAME, Pki
from tests.support.peers import AiosmtpdServer, ServerThread


class _NotRecording(TranscriptRecorder):
    """Keeps nothing: the probe as it was before transcripts."""

    def _add(self, direction: Any, text: str) -> None:
        pass

    def conclude(self, text: str) -> None:
        pass

    def add_secret(self, secret: str) -> None:
        pass

    def transcript(self) -> Transcript:
        return None  # type: ignore[return-value]  # the result's transcript stays None


@contextmanager
def recording(on: bool) -> Iterator[None]:
    saved = smtp.TranscriptRecorder  # type: ignore[attr-defined]  # smtp's own import, swapped for the run
    smtp.TranscriptRecorder = TranscriptRecorder if on else _NotRecording  # type: ignore[attr-defined]  # as above
    try:
        yield
    finally:
        smtp.TranscriptRecorder = saved  # type: ignore[attr-defined]  # as above


async def _batch(config: SmtpProbeConfig, env: ProbeEnv, probes: int) -> tuple[float, float, int]:
    """(CPU of the probes, CPU of probes plus hand-over and save, failures)."""
    probe_cpu = total_cpu = 0.0
    failures = 0
    for _ in range(probes):
        began = time.thread_time()
        result = await smtp.run(config, env)
        probed = time.thread_time()
        pickle.loads(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))  # noqa: S301 -- our own bytes
        result_to_json(result)
        ended = time.thread_time()
        probe_cpu += probed - began
        total_cpu += ended - began
        failures += not result.ok
    return probe_cpu / probes, total_cpu / probes, failures


def _replayed(transcript: Transcript | None, times: int = 2000) -> float:
    """CPU seconds to record `transcript`'s lines again and take the transcript, per probe."""
    assert transcript is not None
    calls = [
        (TranscriptRecorder.note if line.direction.value == "--" else TranscriptRecorder.tls)
        if line.direction.value in ("--", "TLS")
        else (TranscriptRecorder.sent if line.direction.value == "C" else TranscriptRecorder.received)
        for line in transcript.lines
    ]
    texts = [line.text for line in transcript.lines]
    began = time.thread_time()
    for _ in range(times):
        recorder = TranscriptRecorder()
        for call, text in zip(calls, texts, strict=True):
            call(recorder, text)
        recorder.transcript()
    return (time.thread_time() - began) / times


def _carried(transcript: Transcript | None, times: int = 2000) -> float:
    """CPU seconds per probe of the transcript's pickle round trip and its saved JSON."""
    assert transcript is not None
    to_wire = adapter(Transcript).dump_python
    began = time.thread_time()
    for _ in range(times):
        pickle.loads(pickle.dumps(transcript, protocol=pickle.HIGHEST_PROTOCOL))  # noqa: S301 -- our own bytes
        json.dumps(to_wire(transcript, mode="json"))
    return (time.thread_time() - began) / times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--probes", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    pki = Pki.create(Path(tempfile.mkdtemp(prefix="transcript-bench-")))
    cert = pki.issue()
    env = ProbeEnv(resolver=build_resolver(DnsConfig()))
    report: dict[str, Any] = {}
    for mode in ("starttls", "none"):
        server = AiosmtpdServer(starttls=cert.server_context() if mode == "starttls" else None)
        with ServerThread(server) as running:
            config = SmtpProbeConfig(
                name="bench",
                host=SERVER_IP,
                port=running.port,
                tls=mode,
                ca_file=pki.ca_file,
                servername=SERVER_NAME,
                helo="bench.test",
                timeout=5,
            )
            figures: dict[str, list[tuple[float, float]]] = {"on": [], "off": []}
            failed = 0
            asyncio.run(_batch(config, env, 20))  # warm: contexts, caches, imports
            for round_ in range(args.rounds):
                for variant in ("on", "off") if round_ % 2 == 0 else ("off", "on"):
                    with recording(variant == "on"):
                        probe_cpu, total_cpu, failures = asyncio.run(_batch(config, env, args.probes))
                    figures[variant].append((probe_cpu, total_cpu))
                    failed += failures
            sample = asyncio.run(smtp.run(config, env)).transcript
            replayed = _replayed(sample)
            carried = _carried(sample)
        on_probe = statistics.median(f[0] for f in figures["on"])
        off_probe = statistics.median(f[0] for f in figures["off"])
        on_total = statistics.median(f[1] for f in figures["on"])
        off_total = statistics.median(f[1] for f in figures["off"])
        report[mode] = {
            "probe_us_on": round(on_probe * 1e6, 1),
            "probe_us_off": round(off_probe * 1e6, 1),
            "probe_added": f"{(on_probe / off_probe - 1) * 100:+.1f} %",
            "with_handover_and_save_us_on": round(on_total * 1e6, 1),
            "with_handover_and_save_us_off": round(off_total * 1e6, 1),
            "with_handover_and_save_added": f"{(on_total / off_total - 1) * 100:+.1f} %",
            "failed_probes": failed,
            "replayed_us": round(replayed * 1e6, 1),
            "replayed_share_of_probe_off": f"{replayed / off_probe * 100:.1f} %",
            "transcript_handover_and_save_us": round(carried * 1e6, 1),
            "replayed_and_carried_share_with_handover_and_save": f"{(replayed + carried) / off_total * 100:.1f} %",
        }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
