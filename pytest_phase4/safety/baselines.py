"""Baselines across runs: the state a run compares "after" with (row counts, content checksums, fingerprint and
catalog inventory, in snapshot.json's format), recorded where a later run finds it and tied to the database.

A run that can apply a migration, or that verifies a plan not yet applied, records its snapshot taken before its
first migration as a baseline: `baseline.json` with this run's backup, and `<report>.baseline.json` beside its
report. A later run compares with the newest baseline proven to be of this database (its name, oid and cluster,
or where the cluster's identifier is not readable its first backup marker; and every backup marker it held is
still there) taken when none of the plan's migrations applied now was applied yet, and says
which one it used. No pytest here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from pytest_phase4.errors import Phase4Error, sql_error
from pytest_phase4.kinds.base import KINDS
from pytest_phase4.safety.snapshot import Snapshot

if TYPE_CHECKING:
    from pytest_phase4.run import Phase4Run

FILE = "baseline.json"  # in a backup folder
SUFFIX = ".baseline.json"  # beside a report


@dataclass(frozen=True)
class Baseline:
    snap: Snapshot
    path: Path | None  # the file it was read from or written to; None: this run's, not written
    own: bool = False  # this run's

    @property
    def label(self) -> str:
        where = str(self.path) if self.path is not None else "this run's snapshot"
        where = f"this run's baseline {where}" if self.own and self.path is not None else where
        taken = self.snap.taken_at
        when = f"{taken[:10]} {taken[11:19]} UTC" if len(taken) >= 19 else "at an unknown time"
        return f"{where} (taken {when})"


@dataclass(frozen=True)
class Choice:
    """The baseline the comparisons use, or why there is none."""

    baseline: Baseline | None
    why_not: str = ""  # when there is none
    note: str = ""  # what the comparisons cannot tell with this one

    def describe(self) -> str:
        if self.baseline is None:
            return self.why_not
        return f"compared with {self.baseline.label}" + (f"; {self.note}" if self.note else "")


@dataclass
class Store:
    """A run's baselines: where it looks for earlier runs', where it writes its own, and its own once taken."""

    places: list[Path] = field(default_factory=list)
    file: Path | None = None  # beside the report
    own: Baseline | None = None
    written: list[Path] = field(default_factory=list)
    identity: dict[str, str] | None = None  # of the database, once read
    _found: list[Baseline] | None = None

    def keep(self, snap: Snapshot, backup_folder: Path | None) -> None:
        """Record the run's own baseline beside its report and, when it made one, with its backup."""
        beside = free(self.file) if self.file else None
        with_backup = backup_folder / FILE if backup_folder and backup_folder.is_dir() else None
        self.written = write(snap, [p for p in (beside, with_backup) if p])
        self.own = Baseline(snap, self.written[0] if self.written else None, own=True)

    def choose(self, schema: str, identity: dict[str, str], markers: set[str], applied: Sequence[str]) -> Choice:
        if self._found is None:
            self._found = find(self.places)[0]
        mine = {p.resolve() for p in self.written}
        files = [b for b in self._found if b.path is None or b.path.resolve() not in mine]
        return choose(files, self.own, schema, identity, markers, applied, self.places)


def free(path: Path) -> Path:
    """The path, or the first `<name>-NN.baseline.json` beside it not taken: never overwrite another run's."""
    stem = path.name.removesuffix(SUFFIX)
    for n in range(2, 100):
        if not path.exists():
            break
        path = path.with_name(f"{stem}-{n:02d}{SUFFIX}")
    return path


def write(snap: Snapshot, paths: Iterable[Path]) -> list[Path]:
    """Write the baseline to each path; the ones written (a folder that cannot be written is left out)."""
    text = snap.to_json()
    done = []
    for path in paths:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.name == FILE:  # in a backup folder: private like the backup's other files
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(text)
                path.chmod(0o600)
            else:
                path.write_text(text)
        except OSError:
            continue
        done.append(path)
    return done


def find(places: Iterable[Path]) -> tuple[list[Baseline], list[str]]:
    """The baselines in these places: a baseline file, or a folder holding `*.baseline.json` files and backup
    folders with a `baseline.json`. Also the files that could not be read, with why."""
    paths: list[Path] = []
    for place in places:
        if place.is_file():
            paths.append(place)
        elif place.is_dir():
            paths += sorted(place.glob(f"*{SUFFIX}")) + sorted(place.glob(f"*/{FILE}"))
    found, unreadable = [], []
    for path in dict.fromkeys(p.resolve() for p in paths):
        try:
            found.append(Baseline(Snapshot.from_json(path.read_text()), path))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            unreadable.append(f"{path}: not a baseline ({type(exc).__name__}: {exc})")
    return found, unreadable


