"""One execution of a plan against one target: connections, ledger, snapshot, migration states, halting.

This is the state the pytest layer reads and updates; it knows nothing of pytest.
"""

from __future__ import annotations

import getpass
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg

from pytest_phase4.blast import checks as blast_checks
from pytest_phase4.blast import radius as blast
from pytest_phase4.db import dsn, guard, ledger, locks, migrate
from pytest_phase4.db.facts import Facts
from pytest_phase4.db.pool import Pool
from pytest_phase4.db.target import Target
from pytest_phase4.errors import MigrationFailed
from pytest_phase4.kinds import context as checkcontext
from pytest_phase4.kinds.registry import KINDS
from pytest_phase4.plan.model import CheckSpec, Migration, Plan
from pytest_phase4.rls.personas import PersonaBook
from pytest_phase4.runextras import RunExtras
from pytest_phase4.safety import baselines, kept, snapshot
from pytest_phase4.safety import checks as safety
from pytest_phase4.safety.baselines import Baseline
from pytest_phase4.safety.pins import Pins
from pytest_phase4.steps import StepBook

# Migration states, as the report prints them.
PENDING, APPLIED, ALREADY, FAILED, BLOCKED, NOT_RUN, ROLLED_BACK, REFUSED = (
    "pending", "applied", "already applied", "failed", "blocked", "not run", "rolled back", "refused")


@dataclass
class MigrationState:
    migration: Migration
    status: str = PENDING
    duration_ms: float | None = None
    sha256: str = ""
    note: str = ""
    measured: locks.Measurement | None = None  # what it held on the target, as applied in this run
    stayed: str = ""  # failed with part of it committed (transaction = false): "1 of 3 statement(s)"
    rehearsed: dict[str, Any] | None = None  # the same, measured on the rehearsal copy (its JSON form)

    @property
    def applied(self) -> bool:
        """Applied to the target, by this run or an earlier one (the ledger)."""
        return self.status in (APPLIED, ALREADY)


@dataclass(frozen=True)
class Halt:
    group: int  # Step.group of the step that failed
    step: str
    reason: str
    same_group: bool  # a failed migration also stops its own verify checks


@dataclass(frozen=True)
class Confirmation:
    """How the point of no return was passed: by the flag, a 'yes' at the prompt, or not needed (a throwaway
    database), by which OS user, when."""

    by: str
    os_user: str
    at: datetime


def os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container without a passwd entry)
        return f"uid {os.getuid()}"


class Refused(Exception):
    """A migration was not attempted, for the reason in the message (which is all the user needs to read)."""


class DestructiveBlocked(Refused):
    """A destructive migration was not confirmed; the run stops at the point of no return."""


class OutOfOrder(Refused):
    """An earlier step of the plan did not pass in this run, or a later migration is applied already."""


