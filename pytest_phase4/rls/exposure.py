"""Check kind `rls_exposure`: what the plan created or changed must not widen what an API role can see.

Supabase's splinter lints are the anchor, scoped to the objects the plan's migrations created or changed (their
records in pytest_phase4.changes, changes.py), or with `scope = "schemas"` to everything in the exposed schemas:

- a view (0010) or materialized view (0016) over a table with row-level security, in an exposed schema, that a
  role subject to RLS may read (or write: an updatable view writes with the rights it reads with), and that
  runs with its owner's rights (no security_invoker; a materialized view always does): whoever may read it sees
  every row its owner sees;
- a table with RLS enabled and no policy (0008), a table with policies and RLS disabled (0007), a table in an
  exposed schema without RLS (0013);
- a permissive policy for INSERT, UPDATE, DELETE or ALL whose USING or WITH CHECK is always true, for PUBLIC or
  an API role (0024); on a table with the tenant column, one (for SELECT too, but USING (true): public reading)
  whose condition reads nothing of the row, only the caller (auth.uid() IS NOT NULL, a claim every user has);
  one that reads what the caller sets itself: user_metadata, request headers or cookies (0015);
- a SECURITY DEFINER function executable by PUBLIC or an API role without a fixed search_path (0011, 0028);
  with one, any in an exposed schema but a trigger function, whatever it returns (0028/0029: /rpc serves it, one
  json value of every row as well as a set, and views over one);
- a view, security_invoker or not, readable by an API role, over a view without security_invoker or a
  materialized view (in any schema: a private one too) over RLS tables, or over a SECURITY DEFINER function
  returning rows (a set, or json, jsonb, an array or a record carrying them): the owner's rights come back one
  level down;
- a foreign table in an exposed schema readable by an API role (0017): it cannot have row-level security;
- a rule with actions on a relation of an exposed schema that an API role may fire (ours, no splinter lint): its
  actions run with the owner's rights, row-level security of what they write bypassed.

Readers are who holds SELECT on the relation or on any of its columns (column-level grants read the rows too). The
exposed schemas are the plan's and those the database's pgrst.db_schemas settings name (ALTER ROLE authenticator
SET pgrst.db_schemas: what PostgREST serves, as splinter reads it).

Read-only; names are passed as parameters or composed with psycopg.sql. No pytest here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from pytest_phase4.db import changes, ledger
from pytest_phase4.db.changes import Change
from pytest_phase4.errors import CheckFailed
from pytest_phase4.plan.model import CheckSpec, Plan, RlsSettings
from pytest_phase4.rls import exposure_sql as q
from pytest_phase4.rls.policy_expr import CHOSEN, always_true, off_the_row

_INVOKER = {"security_invoker=true", "security_invoker=on", "security_invoker=yes", "security_invoker=1"}
_VERBS = {"r": "read", "d": "delete"}
_COMMANDS = {"r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE", "*": "ALL"}


@dataclass
class Scope:
    """What the plan's migrations created or changed, by catalog oid, and which migration did it."""

    everything: bool = False  # scope = "schemas", or a migration without a record: every object of the schemas
    relations: set[int] = field(default_factory=set)  # views, materialized views and tables
    tables: set[str] = field(default_factory=set)  # tables by identity: parents of policies the plan touched
    policies: set[int] = field(default_factory=set)
    functions: set[int] = field(default_factory=set)
    rules: set[int] = field(default_factory=set)
    granted: set[str] = field(default_factory=set)  # relations by identity whose columns' grants the plan changed
    origin: dict[int, str] = field(default_factory=dict)  # oid -> "created by x.sql"
    files: list[str] = field(default_factory=list)
    unrecorded: list[str] = field(default_factory=list)  # applied, but without a record of what they did

    def add(self, file: str, change: Change) -> None:
        obj = change.after
        if obj is not None and obj.type in ("table column", "view column", "materialized view column",
                                            "foreign table column") and obj.parent:
            self.granted.add(obj.parent)  # a column's grant reads the rows as well as the table's
            return
        if obj is None:  # dropped: a policy's table may be left with RLS and no policy
            if change.before is not None and change.before.type == "policy" and change.before.parent:
                self.tables.add(change.before.parent)
            return
        target = {"view": self.relations, "materialized view": self.relations, "table": self.relations,
                  "foreign table": self.relations, "policy": self.policies, "function": self.functions,
                  "procedure": self.functions, "rule": self.rules}.get(obj.type)
        if target is None:
            return
        target.add(obj.objid)
        self.origin.setdefault(obj.objid, f"{change.action} by {file}")
        if obj.type == "policy" and obj.parent:
            self.tables.add(obj.parent)


