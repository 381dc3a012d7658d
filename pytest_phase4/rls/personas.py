"""The `personas` check: what each persona sees and may write, before the first migration and after each migration
that may change it, and the ways a migration widens it (persona_compare).

- Through a view: a view or materialized view the plan created or changed shows a persona more rows than its own
  definition shows the same persona read with the persona's own rights (what security_invoker would show: the
  rows of the tables under it that the persona may see), in the same snapshot. Exact at any moment, whatever the
  application writes.
- In a kept relation (table or view, the plan's or not): what a persona sees changed by more than the relation
  itself did (or the other way), per tenant where it has the tenant column: a tenant's rows the persona could not
  see before and can now, or the reverse. Its own rows are counted by the checking role in the same snapshot, so
  rows the application writes meanwhile move both numbers alike.
- In a new relation: rows of a tenant the persona saw in no relation before.
- In writes: the rows of each table a persona may UPDATE, DELETE or INSERT (persona_writes), compared the same way.
- A persona that is nobody (its user_query gave NULL claims), and a read as a persona that set the role back to
  the checking role, are failures too: they would prove nothing.

The counts before a plan's first migration are stored with the run's baseline: a later run (a re-run after a
failure) compares a migration applied before it with them, not with a count taken after it.

A migration that changes no view, policy, grant, RLS setting, function, table or row (its record in
pytest_phase4.changes), no role (its file) and nothing of roles, memberships, grants or policies (a fingerprint of
the catalog, so a GRANT inside a DO block counts) is not counted again: what the personas see stands. No pytest here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from pglast import ast

from pytest_phase4.db import changes, ledger, sqltext
from pytest_phase4.errors import CheckFailed, Phase4Error
from pytest_phase4.plan.model import CheckSpec, Plan
from pytest_phase4.rls import exposure, persona_compare, persona_count
from pytest_phase4.rls.persona_compare import Side
from pytest_phase4.rls.persona_seen import Counted

if TYPE_CHECKING:
    from pytest_phase4.run import Phase4Run

# What a migration must have changed for the personas to be counted again after it.
VISIBILITY = frozenset({"view", "materialized view", "policy", "function", "procedure", "schema", "table"})
_ROLE_STATEMENTS = (ast.GrantRoleStmt, ast.AlterRoleStmt, ast.CreateRoleStmt, ast.AlterDefaultPrivilegesStmt,
                    ast.AlterRoleSetStmt)


@dataclass
class Moment:
    label: str  # "before the first migration", or the migration file after which it was counted
    step: str
    applied: frozenset[str]  # migration files in the ledger when it was counted
    at: datetime
    counted: Counted
    claims: dict[str, Any] = field(default_factory=dict)  # a stored moment's: the users it was counted as


@dataclass
class PersonaBook:
    """Every moment counted in this run, the claims each persona was given, and what failed where."""

    moments: list[Moment] = field(default_factory=list)
    claims: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    findings: list[tuple[str, str]] = field(default_factory=list)  # (step, text)


def _fmt(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def _tenants(counts: Mapping[str, int] | None) -> str:
    if not counts:
        return ""
    return "; by tenant: " + ", ".join(f"{t} {n:,}" for t, n in sorted(counts.items(), key=lambda i: (-i[1], i[0])))


_SECRET = re.compile(r"(?i)pass|secret|token|key|hash|salt|jwt|credential|session")


def shown(values: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A persona's settings or claims as the evidence and the baseline keep them: values whose name looks like a
    secret (a password, a token, a key) masked; the user's id and tenant are what the counts need."""
    if values is None:
        return None
    return {k: ("***" if _SECRET.search(k) and v is not None else v) for k, v in values.items()}


def relevant(record: changes.Record | None, path: Path) -> bool:
    """Whether a migration may have changed what a persona sees: its record shows a change of VISIBILITY or a row
    written, or (not in the record: roles are the cluster's) its file grants or changes a role."""
    if record is None or record.rows is None or record.rows or any(c.obj.type in VISIBILITY for c in record.changes):
        return True
    try:
        statements = sqltext.split(path.read_text(), path.name)
    except (OSError, sqltext.SqlSyntaxError):
        return True
    return any(isinstance(s.node, _ROLE_STATEMENTS) for s in statements)


def plan_views(conn: Any, plan: Plan, upto: str | None) -> set[str]:
    """Identities of the views and materialized views the plan's applied migrations created or changed."""
    found, _, _ = exposure.plan_changes(conn, plan, upto=upto)
    return {c.after.identity for _, c in found if c.after is not None and c.after.type in ("view", "materialized view")}


