"""One copy of the facts that many stored results repeat: certificates, TLS parameters, extensions, strings."""

from __future__ import annotations

import sys
from collections.abc import Hashable
from dataclasses import replace
from typing import Any, TypeVar

from monitor.model.probe_result import ProbeResult
from monitor.model.results import MxRecord, MxResult, SmtpResult, TlsInfo
from monitor.model.transcript import Transcript

T = TypeVar("T")

POOL_LIMIT = 20_000  # distinct TLS facts and mappings kept; past it the pool starts afresh


class SharedFacts:
    """Results arrive unpickled from the probe process, each with its own copy of every fact. Run
    after run, the probes of one server report the same certificate, TLS parameters, banner and
    EHLO extensions, and every probe the same timing sources: 2.6 KB of a STARTTLS result's 3.5 KB. The
    lines of their transcripts repeat too: only the times differ (0.24 KB of a 17-line transcript's 0.47 KB).
    Kept once here, equal facts are one object however many results hold them.

    Results are immutable values, so sharing changes nothing a reader sees. Strings are interned
    (CPython frees an interned string with its last user: a banner that carries the time costs
    nothing once replaced). TLS facts and mappings, which change only with the server, are pooled;
    the pool is bounded: past POOL_LIMIT distinct facts it starts afresh."""

    def __init__(self, limit: int = POOL_LIMIT) -> None:
        self._pool: dict[Hashable, Any] = {}
        self._limit = limit

    def __len__(self) -> int:
        return len(self._pool)

    def result(self, result: ProbeResult) -> ProbeResult:
        if isinstance(result, SmtpResult):
            return self.smtp(result)
        if isinstance(result, MxResult):
            return replace(result, records=tuple(self._record(r) for r in result.records))
        if result.transcript is not None:  # a delivery result
            return replace(result, transcript=self._transcript(result.transcript))
        return result

    def smtp(self, result: SmtpResult) -> SmtpResult:
        return replace(
            result,
            host=_intern(result.host),
            tls_mode=_intern(result.tls_mode),
            address=_intern(result.address),
            error=_intern(result.error),
            banner=_intern(result.banner),
            extensions=self._mapping(result.extensions),
            timing_source=self._mapping(result.timing_source),
            tls=self._tls(result.tls),
            address_results=tuple(self.smtp(r) for r in result.address_results),
            transcript=self._transcript(result.transcript),
        )

    def _record(self, record: MxRecord) -> MxRecord:
        if record.probe is None and not record.address_probes:
            return record
        return replace(
            record,
            probe=self.smtp(record.probe) if record.probe is not None else None,
            address_probes=tuple(self.smtp(p) for p in record.address_probes),
        )

    def _tls(self, tls: TlsInfo | None) -> TlsInfo | None:
        if tls is None or tls.chain_der:
            return tls  # equality ignores the chain (kept for DANE): never merge two different ones
        return self.one(tls, tls)

    def _transcript(self, transcript: Transcript | None) -> Transcript | None:
        return transcript.shared(self.one) if transcript is not None else None

    def _mapping(self, mapping: dict[str, str]) -> dict[str, str]:
        if not mapping:
            return mapping
        return self.one((dict, *mapping.items()), mapping)

    def one(self, key: Hashable, value: T) -> T:
        """The value first pooled under `key` (an equal one), or `value`, now pooled."""
        found = self._pool.get(key)
        if found is None:
            if len(self._pool) >= self._limit:
                self._pool.clear()
            self._pool[key] = found = value
        return found


def _intern(text: str) -> str:
    # exact str only: sys.intern refuses subclasses
    return sys.intern(text) if type(text) is str else text
