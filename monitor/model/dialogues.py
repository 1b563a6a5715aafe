"""The recorded dialogues of any result, one per connection, for the readers that print them (the CLI's
--transcript, /probe?debug=true): an SMTP probe's (each address's), an MX check's probed exchanges, a
delivery run's."""

from __future__ import annotations

from monitor.model.delivery import DeliveryResult
from monitor.model.results import MxResult, SmtpResult
from monitor.model.transcript import Transcript


def dialogues(result: SmtpResult | MxResult | DeliveryResult) -> list[tuple[str, Transcript | None]]:
    """(what was talked to, its transcript or None when not recorded), in the result's order."""
    if isinstance(result, SmtpResult):
        return [
            (f"{each.address or each.host} port {each.port}", each.transcript)
            for each in result.address_results or (result,)
        ]
    if isinstance(result, MxResult):
        return [
            (f"MX {record.preference} {record.exchange} {probe.address}", probe.transcript)
            for record in result.records
            for probe in record.address_probes or ((record.probe,) if record.probe is not None else ())
        ]
    return [(result.name, result.transcript)]


def dialogues_text(result: SmtpResult | MxResult | DeliveryResult) -> str:
    """Each dialogue swaks style; under a heading when there are several (every address, every exchange)."""
    sections = dialogues(result)
    if not sections:
        return "=== no SMTP dialogue: no exchange was probed (probe_hosts is off)"
    texts = [(heading, _text(transcript)) for heading, transcript in sections]
    if len(texts) == 1:
        return texts[0][1]
    return "\n".join(f"=== {heading}\n{text}" for heading, text in texts)


def _text(transcript: Transcript | None) -> str:
    if transcript is None:
        return "=== no transcript recorded"
    return transcript.as_text() or "=== nothing was said"
