"""The blast-radius check kinds: `database_code`, `pg_stat_statements` and `app_queries` (from `[[app_queries]]`).

In the blast_radius stage (before the first migration; `-m preflight` selects it) each reports what blast.py
found on the schema copy: what answered before the pending migrations and fails after them. The same check in the
post stage confirms it on the migrated database itself, read-only: what fails there now and did not fail on the
copy before the migrations. No pytest here; every text shown passes through the run's scrub.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import psycopg

from pytest_phase4.blast import appqueries, dbcode
from pytest_phase4.blast import radius as blast
from pytest_phase4.blast.appqueries import AppQuery, Recorded
from pytest_phase4.db import migrate
from pytest_phase4.errors import CheckFailed, sql_error, timeout_hint
from pytest_phase4.kinds.base import Kind, Param, register
from pytest_phase4.kinds.context import CheckSkipped
from pytest_phase4.plan.blast import STAGE
from pytest_phase4.plan.model import CheckSpec, Migration

if TYPE_CHECKING:
    from pytest_phase4.run import Phase4Run

_NOT_COMPARABLE = ("the blast_radius stage computed no radius in this run (not selected, or no migration was "
                   "pending then): there is nothing to confirm")


def run_check(run: Phase4Run, spec: CheckSpec) -> str:
    try:
        text = _confirm(run, spec) if spec.stage == "post" else _predict(run, spec)
    except CheckFailed as exc:
        exc.origin, exc.hint = exc.origin or spec.where, exc.hint or spec.hint
        exc.found, exc.details = run.target.scrub(exc.found), [run.target.scrub(d) for d in exc.details]
        raise
    except psycopg.Error as exc:
        raise CheckFailed(f"check {spec.test_id} to run", run.target.scrub(sql_error(exc)), spec.where,
                          hint=spec.hint or timeout_hint(exc, run.check_timeout)) from None
    return run.target.scrub(text)


def _plpgsql_mode(params: Mapping[str, Any]) -> str | None:
    modes = ("auto", "plpgsql_check", "prepare")
    return None if params["plpgsql"] in modes else f"plpgsql must be one of {', '.join(map(repr, modes))}"


def _one_source(params: Mapping[str, Any]) -> str | None:
    if bool(params["file"]) == bool(params["query"]):
        return 'give either file = "queries/*.sql" (a glob, relative to the plan) or query = "SELECT ..."'
    return 'a query needs a name = "..." (its test id)' if params["query"] and not params["name"] else None


# Before the first migration, on a copy of the schema; again in post, on the migrated database (plan_blast.py).
_confirm_after = Param("bool", False, True)
_STAGES = (STAGE,)
_WHY = ("it runs before the migrations, on a copy of the schema (and again in post, on the migrated database): "
        "list it under [[blast_radius]]")
register(
    Kind("database_code", "every SQL and PL/pgSQL function, procedure and trigger function still works after the "
         "pending migrations", {"schemas": Param("names", False, ()), "plpgsql": Param("str", False, "auto"),
                                "confirm_after": _confirm_after},
         label_fn=lambda p, _: ",".join(p["schemas"]) or "all_schemas", constraint=_plpgsql_mode, stages=_STAGES,
         stage_reason=_WHY, run_whole=run_check),
    Kind("pg_stat_statements", "every query pg_stat_statements recorded still prepares after the pending migrations",
         {"roles": Param("names", False, ()), "min_calls": Param("int", False, 1), "confirm_after": _confirm_after},
         label_fn=lambda p, _: ",".join(p["roles"]) or "other_roles", stages=_STAGES, stage_reason=_WHY,
         run_whole=run_check),
    Kind("app_queries", "each query of the files (or the query) still prepares after the pending migrations",
         {"file": Param("str", False), "name": Param("str", False), "query": Param("str", False),
          "confirm_after": _confirm_after}, label_fn=lambda p, _: str(p["name"] or p["file"]),
         constraint=_one_source, stages=_STAGES, stage_reason=_WHY, run_whole=run_check),
)


# -- before the migrations: on the copy -----------------------------------------------------------------------
def _predict(run: Phase4Run, spec: CheckSpec) -> str:
    out = blast.outcome(run)
    if out is None:
        raise CheckSkipped("no pending migration: every migration of the plan is applied (ledger), so nothing is "
                           "left to break")
    if out.failed_migration:
        raise CheckFailed("the pending migrations to apply to a copy of the target's schema (no data)",
                          out.failed_migration, out.where, details=_not_tried(out),
                          hint=_failed_hint(out))
    where = f"{out.where}, after {len(out.pending)} pending migration(s)" + (
        f" ({len(out.not_tried)} statement(s) of them not tried there: see the blast radius section)"
        if out.not_tried else "")
    if spec.kind == "database_code":
        if spec.params["plpgsql"] == dbcode.PLPGSQL_CHECK and out.method != dbcode.PLPGSQL_CHECK:
            raise CheckSkipped(out.method_note)
        before, after = out.before.code.get(spec.test_id), out.after.code[spec.test_id]
        return _code(run, spec, after, blast.broken_code(before, after), before, where, out)
    recorded = out.recorded.get(spec.test_id)
    if isinstance(recorded, str):
        raise CheckSkipped(recorded)
    broken, failing = blast.broken_queries(out, spec.test_id)
    return _queries(spec, out.queries.get(spec.test_id, []), broken, failing, recorded,
                    out.notes.get(spec.test_id, []), where)


def _code(run: Phase4Run, spec: CheckSpec, after: dbcode.CodeReport, broken: list[dbcode.Breakage],
          before: dbcode.CodeReport | None, where: str, out: blast.Outcome | None) -> str:
    how = "plpgsql_check" if after.method == dbcode.PLPGSQL_CHECK else "each static query PREPAREd"
    notes = []
    still = {a.key for a in after.problems}
    counted = {b.routine for b in broken}
    if before is not None and (known := [b for b in before.problems if b.key in still
                                         and b.routine not in counted]):
        notes.append(f"{len({b.routine for b in known})} already failing before the migrations (not counted)")
    if after.skipped:
        notes.append(f"{len(after.skipped)} not checked")
    if after.dynamic:
        notes.append(f"{after.dynamic} EXECUTE statement(s) of dynamic SQL not checked")
    tail = "; ".join(["", *notes])
    details = [*([out.method_note] if out is not None and out.method_note else []), *after.skipped]
    if broken:
        names = list(dict.fromkeys(b.routine for b in broken))
        raise CheckFailed(
            "every function, procedure and trigger function to work with the migrated schema",
            f"{len(names)} would break: {', '.join(names)}", where,
            details=[*(b.describe() for b in broken), *details],
            hint="change them in a migration before the one that drops what they use (CREATE OR REPLACE FUNCTION), "
                 "or drop them; then run preflight again")
    return (f"{len(after.checked)} function(s), procedure(s) and trigger function(s) checked ({how}) on {where}: "
            f"none breaks{tail}")


def _queries(spec: CheckSpec, queries: list[AppQuery], broken: list[tuple[AppQuery, tuple[str, str]]],
             failing: list[AppQuery], recorded: Recorded | None, notes: list[str], where: str) -> str:
    p = spec.params
    what = ("recorded by pg_stat_statements" if recorded is not None else
            f"from {p['file']}" if p.get("file") else f"of [[app_queries]] {p.get('name')}")
    since = _since(recorded)
    counted = []
    if failing:
        counted.append(f"{len(failing)} did not prepare before the migrations either (not counted)")
    if recorded is not None:
        if recorded.hidden:
            counted.append(f"{recorded.hidden} not readable by this role (GRANT pg_read_all_stats TO it)")
        if recorded.left_out:
            counted.append(f"{recorded.left_out} of roles not asked for left out (this role's own unless roles = "
                           "[...] names them)")
    if broken:
        volume = f" ({_calls(sum(q.calls for q, _ in broken))}{since})" if recorded is not None else ""
        raise CheckFailed(
            "every application query to prepare on the migrated schema",
            f"{_count(len(broken))}{volume} no longer prepare", where,
            details=[f"{q.describe()}\n      -> {message} [SQLSTATE {state}]" for q, (state, message) in broken]
            + [*counted, *notes],
            hint="change the application (and deploy it) before the migrations run, or keep what they use")
    if recorded is not None and not queries:
        return f"no query of the application's tables recorded by pg_stat_statements{since}" + "; ".join(
            ["", *counted])
    volume = f" ({_calls(sum(q.calls for q in queries))}{since})" if recorded is not None else ""
    return f"{_count(len(queries))} {what}{volume} prepared on {where}: none breaks" + "; ".join(
        ["", *counted, *notes])


def _not_tried(out: blast.Outcome) -> list[str]:
    return [*out.copy_notes, *(f"not tried on the copy: {line}" for line in out.not_tried)]


def _failed_hint(out: blast.Outcome) -> str:
    if "user mapping" in out.failed_migration and any("user mapping" in n for n in out.copy_notes):
        return ("it reads or writes a foreign table, which the copy does not reach (its user mappings are left out "
                "so that -m preflight writes to no remote server): the check cannot try it, review it by hand; nothing "
                "was done to the target or the remote server")
    if "GSSAPI encryption required" in out.failed_migration and "throwaway server" in out.where:
        return ("what it runs connects to another server (dblink, postgres_fdw: a function or trigger it calls), "
                "which the throwaway server the copy is on never does, so that -m preflight reaches no real server: "
                "the check cannot try it, review it by hand; or, knowing that what it calls then runs for real, copy "
                "the schema to the target's server (--phase4-blast-copy=target); nothing was done to the target")
    if out.not_tried:
        return ("it may need what a statement not tried on the copy (listed) does, such as a role it grants to: if "
                "so, the target is not concerned and the check cannot tell more; otherwise fix the migration; nothing "
                "was done to the target")
    return ("it would fail on the target too, unless it depends on rows the copy does not have: fix the migration; "
            "nothing was done to the target")


def _calls(n: int) -> str:
    return f"{n:,} call{'' if n == 1 else 's'}"


def _count(n: int) -> str:
    return f"{n:,} application quer{'y' if n == 1 else 'ies'}"


def _since(recorded: Recorded | None) -> str:
    return f" since stats reset {recorded.reset:%Y-%m-%d %H:%M %Z}".rstrip() if recorded and recorded.reset else ""


# -- after the migrations: on the target ----------------------------------------------------------------------
def _confirm(run: Phase4Run, spec: CheckSpec) -> str:
    out = run.blast_radius.outcome
    if out is None:
        raise CheckSkipped(_NOT_COMPARABLE)
    if not run.migrated_in_this_run:
        raise CheckSkipped("no migration was applied in this run: nothing to confirm on the database")
    where = f"{run.target.label} (the migrated database, read-only)"
    with run.target.connect(read_only=True, autocommit=True, settings={"statement_timeout": run.check_timeout}) as conn:
        if spec.kind == "database_code":
            wanted = spec.params["plpgsql"] != dbcode.PREPARE and dbcode.plpgsql_check_schema(conn) is not None
            report = dbcode.examine(conn, dbcode.routines(conn, spec.params["schemas"]),
                                    dbcode.PLPGSQL_CHECK if wanted else dbcode.PREPARE, appqueries.role_paths(conn))
            before = out.before.code.get(spec.test_id)
            known = {b.key for b in before.problems} if before else set()
            return _code(run, spec, report, [b for b in report.problems if b.key not in known], before, where,
                         None)
        recorded: Recorded | None = None
        if spec.kind == "pg_stat_statements":
            try:
                recorded = appqueries.recorded(conn, tuple(spec.params["roles"]), spec.params["min_calls"],
                                               appqueries.role_paths(conn))
            except appqueries.Unavailable as exc:
                raise CheckSkipped(str(exc)) from None
            queries = recorded.queries
        else:
            queries = out.queries.get(spec.test_id, [])
        broken, failing = [], []
        for query in queries:
            if out.before.prepared.get(query.key) is not None:
                failing.append(query)
            elif (error := dbcode.prepare(conn, query.text, search_path=query.search_path)) is not None:
                broken.append((query, error))
    return _queries(spec, queries, broken, failing, recorded, [], where)


# -- one line for the terminal, the JSON and the gate before the point of no return ---------------------------
def breakage(run: Phase4Run, out: blast.Outcome, specs: Iterable[CheckSpec]) -> tuple[str, list[str]]:
    """("the migrations would break 3 application queries (41,210 calls since stats reset ...) and 1 function",
    one line per thing broken), or ("", []) when nothing breaks."""
    if out.failed_migration:
        return "the pending migrations do not apply to a copy of the schema", [out.failed_migration]
    routines: dict[str, dbcode.Breakage] = {}
    queries: dict[tuple[str, str | None], tuple[AppQuery, str]] = {}
    for spec in specs:
        if spec.kind == "database_code" and spec.test_id in out.after.code:
            for b in blast.broken_code(out.before.code.get(spec.test_id), out.after.code[spec.test_id]):
                routines.setdefault(b.routine, b)
        elif spec.kind in ("pg_stat_statements", "app_queries"):
            for q, (_, message) in blast.broken_queries(out, spec.test_id)[0]:
                queries.setdefault(q.key, (q, message))
    parts, items = [], []
    if queries:
        calls = sum(q.calls for q, _ in queries.values())
        recorded = next((r for r in out.recorded.values() if isinstance(r, Recorded)), None)
        parts.append(_count(len(queries)) + (f" ({_calls(calls)}{_since(recorded)})" if calls else ""))
        items += [f"{q.describe(160)} ({message})" for q, message in queries.values()]
    if routines:
        parts.append(f"{len(routines)} function{'s' if len(routines) > 1 else ''}")
        items += [b.routine + (f" line {b.line}" if b.line else "") + f" ({b.message})" for b in routines.values()]
    if not parts:
        return "", []
    return run.target.scrub(f"the migrations would break {' and '.join(parts)}"), [run.target.scrub(i) for i in items]


def breakage_summary(run: Phase4Run, out: blast.Outcome, specs: Iterable[CheckSpec]) -> str:
    """The same in one line, or "" when nothing breaks."""
    headline, items = breakage(run, out, specs)
    return f"{headline}: {'; '.join(items)}" if headline else ""


def terminal_lines(run: Phase4Run) -> list[tuple[str, bool]]:
    """(line, is a problem) for the terminal's 'phase4 blast radius' section."""
    state = run.blast_radius
    if state.failure is not None:
        return [(f"no scratch copy of the schema: {state.failure.found}", True)]
    out = state.outcome
    if out is None:
        return []
    headline, items = breakage(run, out, blast.specs(run))
    head = f"{out.where}: {len(out.pending)} pending migration(s) applied to a copy of the schema ({out.seconds:.1f} s)"
    lines = [(head, False), (f"{headline}:" if headline else "nothing the migrations change breaks a function, "
                             "trigger function or application query that was checked", bool(headline))]
    lines += [(f"  - {item}", True) for item in items]
    lines += [(line, False) for line in _not_tried(out)]
    if out.changed:
        lines.append((f"relations they change: {', '.join(out.changed)}", False))
    if state.rechecked:
        lines.append((f"before the point of no return: {state.rechecked}", "nothing breaks" not in state.rechecked))
    return lines


