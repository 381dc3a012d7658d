"""The plan's row-level security sections: `[rls]` (which schemas an API exposes, which roles are the API's, the
tenant column) and `[[persona]]` (a role and the settings that make it one user of the application).

Declarations only (no database, no pytest), validated with the rest of the plan. A plan with personas gets one
`personas` check at the end of preflight (what each persona sees before the first migration) and one at the end
of every migration's verify checks (personas.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from pytest_phase4.plan.model import CheckSpec, Migration, Persona, RlsSettings

RLS_KEYS = {"exposed_schemas", "api_roles", "tenant_column"}
PERSONA_KEYS = {"name", "role", "claims", "settings", "user_query", "claims_setting"}
PERSONA_KIND = "personas"  # the check the plan adds for its personas; not a kind a plan names itself
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_GUC = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)*$")


Problem = Callable[[str, str], None]  # (where, message)


def read(data: Mapping[str, Any], display: str, header_line: Callable[[str, int], int | None], problem: Problem,
         stages: dict[str, tuple[CheckSpec, ...]], migrations: tuple[Migration, ...],
         ) -> tuple[RlsSettings, tuple[Migration, ...]]:
    """`[rls]` and `[[persona]]` of the plan's TOML, every problem reported through `problem`; with personas,
    the `personas` checks added to preflight (in place) and to each migration (returned)."""
    personas = _personas(data.get("persona", []), display, header_line, problem)
    settings = replace(_settings(data.get("rls", {}), display, problem), personas=personas)
    return settings, inject(personas, display, stages, migrations)


def _names(value: Any) -> tuple[str, ...] | None:
    if isinstance(value, list) and value and all(isinstance(v, str) and v.strip() for v in value):
        return tuple(value)
    return None


def _settings(table: Any, display: str, problem: Problem) -> RlsSettings:
    where = f"{display} [rls]"
    if not isinstance(table, dict):
        problem(where, '[rls] must be a table, e.g. [rls] exposed_schemas = ["public", "api"]')
        return RlsSettings()
    for key in sorted(set(table) - RLS_KEYS):
        problem(where, f"unknown key {key!r}; expected one of {sorted(RLS_KEYS)}")
    found: dict[str, Any] = {}
    for key, example in (("exposed_schemas", '["public", "api"]'), ("api_roles", '["anon", "authenticated"]')):
        if key in table:
            if (names := _names(table[key])) is None:
                problem(where, f"{key} must be a non-empty list of names, e.g. {key} = {example}; found "
                               f"{table[key]!r}")
            else:
                found[key] = names
    if "tenant_column" in table:
        if not isinstance(table["tenant_column"], str) or not table["tenant_column"].strip():
            problem(where, f"tenant_column must be a column name, e.g. \"tenant_id\"; found {table['tenant_column']!r}")
        else:
            found["tenant_column"] = table["tenant_column"]
    return RlsSettings(**found)


def _personas(entries: Any, display: str, header_line: Callable[[str, int], int | None],
              problem: Problem) -> tuple[Persona, ...]:
    if not isinstance(entries, list):
        problem(display, "persona must be an array of tables: [[persona]]")
        return ()
    found: list[Persona] = []
    seen: dict[str, str] = {}
    for i, entry in enumerate(entries):
        line = header_line("persona", i) or 0
        where = f"{display}:{line} [[persona]] #{i + 1}" if line else f"{display} [[persona]] #{i + 1}"
        if not isinstance(entry, dict):
            problem(where, 'each [[persona]] must be a table with name = "..." and role = "..."')
            continue
        persona = _persona(entry, where, line, problem)
        if persona is None:
            continue
        if persona.name in seen:
            problem(where, f"persona {persona.name!r} is named twice (first at {seen[persona.name]}); give each a "
                           "name of its own")
            continue
        seen[persona.name] = where
        found.append(persona)
    return tuple(found)


def _persona(entry: dict[str, Any], where: str, line: int, problem: Problem) -> Persona | None:
    before = _Count()
    report = before.wrap(problem)
    for key in sorted(set(entry) - PERSONA_KEYS):
        report(where, f"unknown key {key!r}; expected one of {sorted(PERSONA_KEYS)}")
    name, role = entry.get("name"), entry.get("role")
    if not isinstance(name, str) or not _NAME.match(name):
        report(where, f'name must be a short name of letters, digits, "_", "." or "-" (it names the persona in '
                      f'test results and the report), e.g. name = "tenant_a"; found {name!r}')
    if not isinstance(role, str) or not role.strip():
        report(where, f'role must name the database role the persona reads as, e.g. role = "authenticated"; '
                      f"found {role!r}")
    claims = entry.get("claims")
    if claims is not None and not (isinstance(claims, dict) and all(
            isinstance(v, str | int | float | bool) for v in claims.values())):
        report(where, 'claims must be a table of strings, numbers or booleans, e.g. claims = { sub = "...", '
                      f'tenant_id = "...", role = "authenticated" }}; found {claims!r}')
    settings = entry.get("settings", {})
    if not isinstance(settings, dict) or not all(isinstance(v, str) for v in settings.values()):
        report(where, f'settings must be a table of strings, e.g. settings = {{ "app.tenant_id" = "1" }}; found '
                      f"{settings!r}")
        settings = {}
    for key in settings:
        if not _GUC.match(key):
            report(where, f"settings: {key!r} is not a setting's name (letters, digits, _ and dots, e.g. "
                          "app.tenant_id)")
    user_query, claims_setting = entry.get("user_query"), entry.get("claims_setting", "request.jwt.claims")
    if user_query is not None and (not isinstance(user_query, str) or not user_query.strip()):
        report(where, f"user_query must be an SQL query returning one row, found {user_query!r}")
    if not isinstance(claims_setting, str) or not _GUC.match(claims_setting):
        report(where, f"claims_setting must be a setting's name, e.g. \"request.jwt.claims\"; found {claims_setting!r}")
    if before.count or not isinstance(name, str) or not isinstance(role, str):
        return None
    if user_query is not None and claims is None:
        claims = {}
    if claims is not None and "role" not in claims:
        claims = {**claims, "role": role}  # PostgREST puts the role in the claims it sets
    return Persona(name, role, claims, dict(settings), user_query, claims_setting, line)


@dataclass
class _Count:
    count: int = 0

    def wrap(self, problem: Problem) -> Problem:
        def counted(where: str, message: str) -> None:
            self.count += 1
            problem(where, message)
        return counted


def inject(personas: Sequence[Persona], display: str, stages: dict[str, tuple[CheckSpec, ...]],
           migrations: tuple[Migration, ...]) -> tuple[Migration, ...]:
    """With personas, the `personas` check ends preflight (the counts before the first migration) and each
    migration's verify checks (the counts after it); stages are changed in place, the migrations returned."""
    if not personas:
        return migrations
    line = personas[0].line
    where = f"{display}:{line} [[persona]]" if line else f"{display} [[persona]]"
    names = tuple(p.name for p in personas)

    def spec(stage: str, step: str) -> CheckSpec:
        return CheckSpec(PERSONA_KIND, PERSONA_KIND, {"personas": names}, None, stage, step, where, line)

    stages["preflight"] = (*stages["preflight"], spec("preflight", "preflight"))
    return tuple(replace(m, checks=(*m.checks, spec("migration", m.file))) for m in migrations)
