"""The runbook as users run it: ordered steps, halting, the ledger, stage selection (pytester + real PostgreSQL)."""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Callable

from helpers import REPO, Project, outcomes_of

MINI = "checks/phase4.toml"
M1 = f"{MINI}::20250101000001_create_views"
M2 = f"{MINI}::20250101000002_drop_denormalized"
M3 = f"{MINI}::20250101000003_add_indexes"


def test_full_run_applies_every_migration_in_order_and_passes(project: Callable[..., Project]) -> None:
    p = project("mini")
    result = p.run("-v", "--phase4-confirm-destructive", seed=True)
    result.assert_outcomes(passed=25)
    ids = [line.split(" ")[0] for line in result.outlines if line.startswith(MINI)]
    assert ids[:3] == [f"{MINI}::preflight::server_version[>=13]",
                       f"{MINI}::preflight::migration_files[20250101000001_create_views.sql]",
                       f"{MINI}::preflight::migration_files[20250101000002_drop_denormalized.sql]"]
    assert ids.index(f"{M1}::apply") < ids.index(f"{M1}::view_rowcount_matches[sales_with_details=sales]") \
        < ids.index(f"{M2}::apply") < ids.index(f"{M3}::apply") \
        < ids.index(f"{MINI}::post::no_orphans[sales.customer_id->customers.id]")
    assert "customer_name" not in p.columns("sales")
    ledger = p.query("SELECT file FROM pytest_phase4.ledger ORDER BY applied_at, file")
    assert [r[0] for r in ledger] == ["20250101000001_create_views.sql", "20250101000002_drop_denormalized.sql",
                                      "20250101000003_add_indexes.sql"]


def test_header_names_plan_target_and_server_without_password(project: Callable[..., Project]) -> None:
    p = project("mini")
    result = p.run("-m", "preflight", seed=True)
    result.assert_outcomes(passed=8, deselected=17)
    header = "\n".join(result.outlines[:8])
    assert "phase4 plan: Mini CRM normalization (phase4.toml, sha256 " in header
    assert "phase4 target: " in header
    assert "via --dsn; PostgreSQL 15" in header
    assert "phase4 migrations: 3 in plan, 0 already applied (ledger)" in header


