"""What each check kind does. A check returns a one-line account of what it saw, raises CheckFailed with
expected/found/where, or CheckSkipped when it does not apply. Nothing here writes to the database."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from pytest_phase4 import catalog, sqltext
from pytest_phase4.catalog import like as like  # safety.py matches names with it
from pytest_phase4.errors import CheckFailed, Phase4Error
from pytest_phase4.facts import Facts, count_key
from pytest_phase4.kinds import Column, Relation
from pytest_phase4.planmodel import CheckSpec, Plan
from pytest_phase4.runextras import RunExtras


class CheckSkipped(Phase4Error):
    """The check does not apply to this run; the message says why."""


NO_BASELINE = "no baseline from before the plan's migrations to compare with"


@dataclass
class Snapshot:
    """Row counts of every base table in the baseline the comparisons use (baselines.py): this run's, taken before
    its first migration, or an earlier run's from before the plan's first applied migration."""

    counts: dict[str, int]
    why_not: str = ""  # why there is no baseline to compare with ("" when there is one)
    used: str = ""  # which baseline, in words

    @property
    def is_baseline(self) -> bool:
        """Whether "after" compared with it says anything about the migrations: a baseline from before them."""
        return not self.why_not


@dataclass
class Context:
    conn: psycopg.Connection[Any]
    plan: Plan
    snapshot: Callable[[], Snapshot]
    ledger: Mapping[str, Any] = field(default_factory=dict)  # file -> ledger.Entry, as the run started
    extras: RunExtras = field(default_factory=RunExtras)
    facts: Facts | None = None  # the step's shared catalog facts and row counts; one of its own if not given
    verified: frozenset[str] = frozenset()  # applied without a ledger row, as --phase4-verify-only found them

    @property
    def schema(self) -> str:
        return self.plan.schema

    @property
    def applied_before_run(self) -> frozenset[str]:
        """Migration files the ledger showed as applied when the run started (and, verifying only, those the
        database proves applied)."""
        return frozenset(self.ledger) | self.verified

    @property
    def known(self) -> Facts:
        if self.facts is None:
            self.facts = Facts(self.conn, self.schema)
        return self.facts


Impl = Callable[[Context, CheckSpec], str]


def _q(name: str, schema: str) -> str:
    return f"{schema}.{name}"


def _fmt(n: int) -> str:
    return f"{n:,}"


def _require_relation(ctx: Context, spec: CheckSpec, name: str, kinds: str, what: str) -> None:
    kind = ctx.known.relkind(name)
    if kind is None or kind not in kinds:
        found = "no such relation" if kind is None else f"{catalog.relkind_words(kind)}, not a {what}"
        raise CheckFailed(f"{what} {_q(name, ctx.schema)} to exist", found, _q(name, ctx.schema),
                          hint=spec.hint or f"check the name in the plan, or that an earlier migration creates {name}")


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
    return f"{path.name}: {_fmt(len(text))} bytes, sha256 {sha[:12]}, {state}"


def no_invalid_indexes(ctx: Context, spec: CheckSpec) -> str:
    from pytest_phase4.migrate import invalid_indexes

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
    _require_relation(ctx, spec, table, "rp", "table")
    count = ctx.known.count(table)  # now, in the step's snapshot: never the pre-migration recording
    if count < spec.params["min_rows"]:
        raise CheckFailed(f">= {_fmt(spec.params['min_rows'])} rows", f"{_fmt(count)}", _q(table, ctx.schema),
                          hint=spec.hint or ("load recent data into this database before migrating"
                                             if spec.stage == "preflight" else "a migration deleted these rows: "
                                             "restore them from the backup if this is not intended"))
    return f"{_q(table, ctx.schema)}: {_fmt(count)} rows"


def table_exists(ctx: Context, spec: CheckSpec) -> str:
    _require_relation(ctx, spec, spec.element, "rp", "table")
    return f"table {_q(spec.element, ctx.schema)} exists"


def view_exists(ctx: Context, spec: CheckSpec) -> str:
    _require_relation(ctx, spec, spec.element, "vm", "view")
    return f"view {_q(spec.element, ctx.schema)} exists"


def rls_policies(ctx: Context, spec: CheckSpec) -> str:
    p = spec.params
    table, expected, names, command, role = p["table"], p["count"], p["names"], p["command"], p["role"]
    where = _q(table, ctx.schema)
    _require_relation(ctx, spec, table, "rp", "table")
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
    _require_relation(ctx, spec, view, "vm", "view")
    _require_relation(ctx, spec, base, "rp", "table")
    # of one moment, even while the application writes
    v, b = ctx.known.together(count_key(view), count_key(base, where))
    rows = f"{base} WHERE {where}" if where else base
    if v != b:
        diff = f"{_fmt(b - v)} missing" if v < b else f"{_fmt(v - b)} extra"
        cause = ("an inner join on a nullable key drops rows: use LEFT JOIN" if v < b
                 else "a join to a non-unique key multiplies rows: join on a unique key")
        if where:
            cause = f"the view's own filter differs from {where!r}, or {cause}"
        shown = sql.SQL("SELECT count(*) FROM {};\n{};").format(
            sql.Identifier(ctx.schema, view), catalog.count_query(ctx.schema, base, catalog.condition(where))
            if where else catalog.count_query(ctx.schema, base)).as_string(ctx.conn)
        raise CheckFailed(f"view {view} to have as many rows as {rows} ({_fmt(b)})",
                          f"{_fmt(v)} ({diff})", f"{_q(view, ctx.schema)} vs {_q(base, ctx.schema)}", sql=shown,
                          hint=spec.hint or cause)
    how = ctx.known.how_counted(view)
    return f"{view}: {_fmt(v)} rows = {rows}: {_fmt(b)} rows" + (f" ({how})" if how else "")


def view_sample_not_null(ctx: Context, spec: CheckSpec) -> str:
    view, cols, want = spec.params["view"], spec.params["columns"], spec.params["rows"]
    _require_relation(ctx, spec, view, "vm", "view")
    present = ctx.known.columns(view)
    if missing := [c for c in cols if c not in present]:
        raise CheckFailed(f"columns {', '.join(cols)}", f"no column {', '.join(missing)}", _q(view, ctx.schema),
                          details=[f"the view has: {', '.join(present)}"], hint=spec.hint)
    query = sql.SQL("SELECT {} FROM {} LIMIT {}").format(
        sql.SQL(", ").join(map(sql.Identifier, cols)), sql.Identifier(ctx.schema, view), sql.Literal(want))
    rows = ctx.conn.execute(query).fetchall()
    shown = query.as_string(ctx.conn)
    if len(rows) < want:
        raise CheckFailed(f"{want} rows", f"{len(rows)}", _q(view, ctx.schema), sql=shown, hint=spec.hint)
    nulls = [f"row {i + 1}: {c} is NULL" for i, row in enumerate(rows) for c, v in zip(cols, row, strict=True)
             if v is None]
    if nulls:
        raise CheckFailed(f"no NULL in {', '.join(cols)}", f"{len(nulls)} NULL value(s)", _q(view, ctx.schema),
                          sql=shown, details=nulls[:10], hint=spec.hint or "a LEFT JOIN found no match: check the "
                          "foreign keys behind these columns")
    return f"{view}: {len(rows)} rows, {', '.join(cols)} all set"


def _column_state(ctx: Context, spec: CheckSpec, present: bool) -> str:
    col: Column = spec.element
    _require_relation(ctx, spec, col.table, "rpvm", "table")
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
        _require_relation(ctx, spec, table, "rp", "table")
    count_q = catalog.orphans_query(ctx.schema, child.table, child.column, parent.table, parent.column,
                                    sql.SQL("count(*)"))
    found = ctx.known.orphans(rel)  # read ahead with the step's other counts and orphan queries
    orphans, nulls = found.orphans, found.nulls
    null_note = f"{_fmt(nulls)} row(s) with NULL {child} (not orphans, reported apart)"
    if orphans:
        key = ctx.known.primary_key(child.table) or [child.column]
        cols = list(dict.fromkeys([*key, child.column]))
        sample_q = catalog.orphans_query(ctx.schema, child.table, child.column, parent.table, parent.column,
                                         sql.SQL(", ").join(sql.SQL("c.{}").format(sql.Identifier(c))
                                                            for c in cols)) + sql.SQL(" LIMIT 10")
        sample = ctx.conn.execute(sample_q).fetchall()
        rows = [", ".join(f"{c}={v}" for c, v in zip(cols, r, strict=True)) for r in sample]
        raise CheckFailed(f"no {child} without a matching {parent}", f"{_fmt(orphans)} orphaned row(s)",
                          f"{ctx.schema}.{child.table}", sql=count_q.as_string(ctx.conn),
                          details=[f"first {len(rows)}:", *rows, null_note],
                          hint=spec.hint or f"delete or repair these rows, or restore {parent.table} from the backup")
    return f"0 orphans in {child}->{parent}; {null_note}"


def row_counts_unchanged(ctx: Context, spec: CheckSpec) -> str:
    table = spec.element
    snap = ctx.snapshot()
    if not snap.is_baseline:
        raise CheckSkipped(snap.why_not or NO_BASELINE)
    if table not in snap.counts:
        raise CheckFailed(f"a row count for {table} recorded before the first migration", "none: the table did not "
                          "exist then", _q(table, ctx.schema), hint=spec.hint)
    _require_relation(ctx, spec, table, "rp", "table")
    before = snap.counts[table]
    after = ctx.known.count(table)
    if after != before:
        raise CheckFailed(f"{_fmt(before)} rows (recorded before migrating)", f"{_fmt(after)} ({after - before:+,})",
                          _q(table, ctx.schema), hint=spec.hint or "a migration added or deleted rows: restore "
                          "from the backup if this is not intended")
    return f"{_q(table, ctx.schema)}: {_fmt(after)} rows, as before"


IMPLEMENTATIONS: Mapping[str, Impl] = {
    f.__name__: f for f in (
        server_version, migration_files, no_invalid_indexes, table_count, tables_have_rows, table_exists,
        view_exists, rls_policies, view_rowcount_matches, view_sample_not_null, column_absent, column_present,
        no_orphans, row_counts_unchanged)
}

# The other kinds live in their own modules, which use Context and CheckSkipped: imported here, once both exist.
from pytest_phase4 import commands, objects, perf, queries, readiness, smoke  # noqa: E402

IMPLEMENTATIONS = {**IMPLEMENTATIONS, **objects.IMPLEMENTATIONS, **queries.IMPLEMENTATIONS,
                   **commands.IMPLEMENTATIONS, **readiness.IMPLEMENTATIONS, **smoke.IMPLEMENTATIONS,
                   **perf.IMPLEMENTATIONS}


def _applied_after(ctx: Context, step: str) -> str | None:
    """The last migration after `step` that the ledger showed applied at the start of the run, if any."""
    migration = ctx.plan.migration(step)
    if migration is None:
        return None
    later = [m.file for m in ctx.plan.migrations if m.index > migration.index and m.file in ctx.applied_before_run]
    return later[-1] if later else None


# Kinds whose expectation holds only right after their own migration: a later migration may change the answer
# (migration 3 expects 5 views; migration 4 adds more), so they cannot be verified once a later one is applied.
AS_OF_STEP = frozenset({"view_count"})


def run_check(ctx: Context, spec: CheckSpec) -> str:
    """Run one check; SQL errors become failures naming the check, never tracebacks."""
    if spec.kind in AS_OF_STEP and (later := _applied_after(ctx, spec.step)):
        raise CheckSkipped(f"describes the state right after {spec.step}, and {later} was already applied when "
                           "this run started (ledger): no longer checkable")
    try:
        return IMPLEMENTATIONS[spec.kind](ctx, spec)
    except CheckFailed as exc:
        exc.origin = exc.origin or spec.where
        raise
    except psycopg.Error as exc:
        raise CheckFailed(f"check {spec.test_id} to run", sql_error(exc), spec.where,
                          hint=timeout_hint(exc, "") or spec.hint or (exc.diag.message_hint or "")) from None


def sql_error(exc: psycopg.Error) -> str:
    """One line for an SQL error: the server's message and its SQLSTATE, never a traceback. A data error (class
    22) quotes the value that failed, a row's (an e-mail, a token): masked, as literals are in the texts shown."""
    lines = str(exc).strip().splitlines()
    message = exc.diag.message_primary or (lines[0] if lines else type(exc).__name__)
    if (exc.sqlstate or "").startswith("22"):
        message = re.sub(r'"(?:[^"]|"")*"', '"***"', message)
    return f"SQL error: {message}" + (f" [SQLSTATE {exc.sqlstate}]" if exc.sqlstate else "")


def timeout_hint(exc: psycopg.Error, limit: str) -> str:
    if exc.sqlstate != "57014":
        return ""
    within = f" ({limit})" if limit else ""
    return (f"the query ran past the check timeout{within}: a lock held by another session blocks it, or it is "
            "slow at this size; find blockers in pg_stat_activity, or raise --phase4-check-timeout")
