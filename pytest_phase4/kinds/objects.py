"""Check kinds about the views and indexes migrations create: before them (views_absent, no_views), after them
(view_count, index_exists, index_count) and what one of them created (indexes_created).

What a migration created is its record, written in its own transaction when it was applied (changes.py); for one
applied without a record, its file's CREATE statements (pgparse.created). On a rerun the database already holds
what the applied migrations created: a pre-migration check then verifies that nothing else is there ("no view
yet" holds as "no view but those the applied migrations created"). Nothing here writes."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from pytest_phase4.db import catalog, changes, pgparse
from pytest_phase4.db.catalog import like
from pytest_phase4.errors import CheckFailed
from pytest_phase4.kinds.base import Kind, Param, register
from pytest_phase4.kinds.context import Context
from pytest_phase4.plan.model import CheckSpec, Migration


def _q(name: str, schema: str) -> str:
    return f"{schema}.{name}"


@functools.lru_cache(maxsize=128)
def _parsed(text: str) -> pgparse.Created:
    return pgparse.created(text)


def creates(migration: Migration) -> pgparse.Created:
    """What the migration's file creates, by its statements; CheckFailed if the file cannot be read as SQL."""
    try:
        return _parsed(migration.path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, pgparse.ParseError) as exc:
        raise CheckFailed(f"the statements of {migration.file}, read to know what it creates",
                          f"{type(exc).__name__}: {exc}", str(migration.path),
                          hint="the file must be SQL that PostgreSQL's parser accepts") from None


_VIEW_TYPES = ("view", "materialized view")


def created(ctx: Context, migrations: list[Migration]) -> dict[str, tuple[pgparse.Created, bool]]:
    """What each migration created in the plan's schema, and whether that is its record: as recorded in its own
    transaction when it was applied (changes.py), else, for one applied without a record, read from its file."""
    records = changes.read(ctx.conn, [m.file for m in migrations])
    found: dict[str, tuple[pgparse.Created, bool]] = {}
    for m in migrations:
        record = records.get(m.file)
        if record is None:
            found[m.file] = (creates(m), False)
            continue
        made = [c.obj for c in record.changes if c.action == "created" and c.obj.names[:1] == (ctx.schema,)]
        found[m.file] = (pgparse.Created(tuple(o.names[-1] for o in made if o.type in _VIEW_TYPES),
                                         tuple(o.names[-1] for o in made if o.type == "index")), True)
    return found


def _views_of_applied(ctx: Context) -> dict[str, str]:
    """View name -> the file of the migration applied before this run (ledger) that created it."""
    applied = [m for m in ctx.plan.migrations if m.file in ctx.applied_before_run]
    return {view: file for file, (made, _) in created(ctx, applied).items() for view in made.views}


def views_absent(ctx: Context, spec: CheckSpec) -> str:
    name, where = spec.element, _q(spec.element, ctx.schema)
    kind = ctx.known.relkind(name)
    if kind is None:
        return f"{where} does not exist yet"
    if kind in catalog.VIEW_KINDS and ctx.applied_before_run and (by := _views_of_applied(ctx).get(name)):
        how = "ledger" if by in ctx.ledger else "its checks verify"
        return f"{where} exists: {by} creates it and was applied before this run ({how})"
    raise CheckFailed(f"no relation named {name} before migrating" + (
        ", but a view the migrations applied before this run create" if ctx.applied_before_run else ""),
        catalog.relkind_words(kind), where,
        hint=spec.hint or "a migration will create this name: drop or rename the existing object, or document "
                          "it and remove it from views_absent")


def no_views(ctx: Context, spec: CheckSpec) -> str:
    pattern = spec.params["like"]
    what = f"views like {pattern!r}" if pattern else "views"
    names = [n for n in ctx.known.views() if not pattern or like(n, pattern)]
    ours = _views_of_applied(ctx) if ctx.applied_before_run else {}
    others = [n for n in names if n not in ours]
    if others:
        but = " but those the migrations applied before this run create" if ctx.applied_before_run else ""
        raise CheckFailed(f"no {what} in schema {ctx.schema} before migrating{but}", f"{len(others)}: "
                          f"{', '.join(others)}", f"schema {ctx.schema}",
                          hint=spec.hint or "the runbook expects no view before its migrations create them: find "
                                            "who created these (a partial earlier run? the application?)")
    mine = [f"{n} ({ours[n]})" for n in names]
    if mine:
        return (f"no {what} in schema {ctx.schema} but the {len(mine)} that migrations applied before this run "
                f"create (ledger): {', '.join(mine)}")
    return f"no {what} in schema {ctx.schema}"


def view_count(ctx: Context, spec: CheckSpec) -> str:
    p = spec.params
    names = ctx.known.views()
    if p["like"]:
        names = [n for n in names if like(n, p["like"])]
    n = len(names)
    ok = (p["equals"] is None or n == p["equals"]) and (p["min"] is None or n >= p["min"]) and (
        p["max"] is None or n <= p["max"])
    what = f"views like {p['like']!r}" if p["like"] else "views"
    if not ok:
        bound = next(f"{op} {p[k]}" for k, op in (("equals", "=="), ("min", ">="), ("max", "<=")) if p[k] is not None)
        raise CheckFailed(f"{bound} {what} in schema {ctx.schema}", str(n), f"schema {ctx.schema}",
                          details=[", ".join(names)] if names else [], hint=spec.hint)
    return f"{n} {what}: {', '.join(names) or '-'}"


