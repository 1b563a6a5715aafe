"""Shared bench plumbing: /proc sampling, the agent as a process, metrics parsing, result rows."""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.support.ports import HOST, free_tcp_port  # noqa: E402  # after the path above: bench/ runs as a script
from tests.support.procs import descendants, kill_quietly, wait_gone  # noqa: E402  # as above

CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    """One progress line on stderr, time-stamped; the table goes to stdout."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- cleanup: every process the bench starts is stopped at exit ------------------------------

_CLEANUPS: list[tuple[str, Callable[[], None]]] = []


def on_exit(what: str, stop: Callable[[], None]) -> Callable[[], None]:
    """Register `stop` to run at exit (last registered first); returns a callable that runs it now."""
    entry = (what, stop)
    _CLEANUPS.append(entry)

    def run_now() -> None:
        if entry in _CLEANUPS:
            _CLEANUPS.remove(entry)
            _call(entry)

    return run_now


def _call(entry: tuple[str, Callable[[], None]]) -> None:
    what, stop = entry
    try:
        stop()
    except Exception as exc:
        log(f"cleanup of {what} failed: {type(exc).__name__}: {exc}")


def run_cleanups() -> None:
    """Stop everything still registered, newest first."""
    while _CLEANUPS:
        _call(_CLEANUPS.pop())


def _on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


atexit.register(run_cleanups)
signal.signal(signal.SIGTERM, _on_signal)
signal.signal(signal.SIGHUP, _on_signal)


def stop_process(proc: subprocess.Popen[bytes] | subprocess.Popen[str], grace: float = 10.0) -> None:
    """SIGTERM, wait `grace`, SIGKILL; always reaps; then SIGKILLs any descendant left behind
    (the agent's probe process runs in a session of its own)."""
    tree = descendants(proc.pid) if proc.poll() is None else set()
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    for pid in wait_gone(tree, 5.0):
        kill_quietly(pid, signal.SIGKILL)


# -- /proc ------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads), in seconds."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_field(pid: int, name: str) -> int:
    """A numeric field of /proc/PID/status (VmRSS and VmHWM in KiB, Threads)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise KeyError(name)


def _tree_sum(pid: int, measure: Callable[[int], int]) -> int:
    """`measure` summed over `pid` and its live descendants (the agent runs its probes in a child)."""
    total = 0
    for p in {pid} | descendants(pid):
        try:
            total += measure(p)
        except (OSError, KeyError):
            continue  # exited meanwhile
    return total


def rss_mib(pid: int) -> float:
    """Resident memory of `pid` and its descendants now."""
    return _tree_sum(pid, lambda p: status_field(p, "VmRSS")) / 1024


def peak_rss_mib(pid: int) -> float:
    """Sum of each process's own peak (VmHWM) over `pid` and its descendants: an upper bound of the
    tree's peak, exact for one process."""
    return _tree_sum(pid, lambda p: status_field(p, "VmHWM")) / 1024


def _pss_mib(pid: int) -> float:
    """Proportional set size: shared pages divided among the processes that map them."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return math.nan


def rss_split(pid: int) -> str:
    """Each process of the tree: RSS now, its peak, and how much of it is file-backed (shared
    libraries, counted again in every process that maps them)."""
    parts = []
    for p in sorted({pid} | descendants(pid)):
        try:
            rss, hwm, file = (status_field(p, field) / 1024 for field in ("VmRSS", "VmHWM", "RssFile"))
        except (OSError, KeyError):
            continue
        pss = _pss_mib(p)
        parts.append(f"pid {p}: {rss:.0f} MiB (peak {hwm:.0f}, files {file:.0f}, PSS {pss:.0f})")
    return "; ".join(parts)


def open_fds(pid: int) -> int:
    """Open file descriptors of `pid` and its descendants."""
    return _tree_sum(pid, lambda p: len(os.listdir(f"/proc/{p}/fd")))


def thread_count(pid: int) -> int:
    """Threads of `pid` and its descendants."""
    return _tree_sum(pid, lambda p: status_field(p, "Threads"))


def processes(pid: int) -> int:
    """`pid` and its live descendants."""
    return len({pid} | descendants(pid))


class CpuWindow:
    """CPU seconds of one process and its descendants (reaped ones too), and wall time, between
    start() and stop()."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.cpu0 = self.cpu1 = 0.0
        self.wall0 = self.wall1 = 0.0

    def start(self) -> None:
        self.wall0, self.cpu0 = time.monotonic(), tree_cpu(self.pid)

    def stop(self) -> None:
        self.wall1, self.cpu1 = time.monotonic(), tree_cpu(self.pid)

    @property
    def cpu(self) -> float:
        return self.cpu1 - self.cpu0

    @property
    def wall(self) -> float:
        return self.wall1 - self.wall0


# -- HTTP and the exposition format -----------------------------------------------------------


def http_get(url: str, timeout: float = 10.0) -> tuple[int, bytes, float]:
    """(status, body, seconds); status 0 when nothing answered."""
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 -- loopback URLs we build
            body = resp.read()
            return resp.status, body, time.perf_counter() - t0
    except urllib.error.HTTPError as exc:
        return exc.code, b"", time.perf_counter() - t0
    except OSError:
        return 0, b"", time.perf_counter() - t0


_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def samples(text: str, names: Iterable[str]) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample whose name is in `names`; a line scan, fast on big scrapes."""
    wanted = tuple(names)
    out = []
    for line in text.splitlines():
        if not line.startswith(wanted):
            continue
        brace = line.find("{")
        space = line.find(" ")
        end = brace if 0 <= brace < space else space
        name = line[:end]
        if name not in wanted:
            continue
        labels: dict[str, str] = {}
        if end == brace:
            close = line.rindex("}")
            labels = dict(_LABEL.findall(line[brace + 1 : close]))
            value_text = line[close + 1 :].split()[0]
        else:
            value_text = line[space + 1 :].split()[0]
        out.append((name, labels, float(value_text)))
    return out


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of every sample of `name` whose labels include `labels`."""
    total = 0.0
    for _, have, value in samples(text, [name]):
        if all(have.get(k) == v for k, v in labels.items()):
            total += value
    return total


Buckets = list[tuple[float, float]]


def histogram(text: str, name: str) -> Buckets:
    """Cumulative (upper bound, count) pairs of histogram `name`, sorted, +Inf last."""
    out = []
    for _, labels, value in samples(text, [name + "_bucket"]):
        bound = labels.get("le", "+Inf")
        out.append((math.inf if bound == "+Inf" else float(bound), value))
    return sorted(out)


def histogram_delta(before: Buckets, after: Buckets) -> Buckets:
    """Observations between two scrapes of the same cumulative histogram."""
    old = dict(before)
    return [(bound, count - old.get(bound, 0.0)) for bound, count in after]


def histogram_quantile(q: float, buckets: Buckets) -> float:
    """Prometheus' histogram_quantile: linear within the bucket; the top finite bound if in +Inf."""
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1) of raw samples."""
    if not values:
        return math.nan
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


# -- the agent as a process -------------------------------------------------------------------


class AgentProcess:
    """`python -m monitor run -c FILE` on a config of ours, metrics on a free loopback port."""

    def __init__(self, workdir: Path, config: dict[str, Any], log_level: str = "warning") -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.http_port = free_tcp_port()
        self.config_file = workdir / "agent.yaml"
        self.log_file = workdir / "agent.log"
        self.log_level = log_level
        full: dict[str, Any] = {
            "agent": {"state_dir": str(workdir / "state")},
            "prometheus": {"listen": f"{HOST}:{self.http_port}"},
            "snmp": {"enabled": False},
            **config,
        }
        self.config_file.write_text(yaml.safe_dump(full, sort_keys=False))
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self._stop_now: Callable[[], None] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    def spawn(self) -> None:
        """Start the process; `started_at` is the monotonic time just before the fork."""
        with self.log_file.open("ab") as out:
            self.started_at = time.monotonic()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "monitor", "run", "-c", str(self.config_file), "--log-level", self.log_level],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
            )
        proc = self.proc
        self._stop_now = on_exit(f"agent {proc.pid}", lambda: stop_process(proc))

    def wait_ready(self, ready_timeout: float = 120.0) -> float:
        """Wait for /-/ready; returns seconds from spawn to the first 200."""
        proc = self.proc
        assert proc is not None
        end = self.started_at + ready_timeout
        while time.monotonic() < end:
            if proc.poll() is not None:
                raise RuntimeError(f"agent exited with {proc.returncode}:\n{self.log_tail()}")
            status, _, _ = http_get(self.url + "/-/ready", timeout=2.0)
            if status == 200:
                return time.monotonic() - self.started_at
            time.sleep(0.02)
        raise RuntimeError(f"agent not ready within {ready_timeout:.0f} s:\n{self.log_tail()}")

    def start(self, ready_timeout: float = 120.0) -> float:
        """Spawn and wait for /-/ready; returns seconds from spawn to the first 200."""
        self.spawn()
        return self.wait_ready(ready_timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self._stop_now is not None:
            self._stop_now()
            self._stop_now = None

    def metrics(self, timeout: float = 30.0) -> str:
        status, body, _ = http_get(self.url + "/metrics", timeout=timeout)
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}:\n{self.log_tail()}")
        return body.decode()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return "(no agent log)"
        return "\n".join(text[-lines:])

    def __enter__(self) -> AgentProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_settled(pid: int, below: float = 0.3, timeout: float = 90.0) -> float:
    """Wait until `pid` and its children use less than `below` cores over a second (a big config's
    startup work is done); returns the seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        window = CpuWindow(pid)
        window.start()
        time.sleep(1.0)
        window.stop()
        if window.cpu / window.wall < below:
            break
    return time.monotonic() - t0


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port bound and never listening while the block runs: every connect to it is refused at once."""
    with socket.socket() as refused:
        refused.bind((HOST, 0))
        yield refused.getsockname()[1]


def refused_smtp_probes(count: int, port: int) -> list[dict[str, Any]]:
    """`count` SMTP probes every 60 s against a `refused_port()`: a probe costs little, so what is measured is
    the agent's side of each result."""
    return [{"name": f"p-{i:05d}", "host": HOST, "port": port, "tls": "none", "interval": "60s"} for i in range(count)]