def plan_changes(conn: psycopg.Connection[Any], plan: Plan, upto: str | None = None,
                 only: str | None = None) -> tuple[list[tuple[str, Change]], list[str], list[str]]:
    """The changes recorded for the plan's applied migrations (ledger), in plan order: every one up to `upto`
    (a file; None: all), or only the migration `only`. Returns (file, change) pairs, the files, and the applied
    files without a record (applied by a version that did not record)."""
    applied = ledger.read(conn)
    files = []
    for m in plan.migrations:
        if m.file in applied and (only is None or m.file == only):
            files.append(m.file)
        if m.file == upto:
            break
    records = changes.read(conn, files)
    found = [(f, c) for f in files if f in records for c in records[f].changes]
    return found, files, [f for f in files if f not in records]


def scope_of(conn: psycopg.Connection[Any], plan: Plan, spec: CheckSpec) -> Scope:
    """The objects a check looks at: in a migration's verify, what that migration did; elsewhere, what every
    applied migration of the plan did; with scope = "schemas", everything in the exposed schemas."""
    if spec.params.get("scope") == "schemas":
        return Scope(everything=True)
    only = spec.step if plan.migration(spec.step) is not None else None
    found, files, unrecorded = plan_changes(conn, plan, only=only)
    scope = Scope(files=files, unrecorded=unrecorded, everything=bool(unrecorded))
    for file, change in found:
        scope.add(file, change)
    return scope


@dataclass(frozen=True)
class Finding:
    name: str  # schema.name of the object, as the plan's allow list names it
    lint: str  # splinter's number and name
    text: str


def _q(conn: psycopg.Connection[Any], *names: str) -> str:
    return sql.Identifier(*names).as_string(conn)


def _roles(names: Iterable[str]) -> str:
    return ", ".join(sorted(names, key=lambda n: (n != "PUBLIC", n)))


def _finding(scope: Scope, oid: int, name: str, lint: str, subject: str, label: str, said: str,
             fix: str) -> Finding:
    """One finding's line: the object (`subject`), which migration made it, the lint (`label`), what it exposes,
    and the fix."""
    origin = f" ({scope.origin[oid]})" if oid in scope.origin else ""
    return Finding(name, lint, f"{subject}{origin} [{label}]: {said}; fix: {fix}")


def views(conn: psycopg.Connection[Any], scope: Scope, schemas: Sequence[str]) -> list[Finding]:
    rows = conn.execute(q.VIEWS, {"schemas": list(schemas), "all": scope.everything,
                                 "oids": sorted(scope.relations), "names": sorted(scope.granted)}).fetchall()
    found = []
    for oid, nsp, name, kind, owner, options, rls_tables, readers, writers, definers, srfs in rows:
        invoker = kind == "v" and bool(_INVOKER & {o.lower().replace(" ", "") for o in options})
        what = "view" if kind == "v" else "materialized view"
        if not readers and not writers:
            continue
        ident, grantees = _q(conn, nsp, name), _roles(readers)
        revoke = f"REVOKE SELECT ON {ident} FROM {grantees}"  # noqa: S608 (a hint shown, never run)
        if not readers:  # writable only: UPDATE and DELETE through it need no SELECT
            grantees = (f"none, but writable by {_roles(writers)} (UPDATE and DELETE without a WHERE clause need "
                        "no SELECT)")
            revoke = f"REVOKE ALL ON {ident} FROM {_roles(writers)}"
        if (invoker or not rls_tables) and ((definers and rls_tables) or srfs):
            under = sorted(definers) + [f"SECURITY DEFINER function {f}()" for f in sorted(srfs)]
            tables = f" over RLS table(s) {', '.join(sorted(rls_tables))}" if rls_tables else ""
            found.append(_finding(
                scope, oid, f"{nsp}.{name}", "0010", f"{what} {nsp}.{name}",
                "splinter 0010 security_definer_view, through what it reads",
                f"readable by {grantees} (subject to row-level security), "
                f"{'security_invoker, ' if invoker else ''}but it reads {', '.join(under)}, which run(s) with "
                f"the owner's rights{tables}: whoever may read it sees what the owner sees, whatever schema they "
                "are in", "make each of them security_invoker (ALTER VIEW ... SET (security_invoker = true)), "
                f"SECURITY INVOKER, or revoke from the API roles what reads them ({revoke})"))
            continue
        if invoker or not rls_tables:
            continue
        if kind == "v":
            lint = "splinter 0010 security_definer_view"
            how = f"runs with its owner {owner}'s rights (no security_invoker)"
            fix = (f"ALTER VIEW {ident} SET (security_invoker = true) (PostgreSQL 15+: the view then reads with the "
                   f"rights of whoever queries it), or {revoke}")
        else:
            lint = "splinter 0016 materialized_view_in_api"
            how = "holds their rows with no row-level security of its own"
            fix = f"{revoke}, or move it to a schema the API does not expose"
        found.append(_finding(
            scope, oid, f"{nsp}.{name}", lint, f"{what} {nsp}.{name}", lint,
            f"readable by {grantees} (subject to row-level security), "
            f"{how} over RLS table(s) {', '.join(sorted(rls_tables))}: they see every row {owner} sees", fix))
    return found


