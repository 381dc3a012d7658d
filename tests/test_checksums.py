"""Content checksums under each formula (checksums.py), on real PostgreSQL: every kind of column change is caught
by both, a snapshot written with formula 1 still verifies with formula 1 after formula 2 became the default, and
a rollback proves its restore against such a snapshot."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from helpers import Project, outcomes_of
from pytest_phase4.safety import checksums, snapshot

SB = "checks/phase4.toml"
TYPES = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TYPE pair AS (a int, b json);
CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
CREATE TABLE t (id uuid PRIMARY KEY, name text COLLATE ci, amount numeric, doc jsonb, raw json, spot point,
                tags text[], docs json[], docsb jsonb[], p pair, at timestamptz, blob bytea, m mood, n int, d date);
INSERT INTO t SELECT md5(g::text)::uuid, 'Name ' || g, g / 3.0, jsonb_build_object('k', g), json_build_object('k', g),
                     point(g, -g), ARRAY['a' || g], ARRAY[json_build_object('k', g)], ARRAY[jsonb_build_object('k', g)],
                     ROW(g, json_build_object('k', g))::pair, '2025-01-01 00:00+00'::timestamptz + g * interval '1 h',
                     decode(md5(g::text), 'hex'), (ARRAY['sad', 'ok', 'happy'])[1 + g % 3]::mood, g,
                     date '2025-01-01' + g
FROM generate_series(1, 50) g;
INSERT INTO t (id) VALUES ('00000000-0000-0000-0000-000000000000');  -- a row of NULLs
"""
COLUMNS = ("id", "name", "amount", "doc", "raw", "spot", "tags", "docs", "docsb", "p", "at", "blob", "m", "n", "d")
# One change per column, each a value the formula must see (a swap of two rows' values, a case change under a
# case-insensitive collation, a NULL set, a value moved between columns of the same row).
CHANGES = {
    "id": "UPDATE t SET id = md5('x')::uuid WHERE n = 1",
    "name": "UPDATE t SET name = lower(name) WHERE n = 1",
    "amount": "UPDATE t SET amount = amount + 0.001 WHERE n = 2",
    "doc": "UPDATE t SET doc = doc || '{\"x\": 1}' WHERE n = 3",
    "raw": "UPDATE t SET raw = '{\"k\": 99}' WHERE n = 4",
    "spot": "UPDATE t SET spot = point(0.5, 0) WHERE n = 5",
    "tags": "UPDATE t SET tags = tags || 'b'::text WHERE n = 6",
    "docs": "UPDATE t SET docs = ARRAY['[]'::json] WHERE n = 7",
    "docsb": "UPDATE t SET docsb = NULL WHERE n = 8",
    "p": "UPDATE t SET p = ROW(9, '1')::pair WHERE n = 9",
    "at": "UPDATE t SET at = at + interval '1 microsecond' WHERE n = 10",
    "blob": "UPDATE t SET blob = '\\x00' WHERE n = 11",
    "m": "UPDATE t SET m = 'happy' WHERE n = 12 AND m <> 'happy'",
    "n": "UPDATE t SET n = 51 WHERE n = 13",
    "d": "UPDATE t SET d = (SELECT d FROM t WHERE n = 15) WHERE n = 14",
    "rows swapped": "UPDATE t SET amount = CASE n WHEN 20 THEN (SELECT amount FROM t WHERE n = 21)"
                    " ELSE (SELECT amount FROM t WHERE n = 20) END WHERE n IN (20, 21)",
}


