"""The pytest side of data safety: options, the yes/no prompt, the rehearsal item, the rollback steps and the
backup's lines in the terminal (in the HTML report: evidence_html). The work itself is in safety.py, backup.py,
snapshot.py and rollback.py."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Generator, Iterator
from typing import Any

import psycopg
import pytest

from pytest_phase4.errors import CheckFailed, sql_error, timeout_hint
from pytest_phase4.plugin.nodes import ROLLBACK_STEP_KEY, RUN_KEY, Phase4Item
from pytest_phase4.run import Phase4Run
from pytest_phase4.safety import backup, rehearsal, rollback, rollback_steps

ROLLBACK_KEY = pytest.StashKey[rollback.RollbackState]()
MODES = (rollback.REVERT, rollback.RESTORE)


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("phase4")
    group.addoption("--phase4-backup-dir", default=None, metavar="DIR",
                    help="where backups go: each run writes DIR/<timestamp>/ (ini: phase4_backup_dir; default "
                         "_backups/<plan name>); --phase4-rollback uses the newest one taken before any migration, or "
                         "DIR itself if it holds a BACKUP_INFO.txt")
    group.addoption("--phase4-verify-restore", action="store_true", default=None,
                    help="restore the backup into a scratch database and compare it with the source "
                         "(ini: phase4_verify_restore)")
    group.addoption("--phase4-rollback", nargs="?", const=rollback.REVERT, default=None, metavar="MODE",
                    help="instead of the plan, undo its migrations in one transaction and prove it. MODE: revert "
                         "(the default: undo what they recorded, keep every write made since the backup) or restore "
                         "(the whole backup back, after listing what that loses; needs --phase4-accept-loss)")
    group.addoption("--phase4-accept-loss", action="store_true", default=False,
                    help="let --phase4-rollback drop or overwrite what it listed as lost (the current state is "
                         "dumped first)")
    group.addoption("--phase4-rehearse", action="store_true", default=False,
                    help="after the backup, run the whole plan on a scratch copy restored from it; touch the "
                         "target only if that is green")
    parser.addini("phase4_backup_dir", "pytest-phase4 backup folder", default=None)
    parser.addini("phase4_verify_restore", "restore each backup into a scratch database and compare",
                  type="bool", default=False)


def configure(config: pytest.Config, run: Phase4Run) -> None:
    s = run.safety
    root = config.getoption("phase4_backup_dir") or config.getini("phase4_backup_dir")
    if root:
        base = config.invocation_params.dir if config.getoption("phase4_backup_dir") else config.rootpath
        s.backup_root = (base / str(root)).resolve()
    else:
        s.backup_root = config.rootpath / "_backups" / backup.slug(run.plan.name)
    s.verify_restore = bool(config.getoption("phase4_verify_restore") or config.getini("phase4_verify_restore"))
    s.rollback = _mode(config.getoption("phase4_rollback"))
    # The rehearsal's own child run does not rehearse again (--phase4-rehearse in the project's ini addopts)
    s.rehearse = bool(config.getoption("phase4_rehearse")) and not rehearsal.is_child()
    if s.rollback and s.rehearse:
        raise pytest.UsageError("--phase4-rollback and --phase4-rehearse are separate modes: give one of them")
    if run.verify_only and (s.rollback or s.rehearse):
        given = "--phase4-rollback" if s.rollback else "--phase4-rehearse"
        raise pytest.UsageError(f"--phase4-verify-only applies nothing, and {given} changes a database: give one of "
                                "them")
    if s.rehearse and not s.has_backup_stage(run.plan):
        raise pytest.UsageError(f"--phase4-rehearse restores this run's backup, but {run.plan.path.name} has no "
                                '[[backup]] entry: add one with check = "backup"')
    if s.rollback and run.target.embedded is not None:
        raise pytest.UsageError("--phase4-rollback needs the database to restore: give --dsn (the embedded "
                                "throwaway database has no backup to go back to)")
    s.ask = _asker(config)
    config.stash[ROLLBACK_KEY] = rollback.RollbackState(s.rollback or rollback.REVERT,
                                                        bool(config.getoption("phase4_accept_loss")))
    config.pluginmanager.register(SafetyHooks(run), "phase4-safety")  # the backup and catalog diff: evidence_html


def _mode(given: str | None) -> str | None:
    if given in (None, *MODES):
        return given
    if given in ("columns", "full"):
        now = "--phase4-rollback (revert re-adds and refills dropped columns too)" if given == "columns" else \
            "--phase4-rollback=restore (it lists what it would lose and needs --phase4-accept-loss)"
        raise pytest.UsageError(f"--phase4-rollback={given} no longer exists: use {now}")
    raise pytest.UsageError(f"--phase4-rollback={given}: expected one of {', '.join(MODES)} (default revert)")


def _asker(config: pytest.Config) -> Callable[[str], bool | None]:
    def ask(question: str) -> bool | None:
        """yes/no on the user's terminal; None, at once, when there is no terminal to ask."""
        capman: Any = config.pluginmanager.getplugin("capturemanager")
        guard = capman.global_and_fixture_disabled() if capman else contextlib.nullcontext()
        with guard:
            if capman:
                capman.suspend_global_capture(in_=True)  # give the real stdin back; resumed on leaving the guard
            stdin, stdout = sys.stdin, sys.stdout
            if not (stdin and stdout and stdin.isatty() and stdout.isatty()):
                return None
            for _ in range(3):
                stdout.write(f"\n{question}")
                stdout.flush()
                answer = stdin.readline()
                if not answer:
                    return None
                if answer.strip().lower() in ("y", "yes"):
                    return True
                if answer.strip().lower() in ("n", "no"):
                    return False
            return False

    return ask


