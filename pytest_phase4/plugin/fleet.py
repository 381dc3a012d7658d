"""pytest layer of a fleet (--phase4-targets): one item per target, each its own xdist group, each running the
whole plan on its target in a child pytest (fleet/child.py); the canary gate; the roll-up in the controller.

Distribution is pytest-xdist's own `--dist loadgroup`; without -n the targets run one after another in this
process, through the same items. What a worker learns about a target travels back to the controller in the
item's report (user_properties), so remote workers (`--tx ssh=...`) need no shared filesystem.
"""

from __future__ import annotations

import dataclasses
import html
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pytest_phase4.errors import PlanError
from pytest_phase4.fleet import canary as canarylib
from pytest_phase4.fleet import child, rollup
from pytest_phase4.fleet.resolve import check_same_database, resolve
from pytest_phase4.fleet.targets import FleetTarget, TargetsError, check_environment, check_unique, expand, read
from pytest_phase4.plan.files import plan_files
from pytest_phase4.plan.load import load_plan
from pytest_phase4.plugin import fleet_options, promotion
from pytest_phase4.plugin.settings import Settings
from pytest_phase4.safety import backup

PROPERTY = "phase4_fleet_outcome"  # the user property an item's report carries its target's outcome in
INPUT = "phase4_fleet"  # the key of what the controller hands every xdist worker (workerinput)
INDEX_KEY = pytest.StashKey[int]()


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("phase4")
    group.addoption("--phase4-targets", default=None, metavar="FILE",
                    help="run the plan on every database of a fleet: a TOML file of [[target]] name + dsn_env (the "
                         "environment variable holding its DSN), or [[source]] dsn_env + query (database names on "
                         "that server); distribute with -n N (pytest-xdist, --dist loadgroup)")
    group.addoption("--phase4-canary", default=None, metavar="N",
                    help="with --phase4-targets: the first N targets must finish their runbook green before any "
                         "other starts (default: [fleet] canary in the targets file, else 0)")
    group.addoption("--phase4-canary-wait", default="30min", metavar="DURATION",
                    help="how long the other targets wait for the canaries' outcome before they are reported not "
                         "run (default 30min)")


