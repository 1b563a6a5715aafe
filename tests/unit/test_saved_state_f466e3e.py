"""A state database written by release f466e3e (DANE, MTA-STS, SPF and DMARC facts as plain dicts) still loads.

tests/fixtures/f466e3e/ holds that release's state.db and what it exposed for the restored states;
tests/fixtures/f466e3e/generate.py wrote both, run against f466e3e.
"""

from __future__ import annotations

import base64
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pyasn1.type import univ

from monitor.config.schema import MxCheckConfig
from monitor.exporters.prometheus.metrics import mx_samples
from monitor.exporters.snmp import mib_oids
from monitor.exporters.snmp.mibview import MibView
from monitor.model.facts import DaneFacts, MtaStsFacts, PolicyRecord
from monitor.model.results import MxResult
from monitor.state.health import AgentHealth
from monitor.state.persistence import StateDB, restore_into
from monitor.state.store import ResultsStore

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "f466e3e"
EXPECTED: dict[str, Any] = json.loads((FIXTURE / "expected.json").read_text())
MX_TABLES = (mib_oids.MX_CHECK_ENTRY, mib_oids.MX_EXCHANGE_ENTRY, mib_oids.MX_ADDRESS_ENTRY)


def _column(oid: tuple[int, ...]) -> tuple[int, ...]:
    """The column of an instance OID of the MX tables (the three entries have the same length)."""
    return oid[: len(mib_oids.MX_CHECK_ENTRY) + 1]


@pytest.fixture
def saved_rows(tmp_path: Path) -> dict[str, dict[str, Any]]:
    """The probe_state rows of a copy of the fixture (opening a WAL database writes beside it).

    A database StateDB cannot read is moved aside and replaced by an empty one: then no row loads."""
    shutil.copyfile(FIXTURE / "state.db", tmp_path / "state.db")
    db = StateDB(tmp_path / "state.db")
    db.open()
    try:
        return db.load_states()
    finally:
        db.close()


@pytest.fixture
def restored(saved_rows: dict[str, dict[str, Any]]) -> ResultsStore:
    """A store configured as f466e3e's was, with the saved states put back."""
    configs = [MxCheckConfig.model_validate(c) for c in EXPECTED["configs"]]
    store = ResultsStore()
    store.configure([(config, 1, 14) for config in configs])
    assert restore_into(store, saved_rows) == len(configs), "a saved state was dropped"
    return store


def result_of(store: ResultsStore, name: str) -> MxResult:
    result = store.snapshot().states[name].last_result
    assert isinstance(result, MxResult)
    return result


def dane_of(store: ResultsStore, name: str) -> list[DaneFacts]:
    facts = [record.dane for record in result_of(store, name).records]
    assert all(isinstance(f, DaneFacts) for f in facts), facts
    return [f for f in facts if f is not None]


def mta_sts_of(store: ResultsStore, name: str) -> MtaStsFacts:
    facts = result_of(store, name).mta_sts
    assert isinstance(facts, MtaStsFacts), facts
    return facts


def asn1(value: Any) -> list[Any]:
    """A MIB value as generate.py records it: [type name, value], octets in base64."""
    name = type(value).__name__
    if isinstance(value, univ.OctetString):
        return [name, base64.b64encode(bytes(value)).decode()]
    if isinstance(value, univ.ObjectIdentifier):
        return [name, str(value)]
    return [name, int(value)]