class SafetyHooks:
    def __init__(self, run: Phase4Run) -> None:
        self.run = run

    def pytest_report_header(self) -> list[str]:
        s = self.run.safety
        if s.rollback:
            what = ("revert: undo what the migrations recorded, keep every write since the backup"
                    if s.rollback == rollback.REVERT else "restore: the whole backup back, with consent")
            return [f"phase4 ROLLBACK ({what}) with the newest pre-migration backup in {s.backup_root}; one "
                    "transaction; the plan is not run"]
        extra = ", verify restore" if s.verify_restore else ""
        extra += ", rehearsal first" if s.rehearse else ""
        lines = [f"phase4 backups: {s.backup_root}{extra}"]
        if any(m.destructive for m in self.run.plan.migrations) and not (self.run.confirm_destructive
                                                                          or self.run.verify_only):
            needs = "this run's verified backup and " if s.has_backup_stage(self.run.plan) else ""
            lines.append(f"phase4 point of no return: needs {needs}--phase4-confirm-destructive or 'yes' at a "
                         "terminal prompt; without a terminal the run stops there")
        return lines

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        if not self.run.safety.rollback:
            return
        # Custom checks belong to the plan's run, not to a rollback: leave them out.
        keep = [i for i in items if "::rollback::" in i.nodeid]
        dropped = [i for i in items if "::rollback::" not in i.nodeid]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = keep

    def pytest_terminal_summary(self, terminalreporter: Any, config: pytest.Config) -> None:
        s = self.run.safety
        state = config.stash.get(ROLLBACK_KEY, None)
        if s.rollback and state is not None:
            terminalreporter.section("phase4 rollback")
            for step, observed in state.done.items():
                terminalreporter.write_line(f"{step:<16} {observed}")
            for line in rollback_outcome(state):
                terminalreporter.write_line(line, red=not state.committed, bold=True)
        if (summary := self.run.baseline_summary()) is not None:
            terminalreporter.section("phase4 baseline")
            terminalreporter.write_line(summary["text"])
            for path in summary["recorded"]:
                terminalreporter.write_line(f"this run's baseline, for the runs after it: {path}")
        if s.folder is not None and (s.folder / backup.INFO).is_file():
            terminalreporter.section("phase4 backup")
            for line in (s.folder / backup.INFO).read_text().splitlines()[1:10]:
                terminalreporter.write_line(line)
            terminalreporter.write_line(f"restore instructions: {s.folder / backup.INFO}")

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item,
                                  call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        rep = yield
        step = item.stash.get(ROLLBACK_STEP_KEY, None)
        state = item.config.stash.get(ROLLBACK_KEY, None)
        if step is not None and state is not None and rep.failed:  # whatever failed it: nothing may stay
            state.failed = state.failed or step
            state.done.pop(step, None)
            rollback.abort(state)
        return rep

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        state = session.config.stash.get(ROLLBACK_KEY, None)
        if state is not None and state.conn is not None:  # interrupted, or steps deselected: never half-done
            state.failed = state.failed or "commit"
            rollback.abort(state)


