"""What a check kind is: one object that declares its parameters (how the plan's TOML is validated, how it expands
into tests and how they are named) and its behaviour: how it runs, what its step reads ahead for it, which catalog
changes it expects, which line of the execution summary it counts in.

Each family of kinds declares its own beside their code (kinds/relations.py, objects.py, queries.py, commands.py,
readiness.py, smoke.py, perf.py; safety/checks.py, rls/checks.py, blast/checks.py) and registers them here;
kinds/registry.py imports every family. This module imports nothing of ours but the plan's objects: the plan, the
read-ahead and the catalog diff look kinds up in KINDS without importing their code.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from pytest_phase4.plan.model import CheckSpec

COMMON_KEYS = frozenset({"check", "id", "hint"})


class Column(NamedTuple):
    table: str
    column: str

    def __str__(self) -> str:
        return f"{self.table}.{self.column}"


class Relation(NamedTuple):
    child: Column
    parent: Column

    def __str__(self) -> str:
        return f"{self.child}->{self.parent}"


class ParamError(Exception):
    def __init__(self, messages: list[str]) -> None:
        self.messages = messages
        super().__init__("; ".join(messages))


_COLUMN = re.compile(r"^\s*([^.\s][^.]*?)\s*\.\s*([^.\s][^.]*?)\s*$")


def _column(value: str) -> Column | None:
    m = _COLUMN.match(value)
    return Column(m.group(1), m.group(2)) if m else None


def _convert(kind: str, value: Any) -> Any:
    """Convert one raw TOML value to the parameter's type, or raise ValueError saying what is expected."""
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError("a whole number >= 0")
        return value
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ValueError("a number > 0")
        return float(value)
    if kind == "str":
        if not isinstance(value, str) or not value.strip():
            raise ValueError("a non-empty string")
        return value
    if kind == "scalar":
        if not isinstance(value, str | int | float | bool):
            raise ValueError("a string, number or boolean")
        return value
    if kind == "names":
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ValueError('a list of names, e.g. ["sales", "customers"]')
        return tuple(value)
    if kind == "columns":
        cols = [_column(v) if isinstance(v, str) else None for v in value] if isinstance(value, list) else [None]
        if any(c is None for c in cols):
            raise ValueError('a list of "table.column" strings, e.g. ["sales.customer_name"]')
        return tuple(cols)
    if kind == "relations":
        rels = [_relation(v) for v in value] if isinstance(value, list) else [None]
        if any(r is None for r in rels):
            raise ValueError('a list of "child.column -> parent.column", e.g. ["sales.customer_id -> customers.id"]')
        return tuple(rels)
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError("true or false")
        return value
    if kind == "strmap":
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ValueError('a table of strings, e.g. { Authorization = "Bearer ${TOKEN}" }')
        return dict(value)
    if kind == "conditions":
        if not isinstance(value, dict) or not all(isinstance(v, str) and v.strip() for v in value.values()):
            raise ValueError('a table of view = "condition on its base table", e.g. '
                             '{ active_customers = "deleted_at IS NULL" }')
        return dict(value)
    if kind == "pairs":
        if not isinstance(value, dict) or not all(isinstance(v, str) and v for v in value.values()):
            raise ValueError('a table of view = "base_table", e.g. { sales_with_details = "sales" }')
        return dict(value)
    if kind == "deltas":
        if not isinstance(value, dict) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                  for v in value.values()):
            raise ValueError("a table of table = rows added (negative: removed), e.g. { audit_logs = 12 }")
        return dict(value)
    raise AssertionError(kind)


def _relation(value: object) -> Relation | None:
    if not isinstance(value, str) or value.count("->") != 1:
        return None
    child, parent = (_column(part) for part in value.split("->"))
    return Relation(child, parent) if child and parent else None


@dataclass(frozen=True)
class Param:
    type: str
    required: bool = True
    default: Any = None