def tables(conn: psycopg.Connection[Any], scope: Scope, schemas: Sequence[str]) -> list[Finding]:
    rows = conn.execute(q.TABLES, {"schemas": list(schemas), "all": scope.everything,
                                  "oids": sorted(scope.relations),
                                  "names": sorted(scope.tables | scope.granted)}).fetchall()
    found = []
    for oid, nsp, name, rls, exposed, policies, readers in rows:
        ident, table = _q(conn, nsp, name), f"table {nsp}.{name}"
        who = f"readable by {_roles(readers)}" if readers else "no role but its owner may read it yet"
        if rls and not policies:
            found.append(_finding(
                scope, oid, f"{nsp}.{name}", "0008", table, "splinter 0008 rls_enabled_no_policy",
                f"row-level security is enabled and no policy exists, so no role subject to it sees or writes any row "
                f"({who})", f"CREATE POLICY ... ON {ident} for the roles that use it, or ALTER TABLE {ident} DISABLE "
                "ROW LEVEL SECURITY if it is not meant to be protected"))
        elif policies and not rls:
            found.append(_finding(
                scope, oid, f"{nsp}.{name}", "0007", table, "splinter 0007 policy_exists_rls_disabled",
                f"policies {', '.join(policies)} exist but row-level security is disabled, so they are ignored "
                f"({who})", f"ALTER TABLE {ident} ENABLE ROW LEVEL SECURITY"))
        elif not rls and exposed and (scope.everything or oid in scope.relations or (
                f"{nsp}.{name}" in scope.granted and readers)):
            found.append(_finding(
                scope, oid, f"{nsp}.{name}", "0013", table, "splinter 0013 rls_disabled_in_public",
                f"in exposed schema {nsp} without row-level security ({who}; default privileges or a later GRANT "
                f"expose every row)", f"ALTER TABLE {ident} ENABLE ROW LEVEL SECURITY and CREATE POLICY ... for the "
                "roles that use it"))
    return found


