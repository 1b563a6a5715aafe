"""The long-running agent: wires config, scheduler, store and exporters; handles signals."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monitor.config.reader import ConfigReader
from monitor.config.schema import Config, ConfigError, load_config
from monitor.exporters.bounded_http import HttpBindError
from monitor.exporters.prometheus.http import AdhocProber, MetricsServer
from monitor.exporters.prometheus.metrics import build_agent_registry
from monitor.exporters.web.pages import StatusPage, StatusPageServer, StatusPageUnavailable
from monitor.runtime import logs
from monitor.runtime.malloc_arenas import one_malloc_arena
from monitor.runtime.probe_process import ProbeProcess
from monitor.runtime.sharding import Shard
from monitor.state.health import AgentHealth
from monitor.state.history import History
from monitor.state.persistence import (
    STATE_FILE,
    DurableNotifications,
    StateDB,
    StatePersister,
    private_dir,
    restore_into,
)
from monitor.state.store import ResultsStore, probe_entries

if TYPE_CHECKING:  # probes run in the probe process: the agent imports them only to run some itself
    from monitor.probes import ProbeEnv
    from monitor.runtime.scheduler import ProbeScheduler

log = logging.getLogger("smtp_monitor.agent")

SHUTDOWN_GRACE = 2.0  # seconds for in-flight probes before they are cancelled
EXIT_STARTUP = 2  # config or bind problems at startup
ON_STARTED_DELAY = 1.0  # seconds from started (ready) to serve()'s on_started


class StartupError(Exception):
    """The agent cannot start: a port it cannot bind, a state directory it cannot use."""


class Agent:
    """Owns every component; the only place that knows how they connect."""

    def __init__(
        self,
        config_path: Path,
        config: Config,
        shard: Shard | None = None,
        log_format: str = "text",
        log_level: str = "info",
    ) -> None:
        self.config_path = config_path
        self.shard = shard or Shard(0, 1)
        config = self.shard.apply(config)
        self.config = config
        self.store = ResultsStore()
        now = time.time()
        self.health = AgentHealth(config_path=str(config_path), config_loaded_at=now, config_attempted_at=now)
        self.scheduler: ProbeScheduler | ProbeProcess = (
            ProbeProcess(self.store, self.health, log_format, log_level)
            if config.agent.probe_process
            else self._scheduler_here(config)
        )
        self.http: MetricsServer | None = None
        self.status_page: StatusPageServer | None = None  # the status page on an address of its own
        self.snmp: Any = None
        self.notifier: Any = None
        self.state_db: StateDB | None = None
        self.persister: StatePersister | None = None
        self.history: History | None = None
        self._stopping = asyncio.Event()
        self._started = False

    @functools.cached_property
    def env(self) -> ProbeEnv:
        """What probes run in this process share (those of /probe, or all without a probe process)."""
        from monitor.probes import ProbeEnv

        return ProbeEnv.from_config(self.config)

    def _scheduler_here(self, config: Config) -> ProbeScheduler:
        from monitor.runtime.scheduler import ProbeScheduler

        return ProbeScheduler(self.store.record, self.health, self.env, config.defaults.max_concurrency)

    def _apply(self, config: Config) -> None:
        """The store follows the config at once; the probes (here or in the probe process) follow."""
        self.store.configure(probe_entries(config))
        self.scheduler.apply(config)
        if self.history is not None:
            self.history.config = config.history  # retention and batching follow a reload; `enabled` a restart

    async def start(self) -> None:
        _prepare_state_dir(self.config.agent.state_dir)
        self._apply(self.config)
        self._open_state()
        self._open_history()
        self.scheduler.seed_pending(self.store.pending())  # delivery messages awaited before a restart
        await self._start_exporters()
        self._wire_events()
        self.scheduler.start()
        self._started = True
        log.info(
            "started: %d SMTP probes, %d MX checks, %d delivery probes from %s (shard %s)",
            len(self.config.smtp),
            len(self.config.mx),
            len(self.config.delivery),
            self.config_path,
            self.shard,
        )

    def _open_state(self) -> None:
        """Resume from the state database; without one the agent still runs, from fresh state."""
        db = StateDB(self.config.agent.state_dir / STATE_FILE, self.health)
        try:
            db.open()
            restored = restore_into(self.store, db.load_states())
        except (sqlite3.Error, OSError) as exc:
            log.error("state database %s unusable (%s): running without saved state", db.path, exc)
            db.close()
            return
        log.info("state database %s: resumed %d probes", db.path, restored)
        self.state_db = db
        self.persister = StatePersister(db, self.store)
        self.persister.start()

    def _open_history(self) -> None:
        """History in the state database (tables of its own, a writer thread); without it the agent still runs."""
        if not self.config.history.enabled:
            return
        history = History(self.config.agent.state_dir / STATE_FILE, self.config.history, self.health)
        try:
            history.open()
        except (sqlite3.Error, OSError) as exc:
            log.error("history in %s unusable (%s): running without history", history.path, exc)
            history.close()
            return
        self.store.on_result(history.on_result)
        self.store.subscribe(history.on_event)
        history.start()
        self.history = history

    def _wire_events(self) -> None:
        """Status changes go to disk before any notification about them leaves."""
        if self.persister is not None and self.state_db is not None and self.notifier is not None:
            durable = DurableNotifications(self.state_db, self.persister, self.notifier)
            self.notifier.on_final = durable.done
            self.store.subscribe(durable.on_event)
            resent = durable.resend_pending()
            if resent:
                log.info("resending %d notifications not delivered before the last stop", resent)
        elif self.persister is not None:
            self.store.subscribe(self.persister.on_event)
        elif self.notifier is not None:
            self.notifier.subscribe(self.store)

    async def _start_exporters(self) -> None:
        address = self.config.prometheus.address()
        page = self._page()
        if address is not None:
            endpoint = self.config.prometheus.probe_endpoint
            self.http = MetricsServer(
                address[0],
                address[1],
                build_agent_registry(self.health),
                self.store,
                ready=lambda: self._started and not self._stopping.is_set(),
                adhoc=AdhocProber(self.env, endpoint) if endpoint.enabled else None,
                health=self.health,
                limits=self.config.prometheus.http,
                location=self.config.agent.location,
                pages=page.mount if page is not None and self.config.status_page.listen is None else None,
            )
            try:
                await self.http.start()
            except HttpBindError as exc:
                raise StartupError(str(exc)) from None
        await self._start_status_page(page, address)
        snmp = self.config.snmp
        if not snmp.enabled:
            return
        from monitor.exporters.snmp.agent import SnmpAgent, SnmpBindError
        from monitor.exporters.snmp.identity import ENGINE_STATE_FILE, next_engine_state, parse_engine_id
        from monitor.exporters.snmp.notify import Notifier

        engine_state = None
        if snmp.listen:
            self.snmp = SnmpAgent(
                snmp,
                self.config.agent.state_dir,
                self.store,
                self.health,
                default_interval=self.config.defaults.interval,
                location=self.config.agent.location,
            )
            try:
                await self.snmp.start()
            except SnmpBindError as exc:
                raise StartupError(str(exc)) from None
            engine_state = self.snmp.engine_state
        if snmp.notify:
            if engine_state is None:  # no agent: the notifier still needs a stable ID and rising boots
                configured = parse_engine_id(snmp.engine_id) if snmp.engine_id else None
                engine_state = next_engine_state(self.config.agent.state_dir / ENGINE_STATE_FILE, configured)
            # One engine ID and boots counter for agent and notifications: v3 trap receivers know it.
            self.notifier = Notifier(
                snmp.notify,
                self.health,
                engine_id=engine_state.engine_id,
                engine_boots=engine_state.boots,
                trap_address=snmp.trap_address,
            )
            await self.notifier.start()
            await self.notifier.cold_start()

    def _page(self) -> StatusPage | None:
        if not self.config.status_page.enabled:
            return None
        try:
            return StatusPage(
                self.store,
                self.history,  # None with history off: the page says so
                per_page=self.config.status_page.per_page,
                config_path=str(self.config_path),
            )
        except StatusPageUnavailable as exc:  # the agent's probes and metrics do not depend on the page
            log.error("status page off: %s", exc)
            return None

    async def _start_status_page(self, page: StatusPage | None, metrics: tuple[str, int] | None) -> None:
        """On its own address if `status_page.listen` sets one, else on the Prometheus server's `/`."""
        own = self.config.status_page.address()
        if page is None:
            return
        if own is None:
            if metrics is None or self.http is None:
                log.warning("status page: no address (prometheus.listen and status_page.listen are unset)")
            else:
                log.info("status page on http://%s/", _host_port(metrics[0], self.http.port))
            return
        self.status_page = StatusPageServer(page, *own, limits=self.config.prometheus.http)
        try:
            await self.status_page.start()
        except HttpBindError as exc:
            self.status_page = None
            raise StartupError(str(exc)) from None
        log.info("status page on http://%s/", _host_port(own[0], self.status_page.port))

    async def reload(self) -> None:
        """SIGHUP: apply a new config; a bad one is refused and the old one keeps running."""
        self.health.config_attempted_at = time.time()
        try:
            config = self.shard.apply(await asyncio.to_thread(load_config, self.config_path))
        except ConfigError as exc:
            self.health.config_load_success = False
            self.health.config_reloads["failure"] += 1
            log.error("reload refused, keeping the running config: %s", str(exc).replace("\n", "; "))
            return
        unreloadable = [
            section
            for section in ("agent", "prometheus", "status_page", "dns")
            if getattr(config, section) != getattr(self.config, section)
        ]
        old_snmp, new_snmp = self.config.snmp, config.snmp
        if (new_snmp.enabled, new_snmp.notify, new_snmp.engine_id, new_snmp.trap_address) != (
            old_snmp.enabled,
            old_snmp.notify,
            old_snmp.engine_id,
            old_snmp.trap_address,
        ):
            unreloadable.append("snmp (enabled, notify, engine_id, trap_address)")
            config = config.model_copy(update={"snmp": old_snmp})
        elif self.snmp is not None and new_snmp != old_snmp:
            await self.snmp.reconfigure(new_snmp)  # communities, users, listen addresses
        if unreloadable:
            log.warning("reload: changes to %s take effect only after a restart", ", ".join(unreloadable))
        self.config = config.model_copy(
            update={section: getattr(self.config, section) for section in ("agent", "prometheus", "status_page", "dns")}
        )
        self._apply(self.config)
        self.health.config_load_success = True
        self.health.config_loaded_at = time.time()
        self.health.config_reloads["success"] += 1
        log.info("reloaded %s: %d SMTP probes, %d MX checks", self.config_path, len(config.smtp), len(config.mx))

    async def stop(self) -> None:
        self._stopping.set()
        await self.scheduler.stop(SHUTDOWN_GRACE)
        if self.snmp is not None:
            await self.snmp.stop()
        if self.notifier is not None:
            await self.notifier.stop(1.0)
        if self.http is not None:
            await self.http.stop()
        if self.status_page is not None:
            await self.status_page.stop()
        if self.persister is not None:
            await self.persister.stop()
        if self.history is not None:
            await asyncio.to_thread(self.history.stop)  # writes what is queued
        if self.state_db is not None:
            self.state_db.close()
        log.info("stopped")

    async def serve(self, on_started: Callable[[], None] | None = None) -> None:
        """Run until SIGTERM or SIGINT; SIGHUP reloads. `on_started` is called ON_STARTED_DELAY after starting."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stopping.set)
        loop.add_signal_handler(signal.SIGINT, self._stopping.set)
        reloads: set[asyncio.Task[None]] = set()

        def on_hup() -> None:
            task = loop.create_task(self.reload())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hup)
        after_start: asyncio.TimerHandle | None = None
        try:
            await self.start()
            if on_started is not None:
                # A moment after starting, not before the first answers: /-/ready, SNMP and /metrics need not
                # wait for it (run_agent's collection takes 0.15 s at 10,000 probes, 2026-12-07).
                after_start = loop.call_later(ON_STARTED_DELAY, on_started)
            await self._stopping.wait()
        finally:
            if after_start is not None:
                after_start.cancel()
            await self.stop()


def _host_port(host: str, port: int) -> str:
    host = host or "0.0.0.0"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _prepare_state_dir(path: Path) -> None:
    try:
        private_dir(path)  # 0700 whatever the umask: the state is the agent's alone
    except OSError as exc:
        raise StartupError(f"cannot create state directory {path}: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK):
        raise StartupError(f"state directory {path} is not writable")


def run_agent(
    config_path: Path,
    log_format: str = "text",
    log_level: str = "info",
    shard: Shard | None = None,
    reader: ConfigReader | None = None,
) -> int:
    """Entry point of `smtp-monitor run`; config errors propagate to the CLI (exit 2).

    `reader`, if given, reads config_path: it started before the agent's imports."""
    one_malloc_arena()  # before the first thread
    logs.setup(log_format, log_level)
    # Starting builds hundreds of thousands of objects (config models, store states) that the
    # cyclic collector traced again and again for nothing. Once started, the survivors are frozen
    # out of its reach, so no collection traces them. Without this, at 10,000 probes: 1.49 instead
    # of 1.02 CPU-s to /-/ready, nearly half of starting; ready in 1.91 instead of 1.50 s (median
    # of 11 starts on a busy 2-core machine; target 2 s), 2026-12-06, `python -m monitor run` with
    # it switched off in a measuring copy of 177409f.
    gc.disable()
    try:
        config = reader.config() if reader is not None else load_config(config_path)
        asyncio.run(Agent(config_path, config, shard, log_format, log_level).serve(on_started=_collect_from_now_on))
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        return EXIT_STARTUP
    finally:
        gc.enable()
    return 0


def _collect_from_now_on() -> None:
    gc.collect()  # cycles left by starting: frozen, they would never be freed
    gc.freeze()
    gc.enable()