class TestStateDatabaseOfF466e3e:
    def test_every_saved_state_is_restored(self, restored: ResultsStore) -> None:
        states = restored.snapshot().states
        assert {name: state.runs for name, state in states.items()} == {
            "example": 1,
            "plain": 1,
            "broken": 1,
            "nopolicy": 1,
        }

    def test_each_saved_result_serialises_again_byte_for_byte(
        self, saved_rows: dict[str, dict[str, Any]], restored: ResultsStore
    ) -> None:
        # the database column and --json print the same as_dict(): the JSON f466e3e wrote comes back unchanged
        for name, row in saved_rows.items():
            assert json.dumps(result_of(restored, name).as_dict()) == row["last_result"], name

    def test_dane_facts_are_typed(self, restored: ResultsStore) -> None:
        mx1, mx2 = dane_of(restored, "example")
        assert (mx1.matched, mx1.usable, mx1.authenticated) == (True, 1, True)
        assert mx1.records[0].startswith("3 1 1 ")
        assert mx1.matched_record == mx1.records[0]
        assert mx1.reference_names == ("mx1.example.test",)
        assert (mx2.matched, mx2.usable, mx2.matched_record) == (False, 1, "")
        (plain,) = dane_of(restored, "plain")
        assert (plain.records, plain.matched, plain.lookup_error) == ((), None, "")
        (broken,) = dane_of(restored, "broken")
        assert "SERVFAIL" in broken.lookup_error
        (unusable,) = dane_of(restored, "nopolicy")
        assert (unusable.records[0][:6], unusable.usable, unusable.matched) == ("1 1 1 ", 0, None)

    def test_mta_sts_facts_are_typed(self, restored: ResultsStore) -> None:
        example = mta_sts_of(restored, "example")
        assert (example.present, example.valid, example.txt_id) == (True, True, "20261122")
        policy = example.policy
        assert policy is not None
        assert (policy.mode, policy.max_age, policy.mx_patterns) == ("testing", 86400, ("mx1.example.test",))
        assert (policy.uncovered, policy.verified, policy.http_status) == (("mx2.example.test",), True, 200)
        assert policy.cert_not_after == datetime(3000, 1, 1, tzinfo=UTC)
        absent = mta_sts_of(restored, "plain")
        assert (absent.present, absent.valid, absent.policy) == (False, True, None)
        malformed = mta_sts_of(restored, "broken")
        assert (malformed.present, malformed.valid, malformed.policy) == (True, False, None)
        assert malformed.txt_error_kind == "malformed"
        missing = mta_sts_of(restored, "nopolicy")
        assert not missing.valid
        assert missing.policy is not None
        assert (missing.policy.error_kind, missing.policy.http_status, missing.policy.mode) == ("http_status", 404, "")

    def test_spf_and_dmarc_verdicts_are_typed(self, restored: ResultsStore) -> None:
        example, plain, broken = (result_of(restored, name) for name in ("example", "plain", "broken"))
        assert example.spf == PolicyRecord("spf", "v=spf1 mx -all", "")
        assert example.dmarc == PolicyRecord("dmarc", "v=DMARC1; p=sometimes", "p= must be none, quarantine or reject")
        assert plain.spf == PolicyRecord("spf", "", "no SPF record (v=spf1)")
        assert plain.dmarc == PolicyRecord("dmarc", "v=DMARC1; p=reject; rua=mailto:dmarc@plain.test", "")
        assert (broken.spf, broken.dmarc) == (None, None)  # not checked

    def test_metrics_are_what_f466e3e_exposed(self, restored: ResultsStore) -> None:
        states = restored.snapshot().states
        got = {
            name: [[family, list(labels), value] for family, labels, value in mx_samples(state)]
            for name, state in states.items()
        }
        assert got == EXPECTED["metrics"]

    def test_mib_rows_are_what_f466e3e_exposed(self, restored: ResultsStore) -> None:
        view = MibView(restored, AgentHealth(), default_interval=60.0, sys_name="fixture")
        # the columns f466e3e had; those added since (UnixTime twins, mxAddressSpoof...) have tests of their own
        columns = {_column(tuple(int(arc) for arc in row[0].split("."))) for row in EXPECTED["mib"]}
        got = [
            [".".join(map(str, oid)), *asn1(value)]
            for oid, value in view.current().items()
            if any(oid[: len(table)] == table for table in MX_TABLES) and _column(oid) in columns
        ]
        assert got == EXPECTED["mib"]
