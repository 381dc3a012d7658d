"""Plan validation on its own: load_plan on files in a temporary folder, no database and no pytester run (the
pytester runs in test_bad_input.py and test_plan_errors.py check what users read of the same problems)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_phase4.errors import PlanError
from pytest_phase4.kinds.base import Column, Relation
from pytest_phase4.plan.load import load_plan
from pytest_phase4.plan.model import Plan

HEAD = '[phase4]\nname = "Unit"\n'


def write(folder: Path, body: str, migrations: tuple[str, ...] = ()) -> Path:
    (folder / "migrations").mkdir(exist_ok=True)
    for file in migrations:
        (folder / "migrations" / file).write_text("SELECT 1;\n")
    plan = folder / "phase4.toml"
    plan.write_text(body)
    return plan


def problems(folder: Path, body: str, migrations: tuple[str, ...] = ()) -> list[str]:
    with pytest.raises(PlanError) as caught:
        load_plan(write(folder, body, migrations), display="phase4.toml")
    assert str(caught.value).splitlines()[0] == (
        f"invalid phase4 plan ({len(caught.value.problems)} problem{'s' if len(caught.value.problems) > 1 else ''}):")
    return [str(p) for p in caught.value.problems]


def test_a_valid_plan_becomes_steps_in_order_with_typed_parameters(tmp_path: Path) -> None:
    plan = load_plan(write(tmp_path, HEAD + """
[[preflight]]
check = "table_count"
min = 2

[[migration]]
file = "20250101000001_a.sql"
destructive = true
  [[migration.verify]]
  check = "column_absent"
  columns = ["sales.customer_name"]

[[post]]
check = "no_orphans"
relations = ["sales.customer_id -> customers.id", "sales.product_id->products.id"]
""", ("20250101000001_a.sql",)))
    assert isinstance(plan, Plan)
    assert (plan.name, plan.schema) == ("Unit", "public")
    assert [s.name for s in plan.steps] == ["preflight", "blast_radius", "backup", "20250101000001_a.sql", "post",
                                            "smoke"]
    assert [c.test_id for c in plan.preflight] == ["table_count[>=2]"]
    assert plan.preflight[0].params == {"min": 2}
    migration = plan.migrations[0]
    assert (migration.destructive, migration.transaction, migration.line) == (True, True, 8)
    assert [(c.test_id, c.element, c.step) for c in migration.checks] == [
        ("column_absent[sales.customer_name]", Column("sales", "customer_name"), "20250101000001_a.sql")]
    assert [(c.test_id, c.element, c.line) for c in plan.post] == [
        ("no_orphans[sales.customer_id->customers.id]", Relation(Column("sales", "customer_id"),
                                                                  Column("customers", "id")), 15),
        ("no_orphans[sales.product_id->products.id]", Relation(Column("sales", "product_id"),
                                                                Column("products", "id")), 15)]
    assert plan.migration("20250101000001") is migration
    assert plan.step("post") == plan.steps[4]


def test_every_problem_is_reported_at_once_in_file_order(tmp_path: Path) -> None:
    found = problems(tmp_path, HEAD + """
[[preflight]]
check = "table_count"
minimum = 25

[[preflight]]
check = "tables_exist"

[[migration]]
file = "20250101000002_b.sql"

[[migration]]
file = "20250101000001_a.sql"

[[migration]]
file = "20250101000003_missing.sql"

[[post]]
check = "no_orphans"
relations = ["sales.customer_id => customers.id"]
""", ("20250101000001_a.sql", "20250101000002_b.sql"))
    assert found[:2] == [
        "phase4.toml:4 [[preflight]] #1 check=table_count: unknown key 'minimum' for check 'table_count'; its keys: "
        "min",
        "phase4.toml:4 [[preflight]] #1 check=table_count: missing key 'min' (int) for check 'table_count'"]
    assert found[2].startswith("phase4.toml:8 [[preflight]] #2: unknown check kind 'tables_exist'; valid kinds: "
                               "active_connections, ")
    assert found[3:] == [
        "phase4.toml:14 [[migration]] 20250101000001_a.sql: 20250101000001_a.sql is listed after "
        "20250101000002_b.sql but sorts before it; migrations must be listed in the order of their timestamps",
        f"phase4.toml:17 [[migration]] 20250101000003_missing.sql: migration file not found: "
        f"{tmp_path / 'migrations' / '20250101000003_missing.sql'}; add it to {tmp_path / 'migrations'} or fix the "
        "file name",
        "phase4.toml:20 [[post]] #1 check=no_orphans: relations must be a list of \"child.column -> parent.column\", "
        "e.g. [\"sales.customer_id -> customers.id\"], found ['sales.customer_id => customers.id']"]


def test_malformed_toml_names_its_line_and_column(tmp_path: Path) -> None:
    assert problems(tmp_path, HEAD + "[[preflight]]\ncheck = table_count\n") == [
        "phase4.toml:4: malformed TOML: Invalid value (column 9)"]


def test_plan_level_problems(tmp_path: Path) -> None:
    assert problems(tmp_path, 'colour = "blue"\n[[post]]\ncheck = "table_count"\nmin = 1\n') == [
        "phase4.toml: unknown top-level key 'colour'; expected one of ['app_queries', 'backup', 'blast_radius', "
        "'migration', 'perf', 'persona', 'phase4', 'post', 'preflight', 'promotion', 'rls', 'setup', 'signoff', "
        "'smoke']",
        "phase4.toml: missing [phase4] table with at least name = \"...\""]
    assert problems(tmp_path, HEAD) == ["phase4.toml: the plan has no [[preflight]], [[migration]] or [[post]] entries"]
    assert problems(tmp_path, HEAD + 'owner = "me"\nmax_exclusive_lock_ms = -1\n[[post]]\ncheck = "table_count"\n'
                    "min = 1\n") == [
        "phase4.toml [phase4]: unknown key 'owner'; expected one of ['hazard_min_rows', 'max_exclusive_lock_ms', "
        "'migrations_dir', 'name', 'schema']",
        "phase4.toml:1 [phase4]: max_exclusive_lock_ms must be a whole number of milliseconds, 0 or more, e.g. "
        "max_exclusive_lock_ms = 5000; found -1"]


def test_migration_keys_are_typed(tmp_path: Path) -> None:
    found = problems(tmp_path, HEAD + """
