"""The files a run relies on, held to the bytes the staging evidence verified (--phase4-require-evidence).

The gate compares every file of the plan (plan/files.py) with the evidence before anything connects; a file read
or run later (a migration, a [setup] file, an [[app_queries]] file, a `command` check's program or script, the
Python of the custom checks) may have changed since. So each is checked again at the moment it is used, and all of
them before every migration: a difference is one line (which file, the sha256 expected, the one found) and the
run stops. No pytest here."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pytest_phase4.errors import Phase4Error
from pytest_phase4.plan.files import FileHash, sha256_of


class PinBroken(Phase4Error):
    """A file the run relies on is not the one the evidence verified; the message is the one line to show."""


@dataclass(frozen=True)
class Pins:
    folder: Path  # the plan's folder: FileHash paths are relative to it
    files: tuple[FileHash, ...]
    by_path: dict[str, FileHash] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_path", {_key(self.folder / f.path): f for f in self.files})

    def read(self, path: Path) -> bytes:
        """The bytes of `path`, read once and checked against the evidence (a file it does not list is read as is)."""
        raw = path.read_bytes()
        if (pinned := self.by_path.get(_key(path))) is not None:
            self._compare(pinned, hashlib.sha256(raw).hexdigest())
        return raw

    def text(self, path: Path) -> str:
        return self.read(path).decode("utf-8")

    def check(self, paths: Iterable[Path]) -> None:
        for path in paths:
            if (pinned := self.by_path.get(_key(path))) is not None:
                self._compare(pinned, sha256_of(path))

    def check_all(self) -> None:
        for pinned in self.files:
            self._compare(pinned, sha256_of(self.folder / pinned.path))

    def migration_sha256(self, path: Path) -> str | None:
        pinned = self.by_path.get(_key(path))
        return pinned.sha256 if pinned is not None else None

    @staticmethod
    def _compare(pinned: FileHash, found: str) -> None:
        if found != pinned.sha256:
            raise PinBroken(f"{pinned.path} ({pinned.role}) changed since the gate checked it against the evidence "
                            f"this run relies on: sha256 {pinned.sha256} expected, {found} found; nothing more of "
                            "the runbook runs; find out who changed it, restore the bytes staging verified, then "
                            "start the run again")


def _key(path: Path) -> str:
    return os.path.abspath(path)  # not resolved: a symlink keeps the name the plan gives it (plan/files.py)
