"""Installing what the bench needs, and the loopback peers (Postfix, NSD) started once, on demand."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.common import OUR_ROOTS, REPO_ROOT, log, on_exit
from tests.support.peers import NsdServer, PostfixServer, standard_zones
from tests.support.procs import read_pid_file

# binary -> Debian package
BINARIES = {
    "/usr/sbin/postfix": "postfix",
    "/usr/sbin/nsd": "nsd",
    "/usr/sbin/snmpd": "snmpd",
    "/usr/bin/snmpget": "snmp",
    "/usr/bin/snmpbulkwalk": "snmp",
    "/usr/bin/prometheus-blackbox-exporter": "prometheus-blackbox-exporter",
    "/usr/bin/openssl": "openssl",  # s_time: the cost of a bare TLS handshake
}
PYTHON_MODULES = ("monitor", "aiohttp", "yaml", "dns", "prometheus_client", "cryptography", "pysnmp")
POLICY = Path("/usr/sbin/policy-rc.d")


def _run(argv: list[str], env: dict[str, str] | None = None) -> None:
    log("$ " + " ".join(argv))
    subprocess.run(argv, check=True, timeout=900, env=env)


def install() -> None:
    """apt-get the missing Debian packages (no daemon started) and pip the project if needed."""
    missing = sorted({pkg for path, pkg in BINARIES.items() if not Path(path).exists()})
    if missing:
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        deps = REPO_ROOT / "scripts" / "test-deps.sh"
        if deps.is_file():
            _run(["bash", str(deps)])  # the test peers, installed the project's way
        still = sorted({pkg for path, pkg in BINARIES.items() if not Path(path).exists()})
        if still:
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            own_policy = False
            if not POLICY.exists():
                # keep package scripts from starting system daemons (postfix on 25, snmpd on 161)
                _run([*sudo, "sh", "-c", f"printf '#!/bin/sh\\nexit 101\\n' > {POLICY} && chmod 755 {POLICY}"])
                own_policy = True
            try:
                if "postfix" in still:
                    _run(
                        [
                            *sudo,
                            "sh",
                            "-c",
                            "echo 'postfix postfix/main_mailer_type select Local only' | debconf-set-selections",
                        ]
                    )
                _run([*sudo, "apt-get", "update", "-q"], env)
                _run([*sudo, "apt-get", "install", "-y", "-q", "--no-install-recommends", *still], env)
            finally:
                if own_policy:
                    _run([*sudo, "rm", "-f", str(POLICY)])
    absent = [m for m in PYTHON_MODULES if importlib.util.find_spec(m) is None]
    if absent:
        # The bench runs on the locked set only: scripts/bench.sh syncs .venv from uv.lock first.
        raise SystemExit(f"python modules missing ({', '.join(absent)}): run the bench as ./scripts/bench.sh")


def ensure_py_spy() -> str | None:
    """py-spy's path (the lock's `bench` extra, beside this interpreter); None if absent."""
    found = shutil.which("py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        log("py-spy unavailable: it is in the `bench` extra, installed by ./scripts/bench.sh")
    return found


class Peers:
    """The bench's Postfix and NSD, each started on first use and stopped at exit."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._postfix: PostfixServer | None = None
        self._nsd: NsdServer | None = None

    @property
    def postfix(self) -> PostfixServer:
        if self._postfix is None:
            server = PostfixServer(self.workdir / "postfix")
            on_exit("postfix", server.close)
            log("starting Postfix")
            server.start()
            log(f"Postfix: plain {server.plain_port}, implicit {server.implicit_port}")
            master = read_pid_file(server.pid_file)
            if master is not None:
                OUR_ROOTS.add(master)  # it daemonizes: not our descendant
            self._postfix = server
        return self._postfix

    @property
    def nsd(self) -> NsdServer:
        if self._nsd is None:
            server = NsdServer(self.workdir / "nsd", standard_zones())
            on_exit("nsd", server.close)
            log("starting NSD")
            server.start()
            log(f"NSD on port {server.port}")
            self._nsd = server
        return self._nsd
