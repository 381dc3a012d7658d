"""The check kinds a plan may name: their parameters, how they expand, and how their tests are named.

Only declarations live here (no database, no pytest), so the plan can be validated before anything connects.
The behaviour of each kind is in `checks.py`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

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


def _one_bound(params: Mapping[str, Any]) -> str | None:
    bounds = [k for k in ("equals", "min", "max") if params.get(k) is not None]
    return None if len(bounds) == 1 else "give exactly one of equals, min or max"


def _bound_label(params: Mapping[str, Any], _: Any) -> str:
    bound = next(f"{op}{params[k]}" for k, op in (("equals", "=="), ("min", ">="), ("max", "<=")) if params.get(k)
                 is not None)
    return f"{params['like']}{bound}" if params.get("like") else bound


RLS_COMMANDS = ("select", "insert", "update", "delete", "all")


def _rls_command(params: Mapping[str, Any]) -> str | None:
    command = params.get("command")
    if command is not None and command not in RLS_COMMANDS:
        return f"command must be one of {', '.join(RLS_COMMANDS)} (the policy's FOR clause), found {command!r}"
    return None


def _rls_label(params: Mapping[str, Any], _: Any) -> str:
    return str(params["table"]) + (f":{params['command']}" if params.get("command") else "") + (
        f"@{params['role']}" if params.get("role") else "")


def _where_views(params: Mapping[str, Any]) -> str | None:
    if unknown := [v for v in params.get("where", {}) if v not in params["pairs"]]:
        return (f"where names {', '.join(map(repr, unknown))}, not a view of pairs: give each condition under the "
                "name of the view it filters for")
    return None


def _warn_max(params: Mapping[str, Any]) -> str | None:
    warn_max = params.get("warn_max")
    return "warn_max must be at least max" if warn_max is not None and warn_max < params["max"] else None


def _command_line(params: Mapping[str, Any]) -> str | None:
    import shlex

    try:
        return None if shlex.split(params["run"]) else "run must name a program"
    except ValueError as exc:  # e.g. an unclosed quote
        return f"run is not a valid command line ({exc}): {params['run']!r}"


def _runs(params: Mapping[str, Any]) -> str | None:
    return "runs must be at least 1" if params["runs"] < 1 else None


_COMMAND_PARAMS = {"run": Param("str"), "cwd": Param("str", False),
                   "timeout": Param("number", False, 600.0), "exit_status": Param("int", False, 0),
                   "expect_empty_output": Param("bool", False, False), "tail": Param("int", False, 20)}
_HTTP_PARAMS = {"path": Param("str"), "method": Param("str", False, "GET"), "headers": Param("strmap", False, {}),
                "status": Param("int", False, 200), "keys_present": Param("names", False, ()),
                "keys_absent": Param("names", False, ()), "items": Param("str", False),
                "timeout": Param("number", False, 10.0)}
_PERF_PARAMS = {"name": Param("str"), "query": Param("str"), "query_after": Param("str", False),
                "title": Param("str", False), "runs": Param("int", False, 5), "max_ms": Param("number", False),
                "max_regression_pct": Param("number", False)}
_names = Param("names")
_KIND_LIST = [
    Kind("server_version", "the server answers and its major version is at least min",
         {"min": Param("int")}, label_fn=lambda p, _: f">={p['min']}"),
    Kind("migration_files", "each migration file exists, is readable, not empty, and unchanged if applied"),
    Kind("no_invalid_indexes", "no index in the schema is INVALID (left by a failed CREATE INDEX CONCURRENTLY)",
         label_fn=lambda p, _: "schema"),
    Kind("table_count", "the schema holds at least min base tables",
         {"min": Param("int")}, label_fn=lambda p, _: f">={p['min']}"),
    Kind("tables_have_rows", "each table exists and holds at least min_rows rows now",
         {"tables": _names, "min_rows": Param("int", False, 1)}, expand="tables"),
    Kind("views_absent", "none of these views exists yet (on a rerun: but those applied migrations create)",
         {"views": _names}, expand="views"),
    Kind("no_views", "no view in the schema (matching like), but those the applied migrations create",
         {"like": Param("str", False)}, label_fn=lambda p, _: str(p["like"] or "schema"), stages=("preflight",),
         stage_reason="it describes the database before the migrations: list it under [[preflight]]"),
    Kind("view_count", "the number of views in the schema (matching like) meets the bound",
         {"equals": Param("int", False), "min": Param("int", False), "max": Param("int", False),
          "like": Param("str", False)}, label_fn=_bound_label, constraint=_one_bound),
    Kind("table_exists", "each base table exists", {"tables": _names}, expand="tables"),
    Kind("view_exists", "each view exists", {"views": _names}, expand="views"),
    Kind("rls_policies", "RLS is enabled and the table has exactly count policies (FOR command, TO role), "
                         "including names",
         {"table": Param("str"), "count": Param("int"), "names": Param("names", False, ()),
          "command": Param("str", False), "role": Param("str", False)},
         label_fn=_rls_label, constraint=_rls_command),
    Kind("view_rowcount_matches", "the view has as many rows as its base table (meeting where)",
         {"pairs": Param("pairs"), "where": Param("conditions", False, {})}, expand="pairs",
         constraint=_where_views),
    Kind("view_sample_not_null", "the view returns rows rows with none of columns NULL",
         {"view": Param("str"), "columns": _names, "rows": Param("int", False, 5)},
         label_fn=lambda p, _: str(p["view"])),
    Kind("column_absent", "the column does not exist", {"columns": Param("columns")}, expand="columns"),
    Kind("column_present", "the column exists", {"columns": Param("columns")}, expand="columns"),
    Kind("index_exists", "each index exists in the schema", {"indexes": _names}, expand="indexes"),
    Kind("index_count", "at least min indexes in the schema match like",
         {"like": Param("str"), "min": Param("int")}, label_fn=lambda p, _: f"{p['like']}>={p['min']}"),
    Kind("indexes_created", "at least min indexes (matching like) are new since the migration started",
         {"min": Param("int", False, 1), "like": Param("str", False)},
         label_fn=lambda p, _: f"{p['like'] or '%'}>={p['min']}", stages=("migration",),
         stage_reason="it checks what one migration created: list it under that migration's [[migration.verify]]"),
    Kind("no_orphans", "no child row has a non-NULL key without a parent",
         {"relations": Param("relations")}, expand="relations"),
    Kind("row_counts_unchanged", "the table's row count equals the one recorded before the first migration",
         {"tables": _names}, expand="tables"),
    Kind("explain_under", "EXPLAIN ANALYZE execution time of query is under max_ms",
         {"name": Param("str"), "query": Param("str"), "max_ms": Param("number")},
         label_fn=lambda p, _: str(p["name"])),
    Kind("query_returns", "the query's single value equals expect",
         {"name": Param("str"), "query": Param("str"), "expect": Param("scalar")},
         label_fn=lambda p, _: str(p["name"])),
    Kind("query_runs", "the query runs without error", {"name": Param("str"), "query": Param("str")},
         label_fn=lambda p, _: str(p["name"])),
    # Part 1 A, C, D: commands and environment readiness (commands.py, readiness.py)
    Kind("command", "the command exits with exit_status (and prints nothing if expect_empty_output)",
         _COMMAND_PARAMS, label_fn=lambda p, _: "_".join(p["run"].split()), constraint=_command_line),
    Kind("active_connections", "at most max other client connections to the database (warn up to warn_max)",
         {"max": Param("int", False, 0), "warn_max": Param("int", False), "allow": Param("names", False, ())},
         label_fn=lambda p, _: f"<={p['max']}", constraint=_warn_max),
    Kind("role_privileges", "the current role may do what the migrations do: CREATE on the schema, own the tables",
         {"tables": Param("names", False, ())}, label_fn=lambda p, _: "migrations"),
    Kind("client_tools", "each tool is installed where the backup looks, and not older than the server",
         {"tools": Param("names", False, ("pg_dump", "pg_restore"))}, expand="tools"),
    # Part 6.3: smoke requests against the API (smoke.py)
    Kind("http", "the request under --phase4-base-url answers status with the JSON keys expected",
         _HTTP_PARAMS, label_fn=lambda p, _: str(p["path"])),
    # Part 6.4 and the benchmarking appendix: [[perf]] entries become these two (perf.py)
    Kind("perf_before", "times the query before migrating (median of runs) as the baseline",
         _PERF_PARAMS, label_fn=lambda p, _: str(p["name"]), constraint=_runs),
    Kind("perf_after", "times the query after migrating; passes within max_ms and max_regression_pct",
         _PERF_PARAMS, label_fn=lambda p, _: str(p["name"]), constraint=_runs),
]

# Data safety (backup stage, snapshots): implemented in safety.py, which needs the whole run, not one connection.
BACKUP_STEPS = ("dump", "schema", "snapshot", "info", "verify", "restore")


def _backup_steps(params: Mapping[str, Any]) -> str | None:
    steps = params["steps"]
    if any(s not in BACKUP_STEPS for s in steps) or list(steps) != sorted(steps, key=BACKUP_STEPS.index):
        return f"steps must be some of {list(BACKUP_STEPS)}, in that order"
    return None


_KIND_LIST += [
    Kind("backup", "pg_dump of the whole database, schema dump, snapshot, BACKUP_INFO.txt, verified",
         {"steps": Param("names", False, BACKUP_STEPS)}, expand="steps", constraint=_backup_steps),
    Kind("checksum_unchanged", "the kept columns' content checksum equals the one recorded before migrating",
         {"tables": _names}, expand="tables"),
    Kind("row_counts_match", "every table's row count equals the one recorded before migrating, plus its delta",
         {"deltas": Param("deltas", False, {})}, label_fn=lambda p, _: "every_table"),
    Kind("catalog_diff", "every catalog change since before the first migration is expected by the plan",
         {"expect": Param("names", False, ())}, label_fn=lambda p, _: "schema"),
]


def _scope(params: Mapping[str, Any]) -> str | None:
    return None if params["scope"] in ("plan", "schemas") else 'scope must be "plan" or "schemas"'


# Row-level security (exposure.py): the plan's [[persona]] entries add their own checks (rlsplan.py, personas.py).
_KIND_LIST.append(Kind(
    "rls_exposure", "nothing the plan created or changed exposes rows to a role subject to row-level security "
    "(Supabase's splinter lints 0007, 0008, 0010, 0011, 0013, 0015, 0016, 0017, 0024, 0028/0029)",
    {"scope": Param("str", False, "plan"), "allow": Param("names", False, ())},
    label_fn=lambda p, _: str(p["scope"]), constraint=_scope, stages=("preflight", "migration", "post"),
    stage_reason="it reads what the migrations created or changed: list it in preflight, a migration's verify "
                 "checks or post"))
def _plpgsql_mode(params: Mapping[str, Any]) -> str | None:
    modes = ("auto", "plpgsql_check", "prepare")
    return None if params["plpgsql"] in modes else f"plpgsql must be one of {', '.join(map(repr, modes))}"


def _one_source(params: Mapping[str, Any]) -> str | None:
    if bool(params["file"]) == bool(params["query"]):
        return 'give either file = "queries/*.sql" (a glob, relative to the plan) or query = "SELECT ..."'
    return 'a query needs a name = "..." (its test id)' if params["query"] and not params["name"] else None


# Blast radius (blast.py, blast_checks.py): before the first migration on a copy of the schema, again in post.
_confirm = Param("bool", False, True)
_BLAST_STAGES = ("blast_radius",)
_BLAST_WHY = ("it runs before the migrations, on a copy of the schema (and again in post, on the migrated database): "
              "list it under [[blast_radius]]")
_KIND_LIST += [
    Kind("database_code", "every SQL and PL/pgSQL function, procedure and trigger function still works after the "
         "pending migrations", {"schemas": Param("names", False, ()), "plpgsql": Param("str", False, "auto"),
                                "confirm_after": _confirm},
         label_fn=lambda p, _: ",".join(p["schemas"]) or "all_schemas", constraint=_plpgsql_mode,
         stages=_BLAST_STAGES, stage_reason=_BLAST_WHY),
    Kind("pg_stat_statements", "every query pg_stat_statements recorded still prepares after the pending migrations",
         {"roles": Param("names", False, ()), "min_calls": Param("int", False, 1), "confirm_after": _confirm},
         label_fn=lambda p, _: ",".join(p["roles"]) or "other_roles", stages=_BLAST_STAGES, stage_reason=_BLAST_WHY),
    Kind("app_queries", "each query of the files (or the query) still prepares after the pending migrations",
         {"file": Param("str", False), "name": Param("str", False), "query": Param("str", False),
          "confirm_after": _confirm}, label_fn=lambda p, _: str(p["name"] or p["file"]), constraint=_one_source,
         stages=_BLAST_STAGES, stage_reason=_BLAST_WHY),
]
KINDS: dict[str, Kind] = {k.name: k for k in _KIND_LIST}
