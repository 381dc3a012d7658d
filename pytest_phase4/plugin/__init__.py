"""pytest entry point: options, configuration, fixtures and the hooks that order and halt the runbook.

Inert unless `--phase4` is given, so installing the plugin changes no other test run.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from pytest_phase4.db.seed import load_setup
from pytest_phase4.db.target import Target, resolve, start_throwaway
from pytest_phase4.errors import Phase4Error, PlanError, TargetError
from pytest_phase4.fleet.identity import target_name
from pytest_phase4.fleet.resolve import check_reached
from pytest_phase4.plan.load import load_plan
from pytest_phase4.plugin import evidence_hooks, fleet, ordering, promotion, report
from pytest_phase4.plugin import safety as safety_plugin
from pytest_phase4.plugin.blast import BlastHooks
from pytest_phase4.plugin.items import SPEC_KEY, PlanFile
from pytest_phase4.plugin.nodes import RUN_KEY
from pytest_phase4.plugin.progress import Terminal
from pytest_phase4.plugin.settings import Settings, missing_plan
from pytest_phase4.run import Phase4Run
from pytest_phase4.safety import baselines, rehearsal, verifyonly

# The plugin's own parts, registered by name for a --phase4 run: `-p no:<name>` of any of them is refused.
PARTS = {
    "phase4-migrations": "the migrations as session fixtures, each set up after the one before it",
    "phase4-runbook": "the plan's order, halting, and the rule that a migration applies only after every earlier "
                      "step passed",
    "phase4-report": "the report header and the migrations table",
    "phase4-html": "the HTML report's title and observed values",
    "phase4-evidence": "the execution summary and the JSON evidence",
    "phase4-evidence-html": "the execution summary at the top of the HTML report",
    "phase4-safety": "the backups, the rehearsal and the rollback",
    "phase4-promotion": "the evidence a run relies on (--phase4-require-evidence) and its line in the report",
    "phase4-blast-radius": "the blast radius's section in the terminal",
}

STAGE_MARKERS = {
    "preflight": "phase4 preflight checks: read-only, nothing migrated (the CI gate)",
    "blast_radius": "phase4 blast radius: what the pending migrations would break (functions, trigger functions, "
                    "application queries), on a copy of the schema; also marked preflight",
    "migration": "phase4 migrations and their verify checks",
    "post": "phase4 post-migration integrity checks",
    "smoke": "phase4 smoke requests against the application's API (--phase4-base-url)",
    "destructive": "phase4 steps of a migration marked destructive (the point of no return)",
    "backup": "phase4 backup stage: pg_dump, schema dump, snapshot, BACKUP_INFO.txt, verified",
    "rollback": "phase4 --phase4-rollback steps: undo the plan in one transaction and prove it",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    Settings.add_options(parser)
    safety_plugin.add_options(parser)
    promotion.add_options(parser)
    fleet.add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    for name, text in STAGE_MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    config.addinivalue_line(
        "markers", "phase4_after(step): run this custom check in the given step (a migration file, or preflight, "
                   "backup, post, smoke), after the step's own checks; it needs that migration applied")


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """Prepare the run before pytest-html configures itself, so the default report path applies."""
    settings = Settings.from_config(config)
    if not settings.enabled:
        return
    if fleet.enabled(config):  # every target's run is a child run of its own (plugin/fleet.py)
        _refuse_options(config, distributed=True)
        if not hasattr(config, "workerinput") and (left_out := _plan_left_out(config, settings.plan)):
            raise pytest.UsageError(left_out)  # as a single-target run: a fleet collecting no target is not green
        fleet.configure(config, settings)
        return
    _refuse_options(config)
    if settings.verify_only and settings.seed:
        raise pytest.UsageError("--phase4-verify-only never writes to the target, and --phase4-seed loads the plan's "
                                "[setup] into it: seed in a run of its own (--phase4-seed -m preflight), then verify")
    plan_path = settings.plan
    if missing := missing_plan(config, plan_path):
        raise pytest.UsageError(missing)
    try:
        plan = load_plan(plan_path, display=_display(plan_path, config.rootpath))
    except PlanError as exc:
        raise pytest.UsageError(str(exc)) from None
    if left_out := _plan_left_out(config, plan.path):
        raise pytest.UsageError(left_out)
    if config.pluginmanager.hasplugin("html"):
        _check_writable(Path(config.getoption("htmlpath", None) or settings.report_dir(config.rootpath) / "x").parent)
    gate = promotion.Promotion(config, plan)
    gate.gate(settings.dsn)  # before anything connects
    terminal = Terminal.open()  # heartbeat lines of long steps, from seeding to the last check
    config.add_cleanup(terminal.close)
    try:
        target = _target(settings, plan, terminal, _vetting(gate), gate.read)
        # A throwaway database holds nothing to lose: its point of no return needs no confirmation.
        run = Phase4Run(plan, target, settings.confirm_destructive or target.embedded is not None,
                        settings.check_timeout, settings.lock_timeout, workers=settings.workers,
                        verify_only=settings.verify_only)
    except Phase4Error as exc:
        raise pytest.UsageError(str(exc)) from None
    run.blast_radius.copy_place = settings.blast_copy
    try:
        run.open()
    except (Phase4Error, psycopg.Error) as exc:
        run.close()
        raise pytest.UsageError(run.target.scrub(str(exc))) from None
    config.stash[RUN_KEY] = run
    gate.start(run)
    try:
        safety_plugin.configure(config, run)
        ordering.register(config, run)
    except pytest.UsageError:
        run.close()
        raise
    if config.args_source != pytest.Config.ArgsSource.ARGS:
        config.args[:] = [str(plan.folder)]
    stamp = run.started_at.astimezone().strftime("%Y%m%d-%H%M%S")
    report_path = settings.report_dir(config.rootpath) / f"phase4-{stamp}.html"
    if config.pluginmanager.hasplugin("html"):
        if not config.getoption("htmlpath", None):
            config.option.htmlpath = str(report_path)
        config.option.self_contained_html = True  # one file to attach to the change ticket
        report_path = config.invocation_params.dir / str(config.option.htmlpath)
    _baselines(config, settings, run, report_path)
    if run.verify_only:
        try:
            verifyonly.probe(run)
        except psycopg.Error as exc:
            run.close()
            raise pytest.UsageError(run.target.scrub(str(exc))) from None
    config.pluginmanager.register(report.ReportPlugin(run), "phase4-report")
    config.pluginmanager.register(BlastHooks(run), "phase4-blast-radius")
    if config.pluginmanager.hasplugin("html"):
        config.pluginmanager.register(report.HtmlHooks(run), "phase4-html")
    evidence_hooks.configure(config, settings, run, terminal)  # smoke URL, sign-off, JSON, execution summary
    gate.chain_fields = config.pluginmanager.getplugin("phase4-evidence").ev.chain
    gate.chain_fields.update(gate.chain(run))
    config.pluginmanager.register(gate, "phase4-promotion")


def _baselines(config: pytest.Config, settings: Settings, run: Phase4Run, report: Path) -> None:
    """Where this run's baseline goes (beside its report; with its backup too, once made) and where earlier runs'
    are looked for: the report's folder, the backup folders, and --phase4-baseline."""
    run.store.file = report.with_name(report.stem + baselines.SUFFIX)
    given = [config.invocation_params.dir / p for p in settings.baselines]
    for path in given:
        if not path.exists():
            run.close()
            raise pytest.UsageError(f"--phase4-baseline={path}: no such file or folder; name a baseline file "
                                    f"(*{baselines.SUFFIX}, or {baselines.FILE} in a backup folder) or a folder of "
                                    "them")
    backups = run.safety.backup_root
    run.store.places = list(dict.fromkeys([*given, report.parent, *([backups] if backups else [])]))


