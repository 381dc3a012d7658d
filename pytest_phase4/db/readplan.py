"""Which statement answers which of a step's values: the plan ReadAhead runs (readahead.py).

A table whose checks need a column no index leads with (a soft-delete condition, the NULLs of an unindexed key, a
view counted in its base table's scan) gets one sequential scan that counts its rows and, as FILTERed counts,
everything else the step asks of it. Every other value is read from an index where one leads with its column.
Orphans of a key no index leads with join the child's scan (scanquery.py: on the Supabase-shaped workload, whose
rows are wide, reading a row costs more than a join level; on the bundled workload's narrow rows three separate
anti-joins took 166 ms of CPU against 205 ms for three LEFT JOINs in one scan: there the scan is cheap). An
indexed key is its own anti-join, a merge of the two indexes where the parent key is unique.

| value | read |
| --- | --- |
| rows of a table | in its scan, else `count(*)` (the server's narrowest index) |
| rows meeting the plan's `where` | in the table's scan |
| NULL keys | in the table's scan, else `count(*) WHERE k IS NULL` (an index range) |
| orphans, dense integer keys | the parent's count and bounds, and the child keys outside them (catalog.count_orphans) |
| orphans, an indexed key with few distinct values | the distinct keys walked in the index (shortcuts.loose_orphans) |
| orphans, a key no index leads with, a unique parent key | a LEFT JOIN in the child's scan (scanquery.scan_query) |
| orphans, otherwise | the anti-join (catalog.orphans_query): a merge of two indexes where both are indexed |
| rows of a view | in its base table's scan when its plan allows (shortcuts.derive), else its own count |

Reads are handed to the pool in the order of the first check that needs them; small ones travel together (a job
per 1/8 of a connection's share of the step, and at least 64 pages), so that no connection is left with one long
queue and no thread waits for the GIL once per tiny read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pytest_phase4.db import catalog, scanquery
from pytest_phase4.db.shortcuts import LOOSE_FACTOR, Derived

Key = tuple[str, ...]  # ("count", relation), ("where", table, the plan's condition), ("nulls", table, column),
#                        ("orphans" | "outside" | "loose", table, column, parent, parent column),
#                        ("viewrows", view): the rows of a derived view, counted in its base table's scan
SHARES = 8  # jobs per connection's share of the step's work
SMALL = 64.0  # pages: reads this small travel together whatever the step's size


@dataclass
class Read:
    keys: tuple[Key, ...]  # a scan's first key is ("count", table)
    scan: bool = False
    cost: float = 1.0
    first: int = 0  # position of the first check that needs it
    alone: bool = False  # its cost is unknown before it runs (a view's own count): a job of its own


@dataclass
class Plan:
    reads: list[Read] = field(default_factory=list)
    loose: set[Key] = field(default_factory=set)  # orphan keys answered by a ("loose", ...) read
    derived: dict[str, Derived] = field(default_factory=dict)  # views counted by ("viewrows", view)

    def jobs(self, workers: int) -> list[list[Read]]:
        """The reads in the order of the first check that needs them, small ones packed together."""
        total = sum(r.cost for r in self.reads)
        cap = max(SMALL, total / (max(workers, 1) * SHARES))
        jobs: list[list[Read]] = []
        batch: list[Read] = []
        for read in sorted(self.reads, key=lambda r: r.first):
            if read.cost >= cap or read.alone:
                jobs.append([read])
                continue
            batch.append(read)
            if sum(r.cost for r in batch) >= cap:
                jobs.append(batch)
                batch = []
        if batch:
            jobs.append(batch)
        return sorted(jobs, key=lambda job: min(r.first for r in job))


def plan(relations: Mapping[str, catalog.RelationFacts], wanted: Sequence[Key], dense: Sequence[Key],
         derived: Mapping[str, Derived], distinct: Mapping[tuple[str, str], float]) -> Plan:
    """The reads answering `wanted` (in check order); `dense`: orphan keys the dense-key proof answers; `derived`:
    the views counted in their base table's scan; `distinct`: the planner's estimate of a key's distinct values."""
    out = Plan(derived=dict(derived))
    keys = list(wanted)
    for how in derived.values():  # a derived view's count holds when its join keys have no orphan
        keys += [("orphans", how.table, col, parent, pcol) for col, parent, pcol in how.joins]
    keys = list(dict.fromkeys(keys))
    first: dict[Key, int] = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    for view, how in derived.items():
        for col, parent, pcol in how.joins:
            first[("orphans", how.table, col, parent, pcol)] = first.get(("count", view), len(keys))

    def rel(table: str) -> catalog.RelationFacts:
        return relations[table]

    scans: dict[str, list[Key]] = {}

    def scan(table: str, key: Key, at: int) -> None:
        scans.setdefault(table, [])
        if key not in scans[table]:
            scans[table].append(key)
        first[("scan", table)] = min(first.get(("scan", table), at), at)

    singles: list[Key] = []
    for key in keys:
        at = first[key]
        what, table = key[0], key[1]
        if what == "where" or (what == "nulls" and key[2] not in rel(table).indexed):
            scan(table, key, at)
        elif what == "orphans" and key in dense:
            parent_count = ("count", key[3])
            if key[2] in rel(table).indexed:
                singles.append(("outside", *key[1:]))
                first.setdefault(("outside", *key[1:]), at)
            else:
                scan(table, ("outside", *key[1:]), at)
            if parent_count not in keys:
                singles.append(parent_count)
                first.setdefault(parent_count, at)
        elif what == "orphans" and key[2] in rel(table).indexed:
            estimate = distinct.get((table, key[2]))
            if estimate is not None and estimate * LOOSE_FACTOR < rel(table).rows:
                out.loose.add(key)
                singles.append(("loose", *key[1:]))
                first[("loose", *key[1:])] = at
            else:
                singles.append(key)
        elif what == "orphans" and key[2] not in rel(table).indexed and scanquery.joinable(relations, *key[1:]):
            scan(table, key, at)  # read whole by its anti-join anyway: one LEFT JOIN more in the table's scan
        elif what == "count" and key[1] in derived:
            base = derived[key[1]].table
            scan(base, ("viewrows", key[1]), at)
        else:
            singles.append(key)
    # a table scanned anyway answers its count and NULL counts too
    for key in list(singles):
        if key[0] in ("count", "nulls") and key[1] in scans and rel(key[1]).kind in catalog.TABLE_KINDS:
            singles.remove(key)
            scan(key[1], key, first.get(key, len(keys)))
    for table, found in scans.items():
        rest = [k for k in found if k != ("count", table)]
        joined = sum(max(1.0, relations[k[3]].rows / 300) for k in rest if k[0] == "orphans")
        out.reads.append(Read((("count", table), *rest), True, rel(table).pages * (1 + 0.1 * len(rest)) + 1 + joined,
                              first[("scan", table)]))
    for key in dict.fromkeys(singles):
        counted_alone = key[0] == "count" and rel(key[1]).kind in catalog.VIEW_KINDS
        out.reads.append(Read((key,), False, _cost(relations, key), first.get(key, len(keys)), counted_alone))
    return out


def _cost(relations: Mapping[str, catalog.RelationFacts], key: Key) -> float:
    """What a read reads, in pages as far as the catalog knows, only to schedule the reads."""
    rel = relations.get(key[1])
    if rel is None or key[0] in ("outside", "loose", "nulls"):
        return 1.0
    if rel.kind in catalog.VIEW_KINDS:
        return 4.0 * max(1, rel.pages)  # unknown until it runs: the view's plan decides
    index_pages = max(1.0, rel.rows / 300)
    if key[0] == "orphans":
        parent = relations.get(key[3])
        child = index_pages if key[2] in rel.indexed else float(rel.pages)
        return child + (max(1.0, parent.rows / 300) if parent else 1.0)
    return index_pages