@dataclass
class Phase4Run:
    plan: Plan
    target: Target
    confirm_destructive: bool
    check_timeout: str = "60s"
    lock_timeout: str = "10s"
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    finished_at: datetime | None = None
    server_version: str = ""
    halt: Halt | None = None
    states: dict[str, MigrationState] = field(default_factory=dict)
    applied_before_run: dict[str, ledger.Entry] = field(default_factory=dict)
    extras: RunExtras = field(default_factory=RunExtras)
    _ro: psycopg.Connection[Any] | None = None
    _guard: psycopg.Connection[Any] | None = None  # holds the run lock; watches blocked migrations
    lock_pid: int = 0  # the server process of the session holding the run lock
    verify_only: bool = False  # --phase4-verify-only: never apply; applied is what the database proves (probe)
    verified: set[str] = field(default_factory=set)  # migrations the probe found applied without a ledger row
    store: baselines.Store = field(default_factory=lambda: baselines.Store())  # its baseline, and where to look
    safety: safety.SafetyState = field(default_factory=lambda: safety.SafetyState())
    workers: int = 1  # read-only connections that run a step's heavy queries side by side (1: none)
    selected: frozenset[tuple[str, str, int]] | None = None  # (step, test id, line) of the checks that will run
    read_log: list[tuple[tuple[tuple[str, ...], ...], float]] | None = None  # benchmarks: each read and its seconds
    _facts: tuple[str, Facts] | None = None  # the current step's shared facts; dropped by every migration
    _pool: Pool | None = None
    watch: guard.Watch | None = None  # of the migration being applied: whom it waits for, for the heartbeat
    book: StepBook = field(init=False)  # what each step did in this run: the gate before every migration
    apply_selected: frozenset[str] | None = None  # files whose apply item runs in this run; None: not known yet
    attempted: set[str] = field(default_factory=set)  # migrations ensure() has tried in this run
    errors: dict[str, Exception] = field(default_factory=dict)  # why a migration ensure() tried failed
    progress: Callable[[str], AbstractContextManager[object]] | None = None  # shown while a migration runs
    confirmations: dict[str, Confirmation] = field(default_factory=dict)  # destructive file -> how it was passed
    personas: PersonaBook = field(default_factory=PersonaBook)  # what the plan's personas saw, moment by moment
    blast_radius: blast.BlastState = field(default_factory=lambda: blast.BlastState())  # what the migrations break
    pinned: dict[str, str] = field(default_factory=dict)  # file -> sha256 the evidence relied on verified

    def __post_init__(self) -> None:
        self.states = {m.file: MigrationState(m) for m in self.plan.migrations}
        self.book = StepBook(self.plan)

    # -- connections -------------------------------------------------------------------------------------
    def open(self) -> None:
        """Take the run lock, connect read-only, learn the server version and the ledger. Writes nothing."""
        self._guard = self.target.connect(read_only=True, autocommit=True)
        guard.take_run_lock(self._guard, self.target.label)
        self.lock_pid = self._guard.info.backend_pid
        self._ro = self._connect_ro()
        self.server_version = str(self._ro.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
        self.applied_before_run = ledger.read(self._ro)
        for file, entry in self.applied_before_run.items():  # the summary tells the truth even if -k skips them
            if file in self.states:
                state = self.states[file]
                state.status, state.duration_ms, state.sha256 = ALREADY, entry.duration_ms, entry.sha256
                state.note = f"applied {entry.applied_at:%Y-%m-%d %H:%M:%S %Z} (ledger)"

    def after_restore(self, source: str) -> None:
        """A rollback restored a backup: what the ledger no longer lists was undone by this run."""
        now = ledger.read(self.ro)
        for file, state in self.states.items():
            if state.status in (ALREADY, APPLIED) and file not in now:
                state.status, state.note = ROLLED_BACK, f"undone by this run's rollback ({source})"

    @property
    def migrated_in_this_run(self) -> bool:
        return any(s.status == APPLIED for s in self.states.values())

    def _connect_ro(self) -> psycopg.Connection[Any]:
        return self.target.connect(read_only=True, autocommit=True,
                                   settings={"statement_timeout": self.check_timeout})

    @property
    def ro(self) -> psycopg.Connection[Any]:
        if self._ro is None or self._ro.closed:
            self._ro = self._connect_ro()
        return self._ro

    def lock_lost(self) -> str | None:
        """Why this run no longer holds its run lock (the session holding it ended), or None while it does.
        Checked before every write: without it another run may have started, and what this run's earlier steps
        checked may no longer hold. Not taken again, for the same reason: the run writes nothing more."""
        return guard.run_lock_lost(self._guard, self.lock_pid)

    def _writer(self) -> psycopg.Connection[Any]:
        """A new session for each migration: nothing one file SETs (search_path, lock_timeout, a role) reaches
        the next, and the guard is in force from the first statement."""
        return self.target.connect(read_only=False, autocommit=False, settings={"lock_timeout": self.lock_timeout})

    # -- what the pytest layer tells the run ---------------------------------------------------------------
    def select(self, checks: frozenset[tuple[str, str, int]]) -> None:
        """The plan checks that will run, (step, test id, line) each (-m, -k): a step reads ahead only for them."""
        self.selected = checks

    def select_applies(self, files: frozenset[str]) -> None:
        """The migrations whose apply item runs in this run."""
        self.apply_selected = files

    def pin(self, pins: Pins) -> None:
        """The bytes every file must have when used (each migration when applied): those of the evidence this run
        relies on."""
        self.extras.pins = pins
        self.pinned = {m.file: sha for m in self.plan.migrations if (sha := pins.migration_sha256(m.path))}

    def show_progress(self, progress: Callable[[str], AbstractContextManager[object]]) -> None:
        """What to show while a migration runs (the terminal's heartbeat)."""
        self.progress = progress

    def finish(self) -> None:
        """The session's tests are over: the run's end time."""
        self.finished_at = datetime.now(UTC)

    def close(self) -> None:
        self.finished_at = self.finished_at or datetime.now(UTC)
        self.end_reads()
        if self._pool is not None:
            self._pool.close()
        for conn in (self._ro, self._guard):
            if conn is not None:
                conn.close()
        self.target.close()

    # -- groups and halting ------------------------------------------------------------------------------
    def scrub(self, text: str) -> str:
        """Every secret of the run masked: the target's password, those the plan's commands and requests use, and any
        URL's user info or password-like value (dsn.mask_secrets)."""
        return dsn.mask_secrets(self.extras.scrub(self.target.scrub(text)))

    def group_of(self, ref: str) -> int:
        step = self.plan.step(ref)
        if step is None:
            raise KeyError(ref)
        return step.group

    def halted_reason(self, group: int, is_migration: bool) -> str | None:
        """Why an item of this group must not run, or None."""
        h = self.halt
        if h is None or group < h.group or (group == h.group and not (h.same_group and not is_migration)):
            return None
        return f"halted after {h.step}: {h.reason}"

    def record_failure(self, group: int, reason: str, is_migration: bool) -> None:
        if self.halt is None or group < self.halt.group:
            self.halt = Halt(group, self.plan.steps[group].name, reason, same_group=is_migration)
        self._mark_not_run()

    def _mark_not_run(self) -> None:
        assert self.halt is not None
        for state in self.states.values():
            if state.status == PENDING and self.group_of(state.migration.file) > self.halt.group:
                state.status, state.note = NOT_RUN, f"halted after {self.halt.step}"

    # -- checks and migrations ---------------------------------------------------------------------------
    def may_migrate(self) -> bool:
        """Whether a migration can still be applied in this run: one is selected and neither applied nor stopped."""
        return not self.verify_only and any(
            s.status == PENDING and (self.apply_selected is None or f in self.apply_selected)
            for f, s in self.states.items())

    # -- baselines -------------------------------------------------------------------------------------------
    def capture(self) -> Baseline:
        """This run's snapshot, taken once, before its first migration (safety.capture), recorded as a baseline
        with this run's backup and beside its report."""
        store = self.store
        if store.own is None:
            store.keep(safety.capture(self), self.safety.folder)
        assert store.own is not None
        return store.own

    def identity(self) -> dict[str, str]:
        if self.store.identity is None:
            self.store.identity = snapshot.identity(self.ro)
        return self.store.identity

    def baseline(self) -> baselines.Choice:
        """The baseline this run's comparisons use (or why there is none): see baselines.choose."""
        applied = [f for f, s in self.states.items() if s.applied]
        return self.store.choose(self.plan.schema, self.identity(), ledger.backup_markers(self.ro), applied)

    def baseline_summary(self) -> dict[str, Any] | None:
        """Which baseline the comparisons use, for the report and the JSON evidence (baselines.summary)."""
        return baselines.summary(self)

    def baseline_counts(self) -> checkcontext.BaselineCounts:
        """The row counts of the baseline the comparisons use, as the checks see them."""
        choice = self.baseline()
        base = choice.baseline
        return checkcontext.BaselineCounts(dict(base.snap.counts) if base else {}, choice.why_not, choice.describe())

    def context(self, spec: CheckSpec | None = None) -> checkcontext.Context:
        facts = self.facts(spec.step) if spec is not None else None
        return checkcontext.Context(self.ro, self.plan, self.baseline_counts, self.applied_before_run, self.extras,
                                    facts, frozenset(self.verified))

    def facts(self, step: str) -> Facts:
        """The facts shared by the checks of one step: one catalog query, each table counted once."""
        if self._facts is None or self._facts[0] != step or self._facts[1].conn is not self.ro:
            self.end_reads()
            found = self.plan.step(step)
            specs = tuple(s for s in (found.checks if found else ())
                          if self.selected is None or (s.step, s.test_id, s.line) in self.selected)
            self._facts = (step, Facts(self.ro, self.plan.schema, specs, self.pool(), log=self.read_log))
        return self._facts[1]

    def pool(self) -> Pool | None:
        """The read-only connections for side-by-side reads (--phase4-workers), or None when it is 1."""
        if self.workers > 1 and self._pool is None:
            self._pool = Pool(self._connect_ro, self.workers)  # the same guards as the verification connection
        return self._pool

    def end_reads(self) -> None:
        """What the step's checks learned goes stale, and their reads (with their snapshot and locks) end: before
        anything writes or reads at another moment."""
        if self._facts is not None:
            self._facts[1].close()
            self._facts = None

    def check(self, spec: CheckSpec) -> str:
        kind = KINDS[spec.kind]
        if kind.run_whole is not None:
            self.end_reads()  # it reads on its own, at its own moment (a backup's snapshot describes the dump)
            return kind.run_whole(self, spec)
        try:
            return checkcontext.run_check(self.context(spec), spec)
        finally:
            last = self._facts[1].specs[-1] if self._facts and self._facts[1].specs else None
            if last is not None and (last.step, last.test_id, last.line) == (spec.step, spec.test_id, spec.line):
                self.end_reads()  # the step's last check: its snapshot and locks end now, before anything else runs

    def ensure(self, migration: Migration) -> MigrationState:
        """Attempt the migration once in this run (what its session fixture does) and return its state; a failure
        or refusal is kept in `errors` for its apply item to report, never raised here."""
        state = self.states[migration.file]
        if migration.file in self.attempted:
            return state
        self.attempted.add(migration.file)
        try:
            if self.verify_only and self.store.own is None and not all(s.applied for s in self.states.values()):
                self.capture()  # the baseline of the run after the migrations are applied
            self.migrate(migration)
        except Exception as exc:  # reported by the apply item; KeyboardInterrupt goes through
            self.errors[migration.file] = exc
        return state

    def migrate(self, migration: Migration) -> MigrationState:
        """Apply the migration unless the ledger shows it applied; raise MigrationFailed or Refused."""
        state = self.states[migration.file]
        state.sha256 = migrate.file_sha256(migration)
        applied = ledger.read(self.ro)
        entry = applied.get(migration.file)
        if entry is not None:
            if entry.sha256 != state.sha256:
                state.status = FAILED
                state.note = "file changed since it was applied"
                raise MigrationFailed(migration.file, None, None,
                                      f"{migration.file} was applied on {entry.applied_at:%Y-%m-%d %H:%M} with "
                                      f"sha256 {entry.sha256[:12]}, the file now has {state.sha256[:12]}: an "
                                      "applied migration must not change; write a new migration instead")
            state.status, state.duration_ms = ALREADY, entry.duration_ms
            state.note = f"applied {entry.applied_at:%Y-%m-%d %H:%M:%S %Z} (ledger), sha256 matches"
            return state
        if self.verify_only:  # never applied here: the probe said whether it is applied already
            if state.status == REFUSED:
                raise OutOfOrder(state.note)
            return state
        group = self.group_of(migration.file)
        if self.apply_selected is not None and migration.file not in self.apply_selected:
            state.status, state.note = NOT_RUN, "neither in this run nor in the ledger"
            return state
        if (halted := self.halted_reason(group, True)) is not None:
            state.status, state.note = NOT_RUN, halted
            return state
        if ahead := [m.file for m in self.plan.migrations if m.index > migration.index and m.file in applied]:
            state.status, state.note = REFUSED, f"{ahead[0]} after it in the plan is applied already"
            raise OutOfOrder(
                f"refusing to apply {migration.file}: {ahead[0]}, which comes after it in the plan, is applied "
                f"already (ledger, {applied[ahead[0]].applied_at:%Y-%m-%d %H:%M}); applying {migration.file} now "
                f"would run it after {ahead[0]}, out of plan order. Give it a name and a place in the plan after "
                f"{ahead[-1]}, or undo {', '.join(ahead)} first")
        if conflict := ledger.conflict(applied, self.states, migration.file, state.sha256):
            state.status, state.note = REFUSED, conflict[0]
            raise Refused(f"refusing to apply {migration.file}: {conflict[1]}")
        if again := kept.kept_by_revert(self.ro, migration.file, state.sha256):
            state.status, state.note = REFUSED, "a revert kept its row changes"
            raise Refused(f"refusing to apply {migration.file}: {again}")
        if problem := self.book.problem_before(group):
            what, todo = problem
            state.status, state.note = REFUSED, what
            raise OutOfOrder(f"refusing to apply {migration.file}: every step before it must pass in this run, and "
                             f"{what}; {todo}")
        self.end_reads()  # stale once a migration runs; and its reads must not hold locks through the prompt
        s = self.safety
        if s.has_backup_stage(self.plan) and not (s.folder and s.sha256 and s.verified):
            state.status, state.note = BLOCKED, "no verified backup in this run"
            raise Refused(f"refusing to apply {migration.file}: the plan has a [[backup]] stage and this run made "
                          "no verified backup; run the whole plan, backup stage included")
        if migration.destructive and (broken := blast_checks.recheck(self, migration)):
            state.status, state.note = REFUSED, f"blast radius: {broken}"
            raise Refused(f"refusing to apply {migration.file} (the point of no return): {broken}; fix what it names "
                          "(or the plan) and rerun the whole plan")
        if migration.destructive and (blocked := safety.gate(self, migration)):
            state.status = BLOCKED
            state.note = "point of no return: " + blocked.split(" and ", 1)[-1]
            for later in self.states.values():  # everything after the point of no return is blocked with it
                if later.status == PENDING and later.migration.index > migration.index:
                    later.status, later.note = BLOCKED, f"blocked at the point of no return ({migration.file})"
            raise DestructiveBlocked(blocked)
        if lost := self.lock_lost():
            state.status, state.note = REFUSED, "this run lost its run lock"
            raise Refused(f"refusing to apply {migration.file}: this run no longer holds its run lock on "
                          f"{self.target.label}: {lost}. Another run may have started since, and what this run's "
                          "earlier steps checked may no longer hold, so it applies nothing more (the lock is not "
                          "taken again). Find out who ended the session (the server log), then rerun the whole "
                          "plan: the ledger shows what is applied")
        if self.extras.pins is not None:  # every file the evidence verified, as it is now (PinBroken stops the run)
            self.extras.pins.check_all()
        if migration.destructive:
            by = ("no one: an embedded throwaway database needs no confirmation" if self.target.embedded is not None
                  else "--phase4-confirm-destructive" if self.confirm_destructive else "'yes' at the prompt")
            self.confirmations[migration.file] = Confirmation(by, os_user(), datetime.now(UTC))
        self.capture()  # the baseline: taken before the first change
        started = time.perf_counter()
        writer = self._writer()
        observer = locks.Observer(migration, locks.plan_views(self.plan))
        state.measured = observer.measurement
        try:
            with guard.Watch(self._guard or self.ro, writer.info.backend_pid) as watch, \
                    (self.progress or _quiet)(migration.file):
                self.watch = watch
                done = migrate.apply(writer, migration, self.plan.name, self.plan.schema,
                                     blockers=lambda: [str(b) for b in watch.blockers], observer=observer,
                                     connect=self._writer, expected_sha256=self.pinned.get(migration.file))
        except MigrationFailed as exc:
            state.status, state.duration_ms = FAILED, (time.perf_counter() - started) * 1000
            state.note, state.stayed = exc.summary, exc.committed
            raise
        except BaseException:  # Ctrl-C: psycopg cancels the query; a transaction rolls back, autocommit does not
            state.status, state.duration_ms = FAILED, (time.perf_counter() - started) * 1000
            state.note = "interrupted: rolled back"
            if not migration.transaction:
                n = len(observer.measurement.statements)
                state.stayed = f"{n} statement(s)"
                state.note = (f"interrupted after {n} statement(s), committed one by one (transaction = false): "
                              "they stay applied; the ledger does not list the file")
            raise
        finally:
            writer.close()
        state.status, state.duration_ms = APPLIED, done.duration_ms
        return state


def _quiet(label: str) -> AbstractContextManager[object]:
    return nullcontext()
