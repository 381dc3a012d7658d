"""What the run tells people: terminal header and summary, and the pytest-html report's title, summary
section and observed-value column. Every text here is built from redacted values only."""

from __future__ import annotations

import html
from collections.abc import Callable, Generator
from typing import Any

import pytest

from pytest_phase4.db import lockwords
from pytest_phase4.errors import CheckFailed
from pytest_phase4.run import APPLIED, FAILED, REFUSED, Phase4Run


def _migration_rows(run: Phase4Run) -> list[tuple[str, str, str, str]]:
    rows = []
    for state in run.states.values():
        duration = f"{state.duration_ms:,.0f} ms" if state.duration_ms is not None else ""
        rows.append((state.status, state.migration.file, duration, state.note))
    return rows


def header_lines(run: Phase4Run) -> list[str]:
    plan = run.plan
    already = sum(m.file in run.applied_before_run for m in plan.migrations)
    others = sorted(set(run.applied_before_run) - {m.file for m in plan.migrations})
    elsewhere = f"; the ledger also lists {len(others)} not in this plan ({', '.join(others[:3])}" + (
        ", ...)" if len(others) > 3 else ")") if others else ""
    destructive = [m.file for m in plan.migrations if m.destructive]
    if not destructive:
        gate = "none in plan"
    elif run.confirm_destructive:
        gate = f"confirmed ({', '.join(destructive)})"
    else:
        gate = f"NOT confirmed: {', '.join(destructive)} will stop the run (--phase4-confirm-destructive)"
    lines = [
        f"phase4 plan: {plan.name} ({plan.path.name}, sha256 {plan.sha256[:12]})",
        f"phase4 target: {run.target.label} via {run.target.source}; PostgreSQL {run.server_version}",
    ]
    if run.safety.rollback:
        return [*lines, f"phase4 mode: rollback ({run.safety.rollback}) of the plan's migrations in the ledger "
                        f"({already}), proven before it commits; no migration runs"]
    if run.verify_only:
        applied = [s for s in run.states.values() if s.applied]
        return [*lines, f"phase4 mode: verification only, nothing is applied: {len(applied)} of {len(plan.migrations)} "
                        f"migration(s) applied ({already} in the ledger, {len(run.verified)} proven by their checks)"]
    return [*lines, f"phase4 migrations: {len(plan.migrations)} in plan, {already} already applied (ledger)"
                    f"{elsewhere}; destructive: {gate}"]


class ReportPlugin:
    """Terminal output, registered only for a --phase4 run."""

    def __init__(self, run: Phase4Run) -> None:
        self.run = run

    def pytest_report_header(self) -> list[str]:
        return header_lines(self.run)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport,
                                                                                  pytest.TestReport]:
        report = yield
        attach_failure(report, call, self.run.scrub)
        return report

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        tr = terminalreporter
        tr.section("phase4 migrations")
        width = max((len(m.file) for m in self.run.plan.migrations), default=10)
        for status, file, duration, note in _migration_rows(self.run):
            markup = {"green": True} if status == APPLIED else {"red": True} if status in (FAILED, REFUSED) else {}
            line = f"{status:<16} {file:<{width}} {duration:>9}  {note}".rstrip()
            tr.write_line(line, **markup)
        book = self.run.book
        for _, text in book.uncollected:  # a check that was not collected did not pass: the run exits non-zero
            tr.write_line(f"{'not collected':<16} {text}", red=True)
        for text in book.skipped_files:
            tr.write_line(f"{'not run':<16} {text} (the module skipped itself whole: none of its checks ran)",
                          yellow=True)
        if self.run.halt:
            tr.write_line(f"halted after {self.run.halt.step}: {self.run.halt.reason}", red=True, bold=True)
        if lines := lock_lines(self.run):
            tr.section("phase4 locks (strongest held by each migration; all in the report)")
            for line in lines:
                tr.write_line(line)


def lock_lines(run: Phase4Run) -> list[str]:
    """One line per migration measured here or on the rehearsal copy: its strongest lock and its hazards."""
    lines = []
    for state in run.states.values():
        for where, measured in (("rehearsal", state.rehearsed),
                                ("", state.measured.to_json() if state.measured else None)):
            if not measured or measured["outcome"] == "not run":
                continue
            hazards = measured["hazards"]
            gated = sum(h["gated"] for h in hazards)
            note = f"; {len(hazards)} hazard(s)" + (f", {gated} over hazard_min_rows" if gated else "") if hazards \
                else ""
            label = f"{state.migration.file} ({where})" if where else state.migration.file
            lines.append(f"{label}: {lockwords.summary(measured, run.plan.schema)}{note}")
    return lines


class HtmlHooks:
    """pytest-html hooks; registered only when pytest-html is active, so `-p no:html` keeps working."""

    def __init__(self, run: Phase4Run) -> None:
        self.run = run

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_report_title(self, report: Any) -> None:
        report.title = f"{self.run.plan.name}: migration run report"

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_table_header(self, cells: list[str]) -> None:
        cells.insert(2, "<th class='col-observed'>Observed</th>")

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_table_row(self, report: pytest.TestReport, cells: list[str]) -> None:
        observed = dict(getattr(report, "user_properties", ())).get("observed", "")
        if report.skipped:
            reason = skip_reason(report)
            if reason.startswith("halted after "):  # the same reason on every later row: the summary says it once
                reason = reason.split(": ", 1)[0] + " (see What failed and why)"
            observed = f"skipped: {reason}"
            if report.when == "setup":  # held back before it ran: it is the check's row, not its setup's
                cells[1] = cells[1].replace("::setup</td>", "</td>")
        elif report.failed:
            observed = outcome_line(report)
        cells.insert(2, f"<td class='col-observed'>{html.escape(self.run.target.scrub(str(observed)))}</td>")

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_table_html(self, report: pytest.TestReport, data: list[str]) -> None:
        """A skipped row says why in one line of its Observed cell: no box below it holding pytest's raw
        (file, line, reason) tuple."""
        if report.skipped:
            data.clear()


def outcome_line(report: pytest.TestReport) -> str:
    """One line for a report: why it was skipped, or what failed ("expected X, found Y", an SQL error)."""
    if report.skipped:
        return skip_reason(report)
    if failure := failure_fields(report):
        return f"expected {failure['expected']}, found {failure['found']}"
    lines = [line for line in report.longreprtext.strip().splitlines() if line.strip()]
    errors = [line[1:].strip() for line in lines if line.startswith("E ")]
    return (errors or lines or ["failed"])[0][:500]


FAILURE_ATTR = "phase4_failure"  # on a TestReport: CheckFailed.fields(), set as the report is made


def attach_failure(report: pytest.TestReport, call: pytest.CallInfo[Any], scrub: Callable[[str], str]) -> None:
    """Carry a CheckFailed's expected/found/where/hint on its report, for every report made of it."""
    if call.excinfo is not None and isinstance(call.excinfo.value, CheckFailed):
        setattr(report, FAILURE_ATTR, call.excinfo.value.fields(scrub))


def failure_fields(report: pytest.TestReport) -> dict[str, str] | None:
    """The structured failure a report carries (attach_failure), None for any other outcome."""
    fields: dict[str, str] | None = getattr(report, FAILURE_ATTR, None)
    return fields if report.failed else None


def skip_reason(report: pytest.TestReport) -> str:
    """The reason a test was skipped, as the test gave it."""
    longrepr = report.longrepr
    text = str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr or "")
    return text.removeprefix("Skipped: ")
