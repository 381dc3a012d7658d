"""The `personas` check: what each persona sees, before the first migration and after each migration that may
change it, and the two ways a migration widens it.

- Through a view: a view or materialized view the plan created or changed shows a persona more rows than its own
  definition shows the same persona read with the persona's own rights (what security_invoker would show: the
  rows of the tables under it that the persona may see), in the same snapshot. Exact at any moment, whatever the
  application writes.
- In a kept table: what a persona sees of a table that existed before the migration changed by more than the table
  itself did (or the other way), per tenant where the table has the tenant column: a tenant's rows the persona
  could not see before and can now, or the reverse. The table's own rows are counted by the checking role in the
  same snapshot, so rows the application writes meanwhile move both numbers alike; only writes that add and delete
  rows of one tenant the persona partly sees could hide or feign a change.

A migration that changes no view, policy, grant, RLS setting, function, table or row (its record in
pytest_phase4.changes) and no role (its file) is not counted again: what the personas see stands. No pytest here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pglast import ast

from pytest_phase4 import changes, exposure, ledger, persona_count, sqltext
from pytest_phase4.errors import CheckFailed
from pytest_phase4.persona_count import Counted, Seen
from pytest_phase4.plan import CheckSpec, Plan

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


def _groups(seen: Seen) -> dict[str, int]:
    return dict(seen.tenants) if seen.tenants is not None else {"": seen.rows or 0}


def table_changes(before: Moment, after: Moment, names: Sequence[str]) -> list[str]:
    """Kept tables whose rows a persona sees changed by more than (or against) the table's own rows, by tenant."""
    problems = []
    b, a = before.counted, after.counted
    for name, rel in a.relations.items():
        old = b.relations.get(name)
        if rel.is_view or old is None or old.is_view or name not in b.totals or name not in a.totals:
            continue
        exact = name not in b.checker_rls and name not in a.checker_rls
        t0, t1 = _groups(b.totals[name]), _groups(a.totals[name])
        for persona in names:
            s0, s1 = b.seen[persona].get(name), a.seen[persona].get(name)
            if s0 is None or s1 is None or (s0.rows is None and s0.note != "no SELECT privilege") or (
                    s1.rows is None and s1.note != "no SELECT privilege"):
                continue  # an error, not a count: nothing to compare
            p0, p1 = _groups(s0), _groups(s1)
            moved = []
            for group in sorted(set(p0) | set(p1) | set(t0) | set(t1)):
                dp = p1.get(group, 0) - p0.get(group, 0)
                dt = t1.get(group, 0) - t0.get(group, 0) if exact else 0
                if not min(0, dt) <= dp <= max(0, dt):
                    label = f"tenant {group}: " if group else ""
                    moved.append(f"{label}{p0.get(group, 0):,} -> {p1.get(group, 0):,} seen, the table "
                                 f"{t0.get(group, 0):,} -> {t1.get(group, 0):,}")
            if moved:
                how = "" if exact else " (the checking role is itself subject to this table's RLS: its rows are not " \
                                       "known, so any change counts)"
                problems.append(
                    f"persona {persona} sees {_fmt(s1.rows or 0)} rows of table {name} after {after.label}, "
                    f"{_fmt(s0.rows or 0)} {before.label if before.step == 'preflight' else 'after ' + before.label}"
                    f" (its own rows: {_fmt(a.totals[name].rows)}, were {_fmt(b.totals[name].rows)}){how}: "
                    + "; ".join(moved))
    return problems


def check(run: Phase4Run, spec: CheckSpec) -> str:
    plan, conn, book = run.plan, run.ro, run.personas
    personas = plan.rls.personas
    names = [p.name for p in personas]
    applied = frozenset(ledger.read(conn))
    migration = plan.migration(spec.step)
    latest = book.moments[-1] if book.moments else None
    if migration is not None and latest is not None:
        record = changes.read(conn, [migration.file]).get(migration.file)
        if not relevant(record, migration.path):
            return (f"{migration.file} changed no view, policy, grant, RLS setting, function, table, row or role: "
                    f"what the {len(names)} persona(s) see stands as counted {_when(latest)}")
    if latest is not None and latest.applied == applied:
        moment = latest  # nothing was applied since it was counted
    else:
        persona_count.can_become(conn, personas)
        for p in personas:
            if p.name not in book.claims:  # one user per persona for the whole run: before and after compare
                book.claims[p.name] = persona_count.resolve_claims(conn, p)
        schemas = list(dict.fromkeys([*plan.rls.exposed_schemas, plan.schema]))
        counted = persona_count.count(conn, personas, book.claims, schemas, plan.rls.tenant_column)
        label = migration.file if migration is not None else (
            "before the first migration" if not applied & {m.file for m in plan.migrations}
            else f"before this run's migrations ({len(applied)} applied already)")
        moment = Moment(label, spec.step, applied, datetime.now(UTC), counted)
        book.moments.append(moment)
    views = plan_views(conn, plan, migration.file if migration else None)
    missing = uncounted(moment.counted, views, names)
    problems = view_leaks(moment.counted, views, names)
    note = ""
    if migration is not None and latest is not None and moment is not latest:
        if migration.file in latest.applied:
            note = f"; {migration.file} was applied before this run: no count from before it to compare kept tables"
        else:
            problems += table_changes(latest, moment, names)
    book.findings += [(spec.step, p) for p in missing + problems]
    if missing or problems:
        found = ", ".join(f"{n} {what}" for n, what in ((len(missing), "relation(s) not counted"),
                                                        (len(problems), "widening(s)")) if n)
        raise CheckFailed("no persona to see more through the plan's views than with its own rights, nor more or "
                          "fewer rows of a kept table than before", found,
                          f"personas {', '.join(names)}, counted {_when(moment)}", details=missing + problems,
                          hint=spec.hint or "a view over tables with row-level security needs security_invoker "
                          "= true (ALTER VIEW ... SET (security_invoker = true)); a policy or grant that lets a "
                          "persona see more must be meant: fix the migration, or roll back (--phase4-rollback)")
    return _summary(moment, names) + note


def _when(moment: Moment) -> str:
    return moment.label if moment.step == "preflight" else f"after {moment.label}"


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
        "personas": [{"name": p.name, "role": p.role, "settings": dict(p.settings),
                      "claims": book.claims.get(p.name, p.claims)} for p in plan.rls.personas],
        "exposed_schemas": list(plan.rls.exposed_schemas), "tenant_column": plan.rls.tenant_column,
        "moments": [{"label": m.label, "step": m.step, "at": m.at.isoformat(),
                     "relations": {n: r.to_json() for n, r in m.counted.relations.items()},
                     "totals": {n: s.to_json() for n, s in m.counted.totals.items()},
                     "seen": {p: {n: s.to_json() for n, s in rels.items()} for p, rels in m.counted.seen.items()}}
                    for m in book.moments],
        "findings": [{"step": step, "text": text} for step, text in book.findings],
    }