def smtp_probe(name: str, port: int, tls: str, ca_file: Path, **extra: Any) -> dict[str, Any]:
    """One SMTP probe entry of the agent's config against 127.0.0.1."""
    return {
        "name": name,
        "host": HOST,
        "port": port,
        "tls": tls,
        "ca_file": str(ca_file),
        "servername": "mail.test",
        **extra,
    }


# -- results -----------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the final table; `better` says which direction of value/anchor is good."""

    section: str
    figure: str
    value: float | None
    unit: str = ""
    anchor: float | None = None
    anchor_name: str = ""
    target: str = ""
    ok: bool | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.value is None or self.anchor is None or self.anchor == 0:
            return None
        return self.value / self.anchor


@dataclass
class Results:
    """Every row measured so far, in order, plus free-text notes."""

    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        shown = fmt(row.value)
        anchor = f" (anchor {fmt(row.anchor)})" if row.anchor is not None else ""
        log(f"  {row.section}: {row.figure} = {shown} {row.unit}{anchor} {row.note}".rstrip())
        return row

    def note(self, text: str) -> None:
        self.notes.append(text)
        log(f"  note: {text}")


def fmt(value: float | None) -> str:
    """Three significant digits, no exponent for ordinary magnitudes."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    digits = max(0, 2 - math.floor(math.log10(magnitude)))
    return f"{value:.{digits}f}"


def machine_info() -> dict[str, str]:
    """nproc, CPU model, kernel, Python and the anchors' versions."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = "unknown"
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
        mem = f"{kib / 1024 / 1024:.1f} GiB"
    info = {
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": model,
        "memory": mem,
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }
    for name, argv in (
        ("postfix", ["postconf", "-d", "-h", "mail_version"]),
        ("blackbox_exporter", ["prometheus-blackbox-exporter", "--version"]),
        ("snmpd", ["snmpd", "-v"]),
        ("nsd", ["nsd", "-v"]),
    ):
        if shutil.which(argv[0]) is None:
            continue
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
            text = (proc.stdout + proc.stderr).strip()
            match = re.search(r"\d+\.\d+(\.\d+)?", text)
            if match:
                info[name] = match.group(0)
    return info


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat (guest time is already inside user)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


