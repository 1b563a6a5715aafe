"""The forked config reader: the YAML document read in a child while `run` imports the models."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from monitor.config import document
from monitor.config.document import ConfigError

if TYPE_CHECKING:
    from monitor.config.schema import Config


class ConfigReader:
    """load_config(path) with the reading and YAML parsing done by a forked child meanwhile.

    `run` starts it before importing the models and the agent (~0.4 CPU-s), and the YAML of
    10,000 probes takes ~0.5 CPU-s: a second core does one while this process does the other,
    and the YAML's garbage stays in the child. Without it, at 10,000 probes, the agent's RSS is
    20 MiB higher for good (agent and probe process: 204 instead of 184 MiB at /-/ready, 218
    instead of 198 MiB an interval later; target 286 MiB) and /-/ready comes 0.1-0.3 s later at
    best (11 starts each on a busy 2-core machine, 2026-12-06, `python -m monitor run` with the
    reader switched off in a measuring copy of 177409f). Whatever goes wrong in the child (it
    died, or raised something other than a ConfigError), config() loads the file here instead,
    so the result or error is always load_config's."""

    def __init__(self, path: Path | str) -> None:
        self.path = path
        self._pid = 0
        self._pipe = -1
        if hasattr(os, "fork"):
            self._pipe, out = os.pipe()
            self._pid = os.fork()
            if self._pid == 0:
                os.close(self._pipe)
                _child_reads(path, out)  # never returns
            os.close(out)

    def config(self) -> Config:
        """The validated config: waits for the child's document if it is not there yet."""
        outcome: tuple[str, Any] = ("retry", None)
        if self._pid:
            try:
                with os.fdopen(self._pipe, "rb") as pipe:
                    outcome = pickle.load(pipe)  # noqa: S301 - our own fork
            except (EOFError, OSError, pickle.UnpicklingError):
                pass  # the child died: the file is read here
            finally:
                os.waitpid(self._pid, 0)
                self._pid = 0
        from monitor.config.schema import load_config, parse_config  # by now imported: this forked before it

        kind, payload = outcome
        if kind == "document":
            return parse_config(payload, str(self.path))
        if kind == "error":
            raise ConfigError(payload)
        return load_config(self.path)


def _child_reads(path: Path | str, out: int) -> NoReturn:
    try:
        try:
            outcome: tuple[str, Any] = ("document", document.read_document(path))
        except ConfigError as exc:
            outcome = ("error", str(exc))
        except BaseException:  # a bug: the parent loads the file and meets it itself
            outcome = ("retry", None)
        with os.fdopen(out, "wb") as pipe:
            pickle.dump(outcome, pipe, protocol=pickle.HIGHEST_PROTOCOL)
    finally:
        os._exit(0)  # no atexit handlers, no flushing the parent's buffers
