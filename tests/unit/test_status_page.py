"""monitor/exporters/web: the status page and its JSON, served from a store and a fake History.

What a monitored server wrote shows as text, never as markup; no secret of the config is rendered; the
overview sorts failed probes first, filters, pages and explains an empty or failing state in words;
a probe's page shows its transcripts, TLS facts, EHLO extensions, MX exchanges and delivery hops.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from jinja2 import Environment

from monitor.config.schema import (
    ConfigError,
    HttpLimits,
    MxCheckConfig,
    SmtpProbeConfig,
    StatusPageConfig,
    parse_config,
)
from monitor.exporters.prometheus.http import MetricsServer
from monitor.exporters.prometheus.metrics import build_agent_registry
from monitor.exporters.web import pages
from monitor.exporters.web.pages import StatusPage, StatusPageServer, StatusPageUnavailable
from monitor.exporters.web.view import Filters
from monitor.model.facts import DaneFacts
from monitor.model.results import (
    CertInfo,
    MxRecord,
    MxResult,
    Phase,
    Reason,
    Reply,
    ReverseDns,
    SmtpResult,
    TlsInfo,
)
from monitor.model.transcript import TranscriptRecorder
from monitor.state.health import AgentHealth
from monitor.state.history import Availability, HistoryEntry, StatusChange
from monitor.state.store import ProbeConfig, ResultsStore
from tests.unit.test_delivery_metrics import PASSWORD, delivery_config, late_run, on_time

NOW = 1_800_000_000.0
HOSTILE_BANNER = "<script>alert(1)</script> mail.evil ESMTP"
HOSTILE_REPLY = '<img src=x onerror="alert(2)">'


@dataclass
class FakeHistory:
    """The agreed History interface (monitor.state.history), answered from fixed lists."""

    entries: dict[str, list[HistoryEntry]] = field(default_factory=dict)
    changed: dict[str, list[StatusChange]] = field(default_factory=dict)
    avail: dict[str, Availability] = field(default_factory=dict)
    recent_calls: int = 0

    def recent(self, name: str, limit: int = 60) -> list[HistoryEntry]:
        self.recent_calls += 1
        return self.entries.get(name, [])[:limit]

    def changes(self, name: str, limit: int = 50) -> list[StatusChange]:
        return self.changed.get(name, [])[:limit]

    def availability(self, name: str) -> Availability:
        return self.avail.get(name, Availability(None, None, None))

    def availability_all(self) -> Mapping[str, Availability]:
        return self.avail


def smtp(name: str, port: int = 25) -> SmtpProbeConfig:
    return SmtpProbeConfig(name=name, host="mail.example", port=port)


def cert(days: float) -> TlsInfo:
    now = datetime.fromtimestamp(NOW, UTC)
    info = CertInfo(
        subject="CN=mail.example",
        issuer="CN=<b>Evil CA</b>",
        sans=("DNS:mail.example",),
        not_before=now - timedelta(days=30),
        not_after=now + timedelta(days=days),
        serial="1f",
        sha256="ab" * 32,
    )
    return TlsInfo(version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384", verified=True, cert=info)


def good(tls: TlsInfo | None = None) -> SmtpResult:
    recorder = TranscriptRecorder()
    recorder.received("220 mail.example ESMTP ready")
    recorder.sent("EHLO monitor.example")
    recorder.received("250-mail.example")
    recorder.received("250 PIPELINING")
    return SmtpResult(
        host="mail.example",
        port=25,
        tls_mode="starttls",
        started_at=NOW - 5,
        ok=True,
        total=0.042,
        banner="mail.example ESMTP ready",
        extensions={"PIPELINING": "", "SIZE": "10240000", "STARTTLS": ""},
        tls=tls,
        transcript=recorder.transcript(),
    )


def hostile() -> SmtpResult:
    recorder = TranscriptRecorder()
    recorder.received(f"554 {HOSTILE_BANNER}")
    return SmtpResult(
        host="mail.example",
        port=25,
        tls_mode="starttls",
        started_at=NOW - 3,
        ok=False,
        phase=Phase.BANNER,
        reason=Reason.REPLY,
        error=f"greeting refused: {HOSTILE_REPLY}",
        reply=Reply(554, (HOSTILE_BANNER,)),
        banner=HOSTILE_BANNER,
        extensions={"<svg onload=alert(3)>": ""},
        transcript=recorder.transcript(),
    )


def refused() -> SmtpResult:
    return SmtpResult(
        host="mail.example",
        port=25,
        tls_mode="starttls",
        started_at=NOW - 2,
        ok=False,
        phase=Phase.CONNECT,
        reason=Reason.REFUSED,
        error="connection refused",
        total=0.001,
    )


def store_of(*configs: ProbeConfig) -> ResultsStore:
    store = ResultsStore(announce=False)
    store.configure([(config, 1, 14) for config in configs])
    return store


async def _get(page: StatusPage, *paths: str, method: str = "GET") -> list[tuple[int, str, Mapping[str, str]]]:
    server = StatusPageServer(page, "127.0.0.1", 0)
    await server.start()
    out: list[tuple[int, str, Mapping[str, str]]] = []
    try:
        async with aiohttp.ClientSession() as session:
            for path in paths:
                async with session.request(method, f"http://127.0.0.1:{server.port}{path}") as resp:
                    out.append((resp.status, await resp.text(), dict(resp.headers)))
    finally:
        await server.stop()
    return out


def get(page: StatusPage, *paths: str, method: str = "GET") -> list[tuple[int, str, Mapping[str, str]]]:
    return asyncio.run(_get(page, *paths, method=method))


def page_of(store: ResultsStore, history: FakeHistory | None = None, per_page: int = 100) -> StatusPage:
    return StatusPage(store, history, per_page=per_page, clock=lambda: NOW)


def probe_names(text: str) -> list[str]:
    return re.findall(r'<tr class="[a-z]+" data-probe="([^"]+)"', text)


class TestEscaping:
    def test_a_hostile_banner_reply_and_extension_show_as_text_on_every_page(self) -> None:
        store = store_of(smtp("evil"))
        store.record("evil", hostile())
        responses = get(page_of(store), "/", "/probe/evil")
        for status, text, headers in responses:
            assert status == 200
            assert "<script>alert(1)" not in text
            assert "<img src=x" not in text
            assert "<svg onload" not in text
            assert "<script" not in text.lower()  # the page itself carries no script either
            assert "default-src 'none'" in headers["Content-Security-Policy"]
            assert headers["X-Content-Type-Options"] == "nosniff"
        overview, probe = responses[0][1], responses[1][1]
        assert html.escape(HOSTILE_BANNER, quote=False) in overview  # the reply, readable as text
        assert html.escape(HOSTILE_BANNER, quote=False) in probe  # banner and transcript
        assert "&lt;svg onload=alert(3)&gt;" in probe

    def test_json_carries_the_hostile_text_without_a_single_angle_bracket(self) -> None:
        store = store_of(smtp("evil"))
        store.record("evil", hostile())
        (s1, listing, h1), (s2, one, _) = get(page_of(store), "/api/probes", "/api/probes/evil")
        assert (s1, s2) == (200, 200)
        assert h1["Content-Type"].startswith("application/json")
        assert "<" not in listing
        assert "<" not in one
        assert json.loads(one)["last_result"]["banner"] == HOSTILE_BANNER
        assert json.loads(listing)["probes"][0]["failure"]["reply"] == f"554 {HOSTILE_BANNER}"

    def test_a_hostile_probe_name_in_the_url_is_escaped_in_the_404(self) -> None:
        ((status, text, _),) = get(page_of(store_of()), "/probe/%3Cscript%3Ealert(1)%3C%2Fscript%3E")
        assert status == 404
        assert "<script>" not in text
        assert "&lt;script&gt;alert(1)" in text


class TestNoSecrets:
    def test_neither_the_mailbox_password_nor_the_submission_password_is_rendered(self) -> None:
        config = delivery_config(
            submit={
                "host": "msa.example",
                "port": 587,
                "auth": {"username": "probe", "password": "submission-secret-9"},
            }
        )
        store = store_of(config)
        store.record("loop", on_time())
        responses = get(page_of(store), "/", "/probe/loop", "/api/probes", "/api/probes/loop")
        for status, text, _ in responses:
            assert status == 200
            assert PASSWORD not in text
            assert "submission-secret-9" not in text


class TestOverview:
    def test_failed_probes_come_first_then_not_run_then_ok_each_by_name(self) -> None:
        store = store_of(smtp("b-ok"), smtp("a-ok"), smtp("z-failed"), smtp("c-new"), smtp("d-failed"))
        for name in ("b-ok", "a-ok"):
            store.record(name, good())
        for name in ("z-failed", "d-failed"):
            store.record(name, refused())
        ((_, text, _),) = get(page_of(store), "/")
        assert probe_names(text) == ["d-failed", "z-failed", "c-new", "a-ok", "b-ok"]
        assert "2 of 5 probes are failing" in text

    def test_filters_by_kind_status_and_name(self) -> None:
        store = store_of(smtp("s-ok"), smtp("s-bad"), MxCheckConfig(name="m-one", domain="example.com"))
        store.record("s-ok", good())
        store.record("s-bad", refused())
        responses = get(page_of(store), "/?kind=mx", "/?status=failed", "/?kind=smtp&status=ok", "/?q=BAD")
        assert [probe_names(text) for _, text, _ in responses] == [["m-one"], ["s-bad"], ["s-ok"], ["s-bad"]]

    def test_pages_of_per_page_rows_with_links_to_the_next_and_previous(self) -> None:
        store = store_of(*(smtp(f"p{i:03d}") for i in range(250)))
        history = FakeHistory()
        first, third, beyond = get(page_of(store, history, per_page=100), "/", "/?page=3", "/?page=9")
        assert len(probe_names(first[1])) == 100
        assert probe_names(first[1])[0] == "p000"
        assert 'rel="next" href="?page=2"' in first[1]
        assert probe_names(third[1]) == [f"p{i:03d}" for i in range(200, 250)]
        assert 'rel="prev" href="?page=2"' in third[1]
        assert 'rel="next"' not in third[1]
        assert probe_names(beyond[1]) == probe_names(third[1])  # past the end: the last page
        assert history.recent_calls == 100 + 50 + 50  # history read for the rows shown only

    @pytest.mark.parametrize(
        "query", ["?kind=imap", "?status=down", "?page=0", "?page=x", "?q=" + "a" * 101, "?page=" + "9" * 5000]
    )
    def test_a_bad_query_gets_400_with_the_rule(self, query: str) -> None:
        ((status, text, _),) = get(page_of(store_of(smtp("a"))), "/" + query)
        assert status == 400
        assert text.startswith("bad query: ")

    def test_an_empty_config_is_explained(self) -> None:
        ((status, text, _),) = get(page_of(store_of()), "/")
        assert status == 200
        assert 'id="explain-empty"' in text
        assert "No probes are configured" in text

    def test_every_probe_failing_is_explained_as_maybe_this_host(self) -> None:
        store = store_of(smtp("a"), smtp("b"))
        store.record("a", refused())
        store.record("b", refused())
        ((_, text, _),) = get(page_of(store), "/")
        assert 'id="explain-failing"' in text
        assert "dns.nameservers" in text

    def test_no_run_yet_is_explained(self) -> None:
        ((_, text, _),) = get(page_of(store_of(smtp("a"))), "/")
        assert 'id="explain-waiting"' in text

    def test_with_history_off_the_page_says_so_and_still_lists_every_probe(self) -> None:
        store = store_of(smtp("a"))
        store.record("a", good(cert(20.5)))
        ((status, text, _), (_, data, _)) = get(page_of(store, None), "/", "/api/probes")
        assert status == 200
        assert 'id="history-off"' in text
        assert probe_names(text) == ["a"]
        assert json.loads(data)["probes"][0]["availability"] is None
        assert json.loads(data)["history"] is False

    def test_availability_chart_latency_and_certificate_days(self) -> None:
        store = store_of(smtp("a"))
        store.record("a", good(cert(20.5)))
        history = FakeHistory(
            entries={
                "a": [
                    HistoryEntry(NOW - 60 * i, i != 3, "" if i != 3 else "connect", "", 0, 0.01 * (i + 1))
                    for i in range(10)
                ]
            },
            avail={"a": Availability(0.9, 0.995, None)},
        )
        ((_, text, _), (_, data, _)) = get(page_of(store, history), "/", "/api/probes")
        assert "90.00 %" in text
        assert "99.50 %" in text
        assert 'aria-label="10 runs, 1 failed, latency up to 100 ms"' in text
        (failed_bars,) = re.findall(r'<path d="([^"]*)" fill="#ffc1bd"/>', text)
        assert failed_bars == "M72.0 0h11.5v24h-11.5z"  # the 7th of 10 runs from the left (oldest left)
        (line,) = re.findall(r'<polyline points="([^"]*)"', text)
        assert len(line.split()) == 10
        assert "42 ms" in text
        row = json.loads(data)["probes"][0]
        assert row["availability"] == {"24h": 0.9, "7d": 0.995, "30d": None}
        assert row["latency_seconds"] == 0.042
        assert 20.4 < row["cert_days_left"] < 20.6  # from the store's last TLS facts, not today's date


class TestProbePage:
    def test_a_failed_probe_shows_both_transcripts_history_and_changes(self) -> None:
        store = store_of(smtp("evil"))
        store.record("evil", good(cert(30)))
        store.record("evil", hostile())
        history = FakeHistory(
            entries={"evil": [HistoryEntry(NOW - 3, False, "banner", "reply", 554, 0.01)]},
            changed={"evil": [StatusChange(NOW - 3, "ok", "failed", "banner", "reply", HOSTILE_REPLY)]},
        )
        ((status, text, _),) = get(page_of(store, history), "/probe/evil")
        assert status == 200
        failure = text[text.index('id="failure-transcript"') : text.index('id="last-transcript"')]
        assert "554 &lt;script&gt;alert(1)&lt;/script&gt;" in failure
        assert 'id="history"' in text
        assert 'id="changes"' in text
        changes = text[text.index('id="changes"') :]
        assert "&lt;img src=x onerror=" in changes
        # the last TLS facts survive the failed run: the certificate is still known
        assert "TLS_AES_256_GCM_SHA384" in text
        assert "CN=&lt;b&gt;Evil CA&lt;/b&gt;" in text

    def test_every_address_of_a_dual_stack_run_shows_its_dialogue_once_under_its_name(self) -> None:
        # address_family: both: the result is one address's, with every address's attached (smtp.run)
        first = replace(good(), address="192.0.2.1")
        second = replace(good(), address="2001:db8::1")
        store = store_of(smtp("a"))
        store.record("a", replace(first, address_results=(first, second)))
        ((_, text, _),) = get(page_of(store), "/probe/a")
        last = text[text.index('id="last-transcript"') :]
        assert last.count("250 PIPELINING") == 2
        assert "192.0.2.1 port 25" in last
        assert "2001:db8::1 port 25" in last

    def test_after_recovery_the_last_failure_transcript_stays_and_the_last_is_the_good_one(self) -> None:
        store = store_of(smtp("a"))
        store.record("a", hostile())
        store.record("a", good())
        ((_, text, _),) = get(page_of(store), "/probe/a")
        failure = text[text.index('id="failure-transcript"') : text.index('id="last-transcript"')]
        last = text[text.index('id="last-transcript"') :]
        assert "554 &lt;script&gt;" in failure
        assert "250 PIPELINING" in last
        assert "554" not in last
        extensions = text[text.index('id="extensions"') :]
        assert "SIZE 10240000" in extensions

    def test_an_mx_check_lists_every_exchange_and_address_with_its_verdicts(self) -> None:
        recorder = TranscriptRecorder()
        recorder.received("220 mx1.example.com <b>ESMTP</b>")
        probe = SmtpResult(
            host="mx1.example.com", port=25, tls_mode="starttls", started_at=NOW, ok=True, address="192.0.2.1",
            total=0.02, tls=cert(40), transcript=recorder.transcript(),
        )  # fmt: skip
        records = (
            MxRecord(
                10,
                "mx1.example.com",
                ("192.0.2.1", "2001:db8::1"),
                probe=probe,
                reverse=(
                    ReverseDns("192.0.2.1", ("mx1.example.com",), True),
                    ReverseDns("2001:db8::1", (), False, "NXDOMAIN"),
                ),
                dane=DaneFacts("_25._tcp.mx1.example.com", ("3 1 1 ab",), True, usable=1, matched=False),
            ),
            MxRecord(20, "mx2.example.com", (), error="no address"),
        )
        result = MxResult("example.com", NOW, False, Phase.DANE, Reason.DANE_MISMATCH, "DANE mismatch", records)
        store = store_of(MxCheckConfig(name="m", domain="example.com"))
        store.record("m", result)
        ((_, text, _), (_, data, _)) = get(page_of(store), "/probe/m", "/api/probes/m")
        table = text[text.index('id="exchanges"') :]
        rows = table[table.index("<tbody>") : table.index("</tbody>")].split("<tr>")[1:]
        assert len(rows) == 3  # two addresses of mx1, the unresolved mx2
        assert "192.0.2.1" in rows[0]
        assert "mismatch" in rows[0]
        assert "(confirmed)" in rows[0]
        assert "2001:db8::1" in rows[1]
        assert "not confirmed: NXDOMAIN" in rows[1]
        assert "mx2.example.com" in rows[2]
        assert "no address" in rows[2]
        assert 39 < json.loads(data)["cert_days_left"] < 41  # from the exchange's certificate
        for section in ('id="failure-transcript"', 'id="last-transcript"'):  # this run failed: both are it
            dialogues = text[text.index(section) :]
            assert dialogues.index("mx1.example.com 192.0.2.1") < dialogues.index("S 220 mx1.example.com &lt;b&gt;")
        assert [r["exchange"] for r in json.loads(data)["last_result"]["mx"]] == ["mx1.example.com", "mx2.example.com"]

    def test_a_delivery_probe_shows_hops_verdicts_folder_and_its_ledger(self) -> None:
        store = store_of(delivery_config())
        store.record("loop", late_run())
        store.record("loop", on_time())
        ((_, text, _), (_, data, _)) = get(page_of(store), "/probe/loop", "/api/probes/loop")
        hops = text[text.index('id="hops"') :]
        assert hops.count("<tr>") == 4  # the header and three hops
        assert "mx.example.net" in hops
        assert "LMTP" in hops
        assert "dmarc=fail" in text
        assert "INBOX" in text
        assert re.search(r'id="ledger">1 / 0 / 0<', text)  # the late run's message is still pending
        assert json.loads(data)["ledger"] == {
            "pending": 1,
            "late": 0,
            "lost": 0,
            "last_latency": 1.5,
            "latency_count": 1,
        }

    def test_history_off_on_a_probe_page(self) -> None:
        store = store_of(smtp("a"))
        ((status, text, _), (_, data, _)) = get(page_of(store), "/probe/a", "/api/probes/a")
        assert status == 200
        assert 'id="history-off"' in text
        assert json.loads(data)["history"] is None

    def test_an_unknown_probe_is_404_in_html_and_json(self) -> None:
        (status, text, _), (jstatus, data, _) = get(page_of(store_of()), "/probe/nope", "/api/probes/nope")
        assert status == 404
        assert 'id="explain-missing"' in text
        assert jstatus == 404
        assert json.loads(data)["error"] == "no such probe"


class TestReadOnly:
    @pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
    def test_anything_but_get_and_head_is_refused(self, method: str) -> None:
        store = store_of(smtp("a"))
        for status, _, _ in get(page_of(store), "/", "/probe/a", "/api/probes", method=method):
            assert status == 405

    def test_head_answers_without_a_body(self) -> None:
        ((status, text, _),) = get(page_of(store_of(smtp("a"))), "/", method="HEAD")
        assert (status, text) == (200, "")


class TestConfigAndMounting:
    def test_status_page_is_on_by_default_on_the_prometheus_server(self) -> None:
        config = parse_config({})
        assert config.status_page == StatusPageConfig(enabled=True, listen=None, per_page=100)
        assert parse_config({"status_page": {"listen": "127.0.0.1:9466"}}).status_page.address() == (
            "127.0.0.1",
            9466,
        )

    def test_a_listen_address_without_port_is_refused(self) -> None:
        with pytest.raises(ConfigError, match=r"status_page\.listen: listen address '127\.0\.0\.1' needs a port"):
            parse_config({"status_page": {"listen": "127.0.0.1"}})

    def test_mounted_on_the_metrics_server_slash_is_the_page_and_metrics_stay(self) -> None:
        store = store_of(smtp("a"))
        store.record("a", refused())

        async def body(pages: bool) -> tuple[str, int]:
            health = AgentHealth()
            page = page_of(store)
            server = MetricsServer(
                "127.0.0.1",
                0,
                build_agent_registry(health),
                store,
                ready=lambda: True,
                pages=page.mount if pages else None,
            )
            await server.start()
            try:
                async with aiohttp.ClientSession() as session:
                    base = f"http://127.0.0.1:{server.port}"
                    async with session.get(base + "/") as resp:
                        index = await resp.text()
                    async with session.get(base + "/metrics") as resp:
                        return index, resp.status
            finally:
                await server.stop()

        index, metrics = asyncio.run(body(True))
        assert probe_names(index) == ["a"]
        assert metrics == 200
        index, metrics = asyncio.run(body(False))
        assert index == "smtp-monitor: see /metrics\n"
        assert metrics == 200

    def test_a_missing_template_is_found_when_the_page_is_built_not_at_its_first_request(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        # Templates load at the first page; whether they are installed is still known at start-up, where
        # the agent turns the page off and says why instead of answering 500 later.
        for name in ("overview.html", "probe.html"):
            (tmp_path / name).write_text(pages.TEMPLATE_ROOT.joinpath(name).read_text())
        monkeypatch.setattr(pages, "TEMPLATE_ROOT", tmp_path)
        with pytest.raises(StatusPageUnavailable, match=r"template missing\.html is not installed"):
            page_of(store_of(smtp("a")))

    def test_jinja2_is_loaded_and_templates_compiled_at_the_first_page_once(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        built: list[Environment] = []

        def counted() -> Environment:
            built.append(environment())
            return built[-1]

        environment = pages.environment
        monkeypatch.setattr(pages, "environment", counted)
        page = page_of(store_of(smtp("a")))
        assert built == []
        assert probe_names(page.render_overview(Filters.parse({}))) == ["a"]
        assert len(built) == 1
        compiled = built[0].cache
        assert compiled is not None
        names = {name for _, name in compiled}
        assert "overview.html" in names  # kept for the next page, with what it extends and imports
        assert "probe.html" not in names
        assert probe_names(page.render_overview(Filters.parse({}))) == ["a"]
        assert len(built) == 1


def test_rendering_is_timed_against_the_clock_given() -> None:
    store = store_of(smtp("a"))
    store.record("a", refused())
    page = StatusPage(store, None, clock=lambda: time.time() + 3 * 86400)
    ((_, text, _),) = get(page, "/probe/a")
    assert "3 d ago" in text


def test_a_chart_draws_consecutive_failed_runs_as_one_bar() -> None:
    from monitor.exporters.web.view import chart

    # newest first: the newest two and the oldest three failed, with ok runs between
    oks = [False, False, True, True, True, False, False, False]
    drawn = chart([HistoryEntry(NOW - 60 * i, ok, "", "", 0, 0.01) for i, ok in enumerate(oks)], width=80, height=10)
    assert (drawn.runs, drawn.failed) == (8, 5)
    assert drawn.failed_path == "M0.0 0h29.5v10h-29.5zM60.0 0h19.5v10h-19.5z"


def test_every_link_is_relative_so_a_reverse_proxy_may_serve_the_page_under_a_path() -> None:
    store = store_of(smtp("a"))
    store.record("a", refused())
    overview, probe, missing = get(page_of(store), "/", "/probe/a", "/probe/gone")
    for _, text, _ in (overview, probe, missing):
        assert re.findall(r'(?:href|action)="(/[^"]*)"', text) == []
    assert 'href="./probe/a"' in overview[1]
    assert 'href="../api/probes/a"' in probe[1]
    assert 'href="../"' in missing[1]


class TestOwnListener:
    """status_page.listen: the page's own address is bounded as the Prometheus listener is."""

    def test_a_connection_that_sends_no_request_is_closed_at_the_header_deadline(self) -> None:
        async def scenario() -> tuple[bytes, float, str]:
            server = StatusPageServer(page_of(store_of()), "127.0.0.1", 0, limits=HttpLimits(header_timeout=0.3))
            await server.start()
            try:
                began = time.monotonic()
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                silent = await asyncio.wait_for(reader.read(), 5)  # EOF: the agent closed it
                took = time.monotonic() - began
                writer.close()
                ((status, _, headers),) = await _get_from(server.port, "/")
            finally:
                await server.stop()
            return silent, took, f"{status} {headers.get('Server')}"

        silent, took, answer = asyncio.run(scenario())
        assert silent == b""
        assert 0.2 < took < 3.0
        assert answer == "200 smtp-monitor"  # no aiohttp or Python version for scanners

    def test_at_the_connection_bound_a_new_visitor_displaces_an_idle_connection(self) -> None:
        async def scenario() -> int:
            limits = HttpLimits(max_connections=4, header_timeout=30)
            server = StatusPageServer(page_of(store_of()), "127.0.0.1", 0, limits=limits)
            await server.start()
            idle = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(8)]
            try:
                ((status, _, _),) = await _get_from(server.port, "/")
            finally:
                for _, writer in idle:
                    writer.close()
                await server.stop()
            return status

        assert asyncio.run(scenario()) == 200


async def _get_from(port: int, *paths: str) -> list[tuple[int, str, Mapping[str, str]]]:
    out: list[tuple[int, str, Mapping[str, str]]] = []
    async with aiohttp.ClientSession() as session:
        for path in paths:
            async with session.get(f"http://127.0.0.1:{port}{path}") as resp:
                out.append((resp.status, await resp.text(), dict(resp.headers)))
    return out