def view_leaks(counted: Counted, views: set[str], names: Sequence[str]) -> list[str]:
    """Views of the plan that show a persona more rows than their definition read with its own rights."""
    problems = []
    for persona in names:
        for name, rel in counted.relations.items():
            seen = counted.seen[persona].get(name)
            if name not in views or seen is None or seen.rows is None or seen.own is None or seen.rows <= seen.own:
                continue
            extra = {t: n - (seen.own_tenants or {}).get(t, 0) for t, n in (seen.tenants or {}).items()}
            others = ", ".join(f"{n:,} of tenant {t}" for t, n in sorted(extra.items(), key=lambda i: (-i[1], i[0]))
                               if n > 0)
            tables = ", ".join(f"{t} {_fmt(counted.seen[persona][t].rows)}" if t in counted.seen[persona] else t
                               for t in rel.under)
            what = "view" if rel.kind == "v" else "materialized view"
            problems.append(
                f"persona {persona} sees {seen.rows:,} rows of {what} {name}{_tenants(seen.tenants)}; read with "
                f"its own rights (security_invoker) the view's definition shows it {seen.own:,}"
                f"{_tenants(seen.own_tenants)}" + (f" ({seen.note})" if seen.note else "") +
                f": {seen.rows - seen.own:,} row(s) it may not see" + (f" ({others})" if others else "") +
                (f"; of the RLS table(s) under it, the persona sees: {tables}" if tables else "") +
                (f"; the view runs with its owner {rel.owner}'s rights" if rel.kind == "v" and not rel.invoker else
                 "; a materialized view has no row-level security" if rel.kind == "m" else ""))
    return problems


def uncounted(counted: Counted, views: set[str], names: Sequence[str]) -> list[str]:
    """Tables and plan views a persona could not be counted in (a timeout, an error): nothing is proven of them."""
    problems = []
    for persona in names:
        for name, rel in counted.relations.items():
            seen = counted.seen[persona].get(name)
            if seen is None or (rel.is_view and name not in views):
                continue
            if seen.rows is None and seen.note != "no SELECT privilege":
                problems.append(f"persona {persona}: {name} could not be counted ({seen.note})")
            elif rel.is_view and seen.rows is not None and seen.own is None:
                problems.append(f"persona {persona}: {name}: {seen.note}")
    return problems


def table_changes(before: Moment, after: Moment, names: Sequence[str]) -> list[str]:
    """Relations kept between two moments whose rows a persona sees moved by more than their own rows, by tenant
    (persona_compare.kept)."""
    return persona_compare.kept(_side(before), Side(f"after {after.label}", after.counted), names)


def _side(moment: Moment) -> Side:
    return Side(_when(moment), moment.counted)


def counted_schemas(conn: Any, plan: Plan) -> list[str]:
    """The schemas the personas are counted in: the API's (the plan's and the live setting's) and the plan's."""
    return list(dict.fromkeys([*exposure.exposed_schemas(conn, plan.rls), plan.schema]))


def stored(run: Phase4Run, migration: str) -> Moment | None:
    """The personas' counts stored with the baseline this run compares with, taken before `migration` was
    applied (by an earlier run): a re-run compares with what the personas saw before it, not after."""
    try:
        choice = run.baseline()
    except (psycopg.Error, Phase4Error):  # no baseline is no comparison; the baseline's own checks say why
        return None
    base = choice.baseline
    data = base.snap.personas if base is not None else {}
    if not data or migration in base.snap.applied:  # type: ignore[union-attr]
        return None
    try:
        counted = Counted.from_store(data["counted"])
        at = datetime.fromisoformat(str(data["at"]))
    except (KeyError, TypeError, ValueError):
        return None
    label = f"before {migration} (stored with the baseline {base.label})"  # type: ignore[union-attr]
    moment = Moment(label, "baseline", frozenset(base.snap.applied), at, counted)  # type: ignore[union-attr]
    moment.claims = {str(k): v for k, v in dict(data.get("claims", {})).items()}
    return moment


def _stored_claims(run: Phase4Run, plan: Plan, applied: frozenset[str]) -> dict[str, Any]:
    first = next((m.file for m in plan.migrations if m.file in applied), None)
    moment = stored(run, first) if first is not None else None
    return moment.claims if moment is not None else {}


def for_baseline(run: Phase4Run, applied: Sequence[str]) -> dict[str, Any]:
    """The personas' counts taken at the baseline's moment (the same migrations applied), for the baseline file."""
    plan_files = {m.file for m in run.plan.migrations}
    for m in run.personas.moments:
        if m.applied & plan_files == set(applied) & plan_files:
            return {"at": m.at.isoformat(), "label": m.label,
                    "claims": {p: shown(c) for p, c in run.personas.claims.items()},
                    "counted": m.counted.to_store()}
    return {}