@dataclass(frozen=True)
class Fleet:
    targets: tuple[FleetTarget, ...]
    canary: int
    canary_wait_s: float
    run_id: str
    folder: str  # the fleet's report folder, relative to the rootdir: <reports>/fleet-<stamp>
    plan: Path
    passed: tuple[str, ...]
    note: str = ""  # what the controller says of the fleet's canary, when it set it aside
    plan_sha256: str = ""  # the plan as the controller read it, and every file its run depends on (path, sha256):
    files: tuple[tuple[str, str], ...] = ()  # a worker whose copy differs runs no target

    def to_json(self, rootdir: Path) -> dict[str, Any]:
        """What a worker needs, with the plan relative to the rootdir (a remote worker has its own)."""
        try:
            plan = str(self.plan.relative_to(rootdir.resolve()))
        except ValueError:
            plan = str(self.plan)
        return {"targets": [t.to_json() for t in self.targets], "canary": self.canary,
                "canary_wait_s": self.canary_wait_s, "run_id": self.run_id, "folder": self.folder,
                "plan": plan, "passed": list(self.passed), "note": self.note, "plan_sha256": self.plan_sha256,
                "files": [list(f) for f in self.files]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Fleet:
        return cls(tuple(FleetTarget.from_json(t) for t in data["targets"]), int(data["canary"]),
                   float(data["canary_wait_s"]), str(data["run_id"]), str(data["folder"]), Path(data["plan"]),
                   tuple(data["passed"]), str(data.get("note") or ""), str(data.get("plan_sha256") or ""),
                   tuple((str(p), str(h)) for p, h in data.get("files") or ()))


def enabled(config: pytest.Config) -> bool:
    return bool(config.getoption("phase4_targets", None)) or INPUT in getattr(config, "workerinput", {})


def configure(config: pytest.Config, settings: Settings) -> None:
    """Everything checked before anything connects (but a [[source]]'s query); the plugin registered."""
    workerinput = getattr(config, "workerinput", None)
    # an xdist worker gets the fleet as the controller read and checked it; the plan relative to its own rootdir
    fleet = Fleet.from_json(workerinput[INPUT]) if workerinput is not None else _read_fleet(config, settings)
    if workerinput is not None:
        fleet = dataclasses.replace(fleet, plan=_plan_here(config, fleet.plan, str(workerinput[INPUT]["root"])))
    config.option.markexpr = ""  # -m selects the steps of every target's run (passed on), not the targets
    if config.args_source != pytest.Config.ArgsSource.ARGS:
        config.args[:] = [str(fleet.plan)]
    plugin = FleetPlugin(config, fleet)
    if config.pluginmanager.hasplugin("html") and workerinput is None and not config.getoption("htmlpath", None):
        config.option.htmlpath = str(plugin.folder / "fleet.html")
        config.option.self_contained_html = True
    config.pluginmanager.register(plugin, "phase4-fleet")


def _plan_here(config: pytest.Config, plan: Path, root: str) -> Path:
    """The plan on this worker's host: the same path, else relative to its rootdir, else in the copy that
    --rsyncdir=<the controller's rootdir> made in its working directory."""
    tried = [plan] if plan.is_absolute() else [config.rootpath / plan, Path.cwd() / root / plan]
    for path in tried:
        if path.is_file():
            return path.resolve()
    raise pytest.UsageError(f"this xdist worker finds no plan at {' or '.join(map(str, tried))}: give the worker the "
                            f"project (--rsyncdir=<the rootdir>) or install it there at the same place")


def _read_fleet(config: pytest.Config, settings: Settings) -> Fleet:
    given = str(config.getoption("phase4_targets"))
    path = config.invocation_params.dir / given
    if settings.dsn:
        raise pytest.UsageError("--phase4-targets names every database of the fleet (each through its dsn_env), and "
                                "--dsn names one: give one of them")
    if config.getoption("phase4_rollback", None):
        raise pytest.UsageError("--phase4-rollback is not available for a fleet yet: roll back each target in a run "
                                "of its own (--dsn)")
    _distribution(config)
    try:
        plan = load_plan(settings.plan, display=str(settings.plan))
    except PlanError as exc:
        raise pytest.UsageError(str(exc)) from None
    promotion.Promotion(config, plan).gate(None)  # once, before anything connects; each target's run again
    try:
        listed, sources, file_canary = read(path, given)
        check_environment(listed, sources, given)
        targets = listed + [t for s in sources for t in expand(s)]
        check_unique(targets, given)
        targets = [resolve(t) for t in targets]  # read-only, before any target starts
        check_same_database(targets, given)
    except TargetsError as exc:
        raise pytest.UsageError(str(exc)) from None
    if not targets:
        raise pytest.UsageError(f"{given}: no target: its [[source]] queries returned no database name")
    destructive = [m.file for m in plan.migrations if m.destructive]
    if destructive and not (settings.confirm_destructive or settings.verify_only or config.option.markexpr):
        # -m may leave it out; a verify-only fleet applies nothing
        raise pytest.UsageError(f"{plan.path.name} has a point of no return ({', '.join(destructive)}), and no target "
                                "of a fleet can ask for it at a prompt: add --phase4-confirm-destructive to run it on "
                                f"every target, or -m 'not destructive'; nothing connected")
    canary, note = fleet_options.canary(config, file_canary, len(targets)), ""
    if canary and settings.verify_only:
        # a canary tells its outcome by a row in its database: a verify-only fleet writes nothing, and applies no
        # migration a canary would gate
        note = (f"canary {canary} not used: --phase4-verify-only applies nothing, so there is no migration to gate, "
                "and a canary would write its outcome into its database; every target runs at once")
        canary = 0
    passed = [*fleet_options.passed(config), *fleet_options.ini(config),
              *(["-m", str(config.option.markexpr)] if config.option.markexpr else [])]
    run_id = uuid.uuid4().hex
    # two fleets started in the same second (two CI jobs) each get their own folder
    stamp = f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{run_id[:6]}"
    wait = fleet_options.seconds(str(config.getoption("phase4_canary_wait")))
    return Fleet(tuple(targets), canary, wait, run_id,
                 str(Path(settings.report_root or "reports") / f"fleet-{stamp}"), plan.path, tuple(passed), note,
                 plan.sha256, tuple((f.path, f.sha256) for f in plan_files(plan, config.rootpath)))


def _distribution(config: pytest.Config) -> None:
    """pytest-xdist's own loadgroup (one group per target), chosen when -n is given without --dist."""
    # as given: xdist's own pytest_cmdline_main may already have turned -n's default "no" into "load"
    dist = getattr(config.known_args_namespace, "dist", None) or config.getoption("dist", None)
    if config.getoption("looponfail", False):
        raise pytest.UsageError("--looponfail reruns tests when files change: not for a fleet's migrations; drop it")
    if dist not in (None, "no", "loadgroup"):
        raise pytest.UsageError(f"--dist={dist}: a fleet is distributed one target per worker at a time, with "
                                "--dist loadgroup (the default with --phase4-targets); drop --dist or give "
                                "--dist loadgroup")
    if config.getoption("distload", False):
        raise pytest.UsageError("-d (--dist load) would split a target's run: drop it (a fleet uses --dist loadgroup)")
    workers = config.getoption("numprocesses", None)
    if workers not in (None, 0, "0") or config.getoption("tx", None):
        config.option.dist = "loadgroup"


class TargetFailed(Exception):
    """A target's run was not green: its outcome line, and where its report is."""


class FleetPlugin:
    def __init__(self, config: pytest.Config, fleet: Fleet) -> None:
        self.config, self.fleet = config, fleet
        self.outcomes: dict[str, child.Outcome] = {}  # what the controller (or this process) heard, by target
        self.told: dict[str, canarylib.Told] = {}  # canaries' outcomes seen in this process
        self.selected: set[str] | None = None  # the targets left after -k, --lf, --deselect
        root = config.rootpath
        self.folder = root / fleet.folder
        given = config.getoption("phase4_json", None)  # a fleet's --phase4-json is its roll-up
        self.json_path = config.invocation_params.dir / str(given) if given else self.folder / "fleet.json"
        backups = config.getoption("phase4_backup_dir", None) or config.getini("phase4_backup_dir")
        base = config.invocation_params.dir if config.getoption("phase4_backup_dir", None) else root
        plan = load_plan(fleet.plan, display=fleet.plan.name)  # read before, in the controller
        plan_name = plan.name
        worker = hasattr(config, "workerinput")
        self.stale = fleet_options.stale(fleet.plan_sha256, fleet.files, plan, root) if worker else ""
        self.options = child.ChildOptions(
            plan=fleet.plan, rootdir=root, cwd=config.invocation_params.dir, reports=self.folder,
            backups=(base / str(backups)).resolve() if backups else root / "_backups" / backup.slug(plan_name),
            passed=fleet.passed, junit=bool(config.getoption("xmlpath", None)))

    # -- configuration -----------------------------------------------------------------------------------------
    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        """xdist: every worker gets the fleet as the controller read it (targets, run id, folder)."""
        node.workerinput[INPUT] = {**self.fleet.to_json(self.config.rootpath), "root": self.config.rootpath.name}

    def pytest_report_header(self) -> list[str]:
        names = ", ".join(t.name for t in self.fleet.targets[:self.fleet.canary])
        canary = f"; canary: the first {self.fleet.canary} ({names})" if self.fleet.canary else ""
        canary += f"; {self.fleet.note}" if self.fleet.note else ""
        dist = self.config.getoption("dist", None)
        how = "--dist loadgroup, one group per target" if dist == "loadgroup" else "one after another, in this process"
        return [f"phase4 fleet: {len(self.fleet.targets)} targets ({how}){canary}",
                f"phase4 fleet reports: {self.folder}"]

    # -- collection ------------------------------------------------------------------------------------------
    def pytest_ignore_collect(self, collection_path: Path) -> bool | None:
        """The plan's own test files are custom checks of every target's run, not tests of this session."""
        folder = self.fleet.plan.resolve().parent
        path = collection_path.resolve()
        if path.suffix == ".py" and (folder == path.parent or folder in path.parents):
            return True
        return None

    def pytest_collect_file(self, file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
        if file_path.resolve() == self.fleet.plan.resolve():
            return FleetFile.from_parent(parent, path=file_path, fleet=self.fleet, plugin=self)
        return None

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        """Targets in file order whatever reordered them (--ff, --lf, pytest-randomly): canaries first."""
        session.items.sort(key=lambda i: (0, i.stash[INDEX_KEY]) if INDEX_KEY in i.stash else (1, 0))
        chosen = {i.name for i in session.items if INDEX_KEY in i.stash}
        self.selected = chosen
        canaries = [t.name for t in self.fleet.targets[:self.fleet.canary]]
        if chosen - set(canaries) and (left := [c for c in canaries if c not in chosen]):
            raise pytest.UsageError(f"the canary target(s) {', '.join(left)} are deselected, and the other targets "
                                    "would wait for them: select them too, or give --phase4-canary=0")

    # -- the roll-up, in the controller ----------------------------------------------------------------------
    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        """xdist's controller collects nothing itself: which targets the workers selected (-k, --lf)."""
        self.selected = {nodeid.rsplit("::", 1)[-1].split("@")[0] for nodeid in ids}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        for key, value in report.user_properties:
            if key == PROPERTY:
                outcome = child.Outcome.from_json(json.loads(str(value)))
                self.outcomes[outcome.name] = outcome

    def ordered(self) -> list[child.Outcome]:
        return [self.outcomes[t.name] for t in self.fleet.targets if t.name in self.outcomes]

    def names(self) -> list[str]:
        """The targets of this session: every one of the file, but those -k, --lf or --deselect left out."""
        return [t.name for t in self.fleet.targets if self.selected is None or t.name in self.selected]

    def summary(self) -> str:
        deselected = len(self.fleet.targets) - len(self.names())
        return rollup.summary_line(self.ordered(), len(self.names())) + (
            f", {deselected} deselected" if deselected else "")

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if hasattr(self.config, "workerinput"):
            return  # the controller writes the roll-up
        doc = rollup.document(str(self.fleet.plan), self.fleet.plan_sha256, self.names(), self.ordered(),
                              self.fleet.canary, self.fleet.run_id, self.summary())
        rollup.write(self.json_path, doc)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if hasattr(self.config, "workerinput"):
            return
        terminalreporter.write_sep("=", "phase4 fleet")
        terminalreporter.write_line(f"fleet: {self.summary()}")
        if self.fleet.note:
            terminalreporter.write_line(f"  {self.fleet.note}")
        for outcome in self.ordered():
            if not outcome.green:
                terminalreporter.write_line(f"  {outcome.line()}")
        terminalreporter.write_line(f"roll-up: {self.json_path}")

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_summary(self, prefix: list[str], summary: list[str], postfix: list[str]) -> None:
        rows = []
        for t in self.fleet.targets:
            o = self.outcomes.get(t.name)
            if o is None:
                rows.append(f"<tr><td>{html.escape(t.name)}</td><td>not reported</td><td></td><td></td><td></td></tr>")
                continue
            link = os.path.relpath(o.report, self.folder) if o.report else ""
            name = f'<a href="{html.escape(link)}">{html.escape(o.name)}</a>' if link else html.escape(o.name)
            where = f"{o.step}: {o.reason}" if o.step else o.reason
            rows.append(f"<tr><td>{name}</td><td>{html.escape(o.verdict)}</td><td>{o.applied}</td>"
                        f"<td>{o.duration_s:.1f} s</td><td>{html.escape(where)}</td></tr>")
        prefix.append(f'<section id="phase4-fleet"><h2>Fleet</h2><p>{html.escape(self.summary())}</p>'
                      "<table><thead><tr><th>target</th><th>verdict</th><th>migrations applied</th><th>duration</th>"
                      f"<th>halted at / reason</th></tr></thead><tbody>{''.join(rows)}</tbody></table></section>")


class FleetFile(pytest.File):
    def __init__(self, *, fleet: Fleet, plugin: FleetPlugin, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fleet, self.plugin = fleet, plugin

    def collect(self) -> Iterator[pytest.Item]:
        for index, target in enumerate(self.fleet.targets):
            item = TargetItem.from_parent(self, name=target.name, target=target, index=index)
            item.add_marker(pytest.mark.xdist_group(target.name))
            item.stash[INDEX_KEY] = index
            yield item


class TargetItem(pytest.Item):
    """One target: the whole plan run on it (a child pytest), after its canaries' outcome when it has some."""

    def __init__(self, *, target: FleetTarget, index: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.target, self.index = target, index

    @property
    def fleet_plugin(self) -> FleetPlugin:
        parent = self.parent
        assert isinstance(parent, FleetFile)
        return parent.plugin

    def runtest(self) -> None:
        plugin = self.fleet_plugin
        fleet = plugin.fleet
        if plugin.stale:
            outcome = child.Outcome(self.target.name, child.NOT_RUN, reason=plugin.stale)
            self._tell(outcome)
            if self.index < fleet.canary:
                self._publish(plugin, outcome)
            raise TargetFailed(outcome.line())
        if self.index >= fleet.canary and (blocked := self._canaries(plugin)):
            outcome = child.Outcome(self.target.name, child.NOT_RUN, reason=blocked)
            self._tell(outcome)
            pytest.skip(f"not run: {blocked}")
        try:
            if self.target.unreachable:  # the controller could not connect: nothing to give the target's run
                raise TargetsError(self.target.unreachable)
            outcome = child.run(self.target, plugin.options)
        except TargetsError as exc:
            outcome = child.Outcome(self.target.name, child.ERROR, step="start", reason=str(exc))
        self._tell(outcome)
        if self.index < fleet.canary:
            self._publish(plugin, outcome)
        if not outcome.green:
            raise TargetFailed(outcome.line() + (f"\n  its report: {outcome.report}" if outcome.report else ""))

    def _canaries(self, plugin: FleetPlugin) -> str | None:
        """Why this target must not start: a canary not green, or silent past the wait; None to go."""
        fleet = plugin.fleet
        for canary in fleet.targets[:fleet.canary]:
            told = plugin.told.get(canary.name)
            if told is None:
                try:
                    told = canarylib.wait(canary.dsn(), fleet.run_id, canary.name, fleet.canary_wait_s)
                except TargetsError as exc:
                    return f"canary {canary.name}: {exc}"
            if told is None:
                return (f"canary {canary.name} told no outcome within {fleet.canary_wait_s:g} s "
                        "(--phase4-canary-wait)")
            if not told.green:
                return f"canary {told.summary}"
        return None

    def _publish(self, plugin: FleetPlugin, outcome: child.Outcome) -> None:
        told = canarylib.Told(outcome.green, f"{outcome.name} {outcome.said()}")
        plugin.told[self.target.name] = told
        try:
            canarylib.publish(self.target.dsn(), plugin.fleet.run_id, self.target.name, told)
        except (psycopg.Error, TargetsError) as exc:
            raise TargetFailed(f"{outcome.line()}\n  canary outcome not published in its database, the other "
                               f"targets will wait for it until --phase4-canary-wait: "
                               f"{type(exc).__name__}") from None

    def _tell(self, outcome: child.Outcome) -> None:
        self.user_properties.append((PROPERTY, json.dumps(outcome.to_json())))
        self.fleet_plugin.outcomes[outcome.name] = outcome

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException]) -> Any:  # type: ignore[override]
        if isinstance(excinfo.value, TargetFailed):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Any, int, str]:
        return self.path, 0, f"target {self.target.name}"