[[migration]]
file = "20250101000001_a.sql"
destructive = "yes"
transaction = 0
statement_timeout = "soon"
hazard_min_rows = 1.5
""", ("20250101000001_a.sql",))
    where = "phase4.toml:4 [[migration]] #1"
    assert found == [
        f"{where}: destructive must be true or false, found 'yes'",
        f"{where}: transaction must be true or false, found 0",
        f'{where}: statement_timeout must be a duration like "30s", "5min" or "500ms", found \'soon\'',
        f"{where}: hazard_min_rows must be a whole number of rows, 0 or more, e.g. hazard_min_rows = 1000000; "
        "found 1.5"]


def test_a_migration_listed_twice_and_a_repeated_test_id(tmp_path: Path) -> None:
    found = problems(tmp_path, HEAD + """
[[migration]]
file = "20250101000001_a.sql"

[[migration]]
file = "20250101000001_a.sql"

[[post]]
check = "table_exists"
tables = ["sales", "sales"]
""", ("20250101000001_a.sql",))
    assert found == [
        "phase4.toml:7 [[migration]] 20250101000001_a.sql: 20250101000001_a.sql is listed twice (first at "
        "phase4.toml:4 [[migration]] 20250101000001_a.sql); list each migration once",
        "phase4.toml:10 [[post]] #1: test id 'table_exists[sales]' repeats phase4.toml:10 [[post]] #1; give one an "
        "id = \"...\""]


def test_kind_constraints_and_stages(tmp_path: Path) -> None:
    found = problems(tmp_path, HEAD + """
[[post]]
check = "view_count"
min = 1
max = 3

[[post]]
check = "no_views"

[[post]]
check = "table_exists"
tables = []

[[post]]
check = "view_rowcount_matches"
pairs = { sales_view = "sales" }
where = { other_view = "deleted_at IS NULL" }
""")
    assert found == [
        "phase4.toml:4 [[post]] #1 check=view_count: give exactly one of equals, min or max",
        "phase4.toml:9 [[post]] #2 check=no_views: no_views cannot be a post check: it describes the database "
        "before the migrations: list it under [[preflight]]",
        "phase4.toml:12 [[post]] #3 check=table_exists: tables is empty: list at least one element",
        "phase4.toml:16 [[post]] #4 check=view_rowcount_matches: where names 'other_view', not a view of pairs: give "
        "each condition under the name of the view it filters for"]


def test_custom_ids_name_the_tests(tmp_path: Path) -> None:
    plan = load_plan(write(tmp_path, HEAD + """
[[post]]
check = "table_exists"
id = "core_tables"
hint = "restore from the backup"
tables = ["sales", "customers"]

[[post]]
check = "table_count"
id = "enough_tables"
min = 3
"""))
    assert [(c.test_id, c.hint) for c in plan.post] == [
        ("core_tables[sales]", "restore from the backup"), ("core_tables[customers]", "restore from the backup"),
        ("enough_tables", "")]


def test_migrations_dir_takes_environment_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    body = HEAD + 'migrations_dir = "${UNIT_MIGRATIONS}/sql"\n[[migration]]\nfile = "20250101000001_a.sql"\n'
    monkeypatch.delenv("UNIT_MIGRATIONS", raising=False)
    found = problems(tmp_path, body)
    assert found[0] == ("phase4.toml [phase4]: migrations_dir '${UNIT_MIGRATIONS}/sql' uses ${UNIT_MIGRATIONS}, "
                        "which is not set in the environment; set it (export UNIT_MIGRATIONS=...) or write the "
                        "folder's path")
    (tmp_path / "app" / "sql").mkdir(parents=True)
    (tmp_path / "app" / "sql" / "20250101000001_a.sql").write_text("SELECT 1;\n")
    monkeypatch.setenv("UNIT_MIGRATIONS", str(tmp_path / "app"))
    plan = load_plan(write(tmp_path, body))
    assert plan.migrations[0].path == tmp_path / "app" / "sql" / "20250101000001_a.sql"


def test_rls_and_persona_sections(tmp_path: Path) -> None:
    found = problems(tmp_path, HEAD + """
[rls]
exposed_schemas = []
colour = "red"

[[persona]]
name = "anon"
role = "anon"

[[persona]]
name = "anon"
role = "authenticated"

[[post]]
check = "table_count"
min = 1
""")
    assert "phase4.toml [rls]: unknown key 'colour'; expected one of ['api_roles', 'exposed_schemas', " \
           "'tenant_column']" in found
    assert any(p.startswith("phase4.toml [rls]: exposed_schemas must be a non-empty list of names") for p in found)
    assert any(p.startswith("phase4.toml:12 [[persona]] #2: persona 'anon' is named twice (first at "
                                   "phase4.toml:8 [[persona]] #1)") for p in found)
