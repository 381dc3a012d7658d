"""The runbook's order in pytest, whatever other plugins and options do (the pytest side of steps.py).

- Each migration is a session fixture, `migration_<file name>`, that first sets up the fixture of the migration
  before it, then asks the run to apply it (Phase4Run.ensure). Every item of the migration's step uses it, and a
  custom check asks for the migration it needs by requesting it: nothing runs before its migration.
- The run applies a migration only when every earlier step passed in this run (steps.StepBook). This plugin
  records each item's outcome there, and what was deselected or never collected, so the rule holds whatever the
  order and whichever items -k, -m, --lf, --sw or --deselect left out.
- The items end in plan order: pytest_collection_finish runs after every pytest_collection_modifyitems (pytest's
  --ff, --nf, --lf, --sw, pytest-randomly, pytest-order) and sorts them by their place in the plan, so the order
  never depends on which plugins are installed or how they are registered.
"""

from __future__ import annotations

import itertools
import shlex
import types
import unittest
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_phase4.plan.blast import markers
from pytest_phase4.plan.model import Migration
from pytest_phase4.plugin import customfiles
from pytest_phase4.plugin.items import (
    APPLY,
    GROUP_KEY,
    IS_MIGRATION_KEY,
    PLACE_KEY,
    PLACED,
    Place,
    fixture_name,
    noting_it_ran,
)
from pytest_phase4.plugin.nodes import Phase4Item
from pytest_phase4.run import FAILED as FAILED_STATE
from pytest_phase4.run import NOT_RUN, REFUSED, MigrationState, Phase4Run
from pytest_phase4.safety import verifyonly
from pytest_phase4.steps import FAILED, HELD, PASSED, REHEARSE_KEY, custom_key

INDEX_KEY = pytest.StashKey[int]()  # collection order, kept as the tie-break whatever reordered the items


def register(config: pytest.Config, run: Phase4Run) -> None:
    """The migration fixtures, the gate every item passes, and the hooks that keep the plan's order."""
    names = [fixture_name(m) for m in run.plan.migrations]
    if len(set(names)) != len(names):
        twins = sorted({n for n in names if names.count(n) > 1})
        raise pytest.UsageError(f"two migrations of the plan map to the same fixture name ({', '.join(twins)}): "
                                "rename one file so that their names differ in letters, digits or '_'")
    backup = run.plan.step("backup")
    if run.safety.rehearse and backup is not None:  # asked for: the target is touched only after it is green
        run.book.require(backup.group, REHEARSE_KEY, "rehearse")
    for name, plugin in (("phase4-migrations", _fixtures(run)), ("phase4-runbook", Runbook(run, config))):
        if config.pluginmanager.register(plugin, name) is None:  # -p no:<name>
            raise pytest.UsageError(f"-p no:{name} disables the part of pytest-phase4 that keeps the runbook in "
                                    f"order and applies a migration only after every earlier step passed; drop it")


def _fixtures(run: Phase4Run) -> types.ModuleType:
    """A plugin holding one session fixture per migration, each set up after the previous one, and the gate."""
    holder = types.ModuleType("pytest_phase4_migrations", "the plan's migrations as session fixtures")
    previous: str | None = None
    for migration in run.plan.migrations:
        name = fixture_name(migration)
        fn = pytest.fixture(name=name, scope="session")(_migration_fixture(run, migration, previous))
        setattr(holder, name, fn)
        previous = name
    holder.phase4_gate = pytest.fixture(name="_phase4_gate", autouse=True)(_gate(run))  # type: ignore[attr-defined]
    return holder


def _migration_fixture(run: Phase4Run, migration: Migration,
                       previous: str | None) -> Callable[[pytest.FixtureRequest], MigrationState]:
    def fixture(request: pytest.FixtureRequest) -> MigrationState:
        if previous is not None:
            request.getfixturevalue(previous)  # the migration before it, attempted first
        return run.ensure(migration)  # applied only if every earlier step passed in this run; never raises

    fixture.__doc__ = f"{migration.file} ({migration.title}): applied before any test that uses it; its state"
    return fixture


