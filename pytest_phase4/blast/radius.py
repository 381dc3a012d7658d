"""Blast radius: what the pending migrations would break that PostgreSQL does not track, found on a copy of the
schema before anything is migrated (no pytest here).

A column a view or policy uses cannot be dropped; one that a PL/pgSQL or SQL function body, a trigger function or
the application's own queries use can. So the target's schema is copied without its data (scratch.py), every
question is asked there once before the pending migrations are applied to the copy and once after, and what
answered before and fails after is what the migrations break: database code (dbcode.py), the queries
pg_stat_statements recorded and the plan's query files (appqueries.py). What failed before already is listed,
never counted. The check kinds that report it are in blast_checks.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from pytest_phase4.blast import appqueries, copyfilter, dbcode, scratch
from pytest_phase4.blast.appqueries import AppQuery, Recorded
from pytest_phase4.db import ledger, migrate, sqltext
from pytest_phase4.errors import CheckFailed, MigrationFailed
from pytest_phase4.kinds.base import KINDS
from pytest_phase4.plan.blast import STAGE
from pytest_phase4.plan.model import CheckSpec, Migration
from pytest_phase4.safety import checks as safety

if TYPE_CHECKING:
    from pytest_phase4.run import Phase4Run

CHECK_SCHEMA = "phase4_plpgsql_check"  # where the copy gets plpgsql_check when the target has none
ENABLE_PLPGSQL_CHECK = ("install plpgsql_check on the database server (Debian/Ubuntu: apt-get install "
                        "postgresql-{major}-plpgsql-check; Supabase ships it): the copy then creates the extension "
                        "itself, which takes a superuser (or Supabase's postgres role)")

_CODE_HASH = b"""
SELECT md5(coalesce(string_agg(x, E'\\n' ORDER BY x), '')) FROM (
  SELECT n.nspname || '.' || p.proname || '(' || pg_catalog.pg_get_function_identity_arguments(p.oid) || ') '
         || p.prosrc || coalesce(p.proconfig::text, '') AS x
  FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
  WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pytest_phase4') AND n.nspname !~ '^pg_'
    AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_proc'::regclass
                    AND d.objid = p.oid AND d.deptype = 'e')
  UNION ALL
  SELECT 'trigger ' || t.tgname || ' on ' || n.nspname || '.' || c.relname || ' ' || t.tgfoid::regprocedure::text
  FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE NOT t.tgisinternal) s
"""
_RELATIONS = b"""
SELECT n.nspname || '.' || c.relname, coalesce(string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod),
       ', ' ORDER BY a.attname), '')
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname !~ '^pg_'
GROUP BY 1
"""


@dataclass
class Answers:
    """One pass over the copy: each database_code check's report, and each query's PREPARE error (None: fine)."""

    code: dict[str, dbcode.CodeReport] = field(default_factory=dict)
    prepared: dict[tuple[str, str | None], tuple[str, str] | None] = field(default_factory=dict)  # AppQuery.key


@dataclass
class Outcome:
    where: str  # the scratch database
    pending: tuple[str, ...]
    before: Answers
    after: Answers
    queries: dict[str, list[AppQuery]]  # check test id -> its queries
    notes: dict[str, list[str]]  # check test id -> what it left out and why
    recorded: dict[str, Recorded | str]  # pg_stat_statements check -> what it read, or why it could not
    method: str = dbcode.PREPARE  # how PL/pgSQL bodies were checked
    method_note: str = ""  # why plpgsql_check was not used
    fingerprints: dict[str, str] = field(default_factory=dict)  # pending file -> code hash before it (copy)
    shas: dict[str, str] = field(default_factory=dict)  # pending file -> sha256 as applied to the copy
    failed_migration: str = ""  # the pending migration that does not apply to the copy, and why
    changed: tuple[str, ...] = ()  # relations the migrations drop or change the columns of
    copy_notes: tuple[str, ...] = ()  # what the copy leaves out of the target's schema, and why
    not_tried: list[str] = field(default_factory=list)  # "file:line: statement (why it did not run on the copy)"
    seconds: float = 0.0


@dataclass
class BlastState:
    outcome: Outcome | None = None
    failure: CheckFailed | None = None  # no copy could be made: every blast-radius check reports it
    rechecked: str = ""  # why the radius was computed again before the point of no return, and what it found
    copy_place: str = scratch.THROWAWAY  # --phase4-blast-copy: scratch.THROWAWAY or scratch.TARGET


def specs(run: Phase4Run) -> tuple[CheckSpec, ...]:
    return tuple(s for s in run.plan.stages.get(STAGE, ()) if KINDS[s.kind].stages == (STAGE,))


def pending(run: Phase4Run, after: Migration | None = None) -> list[Migration]:
    """The migrations not applied yet: neither in the ledger nor, under --phase4-verify-only, found applied by
    another tool (verifyonly.probe); applying those again to the copy would fail there, a false red."""
    applied = ledger.read(run.ro)
    return [m for m in run.plan.migrations
            if m.file not in applied and m.file not in run.verified and (after is None or m.index >= after.index)]


def outcome(run: Phase4Run) -> Outcome | None:
    """This run's outcome, computed once by the first blast-radius check; raise CheckFailed if no copy was made."""
    state = run.blast_radius
    if state.outcome is None and state.failure is None:
        try:
            state.outcome = compute(run, specs(run), pending(run))
        except CheckFailed as exc:
            state.failure = exc
    if state.failure is not None:
        raise replace(state.failure)  # each check adds its own plan line to its copy
    return state.outcome


