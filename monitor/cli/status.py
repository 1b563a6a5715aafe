"""`smtp-monitor status`: a terminal table of every probe's status, read from the state database."""

from __future__ import annotations

import json
import logging
import sqlite3
import sys
import time
from dataclasses import dataclass
from typing import Any

from monitor.cli.report import EXIT_CRITICAL, EXIT_OK, EXIT_UNKNOWN
from monitor.cli.spoof_report import SPOOF_HEADER, SpoofRow, spoof_cells, spoof_json, spoof_rows
from monitor.config.schema import Config, DeliveryProbeConfig, MxCheckConfig, SmtpProbeConfig
from monitor.model.delivery import DeliveryLedger, DeliveryResult
from monitor.model.facts import DnsblOutcome, FindingLevel
from monitor.model.probe_result import ProbeResult, result_from_json
from monitor.model.results import MxResult
from monitor.model.wire import adapter
from monitor.state.persistence import STATE_FILE

log = logging.getLogger("smtp_monitor.status")

AUTH_METHODS = ("spf", "dkim", "dmarc")
MAX_SERVER_TEXT = 80  # a verdict or queue ID as a server wrote it, in a terminal cell


@dataclass(frozen=True, slots=True)
class SavedProbe:
    """One probe's row of the state database, as `status` shows it."""

    status: str = "unknown"
    consecutive_failures: int = 0
    runs: int = 0
    last_success: float | None = None
    last_change: float | None = None
    last_result: ProbeResult | None = None
    delivery: DeliveryLedger | None = None  # delivery probes: pending messages, late and lost counts


def _age(epoch: float | None, now: float) -> str:
    if not epoch:
        return "never"
    seconds = int(now - epoch)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def _printable(text: str, limit: int = MAX_SERVER_TEXT) -> str:
    """Server-written text for a terminal: bounded, and no control character (an escape sequence) passes."""
    text = text[:limit]
    return text if text.isprintable() else "".join(c if c.isprintable() else "?" for c in text)


_SELECT = (
    "SELECT name, status, consecutive_failures, runs, last_success, last_change, last_result, delivery FROM probe_state"
)
_SELECT_SCHEMA_1 = _SELECT.replace(" delivery FROM", " NULL FROM")


def read_rows(config: Config) -> dict[str, SavedProbe]:
    path = config.agent.state_dir / STATE_FILE
    # Read-only URI: looking must never create or lock the agent's database.
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2) as conn:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(probe_state)")}
        # A schema 1 file (an agent older than delivery probes, not yet restarted) has no delivery column.
        rows = conn.execute(_SELECT if "delivery" in columns else _SELECT_SCHEMA_1).fetchall()
    return {
        name: SavedProbe(
            status=str(status),
            consecutive_failures=int(failures),
            runs=int(runs),
            last_success=last_success,
            last_change=last_change,
            last_result=saved_result(name, result),
            delivery=saved_ledger(name, ledger),
        )
        for name, status, failures, runs, last_success, last_change, result, ledger in rows
    }


def saved_result(name: str, text: str | None) -> ProbeResult | None:
    """A probe's last saved result; None when there is none, or one the agent would not restore either."""
    if not text:
        return None
    try:
        return result_from_json(text)
    except ValueError as exc:
        log.warning("saved result of %s is unusable (%s)", name, exc)
        return None


def saved_ledger(name: str, text: str | None) -> DeliveryLedger | None:
    """A delivery probe's saved ledger; None for other kinds, and for one the agent would not restore."""
    if not text:
        return None
    try:
        ledger: DeliveryLedger = adapter(DeliveryLedger).validate_json(text)
    except ValueError as exc:
        log.warning("saved delivery ledger of %s is unusable (%s)", name, exc)
        return None
    return ledger


@dataclass(frozen=True, slots=True)
class DeliveryFacts:
    """What `status` shows of a delivery probe beyond the other kinds' columns."""

    last_latency: float | None  # of the latest message that arrived, in time or late
    pending: int
    late: int
    lost: int
    folder: str  # of the last run's message: inbox, junk; "" when it did not arrive (or POP3)
    verdicts: dict[str, str]  # spf, dkim, dmarc as the receiving side wrote them, for those it gave
    queue_id: str  # of the last submission


def delivery_facts(ledger: DeliveryLedger | None, result: ProbeResult | None) -> DeliveryFacts:
    ledger = ledger or DeliveryLedger()
    arrived = isinstance(result, DeliveryResult) and result.arrived_at is not None
    verdicts: dict[str, str] = {}
    if isinstance(result, DeliveryResult) and arrived:
        verdicts = {m: _printable(v) for m in AUTH_METHODS if (v := result.verdict(m)) is not None}
    return DeliveryFacts(
        last_latency=ledger.last_latency,
        pending=len(ledger.pending),
        late=ledger.late,
        lost=ledger.lost,
        folder=result.folder if isinstance(result, DeliveryResult) and arrived else "",
        verdicts=verdicts,
        queue_id=_printable(result.queue_id) if isinstance(result, DeliveryResult) else "",
    )


