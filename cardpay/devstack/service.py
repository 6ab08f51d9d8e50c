"""The lifecycle every harness for a real service shares: `with Service() as s:` starts and stops."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class ManagedService:
    def start(self) -> object:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