def compute(run: Phase4Run, checks: Iterable[CheckSpec], todo: list[Migration]) -> Outcome | None:
    """Ask every question of these checks on a copy of the target's schema, before and after the migrations."""
    checks = tuple(checks)
    if not todo:
        return None
    started = time.perf_counter()
    paths = appqueries.role_paths(run.ro)
    queries, notes, recorded = _gather(run, checks, paths)
    search_path = str(run.ro.execute("SHOW search_path").fetchone()[0])  # type: ignore[index]
    tools = safety.tools(run)
    try:
        with scratch.schema_copy(run.target, tools, str(run.ro.info.dbname), run.lock_timeout,
                                 run.blast_radius.copy_place, run.ro.info.server_version // 10000) as copy, \
                scratch.connect(copy, search_path, run.check_timeout) as conn:
            result = Outcome(copy.where, tuple(m.file for m in todo), Answers(), Answers(), queries, notes, recorded)
            result.copy_notes = copy.notes
            if any(s.kind == "database_code" and s.params["plpgsql"] != dbcode.PREPARE for s in checks):
                result.method, result.method_note = _plpgsql_check(conn, tools.major)
            before = relations(conn)
            result.before = _ask(conn, checks, queries, result.method, paths)
            _migrate(run, copy, conn, todo, result, search_path)
            result.after = _ask(conn, checks, queries, result.method, paths)
            after = relations(conn)
            result.changed = tuple(sorted(r for r in before if after.get(r) != before[r]))
    except scratch.ScratchError as exc:
        raise CheckFailed("a scratch copy of the target's schema to apply the pending migrations to",
                          run.target.scrub(exc.message), run.target.label, details=exc.details,
                          hint=exc.hint or "nothing was done to the target") from None
    except psycopg.Error as exc:
        raise CheckFailed("a scratch copy of the target's schema to apply the pending migrations to",
                          run.target.scrub(exc.diag.message_primary or str(exc)), run.target.label,
                          hint="nothing was done to the target") from None
    result.seconds = time.perf_counter() - started
    return result


def _gather(run: Phase4Run, checks: tuple[CheckSpec, ...], paths: dict[str, str]) -> tuple[
        dict[str, list[AppQuery]], dict[str, list[str]], dict[str, Recorded | str]]:
    """The queries each check asks about: read from pg_stat_statements on the target (read-only) or from files."""
    queries: dict[str, list[AppQuery]] = {}
    notes: dict[str, list[str]] = {}
    recorded: dict[str, Recorded | str] = {}
    for spec in checks:
        p = spec.params
        if spec.kind == "pg_stat_statements":
            try:
                found = appqueries.recorded(run.ro, tuple(p["roles"]), p["min_calls"], paths)
            except appqueries.Unavailable as exc:
                recorded[spec.test_id] = str(exc)
                continue
            except psycopg.errors.InsufficientPrivilege as exc:
                recorded[spec.test_id] = (f"pg_stat_statements cannot be read by this role ({exc.diag.message_primary})"
                                          ": GRANT pg_read_all_stats TO it")
                continue
            recorded[spec.test_id] = found
            queries[spec.test_id] = found.queries
        elif spec.kind == "app_queries":
            if p["file"]:
                queries[spec.test_id], notes[spec.test_id] = appqueries.from_files(run.plan.folder, p["file"],
                                                                                           run.extras.pins)
            else:
                queries[spec.test_id] = [appqueries.inline(p["name"], p["query"])]
    return queries, notes, recorded


def _plpgsql_check(conn: psycopg.Connection[Any], major: int) -> tuple[str, str]:
    if dbcode.plpgsql_check_schema(conn) is not None:
        return dbcode.PLPGSQL_CHECK, ""
    try:
        with conn.transaction():
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(CHECK_SCHEMA)))
            conn.execute(sql.SQL("CREATE EXTENSION plpgsql_check SCHEMA {}").format(sql.Identifier(CHECK_SCHEMA)))
    except psycopg.Error as exc:
        why = exc.diag.message_primary or str(exc)
        return dbcode.PREPARE, f"plpgsql_check is not available ({why}): {ENABLE_PLPGSQL_CHECK.format(major=major)}"
    return dbcode.PLPGSQL_CHECK, ""