def to_json(run: Phase4Run) -> dict[str, Any] | None:
    out = run.blast_radius.outcome
    if out is None and run.blast_radius.failure is None:
        return None
    if out is None:
        return {"error": run.target.scrub(run.blast_radius.failure.summary if run.blast_radius.failure else "")}
    return {"where": out.where, "pending": list(out.pending), "seconds": round(out.seconds, 2),
            "plpgsql": out.method, "changed": list(out.changed),
            "left_out_of_copy": list(out.copy_notes), "not_tried": list(out.not_tried),
            "summary": breakage_summary(run, out, blast.specs(run)) or "nothing breaks",
            "rechecked": run.target.scrub(run.blast_radius.rechecked)}


def recheck(run: Phase4Run, migration: Migration) -> str | None:
    """Before the point of no return: when a pending migration file or the database's code changed since the
    blast_radius stage computed the radius, compute it again; what it now breaks, or None."""
    state, specs = run.blast_radius, blast.specs(run)
    if state.outcome is None or not specs or migration.file not in state.outcome.fingerprints:
        return None
    todo = blast.pending(run, after=migration)
    changed = [m.file for m in todo if migrate.file_sha256(m) != state.outcome.shas.get(m.file)]
    why = (f"{', '.join(changed)} changed" if changed else
           "the database's functions or triggers changed" if blast.code_hash(run.ro) != state.outcome.fingerprints[
               migration.file] else "")
    if not why:
        return None
    try:
        again = blast.compute(run, specs, todo)
    except CheckFailed as exc:
        state.rechecked = f"{why} since the blast_radius stage; computed again: {exc.summary}"
        return state.rechecked
    summary = breakage_summary(run, again, specs) if again else ""
    state.rechecked = f"{why} since the blast_radius stage; computed again: {summary or 'nothing breaks'}"
    return state.rechecked if summary else None