def check(run: Phase4Run, spec: CheckSpec) -> str:
    plan, conn, book = run.plan, run.ro, run.personas
    personas = plan.rls.personas
    names = [p.name for p in personas]
    applied = frozenset(ledger.read(conn))
    migration = plan.migration(spec.step)
    schemas = counted_schemas(conn, plan)
    latest = book.moments[-1] if book.moments else None
    same = latest is not None and latest.counted.fingerprint == persona_count.fingerprint(conn, schemas)
    if migration is not None and latest is not None and same and migration.file not in latest.applied:
        record = changes.read(conn, [migration.file]).get(migration.file)
        if not relevant(record, migration.path):
            return (f"{migration.file} changed no view, policy, grant, RLS setting, function, table, row, role or "
                    f"membership: what the {len(names)} persona(s) see stands as counted {_when(latest)}")
    if latest is not None and latest.applied == applied and same:
        moment = latest  # nothing was applied or changed since it was counted
    else:
        persona_count.can_become(conn, personas)
        earlier = _stored_claims(run, plan, applied) if not book.claims else {}
        for p in personas:
            if p.name not in book.claims:  # one user per persona for the whole run: before and after compare
                # a re-run is the same users as the counts stored with its baseline (unless a value was masked)
                found = earlier.get(p.name)
                book.claims[p.name] = found if isinstance(found, dict) and "***" not in found.values() else \
                    persona_count.resolve_claims(conn, p)
        counted = persona_count.count(conn, personas, book.claims, schemas, plan.rls.tenant_column)
        label = migration.file if migration is not None else (
            "before the first migration" if not applied & {m.file for m in plan.migrations}
            else f"before this run's migrations ({len(applied)} applied already)")
        moment = Moment(label, spec.step, applied, datetime.now(UTC), counted)
        book.moments.append(moment)
    views = plan_views(conn, plan, migration.file if migration else None)
    missing = uncounted(moment.counted, views, names)
    problems = persona_compare.nobody(book.claims, [p.name for p in personas if p.user_query])
    leaks = view_leaks(moment.counted, views, names)
    problems += persona_compare.escapes(moment.counted, names) + leaks
    told = frozenset((p, n) for p in names for n, s in moment.counted.seen[p].items()
                     if n in views and s.rows is not None and s.own is not None and s.rows > s.own)
    note = ""
    before: Moment | None = None
    if migration is not None and latest is not None and migration.file not in latest.applied:
        before = latest
    elif migration is not None:
        before = stored(run, migration.file)
        if before is None:
            note = (f"; {migration.file} was applied before this run and no count of the personas from before it "
                    "was stored with a baseline: kept relations are not compared")
        else:
            note = f"; compared with the personas' counts {before.label}"
    if before is not None and before is not moment:
        b, a = _side(before), Side(f"after {moment.label}", moment.counted)
        problems += persona_compare.kept(b, a, names) + persona_compare.new(b, a, names, told)
        problems += persona_compare.writes(b, a, names)
    book.findings += [(spec.step, p) for p in missing + problems]
    if missing or problems:
        found = ", ".join(f"{n} {what}" for n, what in ((len(missing), "relation(s) not counted"),
                                                        (len(problems), "widening(s)")) if n)
        raise CheckFailed("no persona to see or write more than before the migration (through the plan's views, "
                          "kept or new relations, policies, grants or roles)", found,
                          f"personas {', '.join(names)}, counted {_when(moment)}", details=missing + problems,
                          hint=spec.hint or "a view over tables with row-level security needs security_invoker "
                          "= true (ALTER VIEW ... SET (security_invoker = true)); a policy, grant or role that lets "
                          "a persona see or write more must be meant: fix the migration, or roll back "
                          "(--phase4-rollback)")
    return _summary(moment, names) + note


def _when(moment: Moment) -> str:
    return moment.label if moment.step in ("preflight", "baseline") else f"after {moment.label}"


def _summary(moment: Moment, names: Sequence[str]) -> str:
    c = moment.counted
    parts = []
    for persona in names:
        seen = [s for s in c.seen[persona].values() if s.rows is not None]
        parts.append(f"{persona} {sum(s.rows or 0 for s in seen):,} rows in {len(seen)}")
    return (f"{len(c.relations)} relations counted as each persona {_when(moment)}, in one snapshot: "
            + ", ".join(parts) + " (the report's persona table has each relation)")


def to_json(run: Phase4Run) -> dict[str, Any] | None:
    """The persona table for the JSON evidence: each moment's counts, persona x relation."""
    book, plan = run.personas, run.plan
    if not plan.rls.personas:
        return None
    return {
        "personas": [{"name": p.name, "role": p.role, "settings": shown(p.settings),
                      "claims": shown(book.claims.get(p.name, p.claims))} for p in plan.rls.personas],
        "exposed_schemas": list(plan.rls.exposed_schemas), "tenant_column": plan.rls.tenant_column,
        "moments": [{"label": m.label, "step": m.step, "at": m.at.isoformat(),
                     "relations": {n: r.to_json() for n, r in m.counted.relations.items()},
                     "totals": {n: s.to_json() for n, s in m.counted.totals.items()},
                     "seen": {p: {n: s.to_json() for n, s in rels.items()} for p, rels in m.counted.seen.items()},
                     "writes": {p: {t: {c: s.to_json() for c, s in cmds.items()} for t, cmds in tables.items()}
                                for p, tables in m.counted.writes.items()}}
                    for m in book.moments],
        "findings": [{"step": step, "text": text} for step, text in book.findings],
    }