def choose(candidates: Sequence[Baseline], own: Baseline | None, schema: str, identity: dict[str, str],
           markers: set[str], applied: Sequence[str], places: Sequence[Path]) -> Choice:
    """The newest baseline of this database taken before any of the plan's migrations applied now (`applied`, in
    plan order); else this run's own snapshot when a migration was applied after it, saying what it misses."""
    usable, rejected = [], []
    for b in [*candidates, *([own] if own else [])]:
        s, where = b.snap, str(b.path) if b.path else "this run's snapshot"
        if s.schema != schema:
            rejected.append(f"{where}: of schema {s.schema}, the plan's is {schema}")
        elif not b.own and (why := unproven(s.source, identity)):
            rejected.append(f"{where}: {why}")
        elif missing := sorted(set(s.markers) - markers):
            rejected.append(f"{where}: this database no longer holds backup marker {missing[0]} it held then "
                            "(restored or re-created since)")
        elif early := [f for f in applied if f in s.applied]:
            rejected.append(f"{where}: taken when {early[0]} was already applied")
        else:
            usable.append(b)
    looked = ", ".join(str(p) for p in places) or "nowhere"
    if usable:
        newest = max(usable, key=lambda b: (b.snap.taken_at, b.path is None))
        if not applied:
            return Choice(None, why_not=f"no migration of the plan is applied: nothing to compare with the "
                                        f"baseline {newest.label} yet")
        return Choice(newest)
    if own is not None and (since := [f for f in applied if f not in own.snap.applied]):
        early = [f for f in applied if f in own.snap.applied]
        return Choice(own, note=f"taken after {', '.join(early)} (applied before this run): the changes of "
                                f"{since[0] if len(since) == 1 else 'this run'} only are compared; no baseline of "
                                f"this database from before {early[0]} was found in {looked}")
    if not applied:
        return Choice(None, why_not="no migration of the plan is applied, and no baseline to compare with")
    return Choice(None, why_not=(
        f"no baseline of this database from before {applied[0]} was found (looked in {looked}" +
        (f"; found {len(rejected)}: " + "; ".join(rejected[:5]) if rejected else "") +
        "): run the plan (or --phase4-verify-only) before its migrations are applied, or name a baseline with "
        "--phase4-baseline=PATH"))


def unproven(saved: Mapping[str, str], here: Mapping[str, str]) -> str:
    """Why a baseline is not proven to be of this database, or "". A name is no proof (staging and production are
    both `postgres`, a refreshed staging keeps its name): the database's oid must match (a database dropped and
    re-created gets another), and so must the cluster's system identifier; where the role may not read it, the
    oldest backup marker row the database held then, with the transaction that wrote it (snapshot.identity)."""
    name = saved.get("database", "?")
    if name != here.get("database"):
        return f"of another database ({name})"
    was, now = saved.get("system_identifier", ""), here.get("system_identifier", "")
    if was and now and was != now:
        return f"of database {name} on another cluster (system identifier {was}, this one's is {now})"
    if not saved.get("oid") or saved.get("oid") != here.get("oid"):
        return (f"of another database named {name} (oid {saved.get('oid') or 'not recorded'}, this one's is "
                f"{here.get('oid')}): dropped and re-created since (a refresh, a restore) or on another cluster")
    if was and now:
        return ""
    marker = saved.get("marker", "")
    if marker and marker == here.get("marker"):
        return ""
    return (f"of a database named {name} (oid {here.get('oid')}), not proven to be this one: the cluster's system "
            "identifier was not readable (pg_control_system() needs superuser or pg_monitor: GRANT pg_monitor TO "
            "the run's role) and " + ("the database held no backup marker then" if not marker else
                                      f"this database does not hold its backup marker {marker.partition('@')[0]} "
                                      "as written then (a copy restored from another database's dump)"))


def summary(run: Phase4Run) -> dict[str, Any] | None:
    """Which baseline the run's comparisons use (or why none) and where it recorded its own: for the report and
    the JSON evidence. None when the run neither compares nor recorded one (a rollback, -m preflight)."""
    selected = run.selected
    compares = any(KINDS[s.kind].compares and (selected is None or (s.step, s.test_id, s.line) in selected)
                   for step in run.plan.steps for s in step.checks)
    recorded = [str(p) for p in run.store.written]
    if run.safety.rollback or not (compares or recorded):
        return None
    try:
        choice = run.baseline()
    except (psycopg.Error, Phase4Error) as exc:  # the server is gone: say so rather than guess
        why = sql_error(exc) if isinstance(exc, psycopg.Error) else str(exc).splitlines()[0]
        return {"used": None, "text": f"unknown: {run.target.scrub(why)}", "recorded": recorded}
    used = choice.baseline
    return {"used": (str(used.path) if used.path else "this run's snapshot") if used else None,
            "taken_at": used.snap.taken_at if used else None, "applied_then": used.snap.applied if used else None,
            "text": choice.describe(), "recorded": recorded}
