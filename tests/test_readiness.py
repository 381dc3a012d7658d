"""Runbook Part 1 A, C, D: command checks and environment readiness, on a real cluster (pytester runs)."""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from helpers import Project, outcomes_of
from pytest_phase4.errors import PlanError
from pytest_phase4.kinds.readiness import touched_tables
from pytest_phase4.plan.load import load_plan
from pytest_phase4.plan.model import expand_env

PRE = "checks/phase4.toml::preflight"


def test_commands_pass_fail_skip_and_time_out_with_their_output(project: Callable[..., Project],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PHASE4_TEST_APP_DIR", raising=False)
    p = project("mini", "readiness")
    result = p.run("-v", "-m", "preflight", seed=True)
    outcomes = outcomes_of(result)
    assert outcomes[f"{PRE}::prints_ok"] == "PASSED"
    assert outcomes[f"{PRE}::script"] == "PASSED"  # a path runs relative to the working directory
    assert outcomes[f"{PRE}::exits_3"] == "FAILED"
    assert outcomes[f"{PRE}::not_installed"] == "SKIPPED"
    assert outcomes[f"{PRE}::app_dir_unset"] == "SKIPPED"
    assert outcomes[f"{PRE}::dirty_tree"] == "FAILED"
    assert outcomes[f"{PRE}::too_slow"] == "FAILED"
    result.stdout.fnmatch_lines([
        "expected: exit status 0",
        "found:    exit status 3",
        "where:    python3 -c \"import sys; print('2 lint errors'); sys.exit(3)\" in */checks",
        "  2 lint errors",
        "hint:     fix the lint errors first",
    ])
    result.stdout.fnmatch_lines(["expected: no output", "found:    1 line(s) of output", "*", "   M src/sales.ts"])
    result.stdout.fnmatch_lines(["expected: 'sleep 30' to finish within 0.3 s", "found:    still running: killed"])
    result.stdout.fnmatch_lines([
        "SKIPPED * phase4-no-such-program is not installed (not found on PATH): 'phase4-no-such-program "
        "--version' was not run",
        "SKIPPED * 'git status --porcelain' not run: PHASE4_TEST_APP_DIR is not set (the working directory "
        "${PHASE4_TEST_APP_DIR}); set it to run this check"])
    report = html.unescape(p.report())  # pytest-html keeps rows as escaped JSON
    assert "last 1 lines of output</strong></p><pre>build ok</pre>" in report  # the tail, under its row


def test_other_connections_fail_warn_or_are_allowed(project: Callable[..., Project]) -> None:
    p = project("mini", "readiness")
    with psycopg.connect(make_conninfo(p.dsn, application_name="crm-web")):
        result = p.run("-v", "-m", "preflight", "-k", "strict or allowing or warning", seed=True)
    outcomes = outcomes_of(result)
    assert outcomes[f"{PRE}::strict"] == "FAILED"
    assert outcomes[f"{PRE}::allowing"] == "PASSED"
    assert outcomes[f"{PRE}::warning"] == "PASSED"
    result.stdout.fnmatch_lines([
        "expected: at most 0 other connection(s) to the database",
        "found:    1",
        "where:    pg_stat_activity of the current database",
        "  pid *: user postgres, application crm-web, from *, idle",
    ])
    result.stdout.fnmatch_lines(["*ReadinessWarning: 1 other connection(s) to the database (more than 0): pid *"])


def test_role_privileges_and_client_tools(project: Callable[..., Project]) -> None:
    p = project("mini", "readiness")
    result = p.run("-v", "-m", "preflight", "-k", "role_privileges or client_tools or missing_tool",
                   seed=True)
    outcomes = outcomes_of(result)
    assert outcomes[f"{PRE}::role_privileges[migrations]"] == "PASSED"
    assert outcomes[f"{PRE}::client_tools[pg_dump]"] == "PASSED"
    assert outcomes[f"{PRE}::client_tools[pg_restore]"] == "PASSED"
    assert outcomes[f"{PRE}::missing_tool"] == "FAILED"
    result.stdout.fnmatch_lines(["expected: pg_phase4_missing installed", "found:    not found",
                                 "where:    PATH, pg_config --bindir, /usr/lib/postgresql/*/bin"])

    # A role that may read everything but owns nothing cannot run the migrations' ALTER TABLE / CREATE INDEX.
    p.execute("CREATE ROLE phase4_reader LOGIN; GRANT SELECT ON ALL TABLES IN SCHEMA public TO phase4_reader")
    p.dsn = make_conninfo(p.dsn, user="phase4_reader")
    result = p.run("-v", "-m", "preflight", "-k", "role_privileges")
    assert outcomes_of(result)[f"{PRE}::role_privileges[migrations]"] == "FAILED"
    result.stdout.fnmatch_lines([
        "expected: role phase4_reader may CREATE in schema public and ALTER the 2 table(s) the migrations touch",
        "found:    3 missing privilege(s)",
        "where:    role phase4_reader",
        "  no CREATE on schema public: the migrations create views, tables and indexes",
        "  cannot ALTER public.sales: owned by postgres, and phase4_reader is not a member of that role",
        "  cannot ALTER public.tickets: owned by postgres, and phase4_reader is not a member of that role",
    ])


def test_touched_tables_reads_alter_and_index_statements() -> None:
    text = """-- ALTER TABLE commented_out ADD x int;
    ALTER TABLE IF EXISTS ONLY public.Sales DROP COLUMN customer_name;
    CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS idx_a ON "Tickets" (id);
    CREATE INDEX ON jobs (id);
    CREATE POLICY p_select ON suppliers FOR SELECT USING (true);
    CREATE TRIGGER t_audit AFTER INSERT OR UPDATE ON audit_logs FOR EACH ROW EXECUTE FUNCTION f();
    CREATE VIEW v AS SELECT 1;
    SELECT 'ALTER TABLE not_a_table ADD x int';  -- words in a string are not a statement
    COMMENT ON TABLE customers IS 'CREATE INDEX ON in_a_comment (id)';"""
    assert touched_tables(text) == ["sales", "Tickets", "jobs", "suppliers", "audit_logs"]


def test_expand_env_reports_unset_names_and_the_values_used() -> None:
    assert expand_env("Bearer ${TOKEN} ${NOPE}", {"TOKEN": "s3cret"}) == ("Bearer s3cret ${NOPE}", ["NOPE"], ["s3cret"])


def test_a_command_line_that_cannot_be_split_is_a_plan_error(tmp_path: Path) -> None:
    plan = tmp_path / "phase4.toml"
    plan.write_text('[phase4]\nname = "x"\n\n[[preflight]]\ncheck = "command"\nrun = "npm run \'build"\n')
    with pytest.raises(PlanError) as info:
        load_plan(plan, display="phase4.toml")
    assert [str(problem) for problem in info.value.problems] == [
        "phase4.toml:4 [[preflight]] #1 check=command: run is not a valid command line (No closing quotation): "
        "\"npm run 'build\""]
