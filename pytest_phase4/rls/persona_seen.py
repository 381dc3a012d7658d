"""What the personas saw at one moment, as data (no database): each relation as it was, what a role saw of it, and
the moment's counts, as persona_count reads them, persona_writes adds the writes, and the baselines store them."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pytest_phase4.db import catalog


@dataclass(frozen=True)
class Relation:
    """A relation as it was at one moment."""

    name: str  # schema.name, quoted where PostgreSQL would quote it
    schema: str
    relname: str
    kind: str  # pg_class.relkind: r, p, v, m
    rls: bool
    owner: str
    invoker: bool  # a view with security_invoker
    tenant: bool  # has the plan's tenant column
    under: tuple[str, ...] = ()  # RLS tables under a view
    definition: str | None = None

    @property
    def is_view(self) -> bool:
        return self.kind in ("v", "m")

    def to_json(self) -> dict[str, Any]:
        return {"kind": catalog.RELKIND_WORDS.get(self.kind, self.kind), "rls": self.rls, "owner": self.owner,
                "security_invoker": self.invoker, "rls_tables_under": list(self.under)}


@dataclass
class Seen:
    """What one role saw of one relation: its rows (by tenant), and for a view its definition's rows read with the
    persona's own rights. rows is None when it was not counted (no privilege, or an error: see note)."""

    rows: int | None = None
    tenants: dict[str, int] | None = None
    own: int | None = None
    own_tenants: dict[str, int] | None = None
    note: str = ""
    escaped: str = ""  # the role reading it as the persona ended with (set_config('role', ...)): a finding
    policies: tuple[str, ...] = ()  # for a write count: the policies that decided it

    def to_json(self) -> dict[str, Any]:
        found: dict[str, Any] = {"rows": self.rows}
        if self.tenants is not None:
            found["tenants"] = self.tenants
        if self.own is not None:
            found["own_rights"] = self.own
            if self.own_tenants is not None:
                found["own_rights_tenants"] = self.own_tenants
        if self.note:
            found["note"] = self.note
        if self.escaped:
            found["escaped_to"] = self.escaped
        if self.policies:
            found["policies"] = list(self.policies)
        return found

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Seen:
        return cls(data.get("rows"), data.get("tenants"), data.get("own_rights"), data.get("own_rights_tenants"),
                   str(data.get("note", "")), str(data.get("escaped_to", "")), tuple(data.get("policies", ())))


@dataclass
class Counted:
    """One moment: the relations, what the checking role and each persona saw of them."""

    relations: dict[str, Relation]
    totals: dict[str, Seen]  # the checking role's own view of each table: the rows there are
    checker_rls: set[str]  # tables whose row-level security applies to the checking role itself
    seen: dict[str, dict[str, Seen]] = field(default_factory=dict)  # persona -> relation -> Seen
    writes: dict[str, dict[str, dict[str, Seen]]] = field(default_factory=dict)  # persona -> table -> command
    fingerprint: str = ""  # of roles, memberships, grants and policies (visibility): a change means count again

    def to_store(self) -> dict[str, Any]:
        """Everything, for a baseline file: a later run compares with it (from_store)."""
        return {"relations": {n: dataclasses.asdict(r) for n, r in self.relations.items()},
                "totals": {n: s.to_json() for n, s in self.totals.items()}, "checker_rls": sorted(self.checker_rls),
                "seen": {p: {n: s.to_json() for n, s in rels.items()} for p, rels in self.seen.items()},
                "writes": {p: {t: {c: s.to_json() for c, s in cmds.items()} for t, cmds in tables.items()}
                           for p, tables in self.writes.items()},
                "fingerprint": self.fingerprint}

    @classmethod
    def from_store(cls, data: Mapping[str, Any]) -> Counted:
        rels = {n: Relation(**{**r, "under": tuple(r.get("under", ()))}) for n, r in data["relations"].items()}
        return cls(rels, {n: Seen.from_json(s) for n, s in data["totals"].items()}, set(data["checker_rls"]),
                   {p: {n: Seen.from_json(s) for n, s in rels.items()} for p, rels in data["seen"].items()},
                   {p: {t: {c: Seen.from_json(s) for c, s in cmds.items()} for t, cmds in tables.items()}
                    for p, tables in data.get("writes", {}).items()}, str(data.get("fingerprint", "")))
