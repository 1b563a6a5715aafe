"""The spoof test in the command line: `smtp-monitor mx DOMAIN --spoof-test RECIPIENT` against aiosmtpd through
a scripted DNS server (plugin line, exit code, perfdata, JSON), and `smtp-monitor status` of a saved result."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from monitor.cli import status
from monitor.cli.main import main
from monitor.config.schema import AgentConfig, Config, MxCheckConfig, SpoofTestConfig
from monitor.model.results import MxRecord, MxResult, Phase, Reason
from monitor.model.spoof import SpoofAttempt, SpoofMailbox, SpoofOutcome, SpoofStep, SpoofVerdict
from monitor.state.persistence import STATE_FILE, StateDB
from monitor.state.store import ResultsStore
from tests.fakes.dns_server import ScriptedDnsServer
from tests.fakes.smtp_servers import AiosmtpdServer
from tests.unit.test_spoof import DOMAIN, EXCHANGE, SPF_NOT_LOOPBACK, Mta


@pytest.fixture
def dns() -> Iterator[ScriptedDnsServer]:
    with ScriptedDnsServer() as server:
        server.records(DOMAIN, "MX", f"10 {EXCHANGE}.")
        server.records(EXCHANGE, "A", "127.0.0.1")
        server.records(DOMAIN, "TXT", f'"{SPF_NOT_LOOPBACK}"')
        yield server


class _ServerThread:
    """aiosmtpd in an event loop of its own thread: main() runs its own asyncio.run()."""

    def __init__(self, handler: Mta) -> None:
        self.handler = handler
        self.port = 0
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with AiosmtpdServer(handler=self.handler) as server:
            self.port = server.port
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> _ServerThread:
        self._thread.start()
        assert self._ready.wait(10), "aiosmtpd did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def one_shot(dns: ScriptedDnsServer, handler: Mta, *extra: str) -> int:
    with _ServerThread(handler) as server:
        argv = ["mx", DOMAIN, "--nameserver", dns.nameserver, "--port", str(server.port), "--timeout", "10s"]
        return main([*argv, "--spoof-test", f"postmaster@{DOMAIN}", *extra])


class TestOneShot:
    def test_an_accepting_exchange_is_critical_and_names_the_forgery(
        self, dns: ScriptedDnsServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        handler = Mta()
        code = one_shot(dns, handler, "--spoof-from", f"ceo@{DOMAIN}")
        out = capsys.readouterr().out
        assert code == 2
        assert out.startswith(f"MX CRITICAL - {DOMAIN} spoofable: accepted a message forged from ceo@{DOMAIN}")
        assert "spoof_refused=0 spoof_spoofable=1 spoof_inconclusive=0 spoof_error=0" in out
        assert handler.mail_from == [f"ceo@{DOMAIN}"]

    def test_a_refusing_exchange_is_ok(self, dns: ScriptedDnsServer, capsys: pytest.CaptureFixture[str]) -> None:
        code = one_shot(dns, Mta(at="data"))
        out = capsys.readouterr().out
        assert code == 0, out
        assert out.startswith("MX OK - ")
        assert "spoof_refused=1 spoof_spoofable=0" in out

    def test_an_inconclusive_attempt_warns(self, dns: ScriptedDnsServer, capsys: pytest.CaptureFixture[str]) -> None:
        code = one_shot(dns, Mta(at="rcpt", reply="451 4.7.1 greylisted"))
        out = capsys.readouterr().out
        assert code == 1, out
        assert f"SPOOF {EXCHANGE} (127.0.0.1): inconclusive: 451 4.7.1 greylisted" in out

    def test_json_carries_every_attempt(self, dns: ScriptedDnsServer, capsys: pytest.CaptureFixture[str]) -> None:
        code = one_shot(dns, Mta(at="mail"), "--json")
        document: dict[str, Any] = json.loads(capsys.readouterr().out)
        assert code == 0
        (attempt,) = document["mx"][0]["spoof"]
        assert (attempt["outcome"], attempt["step"], attempt["reply_code"]) == ("refused", "mail", 550)

    def test_without_the_flag_nothing_is_sent(self, dns: ScriptedDnsServer) -> None:
        handler = Mta()
        with _ServerThread(handler) as server:
            assert main(["mx", DOMAIN, "--nameserver", dns.nameserver, "--port", str(server.port)]) == 0
        assert handler.mail_from == []


CHECK = MxCheckConfig(name="dom", domain="example.com", spoof_test=SpoofTestConfig(recipient="probe@example.com"))


def test_status_lists_each_attempt_with_where_the_forgery_landed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    accepted = SpoofAttempt(
        "mx2.example.com",
        "192.0.2.2",
        SpoofOutcome.SPOOFABLE,
        SpoofStep.DATA,
        "spoof-test@example.com",
        reply_code=250,
        reply="250 2.0.0 Ok\x1b[31m queued",  # a terminal escape from the server never reaches the terminal
        mailbox=SpoofMailbox(True, "junk", "Junk", (SpoofVerdict("dmarc", "fail", "mx2.example.com"),), True),
    )
    refused = SpoofAttempt(
        "mx1.example.com", "192.0.2.1", SpoofOutcome.REFUSED, SpoofStep.RCPT, "spoof-test@example.com", 550, "550 no"
    )
    store = ResultsStore()
    store.configure([(CHECK, 1, 14)])
    records = (
        MxRecord(10, "mx1.example.com", ("192.0.2.1",), spoof=(refused,)),
        MxRecord(20, "mx2.example.com", ("192.0.2.2",), spoof=(accepted,)),
    )
    store.record("dom", MxResult("example.com", time.time(), False, Phase.SPOOF, Reason.SPOOFABLE, "x", records))
    db = StateDB(tmp_path / STATE_FILE)
    db.open()
    try:
        db.save_states(store.snapshot().states.values())
    finally:
        db.close()
    config = Config(agent=AgentConfig(state_dir=tmp_path), mx=[CHECK])

    assert status.print_status(config, as_json=True) == 2
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["phase"], row["reason"]) == ("spoof", "spoofable")
    assert [(s["exchange"], s["outcome"], s["step"]) for s in row["spoof"]] == [
        ("mx1.example.com", "refused", "rcpt"),
        ("mx2.example.com", "spoofable", "data"),
    ]
    assert row["spoof"][1]["landed"] == "junk (dmarc=fail)"

    status.print_status(config)
    text = capsys.readouterr().out
    assert "SPOOF TEST" in text
    spoofable_line = next(line for line in text.splitlines() if "spoofable" in line and "mx2" in line)
    assert "junk (dmarc=fail)" in spoofable_line
    assert "\x1b" not in text