def _refuse_options(config: pytest.Config, distributed: bool = False) -> None:
    if not config.pluginmanager.hasplugin("python"):
        raise pytest.UsageError("-p no:python: pytest would report every check of the runbook passed without "
                                "running it; drop -p no:python")
    if blocked := [name for name in PARTS if config.pluginmanager.is_blocked(name)]:
        raise pytest.UsageError(f"{', '.join(f'-p no:{n}' for n in blocked)} disables a part of pytest-phase4 ("
                                f"{'; '.join(PARTS[n] for n in blocked)}): a runbook runs with all of it or not at "
                                f"all; drop {', '.join(f'-p no:{n}' for n in blocked)}")
    if not distributed:  # a fleet is distributed one target per xdist group (plugin/fleet.py)
        _refuse_distribution(config)


def _plan_left_out(config: pytest.Config, plan: Path) -> str | None:
    """Why the paths on the command line leave the whole plan out (nothing of the runbook would run), or None.
    A path into the plan's folder (a custom check) selects part of it: the run refuses what that leaves out."""
    if config.args_source != pytest.Config.ArgsSource.ARGS:
        return None  # no path given: the plugin collects the plan's folder
    folder = plan.resolve().parent
    for arg in config.args:
        path = (config.invocation_params.dir / arg.split("::")[0]).resolve()
        if not path.exists() or path == folder or path in folder.parents or folder in path.parents:
            return None  # a name pytest resolves otherwise (--pyargs), or a path that holds part of the plan
    named = " ".join(config.args)
    shown = _display(plan, config.invocation_params.dir)
    return (f"--phase4 runs the plan {shown}, but the command line names only {named}, which holds no part of it: "
            f"nothing of the runbook would run. Give no path (the plan's folder is collected), or name the plan's "
            f"folder too: pytest --phase4 {_display(folder, config.invocation_params.dir)} {named}")


