"""The statements of a step's heavier reads (readahead.py), and the planner settings each runs with.

**A table's scan answers its orphans too** (`scan_query`). A child whose foreign key no index leads with is read
whole by its anti-join anyway; when its table is scanned for its count, NULL counts or view rows, each such key is
one more LEFT JOIN of the parent on its unique key in that same scan, and the orphans are the rows whose key is
not NULL and found no parent row:

    SELECT count(*), count(*) FILTER (WHERE c.f0), ..., count(*) FILTER (WHERE c.k0 IS NOT NULL AND p0.pk IS NULL)
    FROM (SELECT (condition) AS f0, ..., key AS k0 FROM child) AS c LEFT JOIN parent AS p0 ON p0.pk = c.k0 ...

Exactly the anti-join's count: the parent key is NOT NULL and the only column of a valid, non-partial unique
index of a table without inheritance children (RelationFacts.unique), so a child row meets at most one parent row
and the join neither adds nor drops child rows; `p0.pk IS NULL` after the join means no parent row has
`pk = key`, the anti-join's own condition (the same `=` operator, collation and row-level security). The child's
conditions are evaluated in a subquery over the child alone, so that a parent's column of the same name
(`deleted_at`) cannot capture them. Measured on the Supabase-shaped workload at 200K rows: `tickets`' scan and
its two unindexed keys' anti-joins, 190 ms of server CPU apart, 110-130 ms as one statement; `messages`, whose
self-reference joins 200K parent keys, 290 ms apart, 230 ms together once its hash fits in memory
(`hash_memory`).

**Planner settings**, local to the statement (`settings`, run in a savepoint rolled back after it: a SET LOCAL
would otherwise outlive the savepoint in the step's snapshot): they change how the server reads, never what it
answers.
- A scan with parent joins gets the `work_mem` that keeps each parent's hash table in one batch (about 100 bytes
  per parent key, hash_mem_multiplier included), up to WORK_MEM_CAP: a hash table split in batches writes the
  child's rows to temporary files at every join level.
- A small child of a large parent (`small`): hash joins off. `reactions.message_id -> messages.id` (20K child
  rows, 200K parent keys): 36 ms against 114 ms.
- An anti-join whose child key leads a btree index and whose parent key is unique (`merge`): hash joins and sorts
  off, so the server walks both indexes in key order (a merge anti-join of two index-only scans) instead of
  hashing every parent key. A large child of a large parent at 200K rows: 65 ms against 75 ms
  (`comments.ticket_id -> tickets.id`), 38 ms against 90 ms (`order_items.order_id -> orders.id`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from psycopg import sql

from pytest_phase4.db import catalog

WORK_MEM_CAP = 256 * 1024  # kB: what one statement of ours may ask for, at most
SMALL_CHILD = 4  # a parent this many times larger than its child: `small`
BYTES_PER_KEY = 100  # a hash table entry of one parent key (a uuid: 16 bytes, plus the entry and bucket)

Orphan = tuple[str, str, str]  # (child column, parent table, parent column)


def joinable(relations: Mapping[str, catalog.RelationFacts], table: str, col: str, parent: str, pcol: str) -> bool:
    """Whether the orphans of table.col -> parent.pcol are counted by a LEFT JOIN in table's scan: both plain
    tables or partitioned tables of the catalog, the parent's key unique (see the module's docstring), and the
    parent no larger than the child by the catalog's estimate (a small child of a large parent: `small`)."""
    child, par = relations.get(table), relations.get(parent)
    return (child is not None and par is not None and child.kind in catalog.TABLE_KINDS
            and par.kind in catalog.TABLE_KINDS and col in child.columns and pcol in par.unique
            and par.rows <= max(child.rows, 1000.0))


