"""What every test peer shares: start()/stop(), close() for fixtures, and `with` support."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Self


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
