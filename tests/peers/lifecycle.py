"""What every test peer shares: start()/stop(), close() for fixtures, `with` support, and the daemon template.

`DaemonPeer` is the template the Debian daemons follow (NSD, Unbound, snmptrapd, Postfix): prepare its
files, launch it, wait until it answers; stop() ends its whole process tree and never leaves a process
behind, also when launching or waiting failed half-way.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

from tests.support.procs import descendants, kill_quietly, pid_runs, read_pid_file, wait_gone

KILL_DEADLINE = 5.0  # seconds a SIGKILLed process may take to vanish


def log_tails(paths: Iterable[Path], lines: int, missing: str) -> str:
    """The last `lines` lines of each readable file, labelled with its path, for error messages."""
    parts = []
    for path in paths:
        try:
            text = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        parts.append(f"{path}:\n" + "\n".join(text[-lines:]))
    return "\n".join(parts) or missing


class Peer:
    """A server the tests start and always stop; subclasses define start() and stop()."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop; the files under the peer's directory stay for post-mortems."""
        self.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class DaemonPeer(Peer):
    """A Debian daemon under `root`: _prepare() writes its files, _launch() starts it, _wait_ready() waits.

    Subclasses name the program (`executable`, the file name /proc/PID/exe shows, so a reused PID is
    never signalled), the `error` they raise, and where the daemon writes its PID (`pid_file`, or None).
    _launch() returns the child it started in the foreground, or None for a program that daemonises
    itself (then its PID comes from `pid_file`).  stop() asks the main process to end (_request_stop,
    SIGTERM unless overridden), waits `stop_deadline` for it and every descendant it had, SIGKILLs the
    rest, reaps our child, then runs _after_stop(); it raises only if a process outlives SIGKILL.
    """

    executable: ClassVar[str]
    error: ClassVar[type[Exception]] = RuntimeError
    stop_deadline: ClassVar[float] = 10.0

    root: Path
    _process: subprocess.Popen[bytes] | None = None
    _launched_pid: int | None = None  # the main PID seen right after launching, if there was a PID file

    @property
    def pid_file(self) -> Path | None:
        """Where the daemon writes its main PID; None when only our child's PID tells."""
        return None

    def _prepare(self) -> None:
        """Write configuration and clear what a former run left (default: nothing)."""

    def _launch(self) -> subprocess.Popen[bytes] | None:
        raise NotImplementedError

    def _wait_ready(self) -> None:
        raise NotImplementedError

    def _request_stop(self, pid: int) -> None:
        """Ask the main process `pid` to end; its tree is waited for and killed by stop()."""
        kill_quietly(pid, signal.SIGTERM)

    def _after_stop(self, stopped: bool) -> None:
        """Clean-up after stop(); `stopped` says whether a process was running (default: nothing)."""

    def _main_pids(self) -> list[int]:
        """The daemon's main process as the PID file, the launch and our child each know it (alive ones only)."""
        pid_file = self.pid_file
        candidates = (
            read_pid_file(pid_file) if pid_file is not None else None,
            self._launched_pid,
            self._process.pid if self._process is not None else None,
        )
        found: list[int] = []
        for pid in candidates:
            if pid is not None and pid not in found and pid_runs(pid, self.executable):
                found.append(pid)
        return found

    def running(self) -> bool:
        """Whether the daemon's main process is alive."""
        return bool(self._main_pids())

    def start(self) -> None:
        """Prepare, launch and wait until ready; on any failure stop whatever was launched, then raise."""
        if self.running():
            raise self.error(f"{self.executable} under {self.root} is already running")
        self._prepare()
        try:
            self._process = self._launch()
            pid_file = self.pid_file
            self._launched_pid = read_pid_file(pid_file) if pid_file is not None else None
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """End the daemon and every process it started; reap our child; then _after_stop()."""
        mains = self._main_pids()
        tree = set(mains)
        for pid in mains:
            tree |= descendants(pid)  # collected first: children reparent once their parent dies
        for pid in mains[:1]:
            self._request_stop(pid)
        for pid in mains[1:]:
            kill_quietly(pid, signal.SIGTERM)
        survivors = wait_gone(tree, self.stop_deadline)
        for pid in survivors:
            kill_quietly(pid, signal.SIGKILL)
        unkillable = wait_gone(survivors, KILL_DEADLINE)
        self._reap()
        self._launched_pid = None
        if unkillable:
            raise self.error(f"{self.executable} processes {sorted(unkillable)} survived SIGKILL")
        self._after_stop(bool(mains))

    def _reap(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        try:
            process.wait(timeout=self.stop_deadline)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=KILL_DEADLINE)
