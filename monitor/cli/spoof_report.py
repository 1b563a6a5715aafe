"""The spoof test in the command line's output: the one-shot line's warnings and perfdata, and the rows of
`smtp-monitor status` (text and JSON)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # report.py is imported before pydantic is (see there)
    from monitor.model.results import MxResult
    from monitor.model.spoof import SpoofAttempt

MAX_TEXT = 160  # an exchange's reply, or why there is no verdict, in a terminal cell
_OUTCOMES = ("refused", "spoofable", "inconclusive", "error")


def _printable(text: str, limit: int = MAX_TEXT) -> str:
    """Server-written text for a terminal: bounded, no control character (an escape sequence) passes."""
    text = text[:limit]
    return text if text.isprintable() else "".join(c if c.isprintable() else "?" for c in text)


def _attempts(result: MxResult) -> list[SpoofAttempt]:
    return [attempt for record in result.records for attempt in record.spoof]


def landed(attempt: SpoofAttempt) -> str:
    """Where an accepted forgery was found and the receiving side's verdicts, e.g. "inbox (spf=fail dmarc=fail)"."""
    mailbox = attempt.mailbox
    if mailbox is None:
        return ""
    if not mailbox.found:
        return _printable(f"not found: {mailbox.error}")
    verdicts = " ".join(f"{m}={mailbox.verdict(m)}" for m in ("spf", "dkim", "dmarc") if mailbox.verdict(m) is not None)
    deleted = "" if mailbox.deleted else f", left: {mailbox.error}"
    return _printable(f"{mailbox.folder}" + (f" ({verdicts})" if verdicts else "") + deleted)


def spoof_warnings(result: MxResult) -> list[str]:
    """What a passing check still reports of its spoof test: attempts without a verdict."""
    return [
        _printable(f"SPOOF {a.exchange} ({a.address}): {a.outcome.value}: {a.reply or a.error}")
        for a in _attempts(result)
        if a.outcome.value in ("inconclusive", "error")
    ]


def spoof_perfdata(result: MxResult) -> str:
    """The perfdata of a check with a spoof test (" spoof_refused=N spoof_spoofable=N ..."); "" without."""
    attempts = _attempts(result)
    if not attempts:
        return ""
    outcomes = [a.outcome.value for a in attempts]
    return "".join(f" spoof_{outcome}={outcomes.count(outcome)}" for outcome in _OUTCOMES)


@dataclass(frozen=True, slots=True)
class SpoofRow:
    """One exchange address's spoof test as `status` shows it."""

    exchange: str
    address: str
    outcome: str
    step: str
    reply: str  # the deciding reply, or why there is no verdict (printable, bounded)
    source_spf: str
    landed: str  # folder and verdicts of an accepted forgery found in the mailbox; "" when not looked for


def spoof_rows(result: MxResult) -> tuple[SpoofRow, ...]:
    return tuple(
        SpoofRow(
            exchange=_printable(a.exchange),
            address=_printable(a.address),
            outcome=a.outcome.value,
            step=a.step.value,
            reply=_printable(a.reply or a.error),
            source_spf=a.source_spf,
            landed=landed(a),
        )
        for a in _attempts(result)
    )


def spoof_json(rows: tuple[SpoofRow, ...]) -> list[dict[str, Any]]:
    return [
        {
            "exchange": r.exchange,
            "address": r.address,
            "outcome": r.outcome,
            "step": r.step,
            "reply": r.reply,
            "source_spf": r.source_spf,
            "landed": r.landed,
        }
        for r in rows
    ]


SPOOF_HEADER = ("SPOOF TEST", "EXCHANGE", "ADDRESS", "OUTCOME", "STEP", "LANDED", "REPLY")


def spoof_cells(name: str, row: SpoofRow) -> tuple[str, ...]:
    return (name, row.exchange, row.address, row.outcome, row.step, row.landed or "-", row.reply or "-")
