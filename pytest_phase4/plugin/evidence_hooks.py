"""pytest layer of the evidence pack: records each item's outcome, attaches command output, EXPLAIN plans and
response bodies to report rows, shows a heartbeat for long migrations, writes the JSON evidence, puts the
execution summary and sign-off at the top of the HTML report, and the stage into JUnit classnames."""

from __future__ import annotations

import html
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Generator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pytest_phase4.errors import Phase4Error
from pytest_phase4.kinds import perf
from pytest_phase4.plugin import evidence_html, progress
from pytest_phase4.plugin.evidence import DESELECTED, NOT_COLLECTED, NOT_RUN, CheckRecord, Evidence, migration_done
from pytest_phase4.plugin.items import GROUP_KEY, IS_MIGRATION_KEY, PLACE_KEY, SPEC_KEY
from pytest_phase4.plugin.nodes import ROLLBACK_STEP_KEY, Phase4Item
from pytest_phase4.plugin.progress import Terminal
from pytest_phase4.plugin.report import failure_fields, outcome_line
from pytest_phase4.plugin.settings import Settings
from pytest_phase4.run import Phase4Run
from pytest_phase4.steps import NOT_RUN_YET, check_key


def configure(config: pytest.Config, settings: Settings, run: Phase4Run, terminal: Terminal) -> None:
    """Validate the evidence options against the plan (pytest.UsageError) and register the hooks."""
    try:
        _validate(settings, run)
    except pytest.UsageError:
        run.close()  # pytest does not unconfigure after a usage error here: stop an embedded server now
        raise
    # Every check records what it observed with record_property; under --junitxml's default xunit2 family pytest
    # warns once per test that the schema has no place for it. The stage is in the classname instead.
    config.addinivalue_line("filterwarnings",
                            "ignore:record_property is incompatible with junit_family:pytest.PytestWarning")
    json_path: Path | None = None  # without --phase4-json and without an HTML report, no evidence file
    if settings.json_path:
        json_path = config.invocation_params.dir / settings.json_path
    elif (html_path := config.getoption("htmlpath", None)) and config.pluginmanager.hasplugin("html"):
        json_path = (config.invocation_params.dir / str(html_path)).with_suffix(".json")
    plugin = EvidencePlugin(run, json_path, terminal)
    # A migration is applied in its fixture, wherever pytest sets that up: the heartbeat wraps the apply itself.
    run.show_progress(lambda file: terminal.step(f"applying {file}", status=lambda: run.target.scrub(
        progress.migration_status(run.watch.waiting if run.watch else [], run.lock_timeout))))
    config.pluginmanager.register(plugin, "phase4-evidence")
    if config.pluginmanager.hasplugin("html"):
        config.pluginmanager.register(EvidenceHtml(plugin), "phase4-evidence-html")


def _validate(settings: Settings, run: Phase4Run) -> None:
    if settings.base_url:
        url = urllib.parse.urlsplit(settings.base_url)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise pytest.UsageError(f"--phase4-base-url={settings.base_url!r}: expected an http(s) URL such as "
                                    "https://staging.api.example.com")
        run.extras.base_url = settings.base_url
    run.extras.signoff = signoff_names(settings.signoff, run.plan.signoff)


def signoff_names(given: tuple[str, ...], roles: Any) -> dict[str, str]:
    """ROLE=NAME pairs matched to the plan's [signoff] roles by key or title, case-insensitively."""
    names: dict[str, str] = {}
    lookup = {k.lower(): k for k in roles} | {str(t).lower(): k for k, t in roles.items()}
    choices = ", ".join(roles) or "none: add a [signoff] table to the plan"
    for pair in given:
        role, sep, name = pair.partition("=")
        if not sep or not role.strip() or not name.strip():
            raise pytest.UsageError(f"--phase4-signoff {pair!r}: expected ROLE=NAME, e.g. --phase4-signoff "
                                    "dba=\"Jane Doe\"")
        key = lookup.get(role.strip().lower())
        if key is None:
            raise pytest.UsageError(f"--phase4-signoff {pair!r}: the plan has no sign-off role {role.strip()!r}; "
                                    f"its roles: {choices}")
        names[key] = name.strip()
    return names