# (cores busy with other processes, seconds) of every measurement window, for the report's header
OTHERS_LOAD: list[tuple[float, float]] = []
# Roots of process trees that are ours but not our descendants (Postfix's master daemonizes).
OUR_ROOTS: set[int] = set()


def tree_cpu(pid: int) -> float:
    """CPU seconds of `pid`, its reaped children (cutime/cstime) and its live descendants."""
    total = 0.0
    for p in {pid} | descendants(pid):
        try:
            raw = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        total += sum(int(x) for x in fields[11:15]) / CLK_TCK
    return total


def others_summary() -> str:
    """Mean and worst load of other processes over all measurement windows."""
    if not OTHERS_LOAD:
        return "not measured"
    seconds = sum(s for _, s in OTHERS_LOAD)
    mean = sum(o * s for o, s in OTHERS_LOAD) / seconds if seconds else math.nan
    return f"mean {mean:.2f} cores, worst window {max(o for o, _ in OTHERS_LOAD):.2f} cores"


def ours_cpu() -> float:
    """CPU seconds of everything the bench runs: itself, its children, and OUR_ROOTS' trees."""
    return tree_cpu(os.getpid()) + sum(tree_cpu(root) for root in OUR_ROOTS)


class MachineWindow:
    """Whole-machine CPU between start() and stop() in cores busy, and how much of it was not ours
    (other users of the machine: their load makes every figure noisier)."""

    def __init__(self) -> None:
        self.t0 = self.t1 = (0, 0)
        self.ours0 = self.ours1 = 0.0
        self.wall0 = self.wall1 = 0.0

    def start(self) -> None:
        self.t0, self.ours0, self.wall0 = machine_ticks(), ours_cpu(), time.monotonic()

    def stop(self) -> None:
        self.t1, self.ours1, self.wall1 = machine_ticks(), ours_cpu(), time.monotonic()
        if not math.isnan(self.others):
            OTHERS_LOAD.append((self.others, self.wall1 - self.wall0))

    @property
    def cores_busy(self) -> float:
        busy = self.t1[0] - self.t0[0]
        total = self.t1[1] - self.t0[1]
        ncpu = os.cpu_count() or 1
        return ncpu * busy / total if total else math.nan

    @property
    def wall(self) -> float:
        return self.wall1 - self.wall0

    @property
    def others(self) -> float:
        """Cores busy with processes that are not the bench's (never below zero)."""
        wall = self.wall1 - self.wall0
        if wall <= 0:
            return math.nan
        return max(0.0, self.cores_busy - (self.ours1 - self.ours0) / wall)


@dataclass
class Settings:
    """What run.py was asked for; every section reads its sizes from here."""

    quick: bool
    workdir: Path
    results_dir: Path
    profile: bool = False
    soak_seconds: float = 600.0
    scale_minutes: float = 0.0  # keep the scale agent up this long after its start (0: not past the walks)
