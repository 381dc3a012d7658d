"""The kinds that read tables, views, columns, rows and keys (and the server's version, the migration files):
each one object (its parameters, how it runs, what its step reads ahead, the catalog changes it expects), beside
its code. A check returns a one-line account of what it saw, raises CheckFailed with expected/found/where, or
CheckSkipped when it does not apply. Nothing here writes to the database."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from psycopg import sql

from pytest_phase4.db import catalog, sqltext
from pytest_phase4.db.facts import count_key
from pytest_phase4.errors import CheckFailed
from pytest_phase4.kinds.base import Column, Expect, Key, Kind, Param, Relation, RelKind, register
from pytest_phase4.kinds.context import NO_BASELINE, Context, NoBaseline, fmt, q, require_relation
from pytest_phase4.plan.model import CheckSpec


def server_version(ctx: Context, spec: CheckSpec) -> str:
    info = ctx.conn.info
    major = info.server_version // 10000
    full = str(ctx.conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
    if major < spec.params["min"]:
        raise CheckFailed(f"PostgreSQL >= {spec.params['min']}", f"PostgreSQL {full}", spec.where, hint=spec.hint)
    return f"PostgreSQL {full}"


def migration_files(ctx: Context, spec: CheckSpec) -> str:
    migration = ctx.plan.migration(spec.element)
    assert migration is not None
    path = migration.path
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise CheckFailed("the migration file to exist", "no such file", str(path),
                          hint=f"add {migration.file} to {ctx.plan.migrations_dir} or fix the plan") from None
    except OSError as exc:
        raise CheckFailed("a readable migration file", f"unreadable ({exc.strerror})", str(path)) from None
    if not text.strip():
        raise CheckFailed("SQL statements", "an empty file", str(path), hint="the file must hold the migration's SQL")
    try:
        statements = sqltext.split(text.decode("utf-8", errors="replace"), path.name)
    except sqltext.SqlSyntaxError as exc:
        raise CheckFailed("SQL that PostgreSQL's parser accepts", str(exc), str(path)) from None
    if not statements:
        raise CheckFailed("SQL statements", "only comments", str(path),
                          hint="the file must hold the migration's SQL: applied as it is, it would be recorded in "
                               "the ledger and could never be changed")
    sha = hashlib.sha256(text).hexdigest()
    entry = ctx.ledger.get(migration.file)
    if entry is not None and entry.sha256 != sha:
        raise CheckFailed(f"the file as applied on {entry.applied_at:%Y-%m-%d %H:%M} (sha256 {entry.sha256})",
                          f"a changed file (sha256 {sha})", str(path),
                          hint="an applied migration must not change: restore the file from version control "
                               "and put the change in a new migration")
    state = "applied, unchanged" if entry is not None else "not applied yet"
    return f"{path.name}: {fmt(len(text))} bytes, sha256 {sha[:12]}, {state}"


def no_invalid_indexes(ctx: Context, spec: CheckSpec) -> str:
    from pytest_phase4.db.migrate import invalid_indexes

    invalid = invalid_indexes(ctx.conn, ctx.schema)
    if invalid:
        raise CheckFailed("no INVALID index", f"{len(invalid)}: {', '.join(invalid)}", f"schema {ctx.schema}",
                          hint=spec.hint or f"a failed CREATE INDEX CONCURRENTLY leaves an invalid index that is "
                          f"maintained but never used: DROP INDEX CONCURRENTLY {invalid[0]}; then create it again")
    return f"no invalid index in schema {ctx.schema}"


def table_count(ctx: Context, spec: CheckSpec) -> str:
    names = ctx.known.tables()
    if len(names) < spec.params["min"]:
        raise CheckFailed(f">= {spec.params['min']} tables in schema {ctx.schema}", f"{len(names)}",
                          f"schema {ctx.schema}", details=[", ".join(names)] if names else [], hint=spec.hint)
    return f"{len(names)} tables in schema {ctx.schema}"


def tables_have_rows(ctx: Context, spec: CheckSpec) -> str:
    table = spec.element
    require_relation(ctx, spec, table, "rp", "table")
    count = ctx.known.count(table)  # now, in the step's snapshot: never the pre-migration recording
    if count < spec.params["min_rows"]:
        raise CheckFailed(f">= {fmt(spec.params['min_rows'])} rows", f"{fmt(count)}", q(table, ctx.schema),
                          hint=spec.hint or ("load recent data into this database before migrating"
                                             if spec.stage == "preflight" else "a migration deleted these rows: "
                                             "restore them from the backup if this is not intended"))
    return f"{q(table, ctx.schema)}: {fmt(count)} rows"


def table_exists(ctx: Context, spec: CheckSpec) -> str:
    require_relation(ctx, spec, spec.element, "rp", "table")
    return f"table {q(spec.element, ctx.schema)} exists"


def view_exists(ctx: Context, spec: CheckSpec) -> str:
    require_relation(ctx, spec, spec.element, "vm", "view")
    return f"view {q(spec.element, ctx.schema)} exists"


def rls_policies(ctx: Context, spec: CheckSpec) -> str:
    p = spec.params
    table, expected, names, command, role = p["table"], p["count"], p["names"], p["command"], p["role"]
    where = q(table, ctx.schema)
    require_relation(ctx, spec, table, "rp", "table")
    found = ctx.known.policies_for(table, command, role)
    if not ctx.known.rls_enabled(table):
        raise CheckFailed("row level security enabled", "RLS disabled", where,
                          hint=spec.hint or f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
    which = "".join([f" FOR {command.upper()}" if command else "", f" TO {role}" if role else ""])
    missing = [n for n in names if n not in found]
    if len(found) != expected or missing:
        detail = [f"missing: {', '.join(missing)}"] if missing else []
        if which:
            detail.append(f"every policy of {table}: {', '.join(ctx.known.policies(table)) or 'none'}")
        raise CheckFailed(f"{expected} policies{which}" + (f" including {', '.join(names)}" if names else ""),
                          f"{len(found)}: {', '.join(found) or 'none'}", where, details=detail, hint=spec.hint)
    return f"{where}: RLS on, policies{which} {', '.join(found) or '(none)'}"


def view_rowcount_matches(ctx: Context, spec: CheckSpec) -> str:
    view, base = spec.element
    where = spec.params.get("where", {}).get(view)  # the plan's condition on the base table, e.g. soft deletes
    require_relation(ctx, spec, view, "vm", "view")
    require_relation(ctx, spec, base, "rp", "table")
    # of one moment, even while the application writes
    v, b = ctx.known.together(count_key(view), count_key(base, where))
    rows = f"{base} WHERE {where}" if where else base
    if v != b:
        diff = f"{fmt(b - v)} missing" if v < b else f"{fmt(v - b)} extra"
        cause = ("an inner join on a nullable key drops rows: use LEFT JOIN" if v < b
                 else "a join to a non-unique key multiplies rows: join on a unique key")
        if where:
            cause = f"the view's own filter differs from {where!r}, or {cause}"
        shown = sql.SQL("SELECT count(*) FROM {};\n{};").format(
            sql.Identifier(ctx.schema, view), catalog.count_query(ctx.schema, base, catalog.condition(where))
            if where else catalog.count_query(ctx.schema, base)).as_string(ctx.conn)
        raise CheckFailed(f"view {view} to have as many rows as {rows} ({fmt(b)})",
                          f"{fmt(v)} ({diff})", f"{q(view, ctx.schema)} vs {q(base, ctx.schema)}", sql=shown,
                          hint=spec.hint or cause)
    how = ctx.known.how_counted(view)
    return f"{view}: {fmt(v)} rows = {rows}: {fmt(b)} rows" + (f" ({how})" if how else "")


def view_sample_not_null(ctx: Context, spec: CheckSpec) -> str:
    view, cols, want = spec.params["view"], spec.params["columns"], spec.params["rows"]
    require_relation(ctx, spec, view, "vm", "view")
    present = ctx.known.columns(view)
    if missing := [c for c in cols if c not in present]:
        raise CheckFailed(f"columns {', '.join(cols)}", f"no column {', '.join(missing)}", q(view, ctx.schema),
                          details=[f"the view has: {', '.join(present)}"], hint=spec.hint)
    query = sql.SQL("SELECT {} FROM {} LIMIT {}").format(
        sql.SQL(", ").join(map(sql.Identifier, cols)), sql.Identifier(ctx.schema, view), sql.Literal(want))
    rows = ctx.conn.execute(query).fetchall()
    shown = query.as_string(ctx.conn)
    if len(rows) < want:
        raise CheckFailed(f"{want} rows", f"{len(rows)}", q(view, ctx.schema), sql=shown, hint=spec.hint)
    nulls = [f"row {i + 1}: {c} is NULL" for i, row in enumerate(rows) for c, v in zip(cols, row, strict=True)
             if v is None]
    if nulls:
        raise CheckFailed(f"no NULL in {', '.join(cols)}", f"{len(nulls)} NULL value(s)", q(view, ctx.schema),
                          sql=shown, details=nulls[:10], hint=spec.hint or "a LEFT JOIN found no match: check the "
                          "foreign keys behind these columns")
    return f"{view}: {len(rows)} rows, {', '.join(cols)} all set"


def _column_state(ctx: Context, spec: CheckSpec, present: bool) -> str:
    col: Column = spec.element
    require_relation(ctx, spec, col.table, "rpvm", "table")
    exists = col.column in ctx.known.columns(col.table)
    where = f"{ctx.schema}.{col}"
    if exists != present:
        raise CheckFailed(f"column {col} {'present' if present else 'absent'}",
                          "it exists" if exists else "no such column", where, hint=spec.hint)
    return f"{where} {'exists' if present else 'is absent'}"


def column_absent(ctx: Context, spec: CheckSpec) -> str:
    return _column_state(ctx, spec, present=False)


def column_present(ctx: Context, spec: CheckSpec) -> str:
    return _column_state(ctx, spec, present=True)


def no_orphans(ctx: Context, spec: CheckSpec) -> str:
    rel: Relation = spec.element
    child, parent = rel.child, rel.parent
    for table in (child.table, parent.table):
        require_relation(ctx, spec, table, "rp", "table")
    count_q = catalog.orphans_query(ctx.schema, child.table, child.column, parent.table, parent.column,
                                    sql.SQL("count(*)"))
    found = ctx.known.orphans(rel)  # read ahead with the step's other counts and orphan queries
    orphans, nulls = found.orphans, found.nulls
    null_note = f"{fmt(nulls)} row(s) with NULL {child} (not orphans, reported apart)"
    if orphans:
        key = ctx.known.primary_key(child.table) or [child.column]
        cols = list(dict.fromkeys([*key, child.column]))
        sample_q = catalog.orphans_query(ctx.schema, child.table, child.column, parent.table, parent.column,
                                         sql.SQL(", ").join(sql.SQL("c.{}").format(sql.Identifier(c))
                                                            for c in cols)) + sql.SQL(" LIMIT 10")
        sample = ctx.conn.execute(sample_q).fetchall()
        rows = [", ".join(f"{c}={v}" for c, v in zip(cols, r, strict=True)) for r in sample]
        raise CheckFailed(f"no {child} without a matching {parent}", f"{fmt(orphans)} orphaned row(s)",
                          f"{ctx.schema}.{child.table}", sql=count_q.as_string(ctx.conn),
                          details=[f"first {len(rows)}:", *rows, null_note],
                          hint=spec.hint or f"delete or repair these rows, or restore {parent.table} from the backup")
    return f"0 orphans in {child}->{parent}; {null_note}"


def row_counts_unchanged(ctx: Context, spec: CheckSpec) -> str:
    table = spec.element
    snap = ctx.baseline()
    if not snap.is_baseline:
        raise NoBaseline(snap.why_not or NO_BASELINE)
    if table not in snap.counts:
        raise CheckFailed(f"a row count for {table} recorded before the first migration", "none: the table did not "
                          "exist then", q(table, ctx.schema), hint=spec.hint)
    require_relation(ctx, spec, table, "rp", "table")
    before = snap.counts[table]
    after = ctx.known.count(table)
    if after != before:
        raise CheckFailed(f"{fmt(before)} rows (recorded before migrating)", f"{fmt(after)} ({after - before:+,})",
                          q(table, ctx.schema), hint=spec.hint or "a migration added or deleted rows: restore "
                          "from the backup if this is not intended")
    return f"{q(table, ctx.schema)}: {fmt(after)} rows, as before"


RLS_COMMANDS = ("select", "insert", "update", "delete", "all")


def _rls_command(params: Mapping[str, Any]) -> str | None:
    command = params.get("command")
    if command is not None and command not in RLS_COMMANDS:
        return f"command must be one of {', '.join(RLS_COMMANDS)} (the policy's FOR clause), found {command!r}"
    return None


def _rls_label(params: Mapping[str, Any], _: Any) -> str:
    return str(params["table"]) + (f":{params['command']}" if params.get("command") else "") + (
        f"@{params['role']}" if params.get("role") else "")


def _where_views(params: Mapping[str, Any]) -> str | None:
    if unknown := [v for v in params.get("where", {}) if v not in params["pairs"]]:
        return (f"where names {', '.join(map(repr, unknown))}, not a view of pairs: give each condition under the "
                "name of the view it filters for")
    return None


TABLES = ("r", "p")
VIEWS = ("v", "m")


def _count_read(spec: CheckSpec, relkind: RelKind) -> list[Key]:
    return [("count", spec.element)] if relkind(spec.element) in TABLES else []


def _pair_read(spec: CheckSpec, relkind: RelKind) -> list[Key]:
    view, base = spec.element
    if relkind(view) in VIEWS and relkind(base) in TABLES:
        return [count_key(view), count_key(base, spec.params.get("where", {}).get(view))]
    return []


def _orphans_read(spec: CheckSpec, relkind: RelKind) -> list[Key]:
    c, p = spec.element.child, spec.element.parent
    if relkind(c.table) in TABLES and relkind(p.table) in TABLES:  # NULLs of a NOT NULL column: facts.py knows 0
        return [("orphans", c.table, c.column, p.table, p.column), ("nulls", c.table, c.column)]
    return []


def _rls_expects(spec: CheckSpec) -> list[Expect]:
    table = spec.params["table"]
    return [("rls_on", table), *(("policies", f"{table}.{n}") for n in spec.params["names"])]


_names = Param("names")
register(
    Kind("server_version", "the server answers and its major version is at least min",
         {"min": Param("int")}, label_fn=lambda p, _: f">={p['min']}", run=server_version, state=False),
    Kind("migration_files", "each migration file exists, is readable, not empty, and unchanged if applied",
         run=migration_files, state=False, per_migration=True),
    Kind("no_invalid_indexes", "no index in the schema is INVALID (left by a failed CREATE INDEX CONCURRENTLY)",
         label_fn=lambda p, _: "schema", run=no_invalid_indexes),
    Kind("table_count", "the schema holds at least min base tables",
         {"min": Param("int")}, label_fn=lambda p, _: f">={p['min']}", run=table_count),
    Kind("tables_have_rows", "each table exists and holds at least min_rows rows now",
         {"tables": _names, "min_rows": Param("int", False, 1)}, expand="tables", run=tables_have_rows,
         reads=_count_read),
    Kind("table_exists", "each base table exists", {"tables": _names}, expand="tables", run=table_exists,
         expects=lambda s: [("tables", s.element)]),
    Kind("view_exists", "each view exists", {"views": _names}, expand="views", run=view_exists,
         expects=lambda s: [("views", s.element)]),
    Kind("rls_policies", "RLS is enabled and the table has exactly count policies (FOR command, TO role), "
                         "including names",
         {"table": Param("str"), "count": Param("int"), "names": Param("names", False, ()),
          "command": Param("str", False), "role": Param("str", False)},
         label_fn=_rls_label, constraint=_rls_command, run=rls_policies, expects=_rls_expects),
    Kind("view_rowcount_matches", "the view has as many rows as its base table (meeting where)",
         {"pairs": Param("pairs"), "where": Param("conditions", False, {})}, expand="pairs",
         constraint=_where_views, run=view_rowcount_matches, reads=_pair_read, view_of=lambda s: s.element,
         expects=lambda s: [("views", s.element[0])]),
    Kind("view_sample_not_null", "the view returns rows rows with none of columns NULL",
         {"view": Param("str"), "columns": _names, "rows": Param("int", False, 5)},
         label_fn=lambda p, _: str(p["view"]), run=view_sample_not_null,
         expects=lambda s: [("views", s.params["view"])]),
    Kind("column_absent", "the column does not exist", {"columns": Param("columns")}, expand="columns",
         run=column_absent, expects=lambda s: [("columns_gone", str(s.element))]),
    Kind("column_present", "the column exists", {"columns": Param("columns")}, expand="columns",
         run=column_present, expects=lambda s: [("columns", str(s.element))]),
    Kind("no_orphans", "no child row has a non-NULL key without a parent",
         {"relations": Param("relations")}, expand="relations", run=no_orphans, reads=_orphans_read),
    Kind("row_counts_unchanged", "the table's row count equals the one recorded before the first migration",
         {"tables": _names}, expand="tables", run=row_counts_unchanged, reads=_count_read, compares=True),
)
