"""Check kinds about the views and indexes migrations create: before them (views_absent, no_views), after them
(view_count, index_exists, index_count) and what one of them created (indexes_created).

On a rerun the database already holds what the applied migrations created. A pre-migration check then verifies
that nothing else is there: what the applied migrations create is read from their files (pgparse.created), and
"no view yet" holds as "no view but those the applied migrations create". Nothing here writes."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from pytest_phase4 import catalog, pgparse
from pytest_phase4.catalog import like
from pytest_phase4.errors import CheckFailed
from pytest_phase4.plan import CheckSpec, Migration

if TYPE_CHECKING:  # checks.py imports this module to register its kinds
    from pytest_phase4.checks import Context, Impl


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


def _views_of_applied(ctx: Context) -> dict[str, str]:
    """View name -> the file of the migration applied before this run (ledger) that creates it."""
    found: dict[str, str] = {}
    for m in ctx.plan.migrations:
        if m.file in ctx.applied_before_run:
            found.update(dict.fromkeys(creates(m).views, m.file))
    return found


def views_absent(ctx: Context, spec: CheckSpec) -> str:
    name, where = spec.element, _q(spec.element, ctx.schema)
    kind = ctx.known.relkind(name)
    if kind is None:
        return f"{where} does not exist yet"
    if kind in catalog.VIEW_KINDS and ctx.applied_before_run and (by := _views_of_applied(ctx).get(name)):
        return f"{where} exists: {by} creates it and was applied before this run (ledger)"
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
    """The indexes this migration created: applied in this run, those new since it started (Context.before_indexes);
    applied in an earlier run, those its CREATE INDEX statements name. Each must exist and be valid."""
    from pytest_phase4.migrate import invalid_indexes

    migration = ctx.plan.migration(spec.step)
    assert migration is not None  # the plan allows this kind only in [[migration.verify]]
    pattern, least = spec.params["like"], spec.params["min"]
    what = f"indexes like {pattern!r}" if pattern else "indexes"
    now = ctx.known.indexes()
    before = ctx.before_indexes.get(migration.file)
    if before is not None:
        names = [n for n in now if n not in before and (not pattern or like(n, pattern))]
        how = "new since it started, in this run"
        already = [n for n in now if n in before and (not pattern or like(n, pattern))]
        context = [f"{len(already)} {what} existed before it: {', '.join(already[:20])}"] if already else []
    else:
        made = creates(migration)
        named = [n for n in made.indexes if not pattern or like(n, pattern)]
        if missing := [n for n in named if n not in now]:
            raise CheckFailed(f"every index {migration.file} creates to exist", f"no index {', '.join(missing)}",
                              f"schema {ctx.schema}", hint=spec.hint or "someone dropped it since the migration "
                              "ran: create it again in a new migration")
        names, how = named, "named by its CREATE INDEX statements; it was applied before this run (ledger)"
        maybe = [n for n in made.indexes_if_absent if not pattern or like(n, pattern)]
        if maybe or made.unnamed_indexes:
            how += (f"; not counted: {len(maybe) + made.unnamed_indexes} of CREATE INDEX IF NOT EXISTS or without "
                    "a name, which the file alone cannot tell apart from older indexes")
        context = []
    if bad := [n for n in names if n in set(invalid_indexes(ctx.conn, ctx.schema))]:
        raise CheckFailed(f"valid {what}", f"INVALID: {', '.join(bad)}", f"schema {ctx.schema}",
                          hint=spec.hint or f"a failed CREATE INDEX CONCURRENTLY leaves an invalid index: DROP "
                                            f"INDEX CONCURRENTLY {bad[0]}; then create it again")
    if len(names) < least:
        raise CheckFailed(f">= {least} {what} created by {migration.file}", f"{len(names)}" + (
            f": {', '.join(names)}" if names else ""), f"schema {ctx.schema}", details=context,
            hint=spec.hint or "an index that already existed (CREATE INDEX IF NOT EXISTS) was not created by "
                              "this migration, whatever its name")
    return f"{len(names)} {what} created by {migration.file} ({how}): {', '.join(names) or '-'}"


IMPLEMENTATIONS: dict[str, Impl] = {f.__name__: f for f in (
    views_absent, no_views, view_count, index_exists, index_count, indexes_created)}