Label = Callable[[Mapping[str, Any], Any], str]


RelKind = Callable[[str], str | None]  # a relation's pg_class.relkind in the step's catalog, None if absent
Key = tuple[Any, ...]  # a value the step reads ahead: ("count", table), ("orphans", ...), ... (facts.py)
Expect = tuple[str, str]  # (what: an attribute of catdiff.Expected, the object's name)


@dataclass(frozen=True)
class Kind:
    name: str
    summary: str
    params: Mapping[str, Param] = field(default_factory=dict)
    expand: str | None = None
    label_fn: Label | None = None
    constraint: Callable[[Mapping[str, Any]], str | None] | None = None
    stages: tuple[str, ...] = ()  # the only stages it may be listed in, with why; () for any
    stage_reason: str = ""
    # How it runs: `run(context, spec)` with the step's checkcontext.Context (one read-only connection, the step's
    # facts), or `run_whole(run, spec)` with the whole Phase4Run, for kinds that read at a moment of their own
    # (a backup's snapshot, the personas, a copy of the schema). Either returns what it observed in one line,
    # raises CheckFailed (expected, found, where, hint) or CheckSkipped (why it does not apply).
    run: Callable[[Any, CheckSpec], str] | None = None
    run_whole: Callable[[Any, CheckSpec], str] | None = None
    reads: Callable[[CheckSpec, RelKind], list[Key]] | None = None  # what its step reads ahead for it (facts.py)
    view_of: Callable[[CheckSpec], tuple[str, str]] | None = None  # (view, base table) it counts: the read plan
    expects: Callable[[CheckSpec], list[Expect]] | None = None  # the catalog changes it expects (catdiff.Expected)
    category: str = ""  # the execution summary's line it counts in, when not its stage's (evidence.CATEGORIES)
    state: bool = True  # false: it says nothing of what a migration left (verify-only does not probe with it)
    compares: bool = False  # it compares with the baseline from before the migrations (baselines.py)
    as_of_step: bool = False  # it holds only right after its own migration: not checkable once a later one applied
    per_migration: bool = False  # one test per migration of the plan
    planned: bool = True  # false: the plan adds it itself (personas), a plan may not name it

    def validate(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        errors: list[str] = []
        values: dict[str, Any] = {}
        for key in sorted(set(raw) - set(self.params)):
            allowed = ", ".join(sorted(self.params)) or "none"
            errors.append(f"unknown key {key!r} for check {self.name!r}; its keys: {allowed}")
        for key, param in self.params.items():
            if key not in raw:
                if param.required:
                    errors.append(f"missing key {key!r} ({param.type}) for check {self.name!r}")
                values[key] = param.default
                continue
            try:
                values[key] = _convert(param.type, raw[key])
            except ValueError as exc:
                errors.append(f"{key} must be {exc}, found {raw[key]!r}")
        if not errors and self.constraint and (message := self.constraint(values)):
            errors.append(message)
        if errors:
            raise ParamError(errors)
        return values

    def label(self, params: Mapping[str, Any], element: Any) -> str:
        if self.label_fn:
            return self.label_fn(params, element)
        if isinstance(element, Column | Relation):
            return str(element)
        if isinstance(element, tuple):
            return f"{element[0]}={element[1]}"  # a (view, base) pair
        return str(element)


KINDS: dict[str, Kind] = {}  # every kind, by name, as its family registered it (allkinds.py imports them all)


def register(*kinds: Kind) -> None:
    for kind in kinds:
        if kind.name in KINDS:
            raise AssertionError(f"check kind {kind.name!r} is declared twice")
        if (kind.run is None) == (kind.run_whole is None):
            raise AssertionError(f"check kind {kind.name!r} needs exactly one of run and run_whole")
        KINDS[kind.name] = kind


def planned() -> list[str]:
    """The names a plan may use, sorted: for its error messages."""
    return sorted(name for name, kind in KINDS.items() if kind.planned)
