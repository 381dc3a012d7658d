"""What one step's checks know about the database, each fact read once, the heavy ones read ahead.

A step's checks ask the same questions many times: does this relation exist, which columns has it, how many rows
has `sales`. `Facts` answers every catalog question of a step from one catalog query and reads each value (a row
count, the orphans of a relation) once per step, whichever checks ask. With a `Pool` of read-only connections it
reads ahead, in one snapshot (readahead.py): the view counts as soon as the step's Facts is made, every other
value the step's selected checks need when the first of them asks for data, and a value nobody planned for (the
partition a view's plan reads) when asked, in the same snapshot. Without one, each value is read when asked, each
orphan count in a snapshot of its own (catalog.count_orphans), the counts a check compares (`together`) in one
snapshot of their own. Either way each check gets its own
result or the SQL error of the query it depends on. A NOT NULL column has no NULL to count; a view whose plan
scans one table alone is counted as that table (catalog.scanned_alone).

A `Facts` belongs to one step and must be thrown away (`close`) when a migration runs: `Phase4Run` does both.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from pytest_phase4.db import catalog
from pytest_phase4.db.catalog import RowsOf, Unlocked
from pytest_phase4.db.pool import Pool
from pytest_phase4.db.readahead import ReadAhead
from pytest_phase4.db.readplan import Key
from pytest_phase4.errors import CheckFailed
from pytest_phase4.kinds.base import KINDS, Column, Relation
from pytest_phase4.plan.model import CheckSpec


@dataclass(frozen=True)
class OrphanCount:
    orphans: int
    nulls: int


@dataclass
class Facts:
    """The catalog and row counts as one step sees them. `specs` are the step's checks that will run: what they
    need is read ahead on `pool` when there is one."""

    conn: psycopg.Connection[Any]
    schema: str
    specs: tuple[CheckSpec, ...] = ()
    pool: Pool | None = None
    queries: int = 0  # statements sent on conn, for tests and benchmarks
    log: list[tuple[tuple[Key, ...], float]] | None = None  # benchmarks: each read-ahead read and its seconds
    _catalog: dict[str, catalog.RelationFacts] | None = None
    _values: dict[Key, int] = field(default_factory=dict)
    _ahead: ReadAhead | None = None
    _rows_of: dict[str, str] = field(default_factory=dict)
    _notes: dict[str, str] = field(default_factory=dict)  # view -> how it was counted (catalog.Unlocked)
    _queued: bool = False
    _moment: dict[Key, int] = field(default_factory=dict)  # without a pool: the read each value came from
    _reads: int = 0
    _reading: int = 0  # without a pool, inside together(): the read under way

    def __post_init__(self) -> None:
        if self.pool is not None and self._view_bases():  # a view and its base table: the same moment, from now
            self._begin(self.pool)

    # -- catalog ---------------------------------------------------------------------------------------
    @property
    def catalog(self) -> dict[str, catalog.RelationFacts]:
        if self._catalog is None:
            self.queries += 1
            self._catalog = catalog.relation_facts(self.conn, self.schema)
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

    def policies_for(self, table: str, command: str | None, role: str | None) -> list[str]:
        """The table's policies FOR `command` (exactly: "all" is FOR ALL) that name `role` (a policy TO PUBLIC
        names "public"); None matches any."""
        rel = self.catalog.get(table)
        if rel is None:
            return []
        return [name for name, (cmd, roles) in zip(rel.policies, rel.policy_rules, strict=True)
                if (command is None or cmd == command) and (role is None or role in roles)]

    def rls_enabled(self, table: str) -> bool:
        rel = self.catalog.get(table)
        return bool(rel and rel.rls)

    def primary_key(self, table: str) -> list[str]:
        rel = self.catalog.get(table)
        return list(rel.primary_key) if rel else []

    def column_type(self, col: Column) -> str | None:
        rel = self.catalog.get(col.table)
        return rel.types[rel.columns.index(col.column)] if rel and col.column in rel.columns else None

    def dense_keys(self, rel: Relation) -> bool:
        """Whether catalog.count_orphans may try its dense-key proof: integer keys on both sides, and a NOT NULL
        parent key alone in a unique index, on a table without inheritance children (RelationFacts.unique), so
        that its row count is a count of distinct keys."""
        parent = self.catalog.get(rel.parent.table)
        return (parent is not None and rel.parent.column in parent.unique
                and self.column_type(rel.parent) in catalog.INTEGER_TYPES
                and self.column_type(rel.child) in catalog.INTEGER_TYPES)

    # -- data ------------------------------------------------------------------------------------------
    def count(self, relation: str) -> int:
        """Exact row count of a table or view, read once per step."""
        return self._value(("count", relation))

    def together(self, *keys: Key) -> list[int]:
        """Row counts compared with each other (count_key: a view and its base table), of one moment: on the pool
        every value of the step is; without one they are read in one snapshot of their own, unless they were read
        together."""
        if self.pool is not None:
            return [self._value(k) for k in keys]
        moments = {self._moment.get(k) for k in keys}
        if len(moments) == 1 and None not in moments:
            return [self._values[k] for k in keys]
        self._reads += 1
        self._reading = self._reads
        try:
            with catalog.one_snapshot(self.conn):
                return [self._value(k) for k in keys]
        finally:
            self._reading = 0

    def orphans(self, rel: Relation) -> OrphanCount:
        """Non-NULL child keys without a parent, and NULL child keys, for one relation."""
        c, p = rel.child, rel.parent
        return OrphanCount(self._value(("orphans", c.table, c.column, p.table, p.column)),
                           self._value(("nulls", c.table, c.column)))

    def rows_of(self, view: str) -> str | None:
        """The table whose count answered count(view), when the view's plan scans it alone (catalog.scanned_alone)."""
        return self._rows_of.get(view)

    def how_counted(self, view: str) -> str:
        """How the view's count was read when it was not by count(*) of the view, in words, or ""."""
        if table := self._rows_of.get(view):
            return f"its plan reads {table} alone, unfiltered: one row per {table} row whatever the data"
        if self._ahead is not None and (how := self._ahead.how(view)) and view not in self._notes:
            return how
        return self._notes.get(view, "")

    def quiesce(self) -> None:
        """Wait until no read-ahead query runs, e.g. before timing a query."""
        if self._ahead is not None:
            self._ahead.quiesce()

    def close(self) -> None:
        """Stop the read-ahead (answers nobody will ask for once the step is over, e.g. after pytest -x) and end
        its snapshot: a migration must not wait on our locks."""
        if self._ahead is not None:
            self._ahead.close()

    def _begin(self, pool: Pool) -> ReadAhead | None:
        ahead = ReadAhead(pool, self.schema, self.log)
        self._ahead = ahead if ahead.begin(self._view_bases()) else None
        return self._ahead

    def _value(self, key: Key) -> int:
        if key in self._values and (not self._reading or self._moment.get(key) == self._reading):
            return self._values[key]
        if self.pool is not None and not self._queued:  # the first data question: read the step's data ahead
            self._queued = True
            ahead = self._ahead or self._begin(self.pool)
            if ahead is not None:
                wanted = self._wanted()
                ahead.queue(self.conn, self.catalog, wanted, self._dense(wanted))
        if self._not_null(key):
            return 0
        try:
            value = self._ahead.value(key) if self._ahead is not None else None
        except (psycopg.Error, CheckFailed):
            raise  # the query's own SQL error, or why the value cannot be had, for the check that asked
        except Exception:  # the pool could not help (e.g. no connection left on the server): ask here
            value = None
        if value is None:
            value = self._ask(key)
        if isinstance(value, RowsOf):  # a view counted as the table its plan scans alone
            self._rows_of[key[1]] = value.table
            value = self._value(("count", value.table))
        elif isinstance(value, Unlocked):  # a view that locks rows, counted from its definition without the lock
            self._notes[key[1]] = value.note
            value = value.rows
        self._values[key] = value
        if self.pool is None:  # which read it comes from, for together()
            if not self._reading:
                self._reads += 1
            self._moment[key] = self._reading or self._reads
        return value

    def _ask(self, key: Key) -> int | RowsOf | Unlocked:
        """One value by its own query on conn (an orphan count: in a snapshot of its own)."""
        self.queries += 1
        what, table, *rest = key
        if what == "count" and self.relkind(table) == "v":
            return catalog.count_view(self.conn, self.schema, table)
        if what == "count":
            return catalog.count_rows(self.conn, self.schema, table)
        if what == "where":
            return catalog.count_where(self.conn, self.schema, table, catalog.condition(rest[0]))
        if what == "nulls":
            return catalog.count_nulls(self.conn, self.schema, table, rest[0])
        return catalog.count_orphans(self.conn, self.schema, table, rest[0], rest[1], rest[2],
                                     self.dense_keys(_relation(key)))

    def _wanted(self) -> list[Key]:
        """The data the step's checks will ask for, in check order, for relations that exist (a missing one
        fails its check before any query)."""
        keys: list[Key] = []
        for spec in self.specs:
            if (reads := KINDS[spec.kind].reads) is not None:  # each kind says what it will ask for
                keys += [key for key in reads(spec, self.relkind) if not self._not_null(key)]
        return list(dict.fromkeys(keys))

    def _not_null(self, key: Key) -> bool:
        """A count of NULLs in a NOT NULL column: 0, without asking."""
        rel = self.catalog.get(key[1]) if key[0] == "nulls" else None
        return rel is not None and key[2] in rel.not_null

    def _dense(self, wanted: list[Key]) -> list[Key]:
        return [k for k in wanted if k[0] == "orphans" and self.dense_keys(_relation(k))]

    def _view_bases(self) -> dict[str, list[str]]:
        bases: dict[str, list[str]] = {}
        for spec in self.specs:
            if (view_of := KINDS[spec.kind].view_of) is not None:
                view, base = view_of(spec)
                bases.setdefault(view, []).append(base)
        return bases


def count_key(relation: str, where: str | None = None) -> Key:
    """The key of a row count: of the whole relation, or of its rows meeting the plan's condition `where`."""
    return ("where", relation, where) if where else ("count", relation)


def _relation(key: Key) -> Relation:
    return Relation(Column(key[1], key[2]), Column(key[3], key[4]))