def _ask(conn: psycopg.Connection[Any], checks: tuple[CheckSpec, ...], queries: dict[str, list[AppQuery]],
         method: str, paths: dict[str, str]) -> Answers:
    answers = Answers()
    for spec in checks:
        if spec.kind == "database_code":
            use = dbcode.PREPARE if spec.params["plpgsql"] == dbcode.PREPARE else method
            answers.code[spec.test_id] = dbcode.examine(conn, dbcode.routines(conn, spec.params["schemas"]), use,
                                                        paths)
    for listed in queries.values():
        for query in listed:
            if query.key not in answers.prepared:
                answers.prepared[query.key] = dbcode.prepare(conn, query.text, search_path=query.search_path)
    return answers


def _migrate(run: Phase4Run, copy: scratch.Copy, conn: psycopg.Connection[Any], todo: list[Migration],
             result: Outcome, search_path: str) -> None:
    """Each migration in a session of its own, as on the target, with the target's search_path: the copy is
    another database, without the one the target's sets (ALTER DATABASE ... SET search_path)."""
    absent: set[str] = set()  # roles created by statements not tried: what names them is not tried either
    missing = scratch.extension_objects(run.ro, copy.extensions)  # what the copy lacks: what uses it is not tried
    for migration in todo:
        result.fingerprints[migration.file] = code_hash(conn)
        result.shas[migration.file] = migrate.file_sha256(migration)
        skipped = not_tried(migration, absent, missing)
        result.not_tried += [f"{migration.file}:{s.line}: {copyfilter.shown(s)} ({why})" for s, why in skipped]
        with psycopg.connect(copy.dsn) as writer:
            writer.execute("SELECT pg_catalog.set_config('search_path', %s, false)", (search_path,))
            writer.commit()
            try:
                migrate.apply(writer, migration, run.plan.name, run.plan.schema, record=False,
                              skip=frozenset(s.start for s, _ in skipped),
                              expected_sha256=run.pinned.get(migration.file))
            except MigrationFailed as exc:
                result.failed_migration = exc.summary + (f" ({exc.detail})" if exc.detail else "")
                return


def not_tried(migration: Migration, absent: set[str],
              missing: set[str] | None = None) -> list[tuple[sqltext.Statement, str]]:
    """The statements of a migration that must not run on the copy (copyfilter.py), each with why."""
    try:
        statements = sqltext.split(migration.path.read_text(encoding="utf-8"), migration.file)
    except (sqltext.SqlSyntaxError, UnicodeDecodeError):  # migrate.apply says so, naming the line
        return []
    return [(s, why) for s in statements if (why := copyfilter.not_on_copy(s, absent, missing))]


def code_hash(conn: psycopg.Connection[Any]) -> str:
    """The functions' and triggers' definitions, hashed: equal on the copy and the target while nothing changed."""
    return str(conn.execute(_CODE_HASH).fetchone()[0])  # type: ignore[index]


def relations(conn: psycopg.Connection[Any]) -> dict[str, str]:
    return {str(r[0]): str(r[1]) for r in conn.execute(_RELATIONS).fetchall()}


def broken_code(before: dbcode.CodeReport | None, after: dbcode.CodeReport) -> list[dbcode.Breakage]:
    """What fails after and did not before (the same problem of the same function, through the same table)."""
    known = {b.key for b in before.problems} if before else set()
    return [b for b in after.problems if b.key not in known]


def broken_queries(outcome: Outcome, test_id: str) -> tuple[list[tuple[AppQuery, tuple[str, str]]], list[AppQuery]]:
    """(queries that prepared before the migrations and not after, with the error; queries that failed before)."""
    broken, failing = [], []
    for query in outcome.queries.get(test_id, []):
        if outcome.before.prepared.get(query.key) is not None:
            failing.append(query)
        elif (error := outcome.after.prepared.get(query.key)) is not None:
            broken.append((query, error))
    return broken, failing
