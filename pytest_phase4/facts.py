"""What one step's checks know about the database, each fact read once.

A step's checks ask the same questions many times: does this relation exist, which columns has it, how many rows
has `sales`. Answering each check with its own queries costs a catalog round trip per check and one scan of a
large table per check that counts it. `Facts` answers every catalog question of a step from one catalog query,
counts each relation once, and scans a child table once for all of the step's orphan checks on it (its row
count, and for each foreign-key column the NULL and orphan counts). It must be thrown away whenever a migration
is applied: `Phase4Run` keeps one per step and drops it in `migrate`.

Precision is kept: the batched orphan scan LEFT JOINs each parent on a key that is unique there (a single-column
primary key or unique constraint), or on the parent's DISTINCT keys otherwise, so a join never multiplies child
rows; a relation whose columns are missing is left out of the batch and checked on its own, and a batch that
fails with an SQL error (e.g. incomparable types) falls back to one query per relation, so each check still
reports its own error.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from pytest_phase4 import catalog
from pytest_phase4.kinds import Relation

# One row per relation of the schema: everything the catalog checks ask about it.
_CATALOG = """
SELECT c.relname::text, c.relkind::text, c.relrowsecurity,
       coalesce((SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_catalog.pg_attribute a
                 WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '{}'),
       coalesce((SELECT array_agg(p.polname::text ORDER BY p.polname) FROM pg_catalog.pg_policy p
                 WHERE p.polrelid = c.oid), '{}'),
       coalesce((SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_catalog.pg_index i
                 JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey)
                 WHERE i.indrelid = c.oid AND i.indisprimary), '{}'),
       coalesce((SELECT array_agg(a.attname::text) FROM pg_catalog.pg_constraint k
                 JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.conkey[1]
                 WHERE k.conrelid = c.oid AND k.contype IN ('p', 'u') AND cardinality(k.conkey) = 1), '{}')
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s
ORDER BY c.relname
"""


@dataclass(frozen=True)
class RelationFacts:
    kind: str
    rls: bool
    columns: tuple[str, ...]
    policies: tuple[str, ...]
    primary_key: tuple[str, ...]
    unique_columns: frozenset[str]  # columns that alone are a primary key or unique constraint


@dataclass(frozen=True)
class OrphanCount:
    orphans: int
    nulls: int


@dataclass
class Facts:
    """The catalog and row counts as one step sees them. `relations` lists the orphan relations the step will
    check, so the first one asked for a child table brings the others of that child in the same scan."""

    conn: psycopg.Connection[Any]
    schema: str
    relations: tuple[Relation, ...] = ()
    queries: int = 0  # statements sent, for tests and benchmarks
    _catalog: dict[str, RelationFacts] | None = None
    _counts: dict[str, int] = field(default_factory=dict)
    _orphans: dict[Relation, OrphanCount] = field(default_factory=dict)

    # -- catalog ---------------------------------------------------------------------------------------
    @property
    def catalog(self) -> dict[str, RelationFacts]:
        if self._catalog is None:
            rows = self._execute(_CATALOG, (self.schema,)).fetchall()
            self._catalog = {r[0]: RelationFacts(r[1], bool(r[2]), tuple(r[3]), tuple(r[4]), tuple(r[5]),
                                                 frozenset(r[6])) for r in rows}
        return self._catalog

    def relkind(self, name: str) -> str | None:
        rel = self.catalog.get(name)
        return rel.kind if rel else None

    def _of_kinds(self, kinds: Iterable[str]) -> list[str]:
        wanted = set(kinds)
        return [name for name, rel in self.catalog.items() if rel.kind in wanted]  # catalog order: by name

    def tables(self) -> list[str]:
        return self._of_kinds(catalog.TABLE_KINDS)

    def views(self) -> list[str]:
        return self._of_kinds(catalog.VIEW_KINDS)

    def indexes(self) -> list[str]:
        return self._of_kinds(("i", "I"))

    def columns(self, name: str) -> list[str]:
        rel = self.catalog.get(name)
        return list(rel.columns) if rel else []

    def policies(self, table: str) -> list[str]:
        rel = self.catalog.get(table)
        return list(rel.policies) if rel else []

    def rls_enabled(self, table: str) -> bool:
        rel = self.catalog.get(table)
        return bool(rel and rel.rls)

    def primary_key(self, table: str) -> list[str]:
        rel = self.catalog.get(table)
        return list(rel.primary_key) if rel else []

    # -- data ------------------------------------------------------------------------------------------
    def count(self, relation: str) -> int:
        """Exact row count, read once per step; a table with orphan checks in this step is counted by its
        orphan scan."""
        if relation not in self._counts:
            if self._batch(relation):
                self._scan_children(relation)
            if relation not in self._counts:
                row = self._execute(sql.SQL("SELECT count(*) FROM {}").format(
                    sql.Identifier(self.schema, relation))).fetchone()
                self._counts[relation] = int(row[0]) if row else 0
        return self._counts[relation]

    def orphans(self, rel: Relation) -> OrphanCount:
        """Non-NULL child keys without a parent, and NULL child keys, for one relation."""
        if rel not in self._orphans:
            if rel in self._batch(rel.child.table):
                self._scan_children(rel.child.table)
            if rel not in self._orphans:
                self._orphans[rel] = self._one(rel)
        return self._orphans[rel]

    def _batch(self, child: str) -> list[Relation]:
        """The step's relations of this child that one scan can answer: their columns exist."""
        batch = []
        for rel in dict.fromkeys(self.relations):
            if rel.child.table != child or rel in self._orphans:
                continue
            if rel.child.column in self.columns(child) and rel.parent.column in self.columns(rel.parent.table) \
                    and self.relkind(rel.parent.table) in ("r", "p") and self.relkind(child) in ("r", "p"):
                batch.append(rel)
        return batch

    def _scan_children(self, child: str) -> None:
        batch = self._batch(child)
        if not batch:
            return
        picks: list[sql.Composable] = [sql.SQL("count(*)")]
        joins: list[sql.Composable] = []
        for i, rel in enumerate(batch):
            alias = sql.Identifier(f"p{i}")
            col, pcol = sql.Identifier(rel.child.column), sql.Identifier(rel.parent.column)
            parent = sql.Identifier(self.schema, rel.parent.table)
            if rel.parent.column in self.catalog[rel.parent.table].unique_columns:
                source: sql.Composable = parent  # at most one parent row per key: the join keeps child rows
            else:
                source = sql.SQL("(SELECT DISTINCT {pcol} FROM {parent} WHERE {pcol} IS NOT NULL)").format(
                    pcol=pcol, parent=parent)
            joins.append(sql.SQL("LEFT JOIN {source} AS {alias} ON {alias}.{pcol} = c.{col}").format(
                source=source, alias=alias, pcol=pcol, col=col))
            picks.append(sql.SQL("count(*) FILTER (WHERE c.{col} IS NULL)").format(col=col))
            picks.append(sql.SQL("count(*) FILTER (WHERE c.{col} IS NOT NULL AND {alias}.{pcol} IS NULL)").format(
                col=col, alias=alias, pcol=pcol))
        query = sql.SQL("SELECT {} FROM {} AS c {}").format(
            sql.SQL(", ").join(picks), sql.Identifier(self.schema, child), sql.SQL(" ").join(joins))
        try:
            row = self._execute(query).fetchone()
        except psycopg.Error:
            # One bad relation must not fail the others: each is then checked on its own, with its own error.
            for rel in batch:
                self.relations = tuple(r for r in self.relations if r != rel)
            return
        assert row is not None
        self._counts[child] = int(row[0])
        for i, rel in enumerate(batch):
            self._orphans[rel] = OrphanCount(orphans=int(row[2 + 2 * i]), nulls=int(row[1 + 2 * i]))

    def _one(self, rel: Relation) -> OrphanCount:
        child, parent = rel.child, rel.parent
        count_q = catalog.orphans_query(self.schema, child.table, child.column, parent.table, parent.column,
                                        sql.SQL("count(*)"))
        orphans = int(self._execute(count_q).fetchone()[0])  # type: ignore[index]
        self.queries += 1  # and count_nulls
        return OrphanCount(orphans, catalog.count_nulls(self.conn, self.schema, child.table, child.column))

    def _execute(self, query: Any, params: tuple[Any, ...] | None = None) -> psycopg.Cursor[Any]:
        self.queries += 1
        return self.conn.execute(query, params)