class EvidencePlugin:
    def __init__(self, run: Phase4Run, json_path: Path | None, terminal: Terminal) -> None:
        self.run, self.json_path, self.terminal = run, json_path, terminal
        self.ev = Evidence(run)
        self.classnames: dict[str, str] = {}  # nodeid -> stage, for the JUnit rewrite
        self.json_error = ""
        self.deselected: list[pytest.Item] = []

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        self.deselected += [i for i in items if GROUP_KEY in i.stash]

    def _record(self, item: pytest.Item, outcome: str = NOT_RUN) -> None:
        step = self.run.plan.steps[item.stash[GROUP_KEY]]
        spec = item.stash.get(SPEC_KEY, None)
        kind = spec.kind if spec else "apply" if item.stash.get(IS_MIGRATION_KEY, False) else "custom"
        place = item.stash.get(PLACE_KEY, None)
        self.ev.records[item.nodeid] = CheckRecord(item.nodeid, step.stage, step.name, kind, outcome,
                                                   key=place.key if place else ())
        self.classnames[item.nodeid] = step.stage

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        """Every item of the plan gets a record, also those that will not run: the verdicts say why (the StepBook
        knows: deselected by -k, never collected); a rollback runs no plan check, by design."""
        for item in session.items:
            if (rollback_step := item.stash.get(ROLLBACK_STEP_KEY, None)) is not None:
                self.ev.records[item.nodeid] = CheckRecord(item.nodeid, "rollback", rollback_step, "rollback")
                self.classnames[item.nodeid] = "rollback"
            elif GROUP_KEY in item.stash:
                self._record(item)
        if self.run.safety.rollback:
            return
        book = self.run.book
        for item in self.deselected:
            self._record(item, DESELECTED)
            self.ev.records[item.nodeid].message = book.why_not(self.ev.records[item.nodeid].key)
        plan = self.run.plan
        seen = {r.key for r in self.ev.records.values()}
        for step in plan.steps:
            name = step.migration.name if step.migration else step.name
            for spec in step.checks:
                if (key := check_key(spec)) not in seen:
                    nodeid = f"{_relative(plan.path, session.config.rootpath)}::{name}::{spec.test_id}"
                    self.ev.records[nodeid] = CheckRecord(nodeid, step.stage, step.name, spec.kind, NOT_COLLECTED,
                                                          book.why_not(key), key=key)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        record = self.ev.records.get(report.nodeid)
        if record is None:
            return
        record.duration_ms += report.duration * 1000
        if report.failed:
            record.outcome = "failed" if report.when == "call" else "error"
            record.message = self.ev.scrub(outcome_line(report))
            record.failure = failure_fields(report)
        elif report.skipped and record.outcome not in ("failed", "error"):
            record.outcome, record.message = "skipped", self.ev.scrub(outcome_line(report))
            record.no_baseline = bool(dict(report.user_properties).get("no_baseline"))
        elif report.passed and report.when == "call" and record.outcome == NOT_RUN:
            record.outcome = "passed"
            record.message = self.ev.scrub(str(dict(report.user_properties).get("observed", "")))

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, None, None]:
        """On a terminal, any step of the run that takes more than a few seconds says what runs (a migration's
        apply item only reports: the migration itself runs in its fixture, under Phase4Run.progress)."""
        if not self.terminal.active or item.stash.get(IS_MIGRATION_KEY, False) or (
                GROUP_KEY not in item.stash and not isinstance(item, Phase4Item)):
            return (yield)
        with self.terminal.step(progress.describe(item.name)):
            return (yield)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Before pytest-html renders (trylast): the end time, index usage and the JSON are final here."""
        run = self.run
        run.finish()
        for record in self.ev.records.values():  # selected, never reported: the session stopped before them
            if record.outcome == NOT_RUN and not record.message:
                why = run.book.why_not(record.key) if record.key else NOT_RUN_YET
                record.message = NOT_REACHED if why == NOT_RUN_YET else why
        if any(migration_done(s.status) for s in run.states.values()):
            try:
                if run.ro.info.server_version >= 150000:
                    run.ro.execute(b"SELECT pg_stat_force_next_flush()")  # this session's own counts too
                run.extras.index_usage = perf.index_usage(run.ro, run.plan)
            except (psycopg.Error, Phase4Error):
                run.extras.index_usage = []  # evidence must still be written if the server went away
        if self.json_path is not None:
            try:
                self.ev.write_json(self.json_path)
            except OSError as exc:  # the run's outcome stands; say why its evidence is missing
                self.json_error = f"could not write {self.json_path}: {exc.strerror or exc}"

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        tr = terminalreporter
        tr.section("phase4 execution summary")
        for line in evidence_html.summary_lines(self.ev):
            tr.write_line(line)
        if lines := evidence_html.perf_lines(self.ev):
            tr.section("phase4 performance (median ms)")
            for line in lines:
                tr.write_line(line)
        if self.json_error:
            tr.write_line(f"phase4 evidence (JSON): {self.json_error}", red=True, bold=True)
        elif self.json_path is not None:
            tr.write_line(f"phase4 evidence (JSON): {self.json_path}")

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        xml_path = config.getoption("xmlpath", None)
        if xml_path:
            junit_stage_classnames(config.invocation_params.dir / str(xml_path), self.classnames)


NOT_REACHED = "not reached: the session ended before it (-x, --maxfail, an internal error or Ctrl-C)"


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def _address(nodeid: str) -> tuple[str, str]:
    """(classname, name) of a test in pytest's JUnit XML, as its junitxml plugin derives them."""
    path, bracket, params = nodeid.partition("[")
    names = path.split("::")
    names[0] = names[0].replace("/", ".").removesuffix(".py")
    names[-1] += bracket + params
    return ".".join(names[:-1]), names[-1]