def _gate(run: Phase4Run) -> Callable[[pytest.FixtureRequest], None]:
    def gate(request: pytest.FixtureRequest) -> None:
        """Every runbook item first sets up the migrations it needs; when one is not applied it is skipped."""
        item = request.node
        place = item.stash.get(PLACE_KEY, None) if isinstance(item, pytest.Item) else None
        if place is None:
            return
        for name in place.needs:
            state: MigrationState = request.getfixturevalue(name)
            if place.key[0] != "apply" and not state.applied:
                why = state.note if state.status == NOT_RUN else f"{state.status}: {state.note}"
                hold(run, item, f"{state.migration.file} is not applied: {why}")

    return gate


def hold(run: Phase4Run, item: pytest.Item, reason: str) -> None:
    """Skip an item the run holds back (halted, or its migration not applied); it does not count as passed. The
    skip marker folds such skips into one summary line, as pytest does for marker skips."""
    place = item.stash.get(PLACE_KEY, None)
    if place is not None:
        run.book.record(place.key, HELD, reason)
    item.add_marker(pytest.mark.skip(reason=reason))
    pytest.skip(reason)


def deselecting_options(config: pytest.Config) -> str:
    """The options of this run that leave items out, as typed: "by -k 'x'", "by --lf or --sw", or ""."""
    found = []
    if keyword := config.getoption("keyword", ""):
        found.append(f"-k {shlex.quote(str(keyword))}")
    if markexpr := config.getoption("markexpr", ""):
        found.append(f"-m {shlex.quote(str(markexpr))}")
    found += [f"--deselect {d}" for d in config.getoption("deselect", None) or ()]
    if config.getoption("lf", False):
        found.append("--lf")
    if config.getoption("stepwise", False) or config.getoption("stepwise_skip", False):
        found.append("--sw")
    found += [f"--ignore {p}" for p in config.getoption("ignore", None) or ()]
    found += [f"--ignore-glob {p}" for p in config.getoption("ignore_glob", None) or ()]
    return "by " + " or ".join(found) if found else ""


