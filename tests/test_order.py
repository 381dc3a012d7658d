"""An order-proof runbook: whatever pytest option or plugin reorders, deselects or distributes the tests, no
migration is applied out of plan order or after an earlier step that failed or did not run in this run. Every
outcome is read from the ledger and the schema with SQL, outside the plugin."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest

from helpers import Project, outcomes_of

MINI = "checks/phase4.toml"
M1 = f"{MINI}::20250101000001_create_views"
M2 = f"{MINI}::20250101000002_drop_denormalized"
M3 = f"{MINI}::20250101000003_add_indexes"
FAILING_AFTER_M1 = (
    "import pytest\n\n"
    "@pytest.mark.phase4_after('20250101000001_create_views')\n"
    "def test_views_are_empty(phase4_db):\n"
    "    assert phase4_db.execute('SELECT count(*) FROM sales_with_details').fetchone() == (0,)\n")


def ledger(p: Project) -> list[str]:
    """The ledger's files in the order they were applied."""
    if p.query("SELECT to_regclass('pytest_phase4.ledger')") == [(None,)]:
        return []
    return [r[0] for r in p.query("SELECT file FROM pytest_phase4.ledger ORDER BY applied_at, file")]


def test_ff_runs_the_plan_in_order_and_a_failed_preflight_stops_the_point_of_no_return(
        project: Callable[..., Project]) -> None:
    """Case 1: --ff ran the destructive migration first, before the preflight check that then failed."""
    p = project("mini")  # no [[backup]] stage: the destructive migration has only the run's own checks before it
    first = p.run("-v", seed=True, cache=True)
    assert outcomes_of(first)[f"{M2}::apply"] == "FAILED"  # not confirmed: the cache now lists it as failed
    p.execute("DELETE FROM sales")  # the application empties a table preflight requires rows in
    result = p.run("-v", "--ff", "--phase4-confirm-destructive", cache=True)
    result.stdout.fnmatch_lines(["run-last-failure: rerun previous 1 failure first"])
    ids = [line.split(" ")[0] for line in result.outlines if line.startswith(MINI)]
    assert ids[0] == f"{MINI}::preflight::server_version[>=13]", "not in plan order"
    outcomes = outcomes_of(result)
    assert outcomes[f"{MINI}::preflight::tables_have_rows[sales]"] == "FAILED"
    assert outcomes[f"{M2}::apply"] == "SKIPPED"
    result.stdout.fnmatch_lines(["*halted after preflight: tables_have_rows[[]sales[]]: *"])
    assert "customer_name" in p.columns("sales")
    assert ledger(p) == ["20250101000001_create_views.sql"]


def test_k_and_sw_never_apply_the_destructive_migration_without_preflight(project: Callable[..., Project]) -> None:
    """Case 2: -k <destructive> or --sw applied it with preflight not run, exit 0."""
    p = project("mini")
    first = p.run("-v", "--sw", seed=True, cache=True)  # stops at the unconfirmed destructive migration
    assert outcomes_of(first)[f"{M2}::apply"] == "FAILED"
    result = p.run("-v", "-k", "drop_denormalized", "--phase4-confirm-destructive", cache=True)
    assert outcomes_of(result)[f"{M2}::apply"] == "FAILED"
    result.stdout.fnmatch_lines([
        "refusing to apply 20250101000002_drop_denormalized.sql: every step before it must pass in this run, and "
        "preflight did not: 7 of its 8 test(s) were deselected by -k drop_denormalized (server_version[[]>=13[]], "
        "migration_files[[]20250101000001_create_views.sql[]], ...); run the whole plan, deselecting no step before "
        "the last migration you mean to apply (-m preflight alone checks without migrating)"])
    assert result.ret == 1
    assert "customer_name" in p.columns("sales")
    result = p.run("-v", "--sw", "--phase4-confirm-destructive", cache=True)
    result.stdout.fnmatch_lines(["stepwise: skipping 11 already passed items*"])
    assert outcomes_of(result)[f"{M2}::apply"] == "FAILED"
    result.stdout.fnmatch_lines(["refusing to apply 20250101000002_drop_denormalized.sql: every step before it "
                                 "must pass in this run, and preflight did not: 8 of its 8 test(s) were deselected "
                                 "by --sw *"])
    assert "customer_name" in p.columns("sales")
    assert ledger(p) == ["20250101000001_create_views.sql"]