def policies(conn: psycopg.Connection[Any], scope: Scope, schemas: Sequence[str],
             api_roles: Sequence[str], tenant_column: str = "tenant_id") -> list[Finding]:
    rows = conn.execute(q.POLICIES, {"schemas": list(schemas), "all": scope.everything, "tenant": tenant_column,
                                    "oids": sorted(scope.policies)}).fetchall()
    found = []
    for oid, nsp, table, name, cmd, roles, using, check, tenant in rows:
        api = [r for r in roles or () if r == "PUBLIC" or r in api_roles]
        if not api:
            continue
        policy = f"policy {name} on {nsp}.{table}"
        chosen = sorted({m.lower() for e in (using, check) if e for m in CHOSEN.findall(e)})
        if chosen:
            found.append(_finding(
                scope, oid, f"{nsp}.{table}", "0015", policy, "splinter 0015 rls_references_user_metadata",
                f"for {_COMMANDS[cmd]} by {_roles(api)}, it reads {', '.join(chosen)}, which the caller sets itself "
                f"(user_metadata through auth.updateUser, request headers and cookies with each request): a caller "
                f"picks the rows it may {_VERBS.get(cmd, 'write')}", f"ALTER POLICY {_q(conn, name)} ON "
                f"{_q(conn, nsp, table)} with what the server decides (auth.uid(), app_metadata, a membership table)"))
        loose = []
        if cmd == "r" and tenant and not always_true(using) and off_the_row(using):
            # SELECT USING (true) is how public reading is granted on purpose (splinter excludes it too); a
            # condition on the caller alone (auth.uid() IS NOT NULL, a JWT claim every user has) on a tenant's
            # table is every signed-in user reading every tenant, which personas without that claim cannot see
            loose.append(f"USING ({using}), which reads nothing of the row")
        elif cmd in "wd*" and always_true(using):
            loose.append(f"USING ({using})")
        elif cmd in "wd*" and tenant and off_the_row(using):
            loose.append(f"USING ({using}), which reads nothing of the row")
        if cmd in "aw*" and always_true(check):
            loose.append(f"WITH CHECK ({check})")
        elif cmd in "aw*" and tenant and off_the_row(check):
            loose.append(f"WITH CHECK ({check}), which reads nothing of the row")
        if cmd in "w*" and check is None and always_true(using):
            loose.append("no WITH CHECK (so USING's true applies to the new rows too)")
        if not loose:
            continue
        ident = _q(conn, nsp, table)
        found.append(_finding(
            scope, oid, f"{nsp}.{table}", "0024", policy,
            f"splinter 0024 rls_policy_always_true{', to reading too: ours' if cmd == 'r' else ''}",
            f"permissive, for {_COMMANDS[cmd]} by {_roles(api)}, with {' and '.join(loose)}: any of them may "
            f"{_VERBS.get(cmd, 'write')} every row of every tenant", f"ALTER POLICY {_q(conn, name)} ON {ident} with "
            "a condition on the row (e.g. tenant_id = the caller's tenant), or drop it"))
    return found


def functions(conn: psycopg.Connection[Any], scope: Scope, schemas: Sequence[str],
              api_roles: Sequence[str]) -> list[Finding]:
    rows = conn.execute(q.FUNCTIONS.encode(), {"schemas": list(schemas), "all": scope.everything,
                                              "exposed": list(schemas), "oids": sorted(scope.functions),
                                              "roles": list(api_roles)}).fetchall()
    found = []
    for oid, nsp, name, args, owner, served, fixed, public, roles in rows:
        callers = (["PUBLIC"] if public else []) + [r for r in roles if not public]
        if not callers:
            continue
        ident, function = f"{_q(conn, nsp, name)}({args})", f"function {nsp}.{name}({args})"
        revoke = f"REVOKE EXECUTE ON FUNCTION {ident} FROM {_roles(callers)}"
        if not fixed:
            found.append(_finding(
                scope, oid, f"{nsp}.{name}", "0011", function, "splinter 0011 function_search_path_mutable, 0028",
                f"SECURITY DEFINER (runs as {owner}, bypassing row-level security), executable by {_roles(callers)}, "
                f"without a fixed search_path: a caller's search_path decides which tables and functions its "
                f"unqualified names mean", f"ALTER FUNCTION {ident} SET search_path = '' (and qualify every name in "
                f"its body), or {revoke}"))
        elif served:
            found.append(_finding(
                scope, oid, f"{nsp}.{name}", "0028", function,
                "splinter 0028/0029 security_definer_function_executable",
                f"SECURITY DEFINER, in exposed schema {nsp}, executable by {_roles(callers)}: it runs as {owner}, "
                f"bypassing row-level security on every table it reads or writes, and the API serves it "
                f"(/rpc/{name}), as views over it do: every caller gets what {owner} may read and write (rows, or "
                f"one value made of them, json_agg)", f"ALTER FUNCTION {ident} SECURITY INVOKER, or filter by the "
                f"caller inside it and {revoke} from the roles that must not call it"))
    return found