def junit_stage_classnames(path: Path, stages: dict[str, str]) -> None:
    """Put each phase4 test's stage into its JUnit classname: `checks.phase4.toml.migration.2025..._views`."""
    if not path.is_file():
        return
    wanted: dict[tuple[str, str], str] = {}
    for nodeid, stage in stages.items():
        classname, name = _address(nodeid)
        parts = classname.split(".")
        if stage not in parts:
            parts.insert(len(parts) - 1 if nodeid.count("::") > 1 else len(parts), stage)
        wanted[classname, name] = ".".join(parts)
    tree = ET.parse(path)
    for case in tree.iter("testcase"):
        classname, name = case.get("classname", ""), case.get("name", "")
        for (original, _), new in ((k, v) for k, v in wanted.items() if k[1] == name):
            if classname == original or classname.endswith("." + original):  # with or without --junit-prefix
                case.set("classname", classname[: len(classname) - len(original)] + new)
                break
    tree.write(path, encoding="utf-8", xml_declaration=True)


class EvidenceHtml:
    """pytest-html only: the execution summary first, and attachments under their rows."""

    def __init__(self, plugin: EvidencePlugin) -> None:
        self.plugin = plugin

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_summary(self, prefix: list[str], summary: list[str], postfix: list[str],
                                    session: pytest.Session) -> None:
        prefix.insert(0, evidence_html.summary_html(self.plugin.ev))

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item,
                                  call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        spec = item.stash.get(SPEC_KEY, None)
        if spec is not None and report.when == "call":
            attachments = self.plugin.run.extras.attachments_of(spec)
            if attachments:
                import pytest_html.extras

                blocks = "".join(f"<p><strong>{html.escape(title)}</strong></p><pre>{html.escape(text)}</pre>"
                                 for title, text in attachments)
                # pytest-html reads this attribute of the report (its documented way to add extras)
                report.extras = [*getattr(report, "extras", []), pytest_html.extras.html(blocks)]  # type: ignore[attr-defined]
        return report