@dataclass(frozen=True, slots=True)
class MxFacts:
    """What `status` shows of an MX check's DNSBL lookups and policy findings (the last run's)."""

    dnsbl_lookups: int  # address x zone answers
    listed: tuple[str, ...]  # "address in zone (codes): reason"
    no_verdict: tuple[str, ...]  # refused, unexpected and failed lookups
    policy: tuple[tuple[str, str], ...]  # (level, "RECORD finding: detail") of findings that are not ok


_FACT = 3 * MAX_SERVER_TEXT  # one listing or finding: an address, a zone, the codes and a bounded reason


def mx_facts(result: ProbeResult | None) -> MxFacts | None:
    """An MX check's DNSBL lookups and policy findings, a delivery probe's DNSBL lookups of its hops; None
    for a run that had neither."""
    if isinstance(result, MxResult):
        dnsbl, findings = result.dnsbl, result.policy_findings
    elif isinstance(result, DeliveryResult):
        dnsbl, findings = result.dnsbl, ()
    else:
        return None
    if dnsbl is None and not findings:
        return None
    answers = dnsbl.answers if dnsbl is not None else ()
    listed = tuple(
        _printable(f"{a.address} in {a.zone} ({','.join(a.codes)})" + (f": {a.reason}" if a.reason else ""), _FACT)
        for a in answers
        if a.outcome is DnsblOutcome.LISTED
    )
    no_verdict = tuple(
        _printable(f"{a.address} in {a.zone}: {a.outcome.value}: {a.error}", _FACT)
        for a in answers
        if a.outcome not in (DnsblOutcome.LISTED, DnsblOutcome.NOT_LISTED)
    )
    policy = tuple(
        (f.level.value, _printable(f"{f.record.upper()} {f.finding}: {f.detail}", _FACT))
        for f in findings
        if f.level is not FindingLevel.OK
    )
    return MxFacts(len(answers), listed, no_verdict, policy)


def _target(probe: SmtpProbeConfig | MxCheckConfig | DeliveryProbeConfig) -> tuple[str, str]:
    """(kind, target) of a probe for the table."""
    if isinstance(probe, SmtpProbeConfig):
        return "smtp", f"{probe.host}:{probe.effective_port}"
    if isinstance(probe, MxCheckConfig):
        return "mx", probe.domain
    submit = probe.submit
    sent = f"{submit.host}:{submit.effective_port}" if submit.via == "submission" else f"mx:{probe.recipient_domain}"
    mailbox = probe.mailbox
    return "delivery", f"{sent} -> {mailbox.protocol} {mailbox.host}:{mailbox.effective_port}"


def print_status(config: Config, as_json: bool = False) -> int:
    """One line per configured probe, then delivery probes' facts; exit 2 when any is failed, 3 without a
    state database."""
    try:
        rows = read_rows(config)
    except sqlite3.Error as exc:
        print(f"smtp-monitor: cannot read {config.agent.state_dir / STATE_FILE}: {exc}", file=sys.stderr)
        return EXIT_UNKNOWN
    now = time.time()
    table: list[dict[str, Any]] = []
    facts: dict[str, DeliveryFacts] = {}
    checks: dict[str, MxFacts] = {}
    spoof_tests: dict[str, tuple[SpoofRow, ...]] = {}
    probes: list[SmtpProbeConfig | MxCheckConfig | DeliveryProbeConfig] = [*config.smtp, *config.mx, *config.delivery]
    for probe in probes:
        row = rows.get(probe.name, SavedProbe())
        result = row.last_result
        kind, target = _target(probe)
        phase = reason = error = ""
        if result is not None:
            phase = result.phase.value if result.phase else ""
            reason = result.reason.value if result.reason else ""
            error = "" if result.ok else result.error
        entry: dict[str, Any] = {
            "name": probe.name,
            "kind": kind,
            "target": target,
            "status": row.status,
            "failures": row.consecutive_failures,
            "runs": row.runs,
            "last_success": row.last_success,
            "last_change": row.last_change,
            "phase": phase,
            "reason": reason,
            "error": error,
            "delivery": None,
            "mx": None,
            "spoof": None,
        }
        spoofed = spoof_rows(result) if isinstance(result, MxResult) else ()
        if spoofed:
            spoof_tests[probe.name] = spoofed
            entry["spoof"] = spoof_json(spoofed)
        if isinstance(probe, DeliveryProbeConfig):
            facts[probe.name] = delivery_facts(row.delivery, result)
            entry["delivery"] = _facts_json(facts[probe.name])
        found = mx_facts(result)
        if found is not None and isinstance(probe, MxCheckConfig):
            checks[probe.name] = found
            entry["mx"] = _mx_json(found)
        elif found is not None and isinstance(probe, DeliveryProbeConfig):
            checks[probe.name] = found
            entry["delivery"]["hops_dnsbl"] = {k: v for k, v in _mx_json(found).items() if k != "policy"}
        table.append(entry)
    if as_json:
        print(json.dumps(table, indent=2))
    else:
        header = ("NAME", "KIND", "TARGET", "STATUS", "FAILS", "LAST SUCCESS", "CHANGED", "LAST ERROR")
        _print_columns(
            [header]
            + [
                (
                    r["name"],
                    r["kind"],
                    r["target"],
                    r["status"],
                    str(r["failures"]),
                    _age(r["last_success"], now),
                    _age(r["last_change"], now),
                    _printable(f"{r['phase']}/{r['reason']}: {r['error']}") if r["error"] else "",
                )
                for r in table
            ]
        )
        if facts:
            print()
            _print_columns(
                [("DELIVERY", "LAST LATENCY", "PENDING", "LATE", "LOST", "FOLDER", "QUEUE ID", "AUTH")]
                + [_facts_cells(name, f) for name, f in facts.items()]
            )
        if checks:
            print()
            _print_columns(
                [("PROBE", "DNSBL", "POLICY", "FINDINGS")] + [_mx_cells(name, f) for name, f in checks.items()]
            )
        if spoof_tests:
            print()
            _print_columns([SPOOF_HEADER] + [spoof_cells(n, row) for n, rows in spoof_tests.items() for row in rows])
    return EXIT_CRITICAL if any(r["status"] == "failed" for r in table) else EXIT_OK


