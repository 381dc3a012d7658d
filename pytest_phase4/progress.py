"""A heartbeat for long steps: while a migration runs longer than a few seconds, say which one and for how long,
so nobody kills a run that is working (runbook appendix: Migration Hangs)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType


class Heartbeat:
    """Calls write(line) after `first` seconds and then every `every` seconds until the block ends."""

    def __init__(self, label: str, write: Callable[[str], None], first: float = 5.0, every: float = 10.0) -> None:
        self.label, self.write, self.first, self.every = label, write, first, every
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"phase4-heartbeat {label}", daemon=True)
        self._started = 0.0

    def _beat(self) -> None:
        wait = self.first
        while not self._done.wait(wait):
            elapsed = time.monotonic() - self._started
            self.write(f"phase4: still applying {self.label}: {elapsed:.0f} s so far (the server is working; see "
                       "pg_stat_activity for locks before stopping it)")
            wait = self.every

    def __enter__(self) -> Heartbeat:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._done.set()
        self._thread.join()
