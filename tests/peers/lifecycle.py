"""What every test peer shares: start()/stop(), close() for fixtures, and `with` support."""

from __future__ import annotations

from types import TracebackType
from typing import Self


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
