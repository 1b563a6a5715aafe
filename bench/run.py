"""One command for every benchmark: `python bench/run.py [--quick] [--only smtp,mx,...]`."""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root: bench.*, tests.support.*

from bench.common import (
    OTHERS_LOAD,
    MachineWindow,
    Results,
    Settings,
    log,
    machine_info,
    others_summary,
    run_cleanups,
)
from bench.peers import Peers, install

SECTIONS = ("smtp", "mx", "scale", "delivery", "honesty", "snmp", "soak", "history")
RESULTS_DIR = Path(__file__).resolve().parent / "results"

Section = Callable[[Settings, Peers, Results], None]


def _section(name: str) -> Section:
    # imported here: a section's heavier imports load only when it runs
    if name in ("smtp", "mx"):
        from bench import smtp_mx

        return smtp_mx.smtp if name == "smtp" else smtp_mx.mx
    if name == "scale":
        from bench import scale

        return scale.run
    if name == "delivery":
        from bench import delivery

        return delivery.run
    if name == "honesty":
        from bench import honesty

        return honesty.run
    if name == "snmp":
        from bench import snmp

        return snmp.run
    if name == "history":
        from bench import history

        return history.run
    from bench import soak

    return soak.run


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes and windows (< 5 minutes)")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--soak-seconds", type=float, default=None, help="soak length (default 600, quick 60)")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy profiles of the agent (smtp, mx, scale) in bench/results/"
    )
    parser.add_argument(
        "--scale-minutes",
        type=float,
        default=0.0,
        help="keep the scale agent up this many minutes after its start, scraped and polled, and report its RSS"
        " then (22 is past history's journal moves at 10 and 20 minutes; default 0: RSS after the walks only)",
    )
    parser.add_argument("--no-install", action="store_true", help="do not apt-get/pip anything")
    args = parser.parse_args(argv)
    args.sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s): {', '.join(unknown)}")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    command = "python bench/run.py" + "".join(" " + shlex.quote(a) for a in argv)
    started = time.monotonic()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    workdir = RESULTS_DIR / "work"
    shutil.rmtree(workdir, ignore_errors=True)  # the last run's files stay until the next run
    workdir.mkdir()
    soak = args.soak_seconds if args.soak_seconds is not None else (60.0 if args.quick else 600.0)
    settings = Settings(
        quick=args.quick,
        workdir=workdir,
        results_dir=RESULTS_DIR,
        profile=args.profile,
        soak_seconds=soak,
        scale_minutes=args.scale_minutes,
    )
    if not args.no_install:
        install()
    idle = MachineWindow()
    idle.start()
    time.sleep(3.0)
    idle.stop()
    OTHERS_LOAD.clear()  # the header reports this sample on its own
    background = f"{idle.cores_busy:.2f} cores busy before the run"
    log(f"machine: {background}")
    results = Results()
    failed: list[str] = []
    peers = Peers(workdir)
    try:
        for name in args.sections:
            log(f"== section {name}")
            t0 = time.monotonic()
            try:
                _section(name)(settings, peers, results)
            except Exception as exc:
                failed.append(name)
                log(f"section {name} failed: {type(exc).__name__}: {exc}")
                traceback.print_exc()
                results.note(f"{name}: section failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            log(f"== section {name} took {time.monotonic() - t0:.0f} s")
    finally:
        run_cleanups()
    from bench.report import markdown

    machine = machine_info()
    machine["other load"] = f"{background}; during measurements {others_summary()}"
    text = markdown(results, machine, command, time.monotonic() - started)
    (RESULTS_DIR / "latest.md").write_text(text)
    print(text)
    log(f"table written to {RESULTS_DIR / 'latest.md'}; peers' files and logs under {workdir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