def _refuse_distribution(config: pytest.Config) -> None:
    """pytest-xdist in any form (workers, --dist, -d, --tx, a worker process): refused before anything connects."""
    given = []
    if hasattr(config, "workerinput"):
        given.append("an xdist worker process")
    if config.getoption("numprocesses", None) not in (None, 0, "0"):
        given.append(f"-n {config.getoption('numprocesses')}")
    if config.getoption("dist", None) not in (None, "no"):
        given.append(f"--dist={config.getoption('dist')}")
    if config.getoption("distload", False):
        given.append("-d")
    given += [f"--tx={tx}" for tx in config.getoption("tx", None) or ()]
    if config.getoption("looponfail", False):
        given.append("--looponfail")
    if given:
        raise pytest.UsageError(f"--phase4 runs one runbook, step after step, against one database: it cannot be "
                                f"distributed by pytest-xdist ({' '.join(dict.fromkeys(given))}); drop -n, --dist, "
                                "-d, --tx and --looponfail for this run (-n 0 turns distribution off); to run it on "
                                "many databases at once, list them in --phase4-targets=FILE")


def _vetting(gate: promotion.Promotion) -> Callable[[Target], None]:
    def vet(target: Target) -> None:
        _fleet_reached(target)
        gate.vet(target)
    return vet


def _fleet_reached(target: Target) -> None:
    """A fleet's target run: refused unless it reached the database the fleet's controller resolved."""
    if (name := target_name()) is None or rehearsal.is_child():  # a rehearsal's child: its scratch copy, by design
        return
    try:
        with target.connect(read_only=True, autocommit=True) as conn:
            refused = check_reached(conn, name)
    except psycopg.Error:
        return  # the run's own connection reports it, before anything writes
    if refused:
        target.close()
        raise TargetError(refused)