def test_lf_refusal_names_lf(project: Callable[..., Project]) -> None:
    """Issue 19: the refusal blamed -m / -k when --lf had deselected the earlier steps."""
    p = project("mini")
    p.run(seed=True, cache=True)  # stops at the unconfirmed destructive migration
    result = p.run("-v", "--lf", "--phase4-confirm-destructive", cache=True)
    result.stdout.fnmatch_lines(["run-last-failure: rerun previous 1 failure"])
    result.stdout.fnmatch_lines(["refusing to apply 20250101000002_drop_denormalized.sql: every step before it "
                                 "must pass in this run, and preflight did not: 8 of its 8 test(s) were deselected "
                                 "by --lf (*"])
    assert "customer_name" in p.columns("sales")


def test_nf_cannot_run_a_custom_check_before_its_migration(project: Callable[..., Project]) -> None:
    """Case 3: --nf ran a new failing custom check first (skipped, "not applied"), and 002 was applied."""
    p = project("mini")
    assert p.run("-m", "preflight", seed=True, cache=True).ret == 0
    (p.path / "checks/test_new.py").write_text(FAILING_AFTER_M1)
    result = p.run("-v", "--nf", "--phase4-confirm-destructive", cache=True)
    ids = [line.split(" ")[0] for line in result.outlines if line.startswith("checks/")]
    custom = ids.index("checks/test_new.py::test_views_are_empty")
    assert ids[custom - 1] == f"{M1}::view_rowcount_matches[sales_with_details=sales]"
    assert outcomes_of(result)["checks/test_new.py::test_views_are_empty"] == "FAILED"
    assert outcomes_of(result)[f"{M2}::apply"] == "SKIPPED"
    assert result.ret == 1
    assert "customer_name" in p.columns("sales")
    assert ledger(p) == ["20250101000001_create_views.sql"]


def test_without_pytest_order_a_failing_custom_check_still_halts_the_next_migration(
        project: Callable[..., Project]) -> None:
    """Case 4: -p no:order ran a failing phase4_after check after all migrations, the destructive one included."""
    p = project("mini")
    (p.path / "checks/test_new.py").write_text(FAILING_AFTER_M1)
    result = p.run("-v", "-p", "no:order", "--phase4-confirm-destructive", seed=True)
    assert "PytestUnknownMarkWarning" not in result.stdout.str()
    ids = [line.split(" ")[0] for line in result.outlines if line.startswith("checks/")]
    assert ids.index("checks/test_new.py::test_views_are_empty") < ids.index(f"{M2}::apply")
    assert outcomes_of(result)[f"{M2}::apply"] == "SKIPPED"
    result.stdout.fnmatch_lines(["*halted after 20250101000001_create_views.sql: test_views_are_empty: assert *"])
    assert "customer_name" in p.columns("sales")
    assert ledger(p) == ["20250101000001_create_views.sql"]


def test_a_migration_added_before_an_applied_one_is_refused_naming_both(project: Callable[..., Project]) -> None:
    """Case 5: ledger has 001 and 003, the plan gains 002 between them: 002 was applied after 003, silently."""
    p = project("mini")
    plan = p.path / "checks/phase4.toml"
    full = plan.read_text()
    m2 = p.path / "checks/migrations/20250101000002_drop_denormalized.sql"
    m2_sql = m2.read_text()
    start = full.index("[[migration]]\nfile = \"20250101000002")
    plan.write_text(full[:start] + full[full.index("[[migration]]\nfile = \"20250101000003"):])
    m2.unlink()
    assert p.run(seed=True).ret == 0
    assert ledger(p) == ["20250101000001_create_views.sql", "20250101000003_add_indexes.sql"]
    plan.write_text(full)
    m2.write_text(m2_sql)
    result = p.run("-v", "--phase4-confirm-destructive")
    assert outcomes_of(result)[f"{M2}::apply"] == "FAILED"
    result.stdout.fnmatch_lines([
        "refusing to apply 20250101000002_drop_denormalized.sql: 20250101000003_add_indexes.sql, which comes after "
        "it in the plan, is applied already (ledger, *); applying 20250101000002_drop_denormalized.sql now would "
        "run it after 20250101000003_add_indexes.sql, out of plan order. Give it a name and a place in the plan "
        "after 20250101000003_add_indexes.sql, or undo 20250101000003_add_indexes.sql first"])
    assert "customer_name" in p.columns("sales")
    assert ledger(p) == ["20250101000001_create_views.sql", "20250101000003_add_indexes.sql"]


