"""The content checksum's formulas, versioned: each snapshot.json names the formula its checksums were computed
with, and is verified with that formula, whatever this version computes for new snapshots.

Both formulas sum, over the table's rows, a 64-bit hash of the row's kept columns; the sum is numeric, so it
cannot overflow, and the order of the rows does not matter.

- Formula 1: `hashtextextended(ROW(c1, c2, ...)::text, 0)`: the text of the row, under the pinned session
  settings (PINNED). Every type has a text form, but rendering it is most of the cost: about 10 times
  one sequential read of the same columns.
- Formula 2 (current): `hashint8extended(hash_record_extended(ROW(c1, c2, ...), 0), 0)`: each value hashed by its
  type's own extended hash function (the hash opclass PostgreSQL uses for hash joins), in the binary form it is
  stored in; the row's hash hashed once more, because hash_record_extended's is linear in its columns' and a sum
  of linear row hashes would not see two rows' values swapped. A column
  whose type has none (json, point and the other geometric types, xml, arrays or composites of those) enters the
  row as `c::text` (under the pinned settings, as in formula 1); which columns those were is recorded with the
  checksum, so that a later computation treats them the same way. Collatable columns are hashed `COLLATE "C"`:
  a nondeterministic collation would hash 'Bob' and 'bob' alike.

What formula 2 does not see, and formula 1 did: a change between two values its type calls equal, e.g. numeric
1.5 and 1.50 (display scale), the numbers 1.0 and 1.00 inside jsonb, the intervals '1 day' and '24 hours',
citext 'Bob' and 'bob', float -0 and 0. A migration that rewrites values into such an equal form passes
checksum_unchanged under formula 2. A change of a kept column's type (integer to numeric) changes the hash even
where the text is the same; integer widths (smallint, integer, bigint) and varchar/text hash alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

# The session settings a row's text depends on, pinned for every checksum and fingerprint (local to their
# transaction) and recorded with them: a PGTZ or a database's own extra_float_digits changes nothing.
PINNED = {"TimeZone": "UTC", "DateStyle": "ISO, YMD", "IntervalStyle": "postgres", "extra_float_digits": "1",
          "bytea_output": "hex"}

FORMULAS: dict[int, dict[str, Any]] = {
    1: {"version": 1, "row": "hashtextextended(ROW(<columns>)::text, 0)", "table": "count(*), sum(<row>)"},
    2: {"version": 2, "row": "hashint8extended(hash_record_extended(ROW(<columns>), 0), 0); a column without an "
                             "extended hash function as <column>::text; collatable columns COLLATE \"C\"",
        "table": "count(*), sum(<row>)"},
}
CURRENT = 2


@dataclass(frozen=True)
class Hashing:
    """How formula 2 hashes a table's columns: `text` have no extended hash function (hashed as their text),
    `collated` are collatable (hashed COLLATE "C")."""

    text: tuple[str, ...] = ()
    collated: frozenset[str] = frozenset()


def classify(conn: psycopg.Connection[Any], tables: Sequence[tuple[str, str, Sequence[str]]]
             ) -> dict[tuple[str, str], Hashing]:
    """For each (schema, table, columns), how formula 2 hashes them. Whether a type can be hashed is decided by
    PostgreSQL's own type cache (an array or composite of json cannot either): hash_record_extended of a NULL of
    the column's type, which reads no row (LIMIT 0), fails exactly when it cannot; once per distinct type."""
    wanted = {(ns, t) for ns, t, _ in tables}
    rows = conn.execute(
        "SELECT n.nspname::text, c.relname::text, a.attname::text, a.atttypid::int, t.typcollation <> 0"
        " FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace JOIN pg_catalog.pg_type t ON t.oid = a.atttypid"
        " WHERE (n.nspname, c.relname) IN (SELECT * FROM unnest(%s::text[], %s::text[]))"
        " AND a.attnum > 0 AND NOT a.attisdropped",
        ([ns for ns, _ in wanted], [t for _, t in wanted])).fetchall()
    found = {(ns, t, col): (oid, coll) for ns, t, col, oid, coll in rows}
    verdict: dict[int, bool] = {}
    for (ns, table, column), (oid, _) in found.items():
        if oid not in verdict:
            verdict[oid] = _hashable(conn, ns, table, column)
    out = {}
    for ns, table, columns in tables:
        out[ns, table] = Hashing(tuple(c for c in columns if (ns, table, c) in found
                                       and not verdict[found[ns, table, c][0]]),
                                 frozenset(c for c in columns if (ns, table, c) in found and found[ns, table, c][1]))
    return out


def _hashable(conn: psycopg.Connection[Any], schema: str, table: str, column: str) -> bool:
    probe = sql.SQL("SELECT pg_catalog.hash_record_extended(ROW((SELECT {} FROM {} LIMIT 0)), 0)").format(
        sql.Identifier(column), sql.Identifier(schema, table))
    try:
        with conn.transaction():
            conn.execute(probe)
    except psycopg.errors.UndefinedFunction:  # "could not identify an extended hash function for type ..."
        return False
    return True


def row_hash(version: int, columns: Sequence[str], hashing: Hashing = Hashing()) -> sql.Composed:
    """The hash of one row of `columns` under formula `version` (formula 2: hashed as `hashing` says)."""
    if version == 1:
        return sql.SQL("pg_catalog.hashtextextended(ROW({})::text, 0)").format(
            sql.SQL(", ").join(sql.Identifier(c) for c in columns))
    if version != 2:
        raise ValueError(f"unknown checksum formula {version}")

    def value(column: str) -> sql.Composable:
        if column in hashing.text:
            return sql.SQL('({}::text) COLLATE "C"').format(sql.Identifier(column))
        if column in hashing.collated:
            return sql.SQL('{} COLLATE "C"').format(sql.Identifier(column))
        return sql.Identifier(column)

    # hash_record_extended combines its columns' hashes linearly (h = 31 * h + column hash), so a sum of those
    # over the rows is the sum of per-column sums: blind to values swapped between rows. Hashed once more, the
    # row's hash is no longer linear in its columns'.
    return sql.SQL("pg_catalog.hashint8extended(pg_catalog.hash_record_extended(ROW({}), 0), 0)").format(
        sql.SQL(", ").join(map(value, columns)))


def query(schema: str, table: str, row: sql.Composable) -> sql.Composed:
    return sql.SQL("SELECT count(*), coalesce(sum({}), 0) FROM {}").format(row, sql.Identifier(schema, table))