def _target(settings: Settings, plan: Any, terminal: Terminal, vet: Callable[[Target], None],
            read: Callable[[Path], str]) -> Target:
    """The run's target; `vet` sees a given target before anything writes to it (seeding included)."""
    target = resolve(settings.dsn)
    if rehearsal.is_child():  # a rehearsal's child run: its scratch copy and nothing else; restored, not seeded
        params = conninfo_to_dict(target.dsn) if target is not None and target.dsn else {}
        refused = rehearsal.refuse_other_target(str(params.get("dbname") or "") or None)
        if target is None or refused:
            raise TargetError(refused or "a rehearsal runs only on the scratch copy its DSN names")
        vet(target)
        return target
    if target is None:
        with terminal.step("starting a throwaway PostgreSQL server (local initdb/pg_ctl, else Docker)"):
            target = start_throwaway("phase4")
        _seed(target, plan, terminal)
        return target
    vet(target)
    if settings.seed:
        _seed(target, plan, terminal, read)
    return target


def _seed(target: Target, plan: Any, terminal: Terminal,
          read: Callable[[Path], str] = lambda path: path.read_text(encoding="utf-8")) -> None:
    loading = {"file": ""}
    try:
        with (target.connect(read_only=False, autocommit=False) as conn,
              terminal.step(f"loading the plan's [setup] into {target.label}", status=lambda: loading["file"])):
            load_setup(conn, plan, on_file=lambda name: loading.update(file=f"running {name}"), read=read)
    except BaseException:
        target.close()
        raise


def _check_writable(folder: Path) -> None:
    """The report is the run's evidence: refuse to start a run whose report could not be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise pytest.UsageError(f"cannot write the HTML report into {folder}: {exc.strerror or exc}; choose a "
                                "writable folder with --phase4-report-dir=DIR or --html=PATH") from None


def _display(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def pytest_unconfigure(config: pytest.Config) -> None:
    run = config.stash.get(RUN_KEY, None)
    if run is not None:
        run.close()
        del config.stash[RUN_KEY]


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    run = parent.config.stash.get(RUN_KEY, None)
    if run is not None and file_path == run.plan.path.resolve():
        return PlanFile.from_parent(parent, path=file_path)
    return None


def pytest_collection_finish(session: pytest.Session) -> None:
    """Tell the run which checks were selected (-m, -k), so a step reads ahead only what its checks need."""
    run = session.config.stash.get(RUN_KEY, None)
    if run is not None:
        run.select(frozenset((spec.step, spec.test_id, spec.line) for item in session.items
                             if (spec := item.stash.get(SPEC_KEY, None)) is not None))


@pytest.fixture(scope="session")
def phase4_run(request: pytest.FixtureRequest) -> Phase4Run:
    """The current run: plan, target, ledger and migration states."""
    run = request.config.stash.get(RUN_KEY, None)
    if run is None:
        pytest.skip("pytest-phase4 is not active: run pytest with --phase4")
    return run


@pytest.fixture
def phase4_db(phase4_run: Phase4Run) -> Iterator[psycopg.Connection[Any]]:
    """The run's read-only connection to the target (autocommit, default_transaction_read_only=on).

    After each test it is put back as it was: an open transaction would hold locks that block the next
    migration, and a SET (even of default_transaction_read_only) must not carry over to later checks."""
    conn = phase4_run.ro
    yield conn
    try:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.rollback()
        conn.autocommit = True
        conn.execute("RESET ALL")  # back to the connection's own options: read-only, the check timeout
    except psycopg.Error:
        conn.close()  # the next use reconnects with the guarded options


@pytest.fixture(scope="session")
def phase4_snapshot(phase4_run: Phase4Run) -> dict[str, int]:
    """Row counts of every table in the plan's schema, recorded before the first migration of this run."""
    if phase4_run.store.own is None and not phase4_run.may_migrate():
        pytest.skip("no migration can be applied in this run (none selected, or all applied already): there are no "
                    "row counts from before one")
    return dict(phase4_run.capture().snap.counts)
