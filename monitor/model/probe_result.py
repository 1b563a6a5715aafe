"""Any probe's result, and its saved JSON form: one union over the kinds of probe."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import pydantic_core
from pydantic import Discriminator, Tag

from monitor.model.delivery import DeliveryResult
from monitor.model.results import MxResult, SmtpResult
from monitor.model.wire import adapter

ProbeResult = SmtpResult | MxResult | DeliveryResult
ProbeKind = Literal["smtp", "mx", "delivery"]


def result_kind(result: ProbeResult) -> ProbeKind:
    if isinstance(result, SmtpResult):
        return "smtp"
    return "delivery" if isinstance(result, DeliveryResult) else "mx"


def _kind(value: Any) -> str:
    # As earlier releases read saved results: anything but "smtp" or "delivery" is an MX check's.
    if isinstance(value, dict):
        kind = value.get("kind")
        return kind if kind in ("smtp", "delivery") else "mx"
    return result_kind(value)


_ProbeResultWire = Annotated[
    Annotated[SmtpResult, Tag("smtp")] | Annotated[MxResult, Tag("mx")] | Annotated[DeliveryResult, Tag("delivery")],
    Discriminator(_kind),
]


def result_from_dict(d: dict[str, Any]) -> ProbeResult:
    """The inverse of as_dict(), for results saved across a restart (pydantic.ValidationError, a ValueError, if
    `d` is no saved result)."""
    result: ProbeResult = adapter(_ProbeResultWire).validate_python(d)
    return result


def result_to_json(result: ProbeResult) -> str:
    """The saved text of a result (the state database): json.dumps of as_dict(), as earlier releases saved it.

    Not pydantic's dump_json: it writes floats its own way (1.2e-05 as 0.000012)."""
    return json.dumps(result.as_dict())


def result_from_json(text: str | bytes) -> ProbeResult:
    """A saved result back (ValueError if the text is no saved result).

    Parsed by pydantic-core's JSON reader, then validate_python: validate_json is no faster here, as every
    dataclass's before-validator needs the Python dict anyway. A restart reads 10,000 of them before the
    agent is ready: their JSON took 0.27 s with json.loads and takes 0.14 s this way (2026-12-07, 2 kB
    SMTP results). What it refuses and json.loads reads (a lone surrogate that json.dumps escaped,
    nesting past its limit) goes to json.loads."""
    try:
        data = pydantic_core.from_json(text)
    except ValueError:
        try:
            data = json.loads(text)
        except RecursionError:  # a hand-made row nested thousands deep: refused like any other bad row
            raise ValueError("saved result nested too deeply") from None
    return result_from_dict(data)
