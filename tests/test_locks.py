"""What a migration holds, measured on a real PostgreSQL while it runs in its own transaction, and the gates on it:
`max_exclusive_lock_ms` (measured) and `hazard_min_rows` (static hazards weighed by the table's live size).
The core is called as the run calls it (migrate.apply with a locks.Observer); no wall-clock bound is asserted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from pytest_phase4.db import hazards, lockwords, migrate
from pytest_phase4.db.locks import Measurement, Observer
from pytest_phase4.errors import MigrationFailed
from pytest_phase4.plan.model import Migration

SMALL = """
CREATE TABLE p (id int PRIMARY KEY);
INSERT INTO p SELECT g FROM generate_series(1, 10) g;
CREATE TABLE t (id int PRIMARY KEY, v int, p int, name varchar(10), legacy text);
INSERT INTO t SELECT g, g, 1 + g % 10, 'n' || g % 100, 'x' FROM generate_series(1, 1000) g;
ANALYZE p, t;
"""


class Db:
    """A scratch database and the migrations applied to it, each from its own file."""

    def __init__(self, dsn: str, folder: Path) -> None:
        self.dsn, self.folder, self.count = dsn, folder, 0

    def execute(self, text: str) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(text.encode())

    def scalar(self, text: str) -> Any:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            row = conn.execute(text.encode()).fetchone()
        return row[0] if row else None

    def apply(self, text: str, *, transaction: bool = True, max_ms: int | None = None, min_rows: int | None = None,
              lock_timeout: str = "10s", views: set[str] | None = None) -> Measurement:
        """Apply `text` as the next migration; return what it held, or raise MigrationFailed with
        `.measured` set to it."""
        self.count += 1
        path = self.folder / f"2025010100000{self.count}_m.sql"
        path.write_text(text)
        migration = Migration(self.count, path.name, path.name, False, path, (), 1, transaction, None, max_ms,
                              min_rows)
        observer = Observer(migration, views)
        with psycopg.connect(self.dsn, options=f"-c lock_timeout={lock_timeout}") as conn:
            try:
                migrate.apply(conn, migration, "test", "public", observer=observer)
            except MigrationFailed as exc:
                exc.measured = observer.measurement  # type: ignore[attr-defined]
                raise
        return observer.measurement


@pytest.fixture
def db(scratch_dsn: str, tmp_path: Path) -> Db:
    d = Db(scratch_dsn, tmp_path)
    d.execute(SMALL)
    return d


def _lock(m: Measurement, relation: str, mode: str) -> Any:
    found = [lock for lock in m.locks if lock.relation == relation and lock.mode == mode]
    assert found, f"no {mode} on {relation} in {[(lock.relation, lock.mode) for lock in m.locks]}"
    return found[0]


def test_plain_create_index_on_100k_rows_reports_share_lock_and_its_time(db: Db) -> None:
    db.execute("CREATE TABLE big AS SELECT g AS id, g % 1000 AS v FROM generate_series(1, 100000) g; ANALYZE big")
    m = db.apply("-- the index the report asks for\nCREATE INDEX big_v ON big (v);\n")
    lock = _lock(m, "public.big", "ShareLock")
    assert (lock.line, lock.rows, lock.rewritten, lock.dropped) == (2, 100000, False, False)
    assert lock.held_ms > 0
    assert lock.bytes > 0
    assert m.statements[0]["line"] == 2
    assert m.statements[0]["duration_ms"] > 0
    assert not [x for x in m.locks if "big_v" in x.relation]  # its own new index: nobody else can wait for it
    assert m.outcome == "committed"
    assert lockwords.lock(lock.to_json(), "public").startswith("SHARE on big (100K rows, ")
    [hazard] = m.hazards
    assert (hazard.kind, hazard.relation, hazard.rows, hazard.gated) == (hazards.CREATE_INDEX, "public.big", 100000,
                                                                          False)


def test_alter_column_type_reports_the_rewrite_and_a_binary_compatible_one_none(db: Db) -> None:
    before = db.scalar("SELECT relfilenode FROM pg_class WHERE relname = 't'")
    m = db.apply("ALTER TABLE t ALTER COLUMN v TYPE bigint;")
    lock = _lock(m, "public.t", "AccessExclusiveLock")
    assert lock.rewritten
    assert lock.held_ms > 0
    assert db.scalar("SELECT relfilenode FROM pg_class WHERE relname = 't'") != before
    assert "table rewritten" in lockwords.lock(lock.to_json(), "public")
    assert [h.kind for h in m.hazards] == [hazards.TYPE_REWRITE]
    twin = db.apply("ALTER TABLE t ALTER COLUMN name TYPE varchar(20);")
    assert not _lock(twin, "public.t", "AccessExclusiveLock").rewritten
    assert twin.hazards == []


def test_max_exclusive_lock_ms_fails_the_migration_and_rolls_it_back(db: Db) -> None:
    with pytest.raises(MigrationFailed) as caught:
        db.apply("CREATE INDEX t_p ON t (p);\nALTER TABLE t ADD COLUMN extra int;\n", max_ms=0)
    failure = caught.value
    assert (failure.file, failure.line, failure.rolled_back) == ("20250101000001_m.sql", 2, True)
    assert failure.message.startswith("ACCESS EXCLUSIVE on public.t (1,000 rows, ")
    assert failure.message.endswith("more than the plan's max_exclusive_lock_ms = 0")
    assert failure.statement == "ALTER TABLE t ADD COLUMN extra int"
    measured = failure.measured  # type: ignore[attr-defined]
    assert measured.outcome == "rolled back"
    assert measured.gates == {"max_exclusive_lock_ms": 0}
    assert db.scalar("SELECT count(*) FROM information_schema.columns WHERE table_name = 't' AND column_name = "
                     "'extra'") == 0
    assert db.scalar("SELECT to_regclass('t_p')") is None
    assert db.scalar("SELECT to_regclass('pytest_phase4.ledger')") is None
    # the safe twin: SHARE is not an exclusive lock, so the same gate lets a plain index build through
    twin = db.apply("CREATE INDEX t_p ON t (p);", max_ms=0)
    assert _lock(twin, "public.t", "ShareLock").held_ms > 0


def test_transaction_false_times_each_statement_and_says_its_locks_are_not_observed(db: Db) -> None:
    m = db.apply("CREATE INDEX CONCURRENTLY t_v ON t (v);\nCREATE INDEX CONCURRENTLY t_p ON t (p);",
                 transaction=False, max_ms=0)
    assert [s["line"] for s in m.statements] == [1, 2]
    assert all(s["duration_ms"] > 0 for s in m.statements)
    assert (m.locks, m.outcome, m.hazards) == ([], "autocommit", [])
    assert lockwords.summary(m.to_json()).startswith("transaction = false")


# Each static hazard on a table of 1,000 rows with hazard_min_rows = 500 fails before anything runs; its safe
# twin applies. (kind, setup, hazard, twin)
CASES = [
    (hazards.CREATE_INDEX, "", "CREATE INDEX t_v ON t (v);", "CREATE INDEX CONCURRENTLY t_v ON t (v);"),
    (hazards.VOLATILE_DEFAULT, "", "ALTER TABLE t ADD COLUMN r float8 DEFAULT random();",
     "ALTER TABLE t ADD COLUMN r timestamptz DEFAULT now();"),
    (hazards.VOLATILE_DEFAULT, "", "ALTER TABLE t ADD COLUMN r bigserial;", "ALTER TABLE t ADD COLUMN r bigint;"),
    (hazards.SET_NOT_NULL, "", "ALTER TABLE t ALTER COLUMN v SET NOT NULL;",
     "ALTER TABLE t ADD CONSTRAINT v_nn CHECK (v IS NOT NULL) NOT VALID;\n"
     "ALTER TABLE t VALIDATE CONSTRAINT v_nn;\n-- (committed by an earlier migration in real life)\n"),
    (hazards.NOT_VALID, "", "ALTER TABLE t ADD CONSTRAINT v_pos CHECK (v > 0);",
     "ALTER TABLE t ADD CONSTRAINT v_pos CHECK (v > 0) NOT VALID;"),
    (hazards.NOT_VALID, "", "ALTER TABLE t ADD CONSTRAINT t_p FOREIGN KEY (p) REFERENCES p (id);",
     "ALTER TABLE t ADD CONSTRAINT t_p FOREIGN KEY (p) REFERENCES p (id) NOT VALID;"),
    (hazards.TYPE_REWRITE, "", "ALTER TABLE t ALTER COLUMN v TYPE bigint;",
     "ALTER TABLE t ALTER COLUMN name TYPE text;"),
    (hazards.DROP_VIEWED, "CREATE VIEW app_view AS SELECT id, legacy FROM t;", "ALTER TABLE t DROP COLUMN legacy;",
     "DROP VIEW app_view;\nALTER TABLE t DROP COLUMN legacy;"),
]
IDS = ["create_index", "volatile_default", "serial", "set_not_null", "check", "foreign_key", "type", "drop_column"]


@pytest.mark.parametrize(("kind", "setup", "hazard", "twin"), CASES, ids=IDS)
def test_each_static_hazard_fails_its_gate_and_its_safe_twin_passes(db: Db, kind: str, setup: str, hazard: str,
                                                                     twin: str) -> None:
    if setup:
        db.execute(setup)
    with pytest.raises(MigrationFailed) as caught:
        db.apply(f"-- {kind}\n{hazard}\n", min_rows=500, transaction="CONCURRENTLY" not in hazard)
    failure = caught.value
    title = hazards.TEXTS[kind][0]
    assert (failure.line, failure.sqlstate) == (2, None)
    assert failure.message.startswith(f"{title} on public.t (1,000 rows, ")
    assert failure.message.endswith("the plan's gate hazard_min_rows = 500 refuses it before anything runs")
    assert failure.detail.startswith(f"fix: {hazards.TEXTS[kind][2]}")
    assert [h.kind for h in failure.measured.hazards] == [kind]  # type: ignore[attr-defined]
    assert db.scalar("SELECT to_regclass('pytest_phase4.ledger')") is None
    if kind == hazards.SET_NOT_NULL:  # the twin's CHECK must be validated and committed before SET NOT NULL
        db.apply(twin, min_rows=500)
        twin = "ALTER TABLE t ALTER COLUMN v SET NOT NULL;"
    measured = db.apply(twin, min_rows=500, transaction="CONCURRENTLY" not in twin)
    assert measured.hazards == []
    assert db.scalar("SELECT count(*) FROM pytest_phase4.ledger") >= 1


def test_no_lock_timeout_is_a_hazard_only_when_nothing_sets_one(db: Db) -> None:
    alter = "ALTER TABLE t ADD COLUMN a int;"
    with pytest.raises(MigrationFailed) as caught:
        db.apply(alter, min_rows=500, lock_timeout="0")
    assert caught.value.message.startswith("no lock_timeout on public.t (1,000 rows, ")
    assert "lock_timeout is 0 (the session's, from --phase4-lock-timeout) when it locks public.t" in \
        caught.value.message
    with pytest.raises(MigrationFailed, match="lock_timeout is 0 \\(set by the file\\)"):
        db.apply(f"SET LOCAL lock_timeout = 0;\n{alter}", min_rows=500)
    assert db.apply(f"SET LOCAL lock_timeout = '2s';\n{alter}", min_rows=500, lock_timeout="0").hazards == []
    assert db.apply("ALTER TABLE t ADD COLUMN b int;", min_rows=500, lock_timeout="10s").hazards == []


def test_hazards_below_hazard_min_rows_are_reported_not_failed(db: Db) -> None:
    m = db.apply("CREATE INDEX t_v ON t (v);", min_rows=5000)
    [hazard] = m.hazards
    assert (hazard.kind, hazard.rows, hazard.gated) == (hazards.CREATE_INDEX, 1000, False)
    assert m.to_json()["hazards"][0]["relation"] == "public.t"


def test_a_view_the_plan_creates_is_not_someone_elses(db: Db) -> None:
    db.execute("CREATE VIEW plan_view AS SELECT id, legacy FROM t;")
    m = db.apply("ALTER TABLE t DROP COLUMN legacy CASCADE;", min_rows=0, views={"plan_view"})
    assert [h.kind for h in m.hazards] == []
    assert db.scalar("SELECT to_regclass('plan_view')") is None


def test_tables_the_migration_creates_carry_no_hazard_and_no_lock(db: Db) -> None:
    m = db.apply("CREATE TABLE fresh (id int, v int);\nINSERT INTO fresh SELECT g, g FROM generate_series(1, 10) g;"
                 "\nCREATE INDEX fresh_v ON fresh (v);\nALTER TABLE fresh ALTER COLUMN v TYPE bigint;", min_rows=0,
                 max_ms=0)
    assert (m.hazards, m.locks, m.outcome) == ([], [], "committed")