def index_exists(ctx: Context, spec: CheckSpec) -> str:
    if spec.element not in ctx.known.indexes():
        raise CheckFailed(f"index {spec.element}", "no such index", f"schema {ctx.schema}", hint=spec.hint)
    return f"index {_q(spec.element, ctx.schema)} exists"


def index_count(ctx: Context, spec: CheckSpec) -> str:
    pattern, least = spec.params["like"], spec.params["min"]
    names = [n for n in ctx.known.indexes() if like(n, pattern)]
    if len(names) < least:
        raise CheckFailed(f">= {least} indexes like {pattern!r}", str(len(names)), f"schema {ctx.schema}",
                          details=[", ".join(names)] if names else [], hint=spec.hint)
    return f"{len(names)} indexes like {pattern!r}"


def indexes_created(ctx: Context, spec: CheckSpec) -> str:
    """The indexes this migration created, as recorded in its own transaction when it was applied (an index that
    was there already, CREATE INDEX IF NOT EXISTS, was not created by it); applied without a record, those its
    CREATE INDEX statements name. Each must exist now and be valid."""
    from pytest_phase4.db.migrate import invalid_indexes

    migration = ctx.plan.migration(spec.step)
    assert migration is not None  # the plan allows this kind only in [[migration.verify]]
    pattern, least = spec.params["like"], spec.params["min"]
    what = f"indexes like {pattern!r}" if pattern else "indexes"
    now = ctx.known.indexes()
    made, recorded = created(ctx, [migration])[migration.file]
    names = sorted(n for n in made.indexes if not pattern or like(n, pattern))
    how = "as recorded when it was applied" if recorded else (
        "named by its CREATE INDEX statements: it was applied without a record of what it created")
    maybe = [n for n in made.indexes_if_absent if not pattern or like(n, pattern)]
    if maybe or made.unnamed_indexes:
        how += (f"; not counted: {len(maybe) + made.unnamed_indexes} of CREATE INDEX IF NOT EXISTS or without a "
                "name, which the file alone cannot tell apart from older indexes")
    if missing := [n for n in names if n not in now]:
        raise CheckFailed(f"every index {migration.file} created to exist", f"no index {', '.join(missing)}",
                          f"schema {ctx.schema}", hint=spec.hint or "someone dropped it since the migration ran: "
                          "create it again in a new migration")
    if bad := [n for n in names if n in set(invalid_indexes(ctx.conn, ctx.schema))]:
        raise CheckFailed(f"valid {what}", f"INVALID: {', '.join(bad)}", f"schema {ctx.schema}",
                          hint=spec.hint or f"a failed CREATE INDEX CONCURRENTLY leaves an invalid index: DROP "
                                            f"INDEX CONCURRENTLY {bad[0]}; then create it again")
    if len(names) < least:
        others = [n for n in now if n not in names and (not pattern or like(n, pattern))]
        raise CheckFailed(f">= {least} {what} created by {migration.file}", f"{len(names)}" + (
            f": {', '.join(names)}" if names else ""), f"schema {ctx.schema}",
            details=[f"{len(others)} other {what} exist, not created by it: {', '.join(others[:20])}"]
            if others else [], hint=spec.hint or "an index that already existed (CREATE INDEX IF NOT EXISTS) "
                                                 "was not created by this migration, whatever its name")
    return f"{len(names)} {what} created by {migration.file} ({how}): {', '.join(names) or '-'}"


def _one_bound(params: Mapping[str, Any]) -> str | None:
    bounds = [k for k in ("equals", "min", "max") if params.get(k) is not None]
    return None if len(bounds) == 1 else "give exactly one of equals, min or max"


def _bound_label(params: Mapping[str, Any], _: Any) -> str:
    bound = next(f"{op}{params[k]}" for k, op in (("equals", "=="), ("min", ">="), ("max", "<=")) if params.get(k)
                 is not None)
    return f"{params['like']}{bound}" if params.get("like") else bound


_names = Param("names")
register(
    Kind("views_absent", "none of these views exists yet (on a rerun: but those applied migrations create)",
         {"views": _names}, expand="views", run=views_absent, expects=lambda s: [("views_gone", s.element)]),
    Kind("no_views", "no view in the schema (matching like), but those the applied migrations create",
         {"like": Param("str", False)}, label_fn=lambda p, _: str(p["like"] or "schema"), stages=("preflight",),
         stage_reason="it describes the database before the migrations: list it under [[preflight]]", run=no_views),
    Kind("view_count", "the number of views in the schema (matching like) meets the bound",
         {"equals": Param("int", False), "min": Param("int", False), "max": Param("int", False),
          "like": Param("str", False)}, label_fn=_bound_label, constraint=_one_bound, run=view_count,
         as_of_step=True),  # migration 3 expects 5 views; migration 4 adds more: not checkable once 4 is applied
    Kind("index_exists", "each index exists in the schema", {"indexes": _names}, expand="indexes",
         run=index_exists, expects=lambda s: [("indexes", s.element)]),
    Kind("index_count", "at least min indexes in the schema match like",
         {"like": Param("str"), "min": Param("int")}, label_fn=lambda p, _: f"{p['like']}>={p['min']}",
         run=index_count, expects=lambda s: [("index_likes", s.params["like"])]),
    Kind("indexes_created", "at least min indexes (matching like) are new since the migration started",
         {"min": Param("int", False, 1), "like": Param("str", False)},
         label_fn=lambda p, _: f"{p['like'] or '%'}>={p['min']}", stages=("migration",),
         stage_reason="it checks what one migration created: list it under that migration's [[migration.verify]]",
         run=indexes_created),
)