def test_what_a_migration_sets_does_not_reach_the_next(project: Callable[..., Project]) -> None:
    """Case 6: 001's SET search_path sent 002's DELETE to archive.customers; its SET lock_timeout = 0 stayed."""
    p = project("session_reset")
    result = p.run("--phase4-lock-timeout=7s", seed=True)
    assert result.ret == 0, result.stdout.str()
    assert p.query("SELECT (SELECT count(*) FROM public.customers), (SELECT count(*) FROM archive.customers)") == [
        (5, 10)]
    assert p.query("SELECT migration, search_path, lock_timeout, statement_timeout FROM public.observed") == [
        ("2", '"$user", public', "7s", "0")]


def test_a_lock_wait_is_waited_once_and_still_names_the_blocker_and_line(project: Callable[..., Project]) -> None:
    """Case 7: after the lock timeout the file was replayed to find the line, waiting for the lock again."""
    p = project("mini")
    assert p.run("-m", "preflight", seed=True).ret == 0
    p.execute("CREATE SCHEMA probe; CREATE SEQUENCE probe.runs")  # nextval is not rolled back: it counts runs
    (p.path / "checks/migrations/20250101000001_create_views.sql").write_text(
        "SELECT nextval('probe.runs');\n\n"
        "COMMENT ON TABLE tickets IS 'customer tickets';\n"
        "CREATE VIEW sales_with_details AS SELECT s.id FROM sales s;\n")
    with psycopg.connect(p.dsn, application_name="nightly-report") as holder:
        holder.execute("LOCK TABLE tickets IN SHARE MODE")
        result = p.run("--phase4-confirm-destructive", "--phase4-lock-timeout=500ms")
        pid = holder.info.backend_pid
    result.stdout.fnmatch_lines([
        "*20250101000001_create_views.sql:3: canceling statement due to lock timeout [[]SQLSTATE 55P03[]]",
        "statement:",
        "  COMMENT ON TABLE tickets IS 'customer tickets'",
        "blocked by:",
        f"  pid {pid} (user postgres, application nightly-report, idle in transaction, for * s): LOCK TABLE "
        "tickets IN SHARE MODE"])
    assert p.query("SELECT last_value, is_called FROM probe.runs") == [(1, True)], "the file ran twice"
    assert ledger(p) == []


@pytest.mark.parametrize("options", [
    ["-n", "2"], ["--dist=load", "--tx=popen"], ["-d", "--tx=popen"], ["--dist=each", "--tx=2*popen"],
    ["--tx=popen"]], ids=lambda o: " ".join(o))
def test_every_form_of_xdist_distribution_is_refused_before_anything_connects(
        project: Callable[..., Project], options: list[str]) -> None:
    """Case 8: --dist / --tx without -n were not refused: the workers crashed on the run lock, 96 in a minute."""
    p = project("mini")
    result = p.run(*options, "--dsn=postgresql://nobody@127.0.0.1:1/nothing", dsn=False)  # no server there
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --phase4 runs one runbook, step after step, against one database: it cannot "
                                 "be distributed by pytest-xdist (*); drop -n, --dist, -d, --tx and --looponfail for "
                                 "this run (-n 0 turns distribution off); to run it on many databases at once, list "
                                 "them in --phase4-targets=FILE"])


def test_a_post_only_run_takes_no_snapshot(project: Callable[..., Project]) -> None:
    """-m post after the migrations: this run applies nothing, so it takes no snapshot of its own (it counted every
    table of the schema, waiting on the application's locks); it compares with the first run's baseline."""
    p = project("mini")
    assert p.run("--phase4-confirm-destructive", seed=True).ret == 0
    p.execute("CREATE TABLE app_cache (id int); INSERT INTO app_cache SELECT generate_series(1, 10)")
    with psycopg.connect(p.dsn) as app:
        app.execute("LOCK TABLE app_cache IN ACCESS EXCLUSIVE MODE")  # the application is busy with its own table
        result = p.run("-v", "-m", "post", "--phase4-check-timeout=1s")
    assert result.ret == 0, result.stdout.str()
    assert outcomes_of(result)[f"{MINI}::post::row_counts_unchanged[sales]"] == "PASSED"
    assert outcomes_of(result)[f"{MINI}::post::no_orphans[sales.customer_id->customers.id]"] == "PASSED"
    assert len(list((p.path / "reports").glob("*.baseline.json"))) == 1  # the first run's only


