"""Bad input: one clear usage error naming file and line, every problem at once, nothing touched."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from helpers import Project


def test_every_plan_problem_is_reported_at_once_with_its_line(project: Callable[..., Project]) -> None:
    p = project("bad_plan")
    result = p.run()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert result.stderr.lines[:1] == ["ERROR: invalid phase4 plan (7 problems):"]
    result.stderr.fnmatch_lines([
        "  checks/phase4.toml:6 [[][[]preflight[]][]] #1 check=table_count: unknown key 'minimum' for check "
        "'table_count'; its keys: min",
        "  checks/phase4.toml:6 [[][[]preflight[]][]] #1 check=table_count: missing key 'min' (int) "
        "for check 'table_count'",
        "  checks/phase4.toml:10 [[][[]preflight[]][]] #2: unknown check kind 'tables_exist'; valid kinds: "
        "active_connections, *client_tools, column_absent, column_present, command, *explain_under, *, "
        "table_exists, tables_have_rows, view_count, *",
        "  checks/phase4.toml:17 [[][[]migration[]][]] 20250101000001_a.sql: 20250101000001_a.sql is listed after "
        "20250101000002_b.sql but sorts before it; migrations must be listed in the order of their timestamps",
        "  checks/phase4.toml:19 [[][[]migration.verify[]][]] #1 check=column_absent: columns must be a list of "
        "\"table.column\" strings, e.g. [[]\"sales.customer_name\"[]], found [[]'sales_customer_name'[]]",
        "  checks/phase4.toml:23 [[][[]migration[]][]] 20250101000003_missing.sql: migration file not found: "
        "*20250101000003_missing.sql; add it to * or fix the file name",
        "  checks/phase4.toml:26 [[][[]post[]][]] #1 check=no_orphans: relations must be a list of "
        "\"child.column -> parent.column\"*",
    ])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    assert p.query("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]


def test_malformed_toml_names_file_and_line(project: Callable[..., Project]) -> None:
    p = project("mini")
    plan = p.path / "checks/phase4.toml"
    lines = plan.read_text().splitlines()
    lines[9] = "check = table_count"  # an unquoted string
    plan.write_text("\n".join(lines))
    result = p.run(seed=True)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: invalid phase4 plan (1 problem):",
                                 "  checks/phase4.toml:10: malformed TOML: Invalid value (column 9)"])
    assert "Traceback" not in result.stderr.str()
    assert p.query("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]


def test_missing_plan_says_where_it_looked_and_how_to_point_at_one(pytester: pytest.Pytester,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # No database: the plan is looked for before anything connects.
    root = pytester.path
    pytester.makepyprojecttoml("[tool.pytest.ini_options]\n")
    how = ("  point at your plan with --phase4-plan=PATH (relative to the working directory), or with phase4_plan = "
           "\"PATH\" in your pytest ini file (pytest.ini, or [[]tool.pytest.ini_options[]] in pyproject.toml; relative "
           "to the rootdir); the bundled example is checks/phase4.toml in a clone of pytest-phase4")
    result = pytester.runpytest("--phase4", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([
        f"ERROR: no phase4 plan at {root}/checks/phase4.toml: no such file",
        f"  looked for: the default checks/phase4.toml, relative to the rootdir {root} (the folder of pytest's ini "
        "file, else the working directory)",
        f"  working directory: {root}", how])

    sub = pytester.mkdir("sub")
    monkeypatch.chdir(sub)
    result = pytester.runpytest("--phase4", "-p", "no:cacheprovider", "--phase4-plan=nope/phase4.toml")
    result.stderr.fnmatch_lines([f"ERROR: no phase4 plan at {sub}/nope/phase4.toml: no such file",
                                 "  looked for: --phase4-plan=nope/phase4.toml, relative to the working directory",
                                 f"  working directory: {sub}", how])

    pytester.makepyprojecttoml('[tool.pytest.ini_options]\nphase4_plan = "db"\n')
    pytester.mkdir("db")
    result = pytester.runpytest("--phase4", "-p", "no:cacheprovider")
    result.stderr.fnmatch_lines([f"ERROR: no phase4 plan at {root}/db: a folder, not a plan file",
                                 f"  looked for: phase4_plan = 'db' in {root}/pyproject.toml, relative to the rootdir "
                                 f"{root}", f"  working directory: {sub}", how])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def test_help_says_what_the_options_do(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    text = " ".join(result.stdout.str().split())  # argparse wraps help text to the terminal's width
    assert "--phase4-rollback=[MODE] instead of the plan, undo its migrations in one transaction and prove it. MODE: " \
           "revert (the default: undo what they recorded, keep every write made since the backup) or restore (the " \
           "whole backup back, after listing what that loses; needs --phase4-accept-loss)" in text
    assert "--phase4-seed load the plan's [setup] into the --dsn database, then run the plan as usual (add -m " \
           "preflight to run only the read-only checks); refused if the schema holds tables" in text
    assert "phase4_workers (int):" in text
    assert "{full,columns}" not in text


def test_unreachable_target_fails_in_a_few_lines_without_password(project: Callable[..., Project]) -> None:
    p = project("mini")
    result = p.run("--dsn=postgresql://u:pw@127.0.0.1:1/x", dsn=False)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    output = result.stdout.str() + result.stderr.str()
    assert "pw" not in output
    assert "Traceback" not in output
    assert len(result.stderr.lines) <= 4
    result.stderr.fnmatch_lines(["ERROR: *127.0.0.1*1*"])


def test_without_phase4_the_plugin_collects_nothing(project: Callable[..., Project]) -> None:
    p = project("mini", "custom_checks")
    result = p.pytester.runpytest("-p", "no:cacheprovider", "-rs", "checks/test_custom.py")
    result.assert_outcomes(skipped=4)
    result.stdout.fnmatch_lines(["*pytest-phase4 is not active: run pytest with --phase4*"])


@pytest.mark.parametrize(("option", "expected"), [
    ("--phase4-report-dir=/proc/phase4-reports",
     "ERROR: cannot write the HTML report into /proc/phase4-reports: *; choose a writable folder with "
     "--phase4-report-dir=DIR or --html=PATH"),
    ("--phase4-lock-timeout=0",
     "ERROR: --phase4-lock-timeout: 0 turns the timeout off in PostgreSQL (wait forever), which is what this guard "
     "is for; give a positive duration like 10s"),
    ("--phase4-check-timeout=soon",
     "ERROR: --phase4-check-timeout: expected a duration like 500ms, 30s or 5min, found 'soon'"),
])
def test_bad_options_are_usage_errors_before_connecting(project: Callable[..., Project], option: str,
                                                         expected: str) -> None:
    p = project("mini")
    result = p.run(option, seed=True)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([expected])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    assert p.query("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]  # not even seeded
