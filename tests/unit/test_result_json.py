"""The JSON of results (`--json`, the state database) through the one TypeAdapter mechanism (monitor.model.wire).

tests/fixtures/result_json/ holds `--json` of the results built below as the hand-written as_dict() of
177409f printed them (the last commit before the TypeAdapter): key names, key order, ISO datetimes,
None and number formats. Every optional part is filled somewhere, so a key that moves, vanishes or
changes form fails here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from monitor.cli import report
from monitor.config.schema import SmtpProbeConfig
from monitor.model.facts import DaneFacts, MtaStsFacts, MtaStsPolicyFacts, PolicyRecord
from monitor.model.probe_result import result_from_dict
from monitor.model.results import (
    CertInfo,
    MxRecord,
    MxResult,
    Phase,
    Reason,
    Reply,
    ReverseDns,
    SmtpResult,
    Status,
    TlsInfo,
)
from monitor.state.persistence import StateDB, restore_into
from monitor.state.store import ResultsStore

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "result_json"

CERT = CertInfo(
    "CN=mx.t\u00ebst",
    "CN=ca",
    ("DNS:a", "DNS:b"),
    datetime(2000, 1, 1, tzinfo=UTC),
    datetime(3000, 1, 1, 12, 30, 5, 123456, tzinfo=timezone(timedelta(hours=2))),
    "4b",
    "ce",
)
NAIVE_CERT = CertInfo("CN=x", "CN=y", (), datetime(2001, 2, 3), datetime(2002, 2, 3), "1", "2")


def smtp(i: int, **fields: Any) -> SmtpResult:
    return replace(SmtpResult(f"h{i}", 25 + i, "starttls", 1.5e9 + i / 7, True), **fields)


def smtp_result() -> SmtpResult:
    """Every field set: a failed reply, TLS with a certificate, per-address results."""
    return smtp(
        1,
        ok=False,
        phase=Phase.RCPT,
        reason=Reason.REPLY,
        error="550 n\u00f6",
        reply=Reply(550, ("5.1.1 user unknown",)),
        address="::1",
        timings={"connect": 0.0, "banner": 1e-07, "ehlo": 0.25},
        total=3.5,
        banner="220 x",
        helo_fallback=True,
        extensions={"SIZE": "1", "AUTH": "PLAIN"},
        tls=TlsInfo("TLSv1.3", "X", True, "", CERT, datetime(2030, 1, 1, tzinfo=UTC), chain_der=(b"\x82\x00",)),
        timing_source={"connect": "kernel"},
        address_results=(
            smtp(3, tls=TlsInfo("TLSv1.2", "Y", False, "self-signed", NAIVE_CERT)),
            smtp(4, ok=False, phase=Phase.CONNECT, reason=Reason.TIMEOUT, tls=TlsInfo("TLSv1.2", "Y", False)),
        ),
    )


def mx_result() -> MxResult:
    """Every field set: records with probes, reverse DNS and DANE (and one without), every fact."""
    dane = DaneFacts(
        "_25._tcp.mx1", ("3 1 1 ab",), True, "", 1, True, "3 1 1 ab", "ok", "alias.test", True, ("mx1", "alias.test")
    )
    policy = MtaStsPolicyFacts("enforce", None, ("*.x",), True, "", "", 200, ("mx2",), datetime(2031, 1, 1, tzinfo=UTC))
    return MxResult(
        "e.test",
        1.7e9 + 0.1,
        False,
        Phase.POLICY,
        Reason.POLICY_RECORD,
        "SPF: x",
        records=(
            MxRecord(
                10,
                "mx1",
                ("1.2.3.4", "::1"),
                "",
                smtp_result(),
                (smtp(0), smtp(2)),
                (ReverseDns("1.2.3.4", ("a.", "b."), True), ReverseDns("::1", (), False, "nx")),
                dane,
            ),
            MxRecord(20, "mx2", (), "no address"),
        ),
        implicit_mx=True,
        missing=("m",),
        unexpected=("u", "v"),
        timings={"mx": 0.5},
        total=1.25,
        authenticated=None,
        mta_sts=MtaStsFacts("id", "", "", True, policy, False),
        spf=PolicyRecord("spf", "v=spf1", ""),
        dmarc=PolicyRecord("dmarc", "", "none"),
    )


def mx_without_facts() -> MxResult:
    """No check of DANE, SPF or DMARC ran: their keys are absent; an MTA-STS record without a policy."""
    return MxResult(
        "f.test", 1.7e9, True, authenticated=True, mta_sts=MtaStsFacts("", "absent", "absent", False, None, True)
    )


CASES: dict[str, Callable[[], SmtpResult | MxResult]] = {
    "smtp": smtp_result,
    "mx": mx_result,
    "mx_without_facts": mx_without_facts,
}


class TestJsonOutput:
    @pytest.mark.parametrize("name", CASES)
    def test_json_is_byte_for_byte_what_the_hand_written_code_printed(self, name: str) -> None:
        assert report.as_json(CASES[name]()) == (FIXTURE / f"{name}.json").read_text()

    @pytest.mark.parametrize("name", CASES)
    def test_saved_json_comes_back_equal(self, name: str) -> None:
        result = CASES[name]()
        saved = json.dumps(result.as_dict())  # the state database's column
        restored = result_from_dict(json.loads(saved))
        assert restored == result
        assert json.dumps(restored.as_dict()) == saved

    def test_the_der_chain_is_neither_printed_nor_saved(self) -> None:
        result = smtp_result()
        assert result.tls is not None
        assert result.tls.chain_der
        assert "chain_der" not in report.as_json(result)
        restored = result_from_dict(result.as_dict())
        assert isinstance(restored, SmtpResult)
        assert restored.tls is not None
        assert restored.tls.chain_der == ()

    def test_multi_line_reply_comes_back_as_one_line(self) -> None:
        result = smtp(0, ok=False, reply=Reply(550, ("5.1.1 no such user", "try later")))
        restored = result_from_dict(result.as_dict())
        assert isinstance(restored, SmtpResult)
        assert restored.reply == Reply(550, ("5.1.1 no such user try later",))


# Saved results the hand-written reader took as they were: a wrong type reached the exporters.
MALFORMED = {
    "timing not a number": ("timings", {"connect": "fast", "total": 0.1}),
    "host not a string": ("host", 25),
    "extensions not strings": ("extensions", {"SIZE": ["1"]}),
    "tls version not a string": ("tls", {"version": 1.3, "cipher": "X", "verified": True}),
}


class TestMalformedSavedStates:
    @pytest.mark.parametrize("case", MALFORMED)
    def test_is_refused(self, case: str) -> None:
        key, value = MALFORMED[case]
        saved = {**smtp(0).as_dict(), key: value}
        with pytest.raises(ValueError, match="validation error"):
            result_from_dict(saved)

    def test_starts_the_probe_afresh(self, tmp_path: Path) -> None:
        rows = saved_rows(tmp_path)
        saved = json.loads(rows["relay"]["last_result"])
        saved["timings"] = {"connect": "fast"}
        rows["relay"]["last_result"] = json.dumps(saved)
        assert_restored_afresh(rows)

    def test_nested_thousands_deep_starts_the_probe_afresh(self, tmp_path: Path) -> None:
        rows = saved_rows(tmp_path)
        rows["relay"]["last_result"] = "[" * 100_000 + "]" * 100_000
        assert_restored_afresh(rows)

    def test_failure_counts_of_the_wrong_types_start_the_probe_afresh(self, tmp_path: Path) -> None:
        rows = saved_rows(tmp_path)
        assert json.loads(rows["relay"]["failures_by_cause"]) == [["connect", "refused", 1]]
        rows["relay"]["failures_by_cause"] = json.dumps([[1, 2, "3"]])
        assert_restored_afresh(rows)


RELAY = SmtpProbeConfig(name="relay", host="127.0.0.1", port=25, tls="none")


def store_of_relay() -> ResultsStore:
    store = ResultsStore()
    store.configure([(RELAY, 1, 14)])
    return store


def saved_rows(tmp_path: Path) -> dict[str, dict[str, Any]]:
    """The state database's rows after one refused connection of the probe "relay"."""
    store = store_of_relay()
    store.record("relay", smtp(0, ok=False, phase=Phase.CONNECT, reason=Reason.REFUSED, started_at=time.time()))
    db = StateDB(tmp_path / "state.db")
    db.open()
    try:
        db.save_states(store.snapshot().states.values())
        return db.load_states()
    finally:
        db.close()


def assert_restored_afresh(rows: dict[str, dict[str, Any]]) -> None:
    fresh = store_of_relay()
    assert restore_into(fresh, rows) == 0
    state = fresh.snapshot().states["relay"]
    assert (state.status, state.last_result, state.runs) == (Status.UNKNOWN, None, 0)
