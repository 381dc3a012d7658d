"""Comparing two moments of the personas (persona_seen.Counted): what a persona sees of each relation that existed
at both (tables and views alike), what it sees of a relation new since (by tenant: rows of a tenant it saw nowhere
before), and what it may write of each table (persona_writes). No pytest here.

A kept relation is compared per tenant where it has the tenant column: the rows a persona sees of a tenant may
move only as the relation's own rows of that tenant did (counted by the checking role in the same snapshot), so
what the application writes meanwhile moves both numbers alike and only a change of visibility is reported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pytest_phase4.rls.persona_seen import Counted, Relation, Seen


@dataclass(frozen=True)
class Side:
    """One moment, as the messages name it."""

    label: str  # "before the first migration", "after x.sql", ...
    counted: Counted


def _fmt(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def groups(seen: Seen) -> dict[str, int]:
    """Rows by tenant ("" when not told apart); not counted (no privilege): none."""
    if seen.tenants is not None:
        return dict(seen.tenants)
    return {"": seen.rows or 0}


def _no_rows(seen: Seen) -> bool:
    """Counted, or known to show nothing (no privilege): comparable. An error is not."""
    return seen.rows is not None or seen.note.startswith("no ")


def _exact(rel: Relation, c: Counted) -> bool:
    return rel.name not in c.checker_rls and not any(u in c.checker_rls for u in rel.under)


def _moved(s0: Seen, s1: Seen, t0: Seen | None, t1: Seen | None, exact: bool, what: str,
           verb: str = "seen") -> list[str]:
    p0, p1 = groups(s0), groups(s1)
    g0, g1 = groups(t0) if t0 else {}, groups(t1) if t1 else {}
    if s0.tenants is None or s1.tenants is None:  # one side not by tenant: compare the totals only
        p0, p1 = {"": s0.rows or 0}, {"": s1.rows or 0}
        g0, g1 = ({"": t0.rows or 0} if t0 else {}), ({"": t1.rows or 0} if t1 else {})
    moved = []
    for group in sorted(set(p0) | set(p1) | set(g0) | set(g1)):
        dp = p1.get(group, 0) - p0.get(group, 0)
        dt = g1.get(group, 0) - g0.get(group, 0) if exact else 0
        if not min(0, dt) <= dp <= max(0, dt):
            label = f"tenant {group}: " if group else ""
            moved.append(f"{label}{p0.get(group, 0):,} -> {p1.get(group, 0):,} {verb}, the {what} "
                         f"{g0.get(group, 0):,} -> {g1.get(group, 0):,}")
    return moved


def reach(c: Counted, persona: str) -> set[str]:
    """The tenants whose rows the persona saw in any relation at this moment."""
    return {t for s in c.seen.get(persona, {}).values() if s.tenants for t, n in s.tenants.items() if n > 0}


def kept(before: Side, after: Side, names: Sequence[str]) -> list[str]:
    """Relations at both moments whose rows a persona sees changed by more than (or against) their own rows."""
    problems = []
    b, a = before.counted, after.counted
    for name, rel in a.relations.items():
        old = b.relations.get(name)
        if old is None:
            continue
        exact = _exact(rel, a) and _exact(old, b)
        what = "table" if not rel.is_view else "view" if rel.kind == "v" else "materialized view"
        for persona in names:
            s0, s1 = b.seen.get(persona, {}).get(name), a.seen.get(persona, {}).get(name)
            if s0 is None or s1 is None or not _no_rows(s0) or not _no_rows(s1):
                continue  # an error, not a count: nothing to compare
            moved = _moved(s0, s1, b.totals.get(name), a.totals.get(name), exact, what)
            if moved:
                how = "" if exact else (" (the checking role is itself subject to row-level security here: the "
                                        "relation's rows are not known, so any change counts)")
                t0, t1 = b.totals.get(name), a.totals.get(name)
                own = f" (its own rows: {_fmt(t1.rows)}, were {_fmt(t0.rows)})" if t0 and t1 else ""
                problems.append(
                    f"persona {persona} sees {_fmt(s1.rows or 0)} rows of {what} {name} {after.label}"
                    f"{' (' + s1.note + ')' if s1.note else ''}, {_fmt(s0.rows or 0)} {before.label}"
                    f"{' (' + s0.note + ')' if s0.note else ''}{own}{how}: " + "; ".join(moved))
    return problems


def new(before: Side, after: Side, names: Sequence[str], told: frozenset[tuple[str, str]] = frozenset()) -> list[str]:
    """Relations new since `before` that show a persona rows of a tenant it saw in no relation then (except the
    (persona, relation) pairs `told` already: a plan view that shows more than its own definition)."""
    problems = []
    b, a = before.counted, after.counted
    for name, rel in a.relations.items():
        if name in b.relations or not rel.tenant:
            continue
        what = "table" if not rel.is_view else "view" if rel.kind == "v" else "materialized view"
        for persona in names:
            seen = a.seen.get(persona, {}).get(name)
            if seen is None or not seen.tenants or (persona, name) in told:
                continue
            mine = reach(b, persona)
            others = {t: n for t, n in seen.tenants.items() if n > 0 and t not in mine}
            if others:
                own = ", ".join(sorted(mine)) or "none"
                problems.append(
                    f"persona {persona} sees {seen.rows or 0:,} rows of new {what} {name} {after.label}, "
                    + ", ".join(f"{n:,} of tenant {t}" for t, n in sorted(others.items(), key=lambda i: (-i[1], i[0])))
                    + f": tenants whose rows it saw in no relation {before.label} (its tenants then: {own})")
    return problems


def writes(before: Side, after: Side, names: Sequence[str]) -> list[str]:
    """Tables whose rows a persona may UPDATE, DELETE or INSERT changed by more than their own rows, by tenant;
    on a new table: rows of a tenant it could see nowhere before."""
    problems = []
    b, a = before.counted, after.counted
    for persona in names:
        mine = reach(b, persona)
        for table, cmds in a.writes.get(persona, {}).items():
            rel = a.relations.get(table)
            old = b.writes.get(persona, {}).get(table)
            for cmd, s1 in cmds.items():
                policies = ", ".join(s1.policies) or "none"
                if old is None:
                    if rel is None or table in b.relations or not s1.tenants:
                        continue
                    others = {t: n for t, n in s1.tenants.items() if n > 0 and t not in mine}
                    if others:
                        problems.append(
                            f"persona {persona} may {cmd} rows of new table {table} {after.label} (policies: "
                            f"{policies}): " + ", ".join(f"{n:,} of tenant {t}" for t, n in sorted(others.items()))
                            + f", tenants whose rows it saw in no relation {before.label}")
                    continue
                s0 = old.get(cmd)
                if s0 is None or not _no_rows(s0) or not _no_rows(s1) or rel is None:
                    continue
                moved = _moved(s0, s1, b.totals.get(table), a.totals.get(table), _exact(rel, a), "table", "writable")
                if moved:
                    then = ", ".join(s0.policies) or "none"
                    dropped = sorted(set(s0.policies) - set(s1.policies))
                    added = sorted(set(s1.policies) - set(s0.policies))
                    change = "; ".join(x for x in (f"added: {', '.join(added)}" if added else "",
                                                   f"dropped: {', '.join(dropped)}" if dropped else "") if x)
                    problems.append(
                        f"persona {persona} may {cmd} {_fmt(s1.rows or 0)} rows of table {table} {after.label} "
                        f"({s1.note or 'policies: ' + policies}), {_fmt(s0.rows or 0)} {before.label} "
                        f"({s0.note or 'policies: ' + then})" + (f" [{change}]" if change else "") + ": "
                        + "; ".join(moved))
    return problems


def escapes(counted: Counted, names: Sequence[str]) -> list[str]:
    """Reads as a persona that ended as another role: what follows in them is not the persona's."""
    return [f"persona {p}: reading {name} as {p} set the role to {s.escaped} (e.g. set_config('role', ...) in its "
            f"SQL): whoever reads it may take the rights of the session's user (the count was undone)"
            for p in names for name, s in counted.seen.get(p, {}).items() if s.escaped]


def nobody(claims: Mapping[str, dict[str, object] | None], queried: Sequence[str]) -> list[str]:
    """Personas whose user_query gave NULL claims: not a user of the application, so they prove nothing."""
    problems = []
    for persona in queried:
        found = claims.get(persona) or {}
        empty = sorted(k for k, v in found.items() if v is None)
        if empty:
            problems.append(f"persona {persona}: its user_query returned NULL for {', '.join(empty)}: it is no user "
                            "(a lookup that found nothing), sees what nobody sees, and proves nothing; fix the "
                            "user_query so it returns a real user's id and tenant")
    return problems
