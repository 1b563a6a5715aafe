"""One-shot output: monitoring-plugin status lines with perfdata, JSON, and exit codes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the results module loads pydantic, which `run` loads only after forking its config reader
    from monitor.model.delivery import DeliveryResult
    from monitor.model.results import MxResult, SmtpResult

# Monitoring-plugins convention (Nagios, Icinga, Naemon).
EXIT_OK, EXIT_WARNING, EXIT_CRITICAL, EXIT_UNKNOWN = 0, 1, 2, 3
_LABELS = {EXIT_OK: "OK", EXIT_WARNING: "WARNING", EXIT_CRITICAL: "CRITICAL", EXIT_UNKNOWN: "UNKNOWN"}


def _perfdata(timings: dict[str, float], total: float) -> str:
    parts = [f"{phase}={seconds:.6f}s" for phase, seconds in timings.items()]
    parts.append(f"total={total:.6f}s")
    return " ".join(parts)


def cert_warning(result: SmtpResult, warn_days: int, now: datetime | None = None) -> str:
    """Non-empty when the certificate (or its chain) expires within warn_days."""
    if result.tls is None or result.tls.cert is None:
        return ""
    from monitor.probes.tls import days_left  # here: the agent imports this module, not the probes

    now = now or datetime.now(UTC)
    expiry = result.tls.chain_not_after or result.tls.cert.not_after
    left = days_left(expiry, now)
    if left < warn_days:
        return f"certificate expires in {left} days ({expiry:%Y-%m-%d})"
    return ""


def smtp_exit_code(result: SmtpResult, warn_days: int) -> int:
    if not result.ok:
        return EXIT_CRITICAL
    return EXIT_WARNING if cert_warning(result, warn_days) else EXIT_OK


def smtp_line(result: SmtpResult, warn_days: int) -> str:
    code = smtp_exit_code(result, warn_days)
    target = f"{result.host}:{result.port}"
    if result.ok:
        words = [target]
        if result.tls is not None:
            words += [result.tls_mode.upper(), result.tls.version]
            if not result.tls.verified:
                words.append("(certificate not verified)")
        warning = cert_warning(result, warn_days)
        if warning:
            words.append(warning)
        words.append(f"{result.total:.3f}s")
        summary = " ".join(words)
    else:
        reason = result.reason.value if result.reason else "?"
        phase = result.phase.value if result.phase else "?"
        summary = f"{target} failed in {phase}: {reason}: {result.error}"
    return f"SMTP {_LABELS[code]} - {summary} | {_perfdata(result.timings, result.total)}"


def mx_warnings(result: MxResult) -> list[str]:
    """What a passing check still reports: warning-level policy findings, DNSBL lookups without verdict."""
    warned = [f for f in result.policy_findings if f.level.value == "warning"]
    found = [f"{f.record.upper()} {f.finding}: {f.detail}" for f in warned]
    if result.dnsbl is not None:
        found += [f"DNSBL {a.zone} {a.address}: {a.outcome.value}: {a.error}" for a in result.dnsbl.failed]
    from monitor.cli.spoof_report import spoof_warnings

    return found + spoof_warnings(result)


def mx_exit_code(result: MxResult) -> int:
    """OK; WARNING for a passing check with warnings (p=none, a refused DNSBL query); CRITICAL when failed."""
    if not result.ok:
        return EXIT_CRITICAL
    return EXIT_WARNING if mx_warnings(result) else EXIT_OK


def _mx_perfdata(result: MxResult) -> str:
    perf = _perfdata(result.timings, result.total)
    if result.policy_findings:
        levels = [f.level.value for f in result.policy_findings]
        perf += f" policy_warnings={levels.count('warning')} policy_errors={levels.count('error')}"
    if result.dnsbl is not None:
        perf += f" dnsbl_listed={len(result.dnsbl.listed)} dnsbl_queries={result.dnsbl.queries}"
    from monitor.cli.spoof_report import spoof_perfdata

    return perf + spoof_perfdata(result)


def mx_line(result: MxResult) -> str:
    code = mx_exit_code(result)
    exchanges = ", ".join(f"{r.preference} {r.exchange}" for r in result.records)
    if result.ok:
        kind = "implicit MX (no MX record)" if result.implicit_mx else f"{len(result.records)} MX"
        summary = f"{result.domain} {kind} ({exchanges}) {result.total:.3f}s"
        warnings = mx_warnings(result)
        if warnings:
            summary += "; " + "; ".join(warnings[:5]) + (f" and {len(warnings) - 5} more" if len(warnings) > 5 else "")
    else:
        reason = result.reason.value if result.reason else "?"
        summary = f"{result.domain} {reason}: {result.error}"
    return f"MX {_LABELS[code]} - {summary} | {_mx_perfdata(result)}"


def _hops_listed(result: DeliveryResult) -> list[str]:
    """A delivery run's DNSBL findings on its hops' sending addresses: listings and lookups without verdict."""
    if result.dnsbl is None:
        return []
    listed = [f"{a.address} listed in {a.zone} ({','.join(a.codes)})" for a in result.dnsbl.listed]
    return listed + [f"{a.address} in {a.zone}: {a.outcome.value}" for a in result.dnsbl.failed]


def delivery_exit_code(result: DeliveryResult) -> int:
    """OK; WARNING when the message is late (it may still arrive), or delivered through a hop whose address
    a DNSBL lists (or would not answer for); CRITICAL for every other failure."""
    if result.ok:
        return EXIT_WARNING if _hops_listed(result) else EXIT_OK
    return EXIT_WARNING if result.reason is not None and result.reason.value == "late" else EXIT_CRITICAL


def delivery_line(result: DeliveryResult, deliver_within: float) -> str:
    code = delivery_exit_code(result)
    if result.ok:
        where = f" in {result.folder}" if result.folder else ""
        summary = f"{result.name}: delivered{where} in {result.latency or 0:.3f}s over {len(result.hops)} hops"
        verdicts = " ".join(f"{v.method}={v.result}" for v in result.verdicts if v.method in ("spf", "dkim", "dmarc"))
        if verdicts:
            summary += f" ({verdicts})"
        if _hops_listed(result):
            summary += "; DNSBL: " + "; ".join(_hops_listed(result)[:5])
    else:
        reason = result.reason.value if result.reason else "?"
        phase = result.phase.value if result.phase else "?"
        summary = f"{result.name} failed in {phase}: {reason}: {result.error}"
    perf = [f"latency={result.latency:.3f}s;{deliver_within:g}" if result.latency is not None else "latency=U"]
    perf.append(f"hops={len(result.hops)}")
    perf += [f"hop{i}_delay={hop.delay:.0f}s" for i, hop in enumerate(result.hops, 1) if hop.delay is not None]
    perf.append(f"total={result.total:.6f}s")
    return f"DELIVERY {_LABELS[code]} - {summary} | {' '.join(perf)}"


def transcript_text(result: SmtpResult | MxResult | DeliveryResult) -> str:
    """The recorded dialogue(s) of a result, swaks style, for `--transcript`."""
    from monitor.model.dialogues import dialogues_text

    return dialogues_text(result)


def as_json(result: SmtpResult | MxResult | DeliveryResult) -> str:
    return json.dumps(result.as_dict(), indent=2, sort_keys=False)