def rehearsal_items(collector: Any, position: int) -> Iterator[pytest.Item]:
    """The rehearsal, as the last test of the backup stage: a failure halts everything after it."""
    run = collector.config.stash[RUN_KEY]
    if collector.stage != "backup" or not run.safety.rehearse:
        return

    def phase4_rehearsal(phase4_run: Phase4Run, request: pytest.FixtureRequest,
                         record_property: Callable[[str, object], None]) -> None:
        try:
            observed = rehearsal.rehearse(phase4_run, request.config.rootpath)
        except psycopg.Error as exc:  # e.g. no CREATEDB privilege for the scratch copy
            raise CheckFailed("a scratch copy of the backup to rehearse on",
                              phase4_run.target.scrub(sql_error(exc)), phase4_run.target.label,
                              hint="the rehearsal needs CREATEDB on the target's server") from None
        record_property("observed", observed)

    phase4_rehearsal.__doc__ = "run the whole plan on a scratch copy restored from the backup"
    yield collector._item("rehearse", phase4_rehearsal, position + 1, 0, False)


def rollback_outcome(state: rollback.RollbackState) -> list[str]:
    """The rollback's last word, for the terminal and the report."""
    if state.committed:
        return [f"rollback COMPLETE and proven ({state.mode}); the state before it: {state.safety_dump}"]
    if state.nothing:
        return [f"rollback REFUSED: nothing to roll back: {state.nothing}; nothing was changed"]
    step = state.failed or "a step"
    changed = ("its transaction was rolled back: the database and the ledger are exactly as before"
               if "safety_dump" in state.done else "nothing was changed")
    return [f"rollback FAILED at {step}: {changed}"]


class RollbackCollector(pytest.Collector):
    """--phase4-rollback: each step of the rollback and of its proof is a test, in order."""

    def collect(self) -> Iterator[pytest.Item]:
        run = self.config.stash[RUN_KEY]
        previous: str | None = None
        for name, fn in rollback_steps.steps(run.safety.rollback or rollback.REVERT):
            item = Phase4Item.from_parent(self, name=name, callobj=_step_function(name, fn, previous))
            item.add_marker(pytest.mark.rollback)
            item.stash[ROLLBACK_STEP_KEY] = name
            yield item
            previous = name


def _step_function(name: str, fn: Callable[[Phase4Run, rollback.RollbackState], str],
                   previous: str | None) -> Callable[..., None]:
    def phase4_rollback(phase4_run: Phase4Run, request: pytest.FixtureRequest,
                        record_property: Callable[[str, object], None]) -> None:
        state = request.config.stash[ROLLBACK_KEY]
        if state.failed is not None or (previous is not None and previous not in state.done):
            pytest.skip(f"halted: rollback step {state.failed or previous} did not succeed; "
                        + rollback_outcome(state)[0].split(": ", 1)[-1])
        try:
            observed = fn(phase4_run, state)
        except psycopg.Error as exc:  # one readable failure, never a traceback or a password
            state.failed = name
            rollback.abort(state)
            raise CheckFailed(f"rollback step {name} to succeed", phase4_run.target.scrub(sql_error(exc)),
                              phase4_run.target.label,
                hint=timeout_hint(exc, phase4_run.lock_timeout) or "the rollback's transaction was rolled "
                "back: nothing changed; fix the cause and rerun --phase4-rollback") from None
        except BaseException:
            state.failed = name
            rollback.abort(state)
            raise
        state.done[name] = observed
        if name == "commit":
            phase4_run.after_restore(state.folder.name if state.folder else "the backup")
        record_property("observed", observed)

    phase4_rollback.__doc__ = f"rollback: {name}"
    return phase4_rollback


def rollback_collectors(parent: pytest.File) -> Iterator[pytest.Collector]:
    yield RollbackCollector.from_parent(parent, name="rollback")