CRM = [
    "20250315000003_enhance_reference_tables.sql", "20250322000021_create_sales_views.sql",
    "20250322000022_create_crm_views.sql", "20250322000023_create_contract_views.sql",
    "20250322000024_create_job_works_views.sql", "20250322000025_create_remaining_views.sql",
    "20250328000026_remove_all_denormalized_fields.sql", "20250328000027_add_performance_indexes.sql",
]
DESTRUCTIVE = "checks/phase4.toml::20250328000026_remove_all_denormalized_fields::apply"


def crm_state(p: Project) -> tuple[list[str], bool, int]:
    """From the database alone: the ledger in applied order, whether migration 7's columns are still there, and
    how many of migration 8's idx_ indexes exist."""
    columns = p.query("SELECT count(*) FROM information_schema.columns WHERE table_schema = 'public' AND "
                      "(table_name, column_name) IN (('sales', 'customer_name'), ('products', 'supplier_name'), "
                      "('job_works', 'receiver_engineer_email'))")[0][0]
    indexes = p.query("SELECT count(*) FROM pg_indexes WHERE schemaname = 'public' AND indexname LIKE 'idx\\_%'")
    return ledger(p), columns == 3, int(indexes[0][0])


def test_no_option_applies_a_crm_migration_out_of_order_or_after_a_failed_or_unrun_step(
        project: Callable[..., Project]) -> None:
    """The CRM example under -p randomly (three seeds), --ff, --nf, --sw, -p no:order and -k <destructive>, with
    pytest-randomly and pytest-xdist installed: every run applies migrations in plan order, and only after every
    earlier step passed in that same run. Asserted from the ledger and the schema."""
    p = project("crm")
    plan = p.path / "checks/phase4.toml"  # a smaller CRM: these runs are about order, not size
    plan.write_text(plan.read_text().replace('"crm.scale" = "1000"', '"crm.scale" = "100"'))
    run = p.run("-v", "-p", "randomly", "-p", "no:order", "--randomly-seed=1", seed=True, cache=True)
    run.stdout.fnmatch_lines(["Using --randomly-seed=1"])
    assert outcomes_of(run)[DESTRUCTIVE] == "FAILED"  # not confirmed: the cache holds a failure for --ff / --sw
    assert crm_state(p) == (CRM[:6], True, 0)  # in plan order: the ledger is read by applied_at

    jobs = ("ALTER TABLE jobs RENAME TO jobs_elsewhere", "ALTER TABLE jobs_elsewhere RENAME TO jobs")
    p.execute(jobs[0])  # the application moves a table preflight requires: an earlier step now fails
    for options in (["--ff"], ["-p", "randomly", "--randomly-seed=2"]):
        run = p.run("-v", *options, "--phase4-confirm-destructive", cache=True)
        assert outcomes_of(run)["checks/phase4.toml::preflight::tables_have_rows[jobs]"] == "FAILED", options
        assert outcomes_of(run)[DESTRUCTIVE] == "SKIPPED", options
        assert crm_state(p) == (CRM[:6], True, 0), options
    p.execute(jobs[1])

    assert outcomes_of(p.run("-v", "--sw", cache=True))[DESTRUCTIVE] == "FAILED"  # stops there: not confirmed
    for options in (["--sw"], ["-k", "remove_all_denormalized"]):  # earlier steps deselected: refused
        run = p.run("-v", *options, "--phase4-confirm-destructive", cache=True)
        if options == ["--sw"]:
            run.stdout.fnmatch_lines(["stepwise: skipping * already passed items*"])
        assert outcomes_of(run)[DESTRUCTIVE] == "FAILED", options
        run.stdout.fnmatch_lines(["refusing to apply 20250328000026_remove_all_denormalized_fields.sql: every step "
                                  "before it must pass in this run, and preflight did not: * were deselected by *"])
        assert crm_state(p) == (CRM[:6], True, 0), options

    probe = p.path / "checks/test_probe.py"  # a new custom check in migration 6's step, failing
    probe.write_text("def test_complaints_are_empty(migration_20250322000025_create_remaining_views, phase4_db):\n"
                     "    rows = phase4_db.execute('SELECT count(*) FROM complaints_with_details').fetchone()\n"
                     "    assert rows == (0,)\n")
    for options in (["--nf"], ["-p", "no:order"]):
        run = p.run("-v", *options, "--phase4-confirm-destructive", cache=True)
        outcomes = outcomes_of(run)
        assert outcomes["checks/test_probe.py::test_complaints_are_empty"] == "FAILED", options
        assert outcomes[DESTRUCTIVE] == "SKIPPED", options
        assert crm_state(p) == (CRM[:6], True, 0), options
    probe.unlink()

    run = p.run("-v", "-p", "randomly", "--randomly-seed=3", "--phase4-confirm-destructive", cache=True)
    run.stdout.fnmatch_lines(["Using --randomly-seed=3"])
    assert run.ret == 0, run.stdout.str()
    ids = [line.split(" ")[0] for line in run.outlines if line.startswith("checks/phase4.toml::")]
    assert ids.index(DESTRUCTIVE) < ids.index("checks/phase4.toml::20250328000027_add_performance_indexes::apply")
    ledger_order, columns_kept, indexes = crm_state(p)
    assert (ledger_order, columns_kept) == (CRM, False)
    assert indexes >= 30


