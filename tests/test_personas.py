"""Row-level security exposure end to end (issue 12): the Supabase-shaped example with the platform's default
privileges, its views with security_invoker (passes) and without (the leak: fails, naming counts)."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from typing import Any

from helpers import Project, outcomes_of

SB = "checks/phase4.toml"
MIGRATIONS = ["20250601000001_add_fk_columns", "20250601000002_create_api_views", "20250601000003_audit",
              "20250601000004_backfill_assignees", "20250601000005_drop_denormalized",
              "20250601000006_create_detail_views"]
T1, T2, T3 = (str(uuid.UUID(hashlib.md5(f"tenant{n}".encode()).hexdigest())) for n in (1, 2, 3))  # as data.sql
# The application writes once the personas' first counts are taken: tickets of every tenant added, comments deleted.
APP_WRITES = """
import psycopg
def pytest_runtest_teardown(item):
    if item.nodeid.endswith("::preflight::personas"):
        with psycopg.connect(DSN, autocommit=True) as conn:
            conn.execute("INSERT INTO public.tickets (id, tenant_id, project_id, reporter_id, title)"
                         " SELECT md5('app' || t.id || g)::uuid, t.tenant_id, t.project_id, t.reporter_id, 'App'"
                         " FROM (SELECT * FROM public.tickets ORDER BY id LIMIT 12) t, generate_series(1, 3) g;"
                         "DELETE FROM public.comments WHERE id IN (SELECT id FROM public.comments ORDER BY id LIMIT 7)")