class Runbook:
    def __init__(self, run: Phase4Run, config: pytest.Config) -> None:
        self.run, self.config = run, config
        self.folder = run.plan.folder.resolve()
        self.fixtures = {fixture_name(m): m for m in run.plan.migrations}
        self.counter = itertools.count()
        self.problems: list[str] = []
        self.modules: set[Path] = set()  # modules of the plan's folder that pytest collected
        self.broken: list[str] = []  # ... or failed to collect
        self.skipped: dict[Path, str] = {}  # ... or that skipped themselves whole (importorskip), with the reason
        self.tests: dict[Path, set[str]] = {}  # module -> the top-level functions and classes it gave items for

    # -- collection ------------------------------------------------------------------------------------------
    def pytest_itemcollected(self, item: pytest.Item) -> None:
        item.stash[INDEX_KEY] = next(self.counter)
        parts = item.nodeid.split("::")
        if len(parts) > 1:
            self.tests.setdefault(Path(item.path).resolve(), set()).add(parts[1].split("[")[0])
        if PLACE_KEY not in item.stash:
            self._place_custom(item)
        if (place := item.stash.get(PLACE_KEY, None)) is not None:
            self.run.book.collected.add(place.key)

    def _place_custom(self, item: pytest.Item) -> None:
        """A custom check's step: the latest of the migrations it requests and its phase4_after marker; else
        the post stage, before the plan's own post checks."""
        plan = self.run.plan
        wanted = sorted((m for n in getattr(item, "fixturenames", ()) if (m := self.fixtures.get(n))),
                        key=lambda m: m.index)
        if not wanted and self.folder not in Path(item.path).resolve().parents:
            return  # an ordinary test outside the plan: not part of the runbook
        marker = item.get_closest_marker("phase4_after")
        step = None
        if marker is not None:
            ref = str(marker.args[0]) if marker.args else ""
            step = plan.step(ref)
            if step is None:
                names = ", ".join(s.name for s in plan.steps)
                self.problems.append(f"{item.nodeid}: phase4_after({ref!r}) names no step of the plan; use one of: "
                                     f"{names}")
                return
        if wanted:
            latest = plan.step(wanted[-1].file)
            assert latest is not None
            if step is not None and step.group < latest.group:
                self.problems.append(
                    f"{item.nodeid}: phase4_after({step.name!r}) places it before {wanted[-1].file}, which it "
                    f"requests as the fixture {fixture_name(wanted[-1])}; drop the marker, or name that migration "
                    "or a later step")
                return
            step = step or latest
        step = step or plan.step("post")
        assert step is not None
        needs = [fixture_name(m) for m in wanted]
        if step.migration is not None:
            needs.append(fixture_name(step.migration))
        key = custom_key(item.nodeid)
        for name in markers(step.stage):
            item.add_marker(getattr(pytest.mark, name))
        item.stash[GROUP_KEY] = step.group
        item.stash[IS_MIGRATION_KEY] = False
        item.stash[PLACE_KEY] = Place(step.group, PLACED if marker or wanted else APPLY, key,
                                      tuple(dict.fromkeys(needs)))
        self.run.book.require(step.group, key, item.nodeid)
        if isinstance(item, pytest.Function) and not (  # passed only if its own function ran, as the plan's checks
                isinstance(item.cls, type) and issubclass(item.cls, unittest.TestCase)):  # unittest runs its own
            item.obj = noting_it_ran(item.obj, key, self.run.book)

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(self) -> None:
        if self.problems:
            raise pytest.UsageError("\n".join(self.problems))

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        path = (self.config.rootpath / report.nodeid.split("::")[0]).resolve()
        if "::" in report.nodeid or path.suffix != ".py" or self.folder not in path.parents:
            return
        if report.failed:
            self.broken.append(f"{report.nodeid} (collection error)")
        elif report.skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            self.skipped[path] = str(reason).removeprefix("Skipped: ")
        else:
            self.modules.add(path)

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        for item in items:
            if (place := item.stash.get(PLACE_KEY, None)) is not None:
                self.run.book.deselected.add(place.key)

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        """Plan order, after every other plugin has reordered and deselected; then what the gate needs to know."""
        session.items.sort(key=_plan_position)
        book = self.run.book
        book.selected = {p.key for item in session.items if (p := item.stash.get(PLACE_KEY, None)) is not None}
        book.deselected_by = deselecting_options(self.config)
        book.uncollected = [(0, text) for text in self.broken] + list(self._left_out())  # broken: any step
        book.skipped_files = [f"{self._display(p)}: {why}" for p, why in self.skipped.items()]
        self.run.select_applies(frozenset(
            m.file for m in self.run.plan.migrations if ("apply", m.file) in book.selected))

    def _left_out(self) -> Iterator[tuple[int, str]]:
        """Files of the plan's folder that hold tests by their names (pytest's defaults, and the ini's), each with
        what pytest left out of it and the earliest step that can belong to: an ini override must not drop
        custom checks unnoticed."""
        ini = {name: [str(p) for p in self.config.getini(name)]
               for name in ("python_files", "python_functions", "python_classes")}
        plan = self.run.plan
        fixtures = {name: self.run.group_of(m.file) for name, m in self.fixtures.items()}
        unmarked = min(fixtures.values(), default=len(plan.steps))
        root = self.config.rootpath.resolve()
        for path in customfiles.files_with_tests(self.folder, ini["python_files"]):
            if path in self.skipped:
                continue  # it skipped itself: not run, and said so in the summary
            module = customfiles.read_module(path, ini["python_functions"], ini["python_classes"])
            if path not in self.modules and module.parsed and not module.tests:
                continue  # defines no test: nothing of the runbook is missing
            if path not in self.modules:
                missing = list(module.tests)
                why = (f"python_files = {' '.join(ini['python_files'])} leaves it out"
                       if not customfiles.matches_file(path.name, ini["python_files"]) else
                       "not collected: a narrower path, --ignore, norecursedirs or collect_ignore left it out")
            elif missing := [n for n in module.tests if n not in self.tests.get(path, set())]:
                changed = [f"{k} = {' '.join(v)}" for k, v in ini.items()
                           if k != "python_files" and v != list(customfiles.DEFAULTS[k])]
                why = f"{', '.join(missing)} not collected" + (f": {', '.join(changed)}" if changed else "")
            else:
                continue
            group = customfiles.earliest(module, missing, fixtures, unmarked, self._group_of,
                                         customfiles.marker_in_conftests(path.parent, root))
            yield group, f"{self._display(path)} ({why})"

    def _group_of(self, ref: str) -> int | None:
        step = self.run.plan.step(ref)
        return step.group if step is not None else None

    def _display(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.config.rootpath.resolve()))
        except ValueError:
            return str(path)

    # -- running ---------------------------------------------------------------------------------------------
    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        """Halting: once a step failed, every later step is skipped with the reason and never runs its fixtures."""
        place = item.stash.get(PLACE_KEY, None)
        if place is not None and (reason := self.run.halted_reason(place.group, place.key[0] == "apply")
                                  or verifyonly.unverifiable(self.run, place.group)):
            hold(self.run, item, reason)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        rep = yield
        place = item.stash.get(PLACE_KEY, None)
        if place is None:
            return rep
        book = self.run.book
        watched = place.key in book.watched  # its function notes that it ran: the plan's items, custom checks
        if rep.failed or (rep.skipped and hasattr(rep, "wasxfail")):  # an expected failure has not passed either
            book.record(place.key, FAILED)
            reason = self.run.target.scrub(f"{item.name}: {_reason(call)}")
            self.run.record_failure(place.group, reason, place.key[0] == "apply")
        elif rep.skipped and rep.when == "setup" and watched:
            if book.outcomes.get(place.key) != HELD:  # not held back by this plugin: someone else's skip
                book.record(place.key, HELD, "by a skip marker, a fixture or a plugin, before they ran")
        elif watched and rep.when == "call" and place.key not in book.ran:
            book.record(place.key, HELD, "reported without running: a plugin took over the test call")
        elif rep.skipped or (rep.passed and rep.when == "call"):
            book.record(place.key, PASSED)  # a skip of the item's own: it does not apply to this run
        if rep.skipped and isinstance(rep.longrepr, tuple) and _ours(rep.longrepr[0]):
            rep.longrepr = _location(item, rep.longrepr[2])  # where the item is, not the plugin line that skipped
        return rep


    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """A run that halted, left custom checks out, or in which a migration failed or was refused, never exits
        0, whatever reported its items (an xfail marker makes pytest count a failed check as no failure)."""
        if session.exitstatus == pytest.ExitCode.OK and (self.run.halt is not None or self.run.book.uncollected or any(
                s.status in (FAILED_STATE, REFUSED) for s in self.run.states.values())):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _reason(call: pytest.CallInfo[None]) -> str:
    if call.excinfo is None:
        return "failed"
    exc = call.excinfo.value
    text = getattr(exc, "summary", None) or str(exc) or type(exc).__name__
    return str(text).strip().splitlines()[0][:300]


def _plan_position(item: pytest.Item) -> tuple[int, int, int, int]:
    place = item.stash.get(PLACE_KEY, None)
    index = item.stash.get(INDEX_KEY, 0)
    if place is None:
        return (1, 0, 0, index)  # not part of the runbook: after it, in collection order
    return (0, place.group, place.rank, index)


def _ours(path: Any) -> bool:
    return Path(str(path)).resolve().parent == Path(__file__).resolve().parent


def _location(item: pytest.Item, reason: str) -> tuple[str, int, str]:
    if isinstance(item, Phase4Item):
        return str(item.path), item.line, reason  # its entry in the plan
    path, line, _ = item.reportinfo()
    return str(path), (line or 0) + 1, reason