def small(relations: Mapping[str, catalog.RelationFacts], table: str, col: str, parent: str, pcol: str) -> bool:
    """Whether an anti-join is a small child of a large parent with a unique key (at least SMALL_CHILD times its
    rows): hash joins off, so that the server sorts the child's few keys and walks the parent's index, or probes
    it, instead of hashing every parent key for a few probes."""
    child, par = relations.get(table), relations.get(parent)
    return child is not None and par is not None and pcol in par.unique and child.rows * SMALL_CHILD <= par.rows


def scan_query(schema: str, table: str, conditions: Sequence[sql.Composable | None],
               orphans: Sequence[Orphan | None]) -> sql.Composed:
    """count(*) of the table, then one count per entry of `conditions` / `orphans` (the two lists are parallel:
    each position holds a condition or an orphan key), from one scan of the table."""
    inner: list[sql.Composable] = []
    outer: list[sql.Composable] = [sql.SQL("count(*)")]
    joins: list[sql.Composable] = []
    for i, (condition, orphan) in enumerate(zip(conditions, orphans, strict=True)):
        if orphan is None:
            name = sql.Identifier(f"f{i}")
            inner.append(sql.SQL("({}) AS {}").format(condition, name))
            outer.append(sql.SQL("count(*) FILTER (WHERE c.{})").format(name))
            continue
        col, parent, pcol = orphan
        key, alias = sql.Identifier(f"k{i}"), sql.Identifier(f"p{i}")
        inner.append(sql.SQL("{} AS {}").format(sql.Identifier(col), key))
        outer.append(sql.SQL("count(*) FILTER (WHERE c.{k} IS NOT NULL AND {p}.{pc} IS NULL)").format(
            k=key, p=alias, pc=sql.Identifier(pcol)))
        joins.append(sql.SQL(" LEFT JOIN {parent} AS {p} ON {p}.{pc} = c.{k}").format(
            parent=sql.Identifier(schema, parent), p=alias, pc=sql.Identifier(pcol), k=key))
    return sql.SQL("SELECT {outer} FROM (SELECT {inner} FROM {table}) AS c{joins}").format(
        outer=sql.SQL(", ").join(outer), inner=sql.SQL(", ").join(inner), table=sql.Identifier(schema, table),
        joins=sql.Composed(joins))


def hash_memory(relations: Mapping[str, catalog.RelationFacts], parents: Sequence[str]) -> list[sql.Composed]:
    """The work_mem that keeps the largest parent's hash table in one batch (see the module's docstring)."""
    rows = max((relations[p].rows for p in parents if p in relations), default=0.0)
    kilobytes = min(WORK_MEM_CAP, int(rows * BYTES_PER_KEY / 1024 / 2) + 1024)  # hash_mem_multiplier: 2
    return [sql.SQL("SELECT pg_catalog.set_config('work_mem', {}, true)").format(sql.Literal(f"{kilobytes}kB"))]\
        if kilobytes > 4096 else []


def merge(relations: Mapping[str, catalog.RelationFacts], table: str, col: str, parent: str, pcol: str) -> bool:
    """Whether an anti-join is best read as a merge of two indexes: the child key leads an index, the parent's
    is unique (RelationFacts.indexed and unique: valid, non-partial indexes)."""
    child, par = relations.get(table), relations.get(parent)
    return child is not None and par is not None and col in child.indexed and pcol in par.unique


MERGE_SETTINGS = [sql.Composed([sql.SQL("SELECT pg_catalog.set_config('enable_hashjoin', 'off', true),"
                                       " pg_catalog.set_config('enable_sort', 'off', true)")])]
SMALL_SETTINGS = [sql.Composed([sql.SQL("SELECT pg_catalog.set_config('enable_hashjoin', 'off', true)")])]


def settings(relations: Mapping[str, catalog.RelationFacts], table: str, col: str, parent: str,
             pcol: str) -> list[sql.Composed]:
    """The planner settings of one anti-join: `merge`, else `small`, else none."""
    if merge(relations, table, col, parent, pcol):
        return MERGE_SETTINGS
    return SMALL_SETTINGS if small(relations, table, col, parent, pcol) else []
