"""The bundled CRM example (checks/): the runbook's own scenarios, end to end on real PostgreSQL."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from helpers import Project, outcomes_of

MIGRATIONS = [
    "20250315000003_enhance_reference_tables.sql",
    "20250322000021_create_sales_views.sql",
    "20250322000022_create_crm_views.sql",
    "20250322000023_create_contract_views.sql",
    "20250322000024_create_job_works_views.sql",
    "20250322000025_create_remaining_views.sql",
    "20250328000026_remove_all_denormalized_fields.sql",
    "20250328000027_add_performance_indexes.sql",
]


def _passed(result: object) -> int:
    return int(result.parseoutcomes().get("passed", 0))  # type: ignore[attr-defined]


def test_demo_runs_on_an_embedded_server_and_reports_every_migration(project: Callable[..., Project]) -> None:
    p = project("crm")
    result = p.run(dsn=False)
    assert result.ret == 0
    assert _passed(result) >= 40
    result.stdout.fnmatch_lines(["phase4 target: * via embedded throwaway PostgreSQL (local); PostgreSQL 15*"])
    result.stdout.fnmatch_lines([f"applied * {m} *" for m in MIGRATIONS], consecutive=True)
    report = p.report()
    for migration in MIGRATIONS:
        assert migration in report
    assert "CRM Phase 4: normalization (staging execution guide): migration run report" in report
    assert not re.search(r"<link[^>]+href=\"[^\"]+\.css", report), "report must be self-contained"
    result.stdout.fnmatch_lines(["*Generated html report: file://*/reports/phase4-*.html*"])
    # the persona table: its views are security_invoker, so each tenant sees its own rows through them
    assert "Row-level security: rows each persona sees" in report
    assert "<td>public.sales_with_details <span class='phase4-note'>view (security_invoker)</span></td>" \
           "<td class='num '>-</td><td class='num '>334</td><td class='num '>-</td><td class='num '>333</td>" \
           "<td class='num '>-</td><td class='num '>0</td>" in report
    data = json.loads(next((p.path / "reports").glob("phase4-*[0-9].json")).read_text())["personas"]
    assert [m["label"] for m in data["moments"]] == ["before the first migration", *MIGRATIONS[:6]]
    assert data["findings"] == []
    last = data["moments"][-1]
    assert last["totals"]["public.sales"] == {"rows": 1000, "tenants": {"1": 334, "2": 333, "3": 333}}
    assert last["seen"]["tenant_1"]["public.sales_with_details"] == {
        "rows": 334, "tenants": {"1": 334}, "own_rights": 334, "own_rights_tenants": {"1": 334}}


def test_preflight_gate_on_a_seeded_scratch_database_changes_nothing(project: Callable[..., Project]) -> None:
    p = project("crm")
    result = p.run("-m", "preflight", seed=True)
    assert result.ret == 0
    assert _passed(result) >= 20
    assert p.query("SELECT count(*) FROM pg_views WHERE schemaname = 'public'") == [(0,)]
    assert {"customer_name", "assigned_to_name", "amount"} <= set(p.columns("sales"))
    assert p.query("SELECT to_regclass('pytest_phase4.ledger'), to_regclass('public.suppliers')") == [(None, None)]


def test_migration_3_conflict_halts_before_migrations_4_to_8(project: Callable[..., Project]) -> None:
    p = project("crm")
    assert p.run("-m", "preflight", seed=True).ret == 0
    p.execute("CREATE TABLE tickets_with_details (id int)")  # holds the name migration 3 needs
    plan = p.path / "checks/phase4.toml"  # preflight's views_absent would catch it first: leave the name out there
    text = plan.read_text()
    plan.write_text(text.replace('"customers_with_stats", "tickets_with_details",', '"customers_with_stats",', 1))
    # The blast radius applies the pending migrations to a copy of the schema first: it stops there, naming it.
    result = p.run("-v", "--phase4-confirm-destructive")
    assert result.ret == 1
    assert outcomes_of(result)["checks/phase4.toml::blast_radius::database_code[all_schemas]"] == "FAILED"
    result.stdout.fnmatch_lines(["found:    20250322000022_create_crm_views.sql:*: relation \"tickets_with_details\" "
                                 "already exists [[]SQLSTATE 42P07[]]"])
    assert p.query("SELECT to_regclass('pytest_phase4.ledger')") == [(None,)]
    # Without it, the run halts at migration 3 itself.
    plan.write_text(re.sub(r"\[\[(blast_radius|app_queries)\]\]\n(?:[^\[\n].*\n)*", "", plan.read_text()))
    result = p.run("-v", "--phase4-confirm-destructive")
    assert result.ret == 1
    outcomes = outcomes_of(result)
    assert outcomes["checks/phase4.toml::20250322000021_create_sales_views::apply"] == "PASSED"
    assert outcomes["checks/phase4.toml::20250322000022_create_crm_views::apply"] == "FAILED"
    for later in MIGRATIONS[3:]:
        assert outcomes[f"checks/phase4.toml::{later.removesuffix('.sql')}::apply"] == "SKIPPED"
    result.stdout.fnmatch_lines(["*20250322000022_create_crm_views.sql:*: relation \"tickets_with_details\" "
                                 "already exists [[]SQLSTATE 42P07[]]"])
    assert "customer_name" in p.columns("sales")
    assert [r[0] for r in p.query("SELECT file FROM pytest_phase4.ledger ORDER BY file")] == MIGRATIONS[:2]
    report = p.report()
    assert "halted after 20250322000022_create_crm_views.sql" in report
    assert "already exists" in report


def test_stop_at_the_point_of_no_return_then_resume_confirmed(project: Callable[..., Project]) -> None:
    p = project("crm")
    stopped = p.run("-v", seed=True)
    assert stopped.ret == 1
    outcomes = outcomes_of(stopped)
    assert outcomes["checks/phase4.toml::20250328000026_remove_all_denormalized_fields::apply"] == "FAILED"
    assert outcomes["checks/phase4.toml::20250328000027_add_performance_indexes::apply"] == "SKIPPED"
    assert "customer_name" in p.columns("sales")
    resumed = p.run("-v", "-rs", "--phase4-confirm-destructive")
    assert resumed.ret == 0, resumed.stdout.str()
    outcomes = outcomes_of(resumed)
    assert outcomes["checks/phase4.toml::20250322000021_create_sales_views::apply"] == "SKIPPED"
    assert outcomes["checks/phase4.toml::20250328000026_remove_all_denormalized_fields::apply"] == "PASSED"
    # migration 3's "5 views so far" held then, and cannot be checked now that migration 6 added more
    assert outcomes["checks/phase4.toml::20250322000022_create_crm_views::view_count[%_with_details==5]"] == "SKIPPED"
    resumed.stdout.fnmatch_lines(["*: describes the state right after 20250322000022_create_crm_views.sql, and "
                                  "20250322000025_create_remaining_views.sql was already applied when this run "
                                  "started (ledger): no longer checkable"])
    assert "customer_name" not in p.columns("sales")