def _mx_json(facts: MxFacts) -> dict[str, Any]:
    return {
        "dnsbl_lookups": facts.dnsbl_lookups,
        "dnsbl_listed": list(facts.listed),
        "dnsbl_no_verdict": list(facts.no_verdict),
        "policy": [{"level": level, "finding": text} for level, text in facts.policy],
    }


def _mx_cells(name: str, facts: MxFacts) -> tuple[str, ...]:
    dnsbl = f"{len(facts.listed)} listed, {len(facts.no_verdict)} no verdict of {facts.dnsbl_lookups}"
    levels = [level for level, _ in facts.policy]
    policy = f"{levels.count('error')} errors, {levels.count('warning')} warnings"
    details = [*(f"listed {text}" for text in facts.listed), *facts.no_verdict, *(text for _, text in facts.policy)]
    shown = "; ".join(details[:4]) + (f" and {len(details) - 4} more" if len(details) > 4 else "")
    return (name, dnsbl if facts.dnsbl_lookups else "-", policy, _printable(shown, 4 * MAX_SERVER_TEXT) or "-")


def _facts_json(facts: DeliveryFacts) -> dict[str, Any]:
    return {
        "last_latency": facts.last_latency,
        "pending": facts.pending,
        "late": facts.late,
        "lost": facts.lost,
        "folder": facts.folder,
        "verdicts": facts.verdicts,
        "queue_id": facts.queue_id,
    }


def _facts_cells(name: str, facts: DeliveryFacts) -> tuple[str, ...]:
    latency = f"{facts.last_latency:.3f}s" if facts.last_latency is not None else "-"
    auth = " ".join(f"{method}={result}" for method, result in facts.verdicts.items())
    return (
        name,
        latency,
        str(facts.pending),
        str(facts.late),
        str(facts.lost),
        facts.folder or "-",
        facts.queue_id or "-",
        auth or "-",
    )


def _print_columns(lines: list[tuple[str, ...]]) -> None:
    """Columns padded to their widest cell; the last one (free text) is not padded."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]) - 1)]
    for line in lines:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=False)) + "  " + line[-1])


def print_transcripts(config: Config, name: str) -> int:
    """`status --transcript NAME`: the saved dialogues of one probe, its last failed run's and its last run's
    (what survives a restart of the agent); exit 3 when the probe or the state database is not there."""
    from monitor.model.dialogues import dialogues_text

    path = config.agent.state_dir / STATE_FILE
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2) as conn:
            columns = {row[1] for row in conn.execute("PRAGMA table_info(probe_state)")}
            failure_column = "last_failure" if "last_failure" in columns else "NULL"  # before schema 3: none
            row = conn.execute(
                f"SELECT last_result, {failure_column} FROM probe_state WHERE name=?",  # noqa: S608 -- fixed names
                (name,),
            ).fetchone()
    except sqlite3.Error as exc:
        print(f"smtp-monitor: cannot read {path}: {exc}", file=sys.stderr)
        return EXIT_UNKNOWN
    if row is None:
        print(f"smtp-monitor: no saved state of a probe named {name!r}", file=sys.stderr)
        return EXIT_UNKNOWN
    last = saved_result(name, row[0])
    failed = last if row[1] == "=" else saved_result(name, row[1])
    for heading, result in (("last failed run", failed), ("last run", last)):
        if result is None:
            print(f"=== {heading}: none saved")
            continue
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(result.started_at))
        outcome = "ok" if result.ok else f"failed in {result.phase.value if result.phase else '?'}"
        print(f"=== {heading}: {when}, {outcome}")
        print(dialogues_text(result))
    return EXIT_OK