"""


def evidence(p: Project) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(sorted((p.path / "reports").glob("phase4-*[0-9].json"))[-1].read_text())
    return data


def test_views_without_security_invoker_show_tenant_b_to_tenant_a_and_every_row_to_anon(
        project: Callable[..., Project]) -> None:
    p = project("supabase", "supabase_leak")
    result = p.run("-v", "--phase4-confirm-destructive", seed=True)
    assert result.ret == 1
    outcomes = outcomes_of(result)
    step = f"{SB}::20250601000006_create_detail_views"
    assert outcomes[f"{step}::rls_exposure[plan]"] == "FAILED"
    assert outcomes[f"{step}::personas"] == "FAILED"
    assert [outcomes[f"{SB}::{m}::personas"] for m in MIGRATIONS[:5]] == ["PASSED"] * 5
    assert outcomes[f"{SB}::preflight::personas"] == "PASSED"
    result.stdout.fnmatch_lines([
        "found:    2 exposure(s)",
        "where:    what 20250601000006_create_detail_views.sql created or changed (exposed schemas: public, api)",
        "  view public.comments_with_details (created by 20250601000006_create_detail_views.sql) [[]splinter 0010 "
        "security_definer_view[]]: readable by anon, authenticated (subject to row-level security), runs with its "
        "owner postgres's rights (no security_invoker) over RLS table(s) public.comments, public.profiles, "
        "public.tickets: they see every row postgres sees; fix: ALTER VIEW \"public\".\"comments_with_details\" SET "
        "(security_invoker = true) (PostgreSQL 15+: the view then reads with the rights of whoever queries it), or "
        "REVOKE SELECT ON \"public\".\"comments_with_details\" FROM anon, authenticated",
        "  view public.tickets_with_details (created by *) [[]splinter 0010 security_definer_view[]]: *"])
    # the persona check: tenant A sees tenant B's (and C's) rows through the view, anon every row, with counts
    result.stdout.fnmatch_lines([
        "found:    8 widening(s)",
        "where:    personas tenant_a, tenant_b, anon, counted after 20250601000006_create_detail_views.sql",
        f"  persona tenant_a sees 294 rows of view public.tickets_with_details; by tenant: {T2} 98, {T3} 98, {T1} 98; "
        "read with its own rights (security_invoker) the view's definition shows it 98; by tenant: "
        f"{T1} 98: 196 row(s) it may not see (98 of tenant {T2}, 98 of tenant {T3}); of the RLS table(s) under it, "
        "the persona sees: public.profiles 10, public.projects 4, public.tickets 100; the view runs with its owner "
        "postgres's rights",
        f"  persona anon sees 294 rows of view public.tickets_with_details; by tenant: {T2} 98, {T3} 98, {T1} 98; "
        "read with its own rights (security_invoker) the view's definition shows it 0: 294 row(s) it may not see "
        f"(98 of tenant {T2}, 98 of tenant {T3}, 98 of tenant {T1}); of the RLS table(s) under it, the persona "
        "sees: public.profiles 0, public.projects 0, public.tickets 0; the view runs with its owner postgres's "
        "rights",
        # and the careless read policy on a kept table: each tenant now reads the others' comments
        "  persona tenant_a sees 600 rows of table public.comments after 20250601000006_create_detail_views.sql, "
        "200 after 20250601000004_backfill_assignees.sql (its own rows: 600, were 600): "
        f"tenant {T2}: 0 -> 200 seen, the table 200 -> 200; tenant {T3}: 0 -> 200 seen, the table 200 -> 200",
    ])
    assert "Rollback:        YES        2 check(s) failed after 6 migration(s) were applied in this run" in \
        result.stdout.str()
    data = evidence(p)["personas"]
    assert [m["label"] for m in data["moments"]] == [
        "before the first migration", *(f"{m}.sql" for m in MIGRATIONS[1:4]), f"{MIGRATIONS[5]}.sql"]
    assert len(data["findings"]) == 8
    leak = data["moments"][-1]["seen"]["anon"]["public.tickets_with_details"]
    assert (leak["rows"], leak["own_rights"], leak["tenants"]) == (294, 0, {T1: 98, T2: 98, T3: 98})
    assert data["personas"][0]["claims"]["tenant_id"] == T1
    report = p.report()
    assert "Row-level security: rows each persona sees" in report
    assert "<td class='num phase4-leak'>294 (own rights: 0)</td>" in report
    assert "<td class='num phase4-moved'>600</td>" in report


def test_with_security_invoker_everything_passes_while_the_application_writes(
        project: Callable[..., Project]) -> None:
    p = project("supabase")
    p.pytester.makeconftest(APP_WRITES.replace("DSN", repr(p.dsn)))
    # the application's writes change row counts on purpose: the post check that forbids that is left out
    result = p.run("-v", "--phase4-confirm-destructive", "-k", "not row_counts_match", seed=True)
    assert result.ret == 0, result.stdout.str()
    outcomes = outcomes_of(result)
    assert [outcomes[f"{SB}::{m}::personas"] for m in ["preflight", *MIGRATIONS]] == ["PASSED"] * 7
    assert outcomes[f"{SB}::20250601000006_create_detail_views::rls_exposure[plan]"] == "PASSED"
    assert outcomes[f"{SB}::post::rls_exposure[plan]"] == "PASSED"
    data = evidence(p)
    observed = {c["id"]: c for c in data["checks"]}
    assert observed[f"{SB}::{MIGRATIONS[0]}::personas"]["outcome"] == "passed"
    first, last = data["personas"]["moments"][0], data["personas"]["moments"][-1]
    assert (first["totals"]["public.tickets"]["rows"], last["totals"]["public.tickets"]["rows"]) == (300, 336)
    assert (first["totals"]["public.comments"]["rows"], last["totals"]["public.comments"]["rows"]) == (600, 593)
    tenant_a = last["seen"]["tenant_a"]
    assert tenant_a["public.tickets_with_details"]["rows"] == tenant_a["public.tickets_with_details"]["own_rights"]
    assert set(tenant_a["public.tickets_with_details"]["tenants"]) == {T1}
    assert last["seen"]["anon"]["public.tickets_with_details"] == {"rows": 0, "tenants": {}, "own_rights": 0,
                                                                   "own_rights_tenants": {}}
    assert data["personas"]["findings"] == []
    report = p.report()
    assert "Row-level security: rows each persona sees" in report
    assert "phase4-leak'>" not in report