@pytest.fixture
def typed(scratch_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(scratch_dsn, autocommit=True) as conn:
        conn.execute(TYPES)
        yield conn


def formula_1(conn: psycopg.Connection[Any], columns: tuple[str, ...], table: str = "t") -> snapshot.Checksum:
    """Formula 1 as issue 10 wrote it, independently of checksums.py."""
    query = sql.SQL("SELECT count(*), coalesce(sum(hashtextextended(ROW({})::text, 0)), 0) FROM {}").format(
        sql.SQL(", ").join(map(sql.Identifier, columns)), sql.Identifier("public", table))
    with snapshot.pinned(conn, "public"):
        rows, total = conn.execute(query).fetchone() or (0, 0)
    return snapshot.Checksum(columns, int(rows), str(total), 1)


def test_types_without_an_extended_hash_are_hashed_as_their_text(typed: psycopg.Connection[Any]) -> None:
    how = checksums.classify(typed, [("public", "t", COLUMNS)])["public", "t"]
    assert how.text == ("raw", "spot", "docs", "p")  # json, point, json[], a composite holding json
    assert how.collated == {"name", "tags"}
    found = snapshot.checksum(typed, "public", "t", COLUMNS)
    assert (found.formula, found.text, found.rows) == (2, ("raw", "spot", "docs", "p"), 51)


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("change", list(CHANGES))
def test_each_formula_sees_every_change(typed: psycopg.Connection[Any], version: int, change: str) -> None:
    before = formula_1(typed, COLUMNS) if version == 1 else snapshot.checksum(typed, "public", "t", COLUMNS)
    assert snapshot.checksum(typed, "public", "t", COLUMNS, like=before) == before
    with typed.transaction(force_rollback=True):
        assert typed.execute(CHANGES[change]).rowcount >= 1
        after = snapshot.checksum(typed, "public", "t", COLUMNS, like=before)
        assert (after.rows, after.formula) == (before.rows, version)
        assert after.sum != before.sum


def test_a_formula_1_snapshot_still_verifies_with_formula_1(typed: psycopg.Connection[Any]) -> None:
    old = {"schema": "public", "counts": {"t": 51}, "fingerprint": {}, "applied": [], "source": {},
           "checksums": {"t": {"columns": list(COLUMNS), "rows": 51, "sum": formula_1(typed, COLUMNS).sum}},
           "backup_id": "", "tables": {}, "objects": [], "settings": snapshot.pinned_settings("public"),
           "formula": checksums.FORMULAS[1]}
    saved = snapshot.Snapshot.from_json(json.dumps(old))
    assert saved.comparable() is None
    was = saved.checksums["t"]
    assert was.formula == 1
    assert snapshot.checksum(typed, "public", "t", was.columns, like=was) == was
    typed.execute(CHANGES["spot"])
    assert snapshot.checksum(typed, "public", "t", was.columns, like=was).sum != was.sum
    unknown = snapshot.Snapshot.from_json(json.dumps({**old, "formula": {}, "settings": {}}))
    assert unknown.comparable() is not None  # older still: no formula, no pinned settings


def test_a_formula_2_snapshot_round_trips_through_json(typed: psycopg.Connection[Any]) -> None:
    taken = snapshot.take(typed, "public", {"t": list(COLUMNS)})
    saved = snapshot.Snapshot.from_json(taken.to_json())
    assert saved.formula["version"] == 2
    assert saved.comparable() is None
    assert saved.checksums == taken.checksums
    was = saved.checksums["t"]
    assert snapshot.checksum(typed, "public", "t", was.columns, like=was) == was


def test_a_kept_column_whose_type_lost_its_hash_is_reported_changed(typed: psycopg.Connection[Any]) -> None:
    before = snapshot.checksum(typed, "public", "t", ("id", "doc"))
    assert before.text == ()
    typed.execute("ALTER TABLE t ALTER COLUMN doc TYPE json USING doc::json")  # same text, no hash function
    after = snapshot.checksum(typed, "public", "t", ("id", "doc"), like=before)
    assert after.text == ("doc",)
    assert after != before


REWRITE_AS_FORMULA_1 = """
import json, psycopg
from psycopg import sql
from pytest_phase4.safety import snapshot

def pytest_runtest_teardown(item):
    # Right after the backup's snapshot, before anything writes: snapshot.json as a version with formula 1 wrote it.
    if item.name != "backup[snapshot]":
        return
    path = next(item.config.rootpath.glob("_backups/*/*/snapshot.json"))
    data = json.loads(path.read_text())
    with psycopg.connect(DSN, autocommit=True) as conn:
        for ns, tables in data["tables"].items():
            for table, c in tables.items():
                query = sql.SQL("SELECT coalesce(sum(hashtextextended(ROW({})::text, 0)), 0) FROM {}").format(
                    sql.SQL(", ").join(map(sql.Identifier, c["columns"])), sql.Identifier(ns, table))
                with snapshot.pinned(conn, data["schema"]):
                    c["sum"] = str(conn.execute(query).fetchone()[0])
                c.pop("text", None)
                if ns == data["schema"]:
                    data["checksums"][table] = c
    data["formula"] = {"version": 1, "row": "hashtextextended(ROW(<columns>)::text, 0)",
                       "table": "count(*), sum(<row>)"}
    path.write_text(json.dumps(data))
"""


def test_a_rollback_proves_its_restore_against_a_formula_1_snapshot(project: Callable[..., Project]) -> None:
    p = project("supabase")
    p.pytester.makeconftest(REWRITE_AS_FORMULA_1.replace("DSN", repr(p.dsn)))
    assert p.run("-m", "preflight", seed=True).ret == 0
    assert p.run("--phase4-confirm-destructive").ret == 0
    saved = snapshot.Snapshot.from_json(next(p.path.glob("_backups/*/*/snapshot.json")).read_text())
    assert saved.formula["version"] == 1
    assert saved.checksums["tickets"].formula == 1
    p.execute("UPDATE public.tickets SET title = title || '!' WHERE title = 'Ticket 7'")
    result = p.run("-v", "--phase4-rollback=restore", "--phase4-accept-loss")
    assert result.ret == 0, result.stdout.str()
    assert outcomes_of(result)[f"{SB}::rollback::checksums"] == "PASSED"
    assert p.query("SELECT count(*) FROM public.tickets WHERE title = 'Ticket 7'") == [(1,)]


def test_a_formula_1_baseline_of_an_earlier_run_is_compared_with_formula_1(project: Callable[..., Project]) -> None:
    # A baseline recorded by a version that computed formula 1 (here: rewritten as it would have written it, from
    # the same data), then the migrations applied by another tool: the later run compares with formula 1.
    p = project("mini", "safe")
    assert p.run("-m", "preflight", seed=True).ret == 0
    p.run("--phase4-verify-only")
    (path,) = (p.path / "reports").glob("*.baseline.json")
    data = json.loads(path.read_text())
    assert data["formula"]["version"] == 2
    with psycopg.connect(p.dsn, autocommit=True) as conn:
        for table, c in data["checksums"].items():
            c["sum"] = formula_1(conn, tuple(c["columns"]), table).sum
            c.pop("text", None)
    data["formula"] = checksums.FORMULAS[1]
    path.write_text(json.dumps(data))
    p.execute("\n".join((p.path / "checks/migrations" / m).read_text() for m in (
        "20250101000001_create_views.sql", "20250101000002_drop_denormalized.sql", "20250101000003_add_indexes.sql")))
    result = p.run("-v", "--phase4-verify-only")
    outcomes = outcomes_of(result)
    assert {outcomes[f"{SB}::post::checksum_unchanged[{t}]"] for t in ("customers", "sales", "tickets")} == {"PASSED"}
    p.execute("UPDATE tickets SET title = 'ticket 70' WHERE id = 7")  # 'ticket 7' -> the title of another
    result = p.run("-v", "--phase4-verify-only")
    assert outcomes_of(result)[f"{SB}::post::checksum_unchanged[tickets]"] == "FAILED"
    result.stdout.fnmatch_lines(["*public.tickets: 50 rows, checksum * (recorded before migrating)*"])
