"""A heartbeat for long steps: while a step runs longer than a few seconds, say on the terminal what runs and
for how long, so nobody kills a run that is working, and say so when it is not working but waiting for another
session's lock (runbook appendix: Migration Hangs). Seeding, starting a throwaway server, migrations, the backup
and every other step use this one mechanism."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from types import TracebackType
from typing import IO

from pytest_phase4.db.guard import Blocker

# Seconds before the first line and between lines; module-level so an example project's conftest can shorten them.
FIRST = 5.0
EVERY = 10.0

# What a backup or rollback step does while it runs, in the words of the tool doing it.
_LONG_STEPS = {
    "backup[dump]": "pg_dump --format=custom of the whole database",
    "backup[schema]": "pg_dump --schema-only",
    "backup[snapshot]": "row counts and content checksums of every table",
    "backup[verify]": "pg_restore reading every block of the archive",
    "backup[restore]": "restoring the backup into a scratch database to compare it with the source",
    "rehearse": "the whole plan on a scratch copy restored from the backup",
    "drop_created": "dropping what was created after the backup",
    "restore": "pg_restore of the backup over the database",
    "restore_scratch": "pg_restore of the backup into a scratch database",
}


def describe(name: str) -> str:
    """`running backup[dump] (pg_dump --format=custom of the whole database)` for a step's test name."""
    what = _LONG_STEPS.get(name)
    return f"running {name} ({what})" if what else f"running {name}"


class Heartbeat:
    """Calls write(line) after `first` seconds and then every `every` seconds until the block ends. `doing` may
    change while it runs; `status` (called at each line) says what the step waits for, or "" for nothing."""

    def __init__(self, doing: str, write: Callable[[str], None], first: float | None = None,
                 every: float | None = None, status: Callable[[], str] | None = None) -> None:
        self.doing, self.write, self.status = doing, write, status
        self.first = FIRST if first is None else first
        self.every = EVERY if every is None else every
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"phase4-heartbeat {doing}", daemon=True)
        self._started = 0.0

    def line(self) -> str:
        elapsed = time.monotonic() - self._started
        try:
            status = self.status() if self.status else ""
        except Exception:  # a diagnosis aid: it must never break the step it describes
            status = ""
        return f"phase4: still {self.doing}: {elapsed:.0f} s so far" + (f" ({status})" if status else "")

    def _beat(self) -> None:
        wait = self.first
        while not self._done.wait(wait):
            self.write(self.line())
            wait = self.every

    def __enter__(self) -> Heartbeat:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._done.set()
        self._thread.join()


class Terminal:
    """The user's terminal, for heartbeat lines; without one (CI, a pipe) it says nothing. It writes to its own
    copy of standard output: during a test pytest captures file descriptor 1."""

    def __init__(self, out: IO[str] | None) -> None:
        self._out = out
        self._lock = threading.Lock()

    @classmethod
    def open(cls) -> Terminal:
        try:
            tty = sys.stdout.isatty()
        except (AttributeError, ValueError):
            tty = False
        return cls(os.fdopen(os.dup(sys.stdout.fileno()), "w") if tty else None)

    @property
    def active(self) -> bool:
        return self._out is not None

    def say(self, line: str) -> None:
        if self._out is not None:
            with self._lock:
                self._out.write(f"\n{line}\n")
                self._out.flush()

    def step(self, doing: str, status: Callable[[], str] | None = None) -> AbstractContextManager[object]:
        """A heartbeat for one step, or nothing when there is no terminal to show it on."""
        if self._out is None:
            return contextlib.nullcontext()
        return Heartbeat(doing, self.say, status=status)

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


def migration_status(waiting: Sequence[Blocker], lock_timeout: str) -> str:
    """What a running migration does: works, or waits for the sessions that block it."""
    if not waiting:
        return "the server is working on it, not waiting for a lock"
    first = waiting[0].pid
    return (f"waiting for a lock held by {'; '.join(str(b) for b in waiting)}. It goes on once the lock is "
            f"released, and fails if the wait reaches the lock timeout ({lock_timeout}); if that session is stuck, "
            f"end it: SELECT pg_terminate_backend({first})")