def test_a_plugin_cannot_pass_a_plan_check_off_as_done(project: Callable[..., Project]) -> None:
    """A conftest that skips a preflight check, or marks a failing one xfail, does not make preflight pass; and
    the plugin's own parts cannot be switched off with -p no:."""
    p = project("mini")
    assert p.run("-m", "preflight", seed=True).ret == 0
    (p.path / "conftest.py").write_text(
        "import pytest\n\n"
        "def pytest_collection_modifyitems(items):\n"
        "    for item in items:\n"
        "        if item.name == 'table_count[>=3]':\n"
        "            item.add_marker(pytest.mark.skip(reason='not today'))\n"
        "        if item.name == 'tables_have_rows[sales]':\n"
        "            item.add_marker(pytest.mark.xfail(reason='known'))\n")
    result = p.run("-v", "--phase4-confirm-destructive")
    assert outcomes_of(result)[f"{M1}::apply"] == "FAILED"
    result.stdout.fnmatch_lines(["refusing to apply 20250101000001_create_views.sql: every step before it must pass "
                                 "in this run, and preflight did not: 1 of its 8 test(s) were skipped: by a skip "
                                 "marker, a fixture or a plugin, before they ran (table_count[[]>=3[]]); *"])
    p.execute("DELETE FROM sales")
    result = p.run("-v", "--phase4-confirm-destructive")
    assert outcomes_of(result)[f"{M1}::apply"] == "SKIPPED"
    result.stdout.fnmatch_lines(["*halted after preflight: tables_have_rows[[]sales[]]: *"])
    assert ledger(p) == []
    p.execute("INSERT INTO sales SELECT g, 1 + g % 10, 'customer ' || (1 + g % 10), g FROM generate_series(1, 9) g")
    (p.path / "conftest.py").write_text(  # reports every test passed without calling it
        "import pytest\n\n@pytest.hookimpl(tryfirst=True)\ndef pytest_pyfunc_call(pyfuncitem):\n    return True\n")
    result = p.run("--phase4-confirm-destructive")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["refused * 20250101000001_create_views.sql * preflight did not: 8 of its 8 "
                                 "test(s) were skipped: reported without running: a plugin took over the test call*"])
    assert ledger(p) == []
    (p.path / "conftest.py").unlink()
    for name in ("phase4-runbook", "phase4-migrations", "python"):
        result = p.run("-p", f"no:{name}")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines([f"ERROR: -p no:{name}*"])


def test_a_deselected_rehearsal_refuses_the_migrations(project: Callable[..., Project]) -> None:
    """--phase4-rehearse promises that the target is touched only after the rehearsal is green."""
    p = project("mini", "safe")
    result = p.run("-v", "--phase4-rehearse", "-k", "not rehearse", "--phase4-confirm-destructive", seed=True)
    assert outcomes_of(result)[f"{M1}::apply"] == "FAILED"
    result.stdout.fnmatch_lines(["refusing to apply 20250101000001_create_views.sql: every step before it must pass "
                                 "in this run, and backup did not: 1 of its 7 test(s) were deselected by -k 'not "
                                 "rehearse' (rehearse); *"])
    assert ledger(p) == []
