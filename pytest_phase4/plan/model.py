"""The plan as the rest of the plugin sees it: frozen, typed objects (its checks, migrations, steps, row-level
security settings), with no knowledge of TOML, check kinds' code, pytest or a database. plan.py builds them."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Check lists before the first migration and after the last one, in this order: each a top-level array of tables
# ([[preflight]]) and a pytest marker (blast_radius also preflight's); the migrations are stage "migration".
BEFORE_STAGES = ("preflight", "blast_radius", "backup")
AFTER_STAGES = ("post", "smoke")
DURATION = re.compile(r"^\d+\s*(ms|s|min|h)?$")  # PostgreSQL's units for timeouts; a bare number is ms


@dataclass(frozen=True)
class Persona:
    name: str
    role: str
    claims: Mapping[str, Any] | None = None  # set as JSON in claims_setting, as PostgREST does per request
    settings: Mapping[str, str] = field(default_factory=dict)  # any other setting, e.g. app.tenant_id
    user_query: str | None = None  # one row; each column becomes a claim (a real user's id and tenant)
    claims_setting: str = "request.jwt.claims"
    line: int = 0

    def describe(self) -> str:
        parts = [f"role {self.role}"]
        if self.claims is not None or self.user_query:
            parts.append(f"{self.claims_setting} {dict(self.claims or {})}" +
                         (" with the user_query's columns" if self.user_query else ""))
        parts += [f"{k} = {v!r}" for k, v in self.settings.items()]
        return ", ".join(parts)


@dataclass(frozen=True)
class RlsSettings:
    exposed_schemas: tuple[str, ...] = ("public",)  # schemas an API (PostgREST) serves: Supabase's default
    api_roles: tuple[str, ...] = ("anon", "authenticated")  # the roles requests run as, besides PUBLIC
    tenant_column: str = "tenant_id"  # rows are told apart by tenant where a relation has this column
    personas: tuple[Persona, ...] = ()

    def persona(self, name: str) -> Persona | None:
        return next((p for p in self.personas if p.name == name), None)


@dataclass(frozen=True)
class CheckSpec:
    """One test: a check kind with its validated parameters, bound to one list element if it expands."""

    kind: str
    test_id: str
    params: Mapping[str, Any]
    element: Any
    stage: str
    step: str  # the halting group: "preflight", a migration file, or "post"
    where: str  # file:line and entry, for messages
    line: int  # 1-based line of the entry in the plan, 0 if unknown
    hint: str = ""


@dataclass(frozen=True)
class Migration:
    index: int  # 1-based, plan order
    file: str
    title: str
    destructive: bool
    path: Path
    checks: tuple[CheckSpec, ...]
    line: int = 0
    transaction: bool = True  # false: statement by statement in autocommit (CREATE INDEX CONCURRENTLY)
    statement_timeout: str | None = None
    max_exclusive_lock_ms: int | None = None  # longest an (ACCESS) EXCLUSIVE lock may be held; None: no gate
    hazard_min_rows: int | None = None  # a static hazard on a table of at least this many rows fails

    @property
    def name(self) -> str:
        return self.file.removesuffix(".sql")


@dataclass(frozen=True)
class Step:
    """A unit of halting: a stage's check list, or one migration with its verify checks."""

    group: int  # position in the run: steps run in increasing group order
    name: str  # the stage name, or the migration's file name
    stage: str  # the pytest marker: a stage name, or "migration"
    checks: tuple[CheckSpec, ...]
    migration: Migration | None = None


@dataclass(frozen=True)
class Plan:
    path: Path
    sha256: str
    name: str
    schema: str
    migrations_dir: Path
    setup_files: tuple[Path, ...]
    setup_settings: Mapping[str, str]
    stages: Mapping[str, tuple[CheckSpec, ...]]  # every stage of BEFORE_STAGES and AFTER_STAGES
    migrations: tuple[Migration, ...]
    signoff: Mapping[str, str] = field(default_factory=dict)  # role key -> title, in plan order ([signoff])
    rls: RlsSettings = field(default_factory=RlsSettings)  # [rls] and [[persona]]
    evidence_max_age_s: int | None = None  # [promotion] evidence_max_age: the oldest evidence a run may rely on
    may_skip: tuple[str, ...] = ()  # [promotion] may_skip: globs of the checks staging evidence may show skipped

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def preflight(self) -> tuple[CheckSpec, ...]:
        return self.stages["preflight"]

    @property
    def post(self) -> tuple[CheckSpec, ...]:
        return self.stages["post"]

    @property
    def steps(self) -> tuple[Step, ...]:
        steps = [Step(i, name, name, self.stages[name]) for i, name in enumerate(BEFORE_STAGES)]
        steps += [Step(len(steps) + i, m.file, "migration", m.checks, m) for i, m in enumerate(self.migrations)]
        steps += [Step(len(steps) + i, name, name, self.stages[name]) for i, name in enumerate(AFTER_STAGES)]
        return tuple(steps)

    def step(self, ref: str) -> Step | None:
        """The step named by a stage name or a migration reference (see `migration`)."""
        migration = self.migration(ref)
        return next((s for s in self.steps if s.name == ref or (migration and s.migration is migration)), None)

    def migration(self, ref: str) -> Migration | None:
        """Find a migration by file name, name without .sql, or its timestamp prefix."""
        for m in self.migrations:
            if ref in (m.file, m.name) or m.name.split("_", 1)[0] == ref:
                return m
        return None


def timestamped(file: str) -> bool:
    """Whether the file name starts with a timestamp (8+ digits and '_'): such names sort in applying order."""
    return bool(re.match(r"\d{8,}_", file))


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(text: str, env: Mapping[str, str] | None = None) -> tuple[str, list[str], list[str]]:
    """`${NAME}` replaced from the environment: (result, names that are unset, values used)."""
    env = os.environ if env is None else env
    missing: list[str] = []
    used: list[str] = []

    def one(m: re.Match[str]) -> str:
        value = env.get(m.group(1))
        if value is None:
            missing.append(m.group(1))
            return m.group(0)
        used.append(value)
        return value

    return _VAR.sub(one, text), missing, used
