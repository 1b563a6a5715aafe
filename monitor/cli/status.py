"""`smtp-monitor status`: a terminal table of every probe's status, read from the state database."""

from __future__ import annotations

import json
import logging
import sqlite3
import sys
import time
from typing import Any

from monitor.cli.report import EXIT_CRITICAL, EXIT_OK, EXIT_UNKNOWN
from monitor.config.schema import Config, MxCheckConfig, SmtpProbeConfig
from monitor.model.probe_result import ProbeResult, result_from_json
from monitor.state.persistence import STATE_FILE

log = logging.getLogger("smtp_monitor.status")


def _age(epoch: float | None, now: float) -> str:
    if not epoch:
        return "never"
    seconds = int(now - epoch)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def read_rows(config: Config) -> dict[str, dict[str, Any]]:
    path = config.agent.state_dir / STATE_FILE
    # Read-only URI: looking must never create or lock the agent's database.
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2) as conn:
        cursor = conn.execute(
            "SELECT name, status, consecutive_failures, runs, last_success, last_change, last_result FROM probe_state"
        )
        names = [c[0] for c in cursor.description]
        return {row[0]: dict(zip(names, row, strict=True)) for row in cursor.fetchall()}


def saved_result(name: str, text: str | None) -> ProbeResult | None:
    """A probe's last saved result; None when there is none, or one the agent would not restore either."""
    if not text:
        return None
    try:
        return result_from_json(text)
    except ValueError as exc:
        log.warning("saved result of %s is unusable (%s)", name, exc)
        return None


def print_status(config: Config, as_json: bool = False) -> int:
    """One line per configured probe; exit 2 when any is failed, 3 without a state database."""
    try:
        rows = read_rows(config)
    except sqlite3.Error as exc:
        print(f"smtp-monitor: cannot read {config.agent.state_dir / STATE_FILE}: {exc}", file=sys.stderr)
        return EXIT_UNKNOWN
    now = time.time()
    table = []
    probes: list[SmtpProbeConfig | MxCheckConfig] = [*config.smtp, *config.mx]
    for probe in probes:
        row = rows.get(probe.name, {})
        result = saved_result(probe.name, row.get("last_result"))
        if isinstance(probe, SmtpProbeConfig):
            kind, target = "smtp", f"{probe.host}:{probe.effective_port}"
        else:
            kind, target = "mx", probe.domain
        phase = reason = error = ""
        if result is not None:
            phase = result.phase.value if result.phase else ""
            reason = result.reason.value if result.reason else ""
            error = "" if result.ok else result.error
        table.append(
            {
                "name": probe.name,
                "kind": kind,
                "target": target,
                "status": row.get("status", "unknown"),
                "failures": row.get("consecutive_failures", 0),
                "runs": row.get("runs", 0),
                "last_success": row.get("last_success"),
                "last_change": row.get("last_change"),
                "phase": phase,
                "reason": reason,
                "error": error,
            }
        )
    if as_json:
        print(json.dumps(table, indent=2))
    else:
        header = ("NAME", "KIND", "TARGET", "STATUS", "FAILS", "LAST SUCCESS", "CHANGED", "LAST ERROR")
        lines = [header] + [
            (
                r["name"],
                r["kind"],
                r["target"],
                r["status"],
                str(r["failures"]),
                _age(r["last_success"], now),
                _age(r["last_change"], now),
                f"{r['phase']}/{r['reason']}: {r['error']}"[:80] if r["error"] else "",
            )
            for r in table
        ]
        widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
        for line in lines:
            print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=False)) + "  " + line[-1])
    return EXIT_CRITICAL if any(r["status"] == "failed" for r in table) else EXIT_OK
