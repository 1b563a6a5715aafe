"""The status page in a real browser: Debian's headless Chromium, driven by selenium through Debian's
chromedriver (nothing downloaded: Selenium Manager is never asked), loads the page of a live agent whose
probes really succeed (a Postfix, an MX check on NSD) and really fail (a closed port, a hostile SMTP
server whose greeting and banner are markup), and proves that markup inert.

Screenshots land in the test's tmp path (screens/); with SMTP_MONITOR_UPDATE_SCREENSHOT=1 the overview
is also written to docs/status-page.png, the README's picture.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.selenium_manager import SeleniumManager

from monitor.runtime.scheduler import spread_offset
from tests.fakes.smtp_servers import QUIT, ScriptedSmtpServer, ServerThread, Step, Then
from tests.peers.agent import AgentProcess
from tests.peers.nsd import NsdServer
from tests.peers.postfix import PostfixServer
from tests.support.ports import free_tcp_port

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "status-page.png"

# Each payload, were it markup, would set window.__pwned and raise an alert.
SCRIPT = "<script>window.__pwned=1;alert(1)</script>"
IMG = '<img src=x onerror="window.__pwned=2;alert(2)">'
SVG = '<svg onload="window.__pwned=3;alert(3)">'
HOSTILE_GREETING = f"554 {SCRIPT} {IMG} no service"
HOSTILE_BANNER = f"220 {IMG} {SCRIPT} ESMTP"

FAILED = {"closed-port", "hostile-greeting", "hostile-banner", "mx-nullmx"}
HEALTHY = {"postfix-starttls", "postfix-smtps", "mx-good"}


def _hostile_greeting() -> ScriptedSmtpServer:
    return ScriptedSmtpServer([Step(None, HOSTILE_GREETING.encode() + b"\r\n", Then.HANG)])


def _hostile_banner() -> ScriptedSmtpServer:
    """Greets with markup, offers an extension named in markup and no STARTTLS: a starttls probe fails."""
    ehlo = f"250-mail.evil {SCRIPT}\r\n250 {SVG}\r\n".encode()
    return ScriptedSmtpServer([Step(None, HOSTILE_BANNER.encode() + b"\r\n"), Step(b"EHLO ", ehlo), QUIT])


@pytest.fixture(scope="module")
def hostile_servers() -> Iterator[tuple[int, int]]:
    with ServerThread(_hostile_greeting()) as greeting, ServerThread(_hostile_banner()) as banner:
        yield greeting.port, banner.port


@pytest.fixture(scope="module")
def agent(
    tmp_path_factory: pytest.TempPathFactory,
    postfix: PostfixServer,
    dns_server: NsdServer,
    hostile_servers: tuple[int, int],
) -> Iterator[AgentProcess]:
    greeting_port, banner_port = hostile_servers
    common = {"host": "127.0.0.1", "ca_file": str(postfix.ca_file), "servername": "mail.test"}
    config: dict[str, object] = {
        "defaults": {"interval": "2s", "timeout": "3s", "alert_after": 1},
        "dns": {"nameservers": [f"{dns_server.host}:{dns_server.port}"]},
        "smtp": [
            {"name": "postfix-starttls", "port": postfix.plain_port, "tls": "starttls", **common},
            {"name": "postfix-smtps", "port": postfix.implicit_port, "tls": "implicit", **common},
            {"name": "closed-port", "host": "127.0.0.1", "port": free_tcp_port(), "tls": "starttls"},
            {"name": "hostile-greeting", "host": "127.0.0.1", "port": greeting_port, "tls": "none"},
            {"name": "hostile-banner", "host": "127.0.0.1", "port": banner_port, "tls": "starttls"},
        ],
        "mx": [
            {"name": "mx-good", "domain": "good.test"},
            {"name": "mx-nullmx", "domain": "nullmx.test"},
        ],
    }
    process = AgentProcess(tmp_path_factory.mktemp("status-page-agent"), config)
    try:
        process.start()
        process.wait_until(lambda: _statuses(process) == _expected(), 30, "the probes never settled")
        yield process
    finally:
        process.stop()


def _expected() -> dict[str, str]:
    return {**dict.fromkeys(FAILED, "failed"), **dict.fromkeys(HEALTHY, "ok")}


def _api(agent: AgentProcess, path: str) -> Any:
    status, text = agent.get(path)
    return json.loads(text) if status == 200 else None


def _statuses(agent: AgentProcess) -> dict[str, str]:
    data = _api(agent, "/api/probes")
    return {p["name"]: p["status"] for p in data["probes"]} if data else {}


def _fewest_runs(agent: AgentProcess) -> int:
    data = _api(agent, "/api/probes")
    return min((p["runs"] for p in data["probes"]), default=0) if data else 0


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,900"):
        options.add_argument(argument)
    service = Service(executable_path=CHROMEDRIVER)
    with pytest.MonkeyPatch.context() as patch:

        def no_download(*_: object, **__: object) -> dict[str, str]:
            raise AssertionError("Selenium Manager was asked for a browser or driver: nothing may be downloaded")

        patch.setattr(SeleniumManager, "binary_paths", no_download)
        driver = webdriver.Chrome(service=service, options=options)
    try:
        yield driver
    finally:
        driver.quit()  # ends Chromium and chromedriver
        service.stop()
        assert service.process is None or service.process.poll() is not None


@pytest.fixture
def screens(tmp_path: Path) -> Path:
    directory = tmp_path / "screens"
    directory.mkdir()
    return directory


def _screenshot(driver: webdriver.Chrome, path: Path) -> None:
    """The whole page, not only the window: the window grows to the page's height (bounded)."""
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.set_window_size(1400, min(max(height + 160, 600), 4000))  # outer size: the viewport is smaller
    assert driver.save_screenshot(str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    driver.set_window_size(1400, 900)


def _open(driver: webdriver.Chrome, agent: AgentProcess, path: str) -> None:
    driver.get(f"http://127.0.0.1:{agent.port}{path}")


def _assert_inert(driver: webdriver.Chrome) -> None:
    """No alert came up, no payload ran, no element of a payload is in the page."""
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018  # reading it is what raises when there is none
    assert driver.execute_script("return window.__pwned === undefined") is True
    assert driver.find_elements(By.CSS_SELECTOR, "script, img, iframe, [onerror], [onload]") == []
    assert driver.find_elements(By.CSS_SELECTOR, "main svg:not(.chart)") == []


class TestOverview:
    def test_rows_failed_first_with_their_status_and_error(
        self, agent: AgentProcess, browser: webdriver.Chrome, screens: Path
    ) -> None:
        _open(browser, agent, "/")
        rows = browser.find_elements(By.CSS_SELECTOR, "#probes tbody tr")
        seen = [(row.get_attribute("data-probe"), row.get_attribute("class")) for row in rows]
        assert {name for name, _ in seen} == FAILED | HEALTHY
        assert {name for name, status in seen[: len(FAILED)]} == FAILED  # failed first
        assert all(status == "failed" for _, status in seen[: len(FAILED)])
        assert all(status == "ok" for _, status in seen[len(FAILED) :])
        row = browser.find_element(By.CSS_SELECTOR, 'tr[data-probe="closed-port"]')
        assert "connect/refused" in row.text
        row = browser.find_element(By.CSS_SELECTOR, 'tr[data-probe="mx-nullmx"]')
        assert "null_mx" in row.text
        assert "failing" in browser.find_element(By.ID, "explain-some-failing").text
        _screenshot(browser, screens / "overview.png")
        if os.environ.get("SMTP_MONITOR_UPDATE_SCREENSHOT") == "1":  # the README's picture, with some history
            agent.wait_until(lambda: _fewest_runs(agent) >= 12, 60, "the probes never ran 12 times")
            _open(browser, agent, "/")
            _screenshot(browser, screens / "overview-for-docs.png")
            DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
            shutil.copyfile(screens / "overview-for-docs.png", DOCS_SCREENSHOT)

    def test_the_hostile_greeting_shows_as_text_in_its_row_and_runs_nothing(
        self, agent: AgentProcess, browser: webdriver.Chrome
    ) -> None:
        _open(browser, agent, "/")
        row = browser.find_element(By.CSS_SELECTOR, 'tr[data-probe="hostile-greeting"]')
        assert SCRIPT in row.text  # the server's words, readable
        assert IMG in row.text
        _assert_inert(browser)

    def test_the_status_filter_is_a_plain_link(self, agent: AgentProcess, browser: webdriver.Chrome) -> None:
        _open(browser, agent, "/")
        browser.find_element(By.PARTIAL_LINK_TEXT, "failed (").click()
        assert browser.current_url.endswith("/?status=failed")
        names = {r.get_attribute("data-probe") for r in browser.find_elements(By.CSS_SELECTOR, "#probes tbody tr")}
        assert names == FAILED
        browser.find_element(By.PARTIAL_LINK_TEXT, "MX check (").click()
        names = {r.get_attribute("data-probe") for r in browser.find_elements(By.CSS_SELECTOR, "#probes tbody tr")}
        assert names == {"mx-nullmx"}


class TestProbePage:
    def test_a_failed_probe_opens_with_its_phase_reason_and_transcript(
        self, agent: AgentProcess, browser: webdriver.Chrome, screens: Path
    ) -> None:
        _open(browser, agent, "/")
        browser.find_element(By.LINK_TEXT, "hostile-greeting").click()
        assert browser.find_element(By.ID, "probe-name").text == "hostile-greeting"
        assert browser.find_element(By.ID, "failed-phase").text == "banner"
        failure = browser.find_element(By.ID, "failure-transcript")
        transcript = failure.find_element(By.CSS_SELECTOR, "pre.transcript").text
        assert f"S {HOSTILE_GREETING}" in transcript  # what the server said, as it said it
        assert "C QUIT" in transcript
        _assert_inert(browser)
        _screenshot(browser, screens / "probe-hostile-greeting.png")

    def test_the_hostile_banner_and_extension_are_text_on_the_probe_page(
        self, agent: AgentProcess, browser: webdriver.Chrome, screens: Path
    ) -> None:
        _open(browser, agent, "/probe/hostile-banner")
        assert browser.find_element(By.ID, "banner").text == HOSTILE_BANNER
        assert SVG.lower() in browser.find_element(By.ID, "extensions").text.lower()  # keywords read uppercased
        assert browser.find_element(By.ID, "failed-phase").text in ("ehlo", "starttls")
        _assert_inert(browser)
        _screenshot(browser, screens / "probe-hostile-banner.png")

    def test_a_healthy_postfix_probe_shows_its_tls_facts_and_extensions(
        self, agent: AgentProcess, browser: webdriver.Chrome
    ) -> None:
        _open(browser, agent, "/probe/postfix-starttls")
        tls = browser.find_element(By.ID, "tls-facts").text
        assert "TLSv1.3" in tls
        assert "mail.test" in tls
        assert "ENHANCEDSTATUSCODES" in browser.find_element(By.ID, "extensions").text  # the EHLO inside TLS
        days = browser.find_element(By.ID, "summary").text
        assert "expires in" in days

    def test_an_mx_check_lists_its_exchanges(self, agent: AgentProcess, browser: webdriver.Chrome) -> None:
        _open(browser, agent, "/probe/mx-good")
        table = browser.find_element(By.ID, "exchanges").text
        assert "mx1.good.test" in table
        assert "mx2.good.test" in table


def _name_not_due_for(seconds: float, interval: float) -> str:
    """A probe name whose first run after a start comes more than `seconds` in (monitor.runtime.scheduler's
    spread): what the page shows then was restored from the state database, not measured again."""
    return next(
        name for name in (f"postfix-wrong-name-{i}" for i in range(1000)) if spread_offset(name, interval) > seconds
    )


class TestAfterKill9:
    def test_a_real_postfix_failures_transcript_is_on_its_page_after_kill_9_and_a_restart(
        self,
        tmp_path: Path,
        postfix: PostfixServer,
        dns_server: NsdServer,
        browser: webdriver.Chrome,
        screens: Path,
    ) -> None:
        # STARTTLS to the real Postfix, expecting another name in its certificate: tls_verify.
        name = _name_not_due_for(600, 3600)
        probe = {
            "name": name,
            "host": "127.0.0.1",
            "port": postfix.plain_port,
            "tls": "starttls",
            "ca_file": str(postfix.ca_file),
            "servername": "not-the-server.test",
        }
        config: dict[str, object] = {
            "defaults": {"interval": "1s", "timeout": "3s", "alert_after": 1},
            "dns": {"nameservers": [f"{dns_server.host}:{dns_server.port}"]},
            "smtp": [probe],
        }
        first = AgentProcess(tmp_path, config)
        try:
            first.start()
            first.wait_until(lambda: _statuses(first).get(name) == "failed", 30, "the probe never failed")
        finally:
            first.stop()  # SIGKILL
        # The same state directory, an interval that runs nothing before the page is read.
        again = AgentProcess(tmp_path, {**config, "defaults": {"interval": "1h", "timeout": "3s", "alert_after": 1}})
        try:
            again.start()
            before = _api(again, f"/api/probes/{name}")
            _open(browser, again, f"/probe/{name}")
            assert browser.find_element(By.ID, "failed-phase").text == "tls"
            transcript = browser.find_element(By.ID, "failure-transcript").find_element(By.CSS_SELECTOR, "pre").text
            assert "S 220 " in transcript  # Postfix's own greeting
            assert "C STARTTLS" in transcript
            assert "TLS " in transcript  # the handshake's line: what the certificate was
            _screenshot(browser, screens / "after-kill-9.png")
            after = _api(again, f"/api/probes/{name}")
        finally:
            again.stop()
        assert before is not None
        assert after is not None
        assert before["runs"] == after["runs"] >= 1  # restored, and no run since the restart
