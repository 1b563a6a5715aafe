"""The one dispatch from a probe's config to its probe, used by the scheduler and by /probe.

`run` never raises (but for cancellation): a probe that raises instead of returning is a bug, and
its result says so (phase and reason "internal")."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from monitor.config.schema import DeliveryProbeConfig, MxCheckConfig, SmtpProbeConfig
from monitor.model.delivery import DeliveryPhase, DeliveryResult, PendingMessage
from monitor.model.failures import LookupFailure, ProbeFailure, classify
from monitor.model.probe_result import ProbeResult
from monitor.model.results import MxResult, Phase, Reason, SmtpResult
from monitor.probes import ProbeEnv, delivery, mx, resolve, smtp

log = logging.getLogger("smtp_monitor.probes")

AnyProbeConfig = SmtpProbeConfig | MxCheckConfig | DeliveryProbeConfig
# A runner takes its probe's config, the shared environment and, for delivery probes, the messages
# earlier runs left pending (the others ignore them).
ProbeRunner = Callable[[Any, ProbeEnv, Sequence[PendingMessage]], Awaitable[ProbeResult]]


async def _smtp_run(config: SmtpProbeConfig, env: ProbeEnv, _pending: Sequence[PendingMessage]) -> ProbeResult:
    return await smtp.run(config, env)


async def _mx_run(config: MxCheckConfig, env: ProbeEnv, _pending: Sequence[PendingMessage]) -> ProbeResult:
    return await mx.run(config, env)


RUNNERS: dict[type, ProbeRunner] = {
    SmtpProbeConfig: _smtp_run,
    MxCheckConfig: _mx_run,
    DeliveryProbeConfig: delivery.run,
}


def internal_failure(probe: AnyProbeConfig, started_at: float, error: str) -> ProbeResult:
    """The result of a probe that raised instead of returning: a bug, recorded as a failure."""
    if isinstance(probe, DeliveryProbeConfig):
        return DeliveryResult(
            name=probe.name,
            started_at=started_at,
            ok=False,
            phase=DeliveryPhase.INTERNAL,
            reason=Reason.INTERNAL,
            error=error,
        )
    if isinstance(probe, SmtpProbeConfig):
        return SmtpResult(
            host=probe.host,
            port=probe.effective_port,
            tls_mode=probe.tls,
            started_at=started_at,
            ok=False,
            phase=Phase.INTERNAL,
            reason=Reason.INTERNAL,
            error=error,
        )
    return MxResult(
        domain=probe.domain,
        started_at=started_at,
        ok=False,
        phase=Phase.INTERNAL,
        reason=Reason.INTERNAL,
        error=error,
    )


async def run(probe: AnyProbeConfig, env: ProbeEnv, pending: Sequence[PendingMessage] = ()) -> ProbeResult:
    """Run the probe `probe` configures; every outcome, a bug included, is a result.

    `pending`: a delivery probe's messages from earlier runs, not yet seen (DeliveryLedger.pending)."""
    started_at = time.time()
    try:
        return await RUNNERS[type(probe)](probe, env, pending)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.exception("probe %s raised instead of returning a result", probe.name)
        return internal_failure(probe, started_at, f"internal error: {type(exc).__name__}: {exc}")


@dataclass(frozen=True, slots=True)
class Refused:
    """A pinned probe not run: its target resolved to an address it may not reach."""

    why: str


async def run_pinned(
    spec: SmtpProbeConfig, env: ProbeEnv, budget: float, refusal: Callable[[str, list[str]], str | None]
) -> SmtpResult | Refused:
    """An SMTP probe that resolves its host once, lets `refusal` judge every address (None: allowed),
    then probes the first: a second lookup by the probe could answer differently (DNS rebinding to
    127.0.0.1). The lookup counts against `budget` (seconds for the whole probe) and is reported as
    the resolve phase."""
    if _is_address(spec.host):
        return await _smtp(spec, env)
    timeout = budget
    started_at, t0 = time.time(), time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            addresses = await resolve.addresses(env.resolver, spec.host)
    except (LookupFailure, TimeoutError) as exc:
        failure = classify(exc, timeout)
        return _unresolved(spec, started_at, time.perf_counter() - t0, _as_dns(failure))
    why = refusal(spec.host, addresses)
    if why is not None:
        return Refused(why)
    resolved = time.perf_counter() - t0
    pinned = spec.model_copy(
        update={
            "host": addresses[0],
            "servername": spec.servername or spec.host,
            "timeout": max(timeout - resolved, 0.001),
        }
    )
    result = await _smtp(pinned, env)
    timings = {**result.timings, Phase.RESOLVE.value: resolved}
    return replace(result, host=spec.host, started_at=started_at, timings=timings, total=result.total + resolved)


async def _smtp(spec: SmtpProbeConfig, env: ProbeEnv) -> SmtpResult:
    result = await run(spec, env)
    assert isinstance(result, SmtpResult)
    return result


def _as_dns(failure: ProbeFailure) -> ProbeFailure:
    return failure.as_dns() if isinstance(failure, LookupFailure) else failure


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _unresolved(spec: SmtpProbeConfig, started_at: float, seconds: float, failure: ProbeFailure) -> SmtpResult:
    return SmtpResult(
        host=spec.host,
        port=spec.effective_port,
        tls_mode=spec.tls,
        started_at=started_at,
        ok=False,
        phase=Phase.RESOLVE,
        reason=failure.reason,
        error=failure.message,
        timings={Phase.RESOLVE.value: seconds},
        total=seconds,
    )