def test_the_readme_seed_line_loads_the_setup_and_migrates_nothing(project: Callable[..., Project]) -> None:
    p = project("mini")
    line = next(line for line in (REPO / "README.md").read_text().splitlines()
                if line.startswith("pytest --phase4 ") and "--phase4-seed" in line)
    command, _, comment = line.partition("#")
    assert comment.strip() == "load [setup] into an empty db, then preflight only"
    args = [f"--dsn={p.dsn}" if arg.startswith("--dsn=") else arg for arg in shlex.split(command)[1:]]
    result = p.pytester.runpytest(*args, "-p", "no:cacheprovider")
    assert result.ret == 0
    result.assert_outcomes(passed=8, deselected=17)
    assert p.query("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(3,)]  # the [setup], loaded
    assert "customer_name" in p.columns("sales")
    assert p.query("SELECT count(*) FROM pg_views WHERE schemaname = 'public'") == [(0,)]
    assert p.query("SELECT to_regclass('pytest_phase4.ledger')") == [(None,)]


def test_failed_preflight_check_halts_every_later_step(project: Callable[..., Project]) -> None:
    p = project("mini")
    p.run("-m", "preflight", seed=True)
    p.execute("CREATE VIEW sales_with_details AS SELECT 1 AS x")  # the name a migration will need
    result = p.run("-v", "--phase4-confirm-destructive")
    outcomes = outcomes_of(result)
    assert outcomes[f"{MINI}::preflight::views_absent[sales_with_details]"] == "FAILED"
    assert outcomes[f"{MINI}::preflight::tables_have_rows[sales]"] == "PASSED"  # same step still checked
    assert outcomes[f"{M1}::apply"] == "SKIPPED"
    result.assert_outcomes(passed=7, failed=1, skipped=17)
    result.stdout.fnmatch_lines([
        "*SKIPPED [[]*] checks/phase4.toml: halted after preflight: views_absent[[]sales_with_details[]]: "
        "expected no relation named sales_with_details before migrating, found a view"])
    assert "customer_name" in p.columns("sales")


def test_failed_verify_check_halts_before_next_migration(project: Callable[..., Project]) -> None:
    p = project("mini")
    p.pytester.path.joinpath("checks/migrations/20250101000001_create_views.sql").write_text(
        "CREATE VIEW sales_with_details AS SELECT s.id FROM sales s JOIN customers c ON c.id = s.customer_id\n"
        "WHERE s.id > 10;\n")
    result = p.run("-v", "--phase4-confirm-destructive", seed=True)
    outcomes = outcomes_of(result)
    assert outcomes[f"{M1}::apply"] == "PASSED"
    assert outcomes[f"{M1}::view_rowcount_matches[sales_with_details=sales]"] == "FAILED"
    assert outcomes[f"{M2}::apply"] == "SKIPPED"
    result.stdout.fnmatch_lines([
        "expected: view sales_with_details to have as many rows as sales (100)",
        "found:    90 (10 missing)",
        "where:    public.sales_with_details vs public.sales",
        "hint:     an inner join on a nullable key drops rows: use LEFT JOIN",
        "plan:     checks/phase4.toml:35 *migration.verify* #2 check=view_rowcount_matches",
    ])
    assert result.ret == 1
    assert "customer_name" in p.columns("sales")


def test_sql_error_names_file_and_line_and_applies_nothing_of_it(project: Callable[..., Project]) -> None:
    p = project("mini")
    p.pytester.path.joinpath("checks/migrations/20250101000003_add_indexes.sql").write_text(
        "CREATE INDEX idx_sales_customer ON sales (customer_id);\n"
        "-- a typo on line 3\n"
        "CREATE INDEX idx_tickets_customer ON tickets (customer_idd);\n")
    result = p.run("-v", "--phase4-confirm-destructive", seed=True)
    result.stdout.fnmatch_lines([
        "*20250101000003_add_indexes.sql:3: column \"customer_idd\" does not exist [[]SQLSTATE 42703[]]",
        "the migration's transaction was rolled back: nothing of this file was applied",
    ])
    outcomes = outcomes_of(result)
    assert outcomes[f"{M3}::apply"] == "FAILED"
    assert outcomes[f"{M3}::index_exists[idx_sales_customer]"] == "SKIPPED"
    assert outcomes[f"{MINI}::post::row_counts_unchanged[sales]"] == "SKIPPED"
    assert p.query("SELECT count(*) FROM pg_indexes WHERE indexname LIKE 'idx_%'") == [(0,)]
    assert p.query("SELECT count(*) FROM pytest_phase4.ledger") == [(2,)]
    result.stdout.fnmatch_lines(["failed * 20250101000003_add_indexes.sql *", "halted after 20250101000003_*"])


def test_error_without_server_position_is_located_by_statement(project: Callable[..., Project]) -> None:
    p = project("mini")
    p.pytester.path.joinpath("checks/migrations/20250101000003_add_indexes.sql").write_text(
        "CREATE INDEX idx_sales_customer ON sales (customer_id);\n\n"
        "ALTER TABLE no_such_table ADD COLUMN x int;\n")
    result = p.run("--phase4-confirm-destructive", seed=True)
    result.stdout.fnmatch_lines(["*20250101000003_add_indexes.sql:3: relation \"no_such_table\" does not exist*"])


def test_rerun_skips_applied_migrations_and_verifies_them(project: Callable[..., Project]) -> None:
    p = project("mini")
    p.run("--phase4-confirm-destructive", seed=True).assert_outcomes(passed=25)
    result = p.run("-v", "--phase4-confirm-destructive")
    outcomes = outcomes_of(result)
    assert outcomes[f"{M1}::apply"] == "SKIPPED"
    assert outcomes[f"{M1}::view_rowcount_matches[sales_with_details=sales]"] == "PASSED"
    # the pre-migration state check holds: the view is there because an applied migration creates it
    assert outcomes[f"{MINI}::preflight::views_absent[sales_with_details]"] == "PASSED"
    # nothing migrated in this run: the comparisons use the first run's baseline, from before the migrations
    assert outcomes[f"{MINI}::post::row_counts_unchanged[sales]"] == "PASSED"
    result.assert_outcomes(passed=22, skipped=3)
    (first,) = (p.path / "reports").glob("*.baseline.json")
    result.stdout.fnmatch_lines([f"compared with {first} (taken *)",
                                 "*already applied: applied * (ledger), sha256 matches; verifying only"])
    assert "phase4 migrations: 3 in plan, 3 already applied (ledger)" in result.stdout.str()


def test_changed_applied_migration_fails_preflight_with_both_hashes(project: Callable[..., Project]) -> None:
    p = project("mini")
    p.run("--phase4-confirm-destructive", seed=True)
    (applied,) = p.query("SELECT sha256 FROM pytest_phase4.ledger WHERE file = '20250101000001_create_views.sql'")
    path = p.pytester.path / "checks/migrations/20250101000001_create_views.sql"
    path.write_text(path.read_text() + "-- edited after applying\n")
    now = hashlib.sha256(path.read_bytes()).hexdigest()
    result = p.run("-v", "--phase4-confirm-destructive")
    result.stdout.fnmatch_lines([f"expected: the file as applied on * (sha256 {applied[0]})",
                                 f"found:    a changed file (sha256 {now})",
                                 "where:    */checks/migrations/20250101000001_create_views.sql"])
    assert outcomes_of(result)[f"{M1}::apply"] == "SKIPPED"
    assert result.ret == 1
    # the migration step checks the same on its own, for runs that deselect the preflight stage
    result = p.run("-m", "not preflight", "--phase4-confirm-destructive")
    result.stdout.fnmatch_lines([f"*20250101000001_create_views.sql was applied on * with sha256 {applied[0][:12]}, "
                                 f"the file now has {now[:12]}: an applied migration must not change; write a new "
                                 "migration instead"])
    assert result.ret == 1


def test_destructive_migration_needs_confirmation_against_a_real_target(project: Callable[..., Project]) -> None:
    p = project("mini")
    result = p.run("-v", seed=True)
    outcomes = outcomes_of(result)
    assert outcomes[f"{M1}::apply"] == "PASSED"
    assert outcomes[f"{M2}::apply"] == "FAILED"
    assert outcomes[f"{M3}::apply"] == "SKIPPED"
    result.stdout.fnmatch_lines([
        "stopped at the point of no return: 20250101000002_drop_denormalized.sql is destructive (Remove "
        "denormalized fields) and was not confirmed; verify the backup, then rerun with "
        "--phase4-confirm-destructive"])
    assert result.ret == 1
    assert "customer_name" in p.columns("sales")


def test_migration_file_with_its_own_commit_is_refused(project: Callable[..., Project]) -> None:
    p = project("mini")
    p.pytester.path.joinpath("checks/migrations/20250101000001_create_views.sql").write_text(
        "BEGIN;\nCREATE VIEW sales_with_details AS SELECT * FROM sales;\nCOMMIT;\n")
    result = p.run(seed=True)
    result.stdout.fnmatch_lines(["*20250101000001_create_views.sql:1: the file controls transactions itself "
                                 "(BEGIN)*"])
    assert p.query("SELECT count(*) FROM pg_views WHERE schemaname = 'public'") == [(0,)]


def test_seed_refuses_a_schema_that_holds_tables(project: Callable[..., Project]) -> None:
    p = project("mini")
    p.execute("CREATE TABLE precious (id int)")
    result = p.run("-m", "preflight", seed=True)
    assert result.ret == 4
    result.stderr.fnmatch_lines(["ERROR: refusing to seed: schema public already holds 1 table(s) (precious).*"])
    assert p.query("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'") == [(1,)]


def test_post_failures_show_count_offending_rows_and_null_keys(project: Callable[..., Project]) -> None:
    p = project("mini")
    p.run("-m", "preflight", seed=True)
    p.execute("ALTER TABLE sales DROP CONSTRAINT sales_customer_id_fkey; "
              "UPDATE sales SET customer_id = 999 WHERE id IN (3, 4)")
    result = p.run("-v", "--phase4-confirm-destructive", "-k", "no_orphans")
    result.assert_outcomes(passed=1, failed=1, deselected=23)
    result.stdout.fnmatch_lines([
        "expected: no sales.customer_id without a matching customers.id",
        "found:    2 orphaned row(s)",
        "where:    public.sales",
        "  first 2:",
        "  id=3, customer_id=999",
        "  id=4, customer_id=999",
        "  0 row(s) with NULL sales.customer_id (not orphans, reported apart)",
    ])
    result.stdout.fnmatch_lines(["*no_orphans[[]tickets.customer_id->customers.id[]] PASSED*"])


def test_runs_without_pytest_html(project: Callable[..., Project]) -> None:
    p = project("mini")
    result = p.run("-p", "no:html", "--phase4-confirm-destructive", seed=True)
    result.assert_outcomes(passed=25)
    assert "Generated html report" not in result.stdout.str()
    # no report; the baseline goes where the report would have, for the runs after this one
    assert [f.name.endswith(".baseline.json") for f in (p.path / "reports").iterdir()] == [True]


def test_explicit_html_path_is_respected(project: Callable[..., Project]) -> None:
    p = project("mini")
    result = p.run("--html=out/board.html", "-m", "preflight", seed=True)
    assert result.ret == 0
    assert (p.path / "out/board.html").exists()
    # self-contained: no assets/; the JSON evidence goes beside the report
    assert sorted(x.name for x in (p.path / "out").iterdir()) == ["board.html", "board.json"]
    assert not (p.path / "reports").exists()


def test_a_later_migration_selected_alone_is_refused(project: Callable[..., Project]) -> None:
    p = project("mini")
    result = p.run("-v", "-k", "add_indexes", "--phase4-confirm-destructive", seed=True)
    assert outcomes_of(result)[f"{M3}::apply"] == "FAILED"
    result.stdout.fnmatch_lines([
        "refusing to apply 20250101000003_add_indexes.sql: every step before it must pass in this run, and preflight "
        "did not: 7 of its 8 test(s) were deselected by -k add_indexes (server_version[[]>=13[]], "
        "migration_files[[]20250101000001_create_views.sql[]], ...); run the whole plan, deselecting no step before "
        "the last migration you mean to apply (-m preflight alone checks without migrating)"])
    assert result.ret == 1
    assert p.query("SELECT to_regclass('pytest_phase4.ledger'), to_regclass('public.idx_sales_customer')") == [
        (None, None)]


def test_checks_of_a_deselected_migration_are_skipped_not_failed(project: Callable[..., Project]) -> None:
    p = project("mini")
    result = p.run("-v", "-rs", "-k", "index_exists", seed=True)
    result.assert_outcomes(skipped=2, deselected=23)
    result.stdout.fnmatch_lines(["SKIPPED [[]2[]] checks/phase4.toml: 20250101000003_add_indexes.sql is not "
                                 "applied: neither in this run nor in the ledger"])


def test_post_alone_compares_with_the_first_runs_baseline_and_reports_the_ledger(
        project: Callable[..., Project]) -> None:
    p = project("mini")
    p.run("--phase4-confirm-destructive", seed=True).assert_outcomes(passed=25)
    p.execute("DELETE FROM sales WHERE id <= 5")  # lost after the migrations, before this post-only run
    result = p.run("-v", "-m", "post")
    outcomes = outcomes_of(result)
    assert outcomes[f"{MINI}::post::row_counts_unchanged[sales]"] == "FAILED"  # never "as before"
    result.stdout.fnmatch_lines(["expected: 100 rows (recorded before migrating)", "found:    95 (-5)"])
    result.stdout.fnmatch_lines(["already applied * 20250101000001_create_views.sql *applied * (ledger)*"])