def foreign_tables(conn: psycopg.Connection[Any], scope: Scope, schemas: Sequence[str],
                   api_roles: Sequence[str]) -> list[Finding]:
    rows = conn.execute(q.FOREIGN, {"schemas": list(schemas), "all": scope.everything, "roles": list(api_roles),
                                   "oids": sorted(scope.relations), "names": sorted(scope.granted)}).fetchall()
    found = []
    for oid, nsp, name, server, readers in rows:
        if not readers:
            continue
        found.append(_finding(
            scope, oid, f"{nsp}.{name}", "0017", f"foreign table {nsp}.{name}", "splinter 0017 foreign_table_in_api",
            f"in exposed schema {nsp}, readable by {_roles(readers)}, through server {server}: a foreign table has "
            f"no row-level security, so they see every row its user mapping reads",
            f"REVOKE ALL ON {_q(conn, nsp, name)} FROM {_roles(readers)}, or move it to a schema the API does not "
            "expose"))
    return found


def rules(conn: psycopg.Connection[Any], scope: Scope, schemas: Sequence[str],
          api_roles: Sequence[str]) -> list[Finding]:
    rows = conn.execute(q.RULES, {"schemas": list(schemas), "all": scope.everything, "roles": list(api_roles),
                                 "oids": sorted(scope.rules)}).fetchall()
    found = []
    for oid, nsp, rel, name, event, owner, roles in rows:
        if not roles:
            continue
        found.append(_finding(
            scope, oid, f"{nsp}.{rel}", "rule", f"rule {name} on {nsp}.{rel}",
            "a rule runs with the owner's rights; no splinter lint",
            f"ON {event}, fired by {_roles(roles)} (who may {event} {nsp}.{rel}): its actions run with the rights of "
            f"{owner}, the owner, so the row-level security of every table they read or write is bypassed: a caller "
            f"writes any tenant's rows through it", f"DROP RULE {_q(conn, name)} ON {_q(conn, nsp, rel)} and do it in "
            "a trigger function that is SECURITY INVOKER (or checks the caller's tenant)"))
    return found


def exposed_schemas(conn: psycopg.Connection[Any], rls: RlsSettings) -> list[str]:
    """The plan's exposed schemas and those the database's pgrst.db_schemas settings name."""
    found = list(rls.exposed_schemas)
    for (cfg,) in conn.execute(q.LIVE.encode()).fetchall():
        for name in str(cfg).split("=", 1)[1].split(","):
            name = name.strip().strip('"')
            if name and name not in found:
                found.append(name)
    return found


def findings(conn: psycopg.Connection[Any], scope: Scope, rls: RlsSettings) -> list[Finding]:
    schemas = exposed_schemas(conn, rls)
    return [*views(conn, scope, schemas), *tables(conn, scope, schemas),
            *policies(conn, scope, schemas, rls.api_roles, rls.tenant_column),
            *functions(conn, scope, schemas, rls.api_roles),
            *foreign_tables(conn, scope, schemas, rls.api_roles), *rules(conn, scope, schemas, rls.api_roles)]


def rls_exposure(conn: psycopg.Connection[Any], plan: Plan, spec: CheckSpec) -> str:
    scope = scope_of(conn, plan, spec)
    allow = set(spec.params.get("allow") or ())
    found = findings(conn, scope, plan.rls)
    allowed = [f for f in found if f.name in allow or f.name.split(".", 1)[1] in allow]
    failing = [f for f in found if f not in allowed]
    schemas = ", ".join(exposed_schemas(conn, plan.rls))
    if scope.everything and not scope.unrecorded:
        what = f"every object of the exposed schemas ({schemas})"
    elif scope.unrecorded:
        what = (f"every object of the exposed schemas ({schemas}): {', '.join(scope.unrecorded)} was applied without a "
                "record of what it did")
    elif scope.files:
        what = f"what {', '.join(scope.files)} created or changed (exposed schemas: {schemas})"
    else:
        what = "nothing: no migration of the plan is applied yet"
    if failing:
        raise CheckFailed("no row-level security exposure (Supabase's splinter lints 0007, 0008, 0010, 0011, 0013, "
                          "0015, 0016, 0017, 0024, 0028/0029)", f"{len(failing)} exposure(s)", what,
                          details=[f.text for f in failing],
                          hint=spec.hint or "apply each fix in a new migration (or correct this one if it is not "
                          "applied anywhere else); an object exposed on purpose can be listed in the check's allow")
    note = f"; allowed by the plan: {', '.join(sorted({f.name for f in allowed}))}" if allowed else ""
    return f"no row-level security exposure in {what}{note}"
