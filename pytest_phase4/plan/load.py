"""Read and validate a phase4 plan (TOML) into frozen, typed objects.

Every problem is collected before anything is reported, each with file:line where one can be found, so a
user fixes the whole plan in one pass (Sqitch's habit, not Alembic's first-error-wins).
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_phase4.errors import PlanError, Problem
from pytest_phase4.kinds.base import COMMON_KEYS, Kind, ParamError, planned
from pytest_phase4.kinds.registry import KINDS
from pytest_phase4.plan import rls as rlsplan
from pytest_phase4.plan.blast import add_blast
from pytest_phase4.plan.model import (
    AFTER_STAGES,
    BEFORE_STAGES,
    DURATION,
    CheckSpec,
    Migration,
    Plan,
    expand_env,
    timestamped,
)

_GATES = ("max_exclusive_lock_ms", "hazard_min_rows")  # lock gates: in [phase4] for every migration, or per migration
_PLAN_KEYS = {"name", "schema", "migrations_dir", *_GATES}
_SETUP_KEYS = {"files", "settings"}
_MIGRATION_KEYS = {"file", "title", "destructive", "transaction", "statement_timeout", "verify", *_GATES}
_TOP_KEYS = {"phase4", "setup", "migration", "perf", "signoff", "rls", "persona", "app_queries", "promotion",
             *BEFORE_STAGES,
             *AFTER_STAGES}


@dataclass
class _Reader:
    path: Path
    display: str
    lines: list[str]
    problems: list[Problem] = field(default_factory=list)
    headers: dict[str, list[int]] = field(default_factory=dict)  # header -> its lines, found once per header

    def header_line(self, header: str, occurrence: int) -> int | None:
        """Line of the n-th `[[header]]` in the file: tomllib reports no positions for valid TOML."""
        if header not in self.headers:  # scanning the file per entry made a 5,000-check plan take 25 s to load
            pattern = re.compile(rf"^\s*\[\[\s*{re.escape(header)}\s*\]\]")
            self.headers[header] = [n for n, line in enumerate(self.lines, start=1) if pattern.match(line)]
        lines = self.headers[header]
        return lines[occurrence] if occurrence < len(lines) else None

    def where(self, header: str | None = None, occurrence: int = 0, label: str = "", line: int | None = None) -> str:
        line = self.header_line(header, occurrence) if header else line
        place = f"{self.display}:{line}" if line else self.display
        return f"{place} {label}".rstrip()

    def problem(self, where: str, message: str) -> None:
        self.problems.append(Problem(where, message))

    def sorted_problems(self) -> list[Problem]:
        """In file order, as a user reads the plan; problems without a line come first."""
        pattern = re.compile(rf"^{re.escape(self.display)}:(\d+)")

        def line(p: Problem) -> int:
            m = pattern.match(p.where)
            return int(m.group(1)) if m else 0

        return sorted(self.problems, key=line)


def load_plan(path: Path, display: str | None = None) -> Plan:
    """Parse and validate the plan at `path`; raise PlanError listing every problem."""
    shown = display or str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PlanError([Problem(shown, f"cannot read the plan: {exc.strerror}")]) from None
    text = raw.decode("utf-8", errors="replace")
    reader = _Reader(path, shown, text.splitlines())
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # Python 3.11's exception has no lineno attribute; its message ends "(at line L, column C)".
        m = re.search(r"^(.*?)\s*\(at line (\d+), column (\d+)\)$", str(exc))
        where, msg = (f"{shown}:{m.group(2)}", f"{m.group(1)} (column {m.group(3)})") if m else (shown, str(exc))
        raise PlanError([Problem(where, f"malformed TOML: {msg}")]) from None
    plan = _build(reader, data, hashlib.sha256(raw).hexdigest())
    if reader.problems:
        raise PlanError(reader.sorted_problems())
    assert plan is not None
    return plan


def _build(r: _Reader, data: dict[str, Any], sha: str) -> Plan | None:
    for key in sorted(set(data) - _TOP_KEYS):
        r.problem(r.display, f"unknown top-level key {key!r}; expected one of {sorted(_TOP_KEYS)}")
    head = data.get("phase4")
    if not isinstance(head, dict):
        r.problem(r.display, "missing [phase4] table with at least name = \"...\"")
        head = {}
    _unknown(r, head, _PLAN_KEYS, r.where(label="[phase4]"))
    name = _string(r, head, "name", r.where(label="[phase4]"), required=bool(head))
    schema = _string(r, head, "schema", r.where(label="[phase4]")) or "public"
    mig_dir = r.path.parent / _migrations_dir(r, head)

    setup = data.get("setup", {})
    setup_files: list[Path] = []
    settings: dict[str, str] = {}
    if not isinstance(setup, dict):
        r.problem(r.display, "[setup] must be a table with files = [...]")
    else:
        _unknown(r, setup, _SETUP_KEYS, r.where(label="[setup]"))
        for f in _string_list(r, setup, "files", r.where(label="[setup]")):
            p = r.path.parent / f
            if not p.is_file():
                r.problem(r.where(label="[setup]"), f"setup file {f!r} not found (looked for {p})")
            setup_files.append(p)
        raw_settings = setup.get("settings", {})
        if not isinstance(raw_settings, dict) or not all(isinstance(v, str) for v in raw_settings.values()):
            r.problem(r.where(label="[setup]"), 'settings must be a table of strings, e.g. { "crm.scale" = "1000" }')
        else:
            settings = dict(raw_settings)

    head_line = next((n for n, line in enumerate(r.lines, 1) if re.match(r"^\s*\[\s*phase4\s*\]", line)), None)
    defaults = {key: _whole(r, head, key, r.where(label="[phase4]", line=head_line)) for key in _GATES}
    migrations = _migrations(r, data.get("migration", []), mig_dir, defaults)
    stages = {s: _stage(r, data.get(s, []), s, s, s, migrations) for s in (*BEFORE_STAGES, *AFTER_STAGES)}
    _perf(r, data.get("perf", []), stages)
    add_blast(r, data.get("app_queries", []), stages, _stage)
    signoff = _signoff(r, data.get("signoff", {}))
    rls, migrations = rlsplan.read(data, r.display, r.header_line, r.problem, stages, migrations)
    max_age, may_skip = _promotion(r, data.get("promotion", {}))
    if not (migrations or any(stages.values())) and not r.problems:
        r.problem(r.display, "the plan has no [[preflight]], [[migration]] or [[post]] entries")
    if r.problems or name is None:
        return None
    return Plan(r.path, sha, name, schema, mig_dir, tuple(setup_files), settings, stages, migrations, signoff, rls,
                max_age, may_skip)


_AGE = re.compile(r"^(\d{1,12})\s*(min|h|d)$")
_AGE_SECONDS = {"min": 60, "h": 3600, "d": 86400}
MAX_AGE_DAYS = 366  # evidence a year old proves nothing of today's staging; beyond, datetime overflows anyway


def _promotion(r: _Reader, table: Any) -> tuple[int | None, tuple[str, ...]]:
    """[promotion] evidence_max_age = "72h": how old the evidence of --phase4-require-evidence may be, in seconds;
    may_skip = ["smoke::*"]: the checks (globs over their ids) that evidence may show skipped."""
    line = next((n for n, text in enumerate(r.lines, 1) if re.match(r"^\s*\[\s*promotion\s*\]", text)), None)
    where = r.where(label="[promotion]", line=line)
    if not isinstance(table, dict):
        r.problem(where, '[promotion] must be a table, e.g. [promotion] evidence_max_age = "72h"')
        return None, ()
    _unknown(r, table, {"evidence_max_age", "may_skip"}, where)
    globs = table.get("may_skip", [])
    if not isinstance(globs, list) or not all(isinstance(g, str) and g.strip() for g in globs):
        r.problem(where, f'may_skip must be a list of globs over check ids, e.g. ["smoke::*", '
                         f'"preflight::command[npm_*"]; found {globs!r}')
        globs = []
    value = table.get("evidence_max_age")
    if value is None:
        return None, tuple(globs)
    m = _AGE.match(value.strip()) if isinstance(value, str) else None
    if m is None or int(m.group(1)) == 0:
        r.problem(where, f'evidence_max_age must be a positive duration in minutes, hours or days, e.g. "90min", '
                         f'"72h" or "7d"; found {value!r}')
        return None, tuple(globs)
    seconds = int(m.group(1)) * _AGE_SECONDS[m.group(2)]
    if seconds > MAX_AGE_DAYS * 86400:
        r.problem(where, f'evidence_max_age must be between 1min and {MAX_AGE_DAYS}d; found {value!r}; set a '
                         f'shorter limit (evidence that old proves nothing of staging today)')
        return None, tuple(globs)
    return seconds, tuple(globs)


def _migrations_dir(r: _Reader, head: dict[str, Any]) -> str:
    """migrations_dir with ${ENV} expanded (e.g. "${SUPABASE_DIR}/migrations"); an unset variable is a problem."""
    raw = _string(r, head, "migrations_dir", r.where(label="[phase4]")) or "migrations"
    expanded, missing, _ = expand_env(raw)
    if missing:
        r.problem(r.where(label="[phase4]"), f"migrations_dir {raw!r} uses ${{{missing[0]}}}, which is not set in "
                  f"the environment; set it (export {missing[0]}=...) or write the folder's path")
    return expanded


def _perf(r: _Reader, entries: Any, stages: dict[str, tuple[CheckSpec, ...]]) -> None:
    """Each [[perf]] query is timed twice: a perf_before check ends preflight, a perf_after check ends post."""
    if not isinstance(entries, list):
        r.problem(r.display, "perf must be an array of tables: [[perf]]")
        return
    for i, entry in enumerate(entries):
        if isinstance(entry, dict) and "check" in entry:
            r.problem(r.where("perf", i, f"[[perf]] #{i + 1}"), "a [[perf]] entry takes no check key: it is "
                      "timed before (preflight) and after (post) the migrations")
            return
    for stage, kind in (("preflight", "perf_before"), ("post", "perf_after")):
        known = len(r.problems)
        marked = [{**e, "check": kind} if isinstance(e, dict) else e for e in entries]
        stages[stage] = (*stages[stage], *_stage(r, marked, stage, stage, "perf", ()))
        if len(r.problems) > known:  # the same entries again would repeat the same problems
            return


def _signoff(r: _Reader, table: Any) -> dict[str, str]:
    if not isinstance(table, dict) or not all(isinstance(v, str) and v.strip() for v in table.values()):
        r.problem(r.where(label="[signoff]"), '[signoff] must be a table of role = "title", '
                  'e.g. dba = "Database Administrator"')
        return {}
    return dict(table)


def _migrations(r: _Reader, entries: Any, mig_dir: Path, gates: dict[str, int | None]) -> tuple[Migration, ...]:
    if not isinstance(entries, list):
        r.problem(r.display, "migration must be an array of tables: [[migration]]")
        return ()
    result: list[Migration] = []
    seen: dict[str, str] = {}
    verify_seen = 0
    for i, entry in enumerate(entries):
        where = r.where("migration", i, f"[[migration]] #{i + 1}")
        if not isinstance(entry, dict):
            r.problem(where, "each [[migration]] must be a table with file = \"...\"")
            continue
        _unknown(r, entry, _MIGRATION_KEYS, where)
        file = _string(r, entry, "file", where, required=True)
        title = _string(r, entry, "title", where)
        destructive = entry.get("destructive", False)
        if not isinstance(destructive, bool):
            r.problem(where, f"destructive must be true or false, found {destructive!r}")
            destructive = False
        transaction = entry.get("transaction", True)
        if not isinstance(transaction, bool):
            r.problem(where, f"transaction must be true or false, found {transaction!r}")
            transaction = True
        timeout = entry.get("statement_timeout")
        if timeout is not None and not (isinstance(timeout, str) and DURATION.match(timeout)):
            r.problem(where, f'statement_timeout must be a duration like "30s", "5min" or "500ms", found {timeout!r}')
            timeout = None
        own = {key: _whole(r, entry, key, where) for key in _GATES}
        verify = entry.get("verify", [])
        if not isinstance(verify, list):
            r.problem(where, "verify must be an array of tables: [[migration.verify]]")
            verify = []
        if file is None:
            verify_seen += len(verify)
            continue
        where = r.where("migration", i, f"[[migration]] {file}")
        if file in seen:
            r.problem(where, f"{file} is listed twice (first at {seen[file]}); list each migration once")
        seen[file] = where
        if result and file < result[-1].file and timestamped(file) and timestamped(result[-1].file):
            r.problem(where, f"{file} is listed after {result[-1].file} but sorts before it; "
                             "migrations must be listed in the order of their timestamps")
        path = mig_dir / file
        if not path.is_file():
            r.problem(where, f"migration file not found: {path}; add it to {mig_dir} or fix the file name")
        checks = _stage(r, verify, "migration", file, "migration.verify", (), first=verify_seen)
        verify_seen += len(verify)
        result.append(Migration(len(result) + 1, file, title or file, destructive, path, checks,
                                r.header_line("migration", i) or 0, transaction, timeout,
                                *(gates[k] if own[k] is None else own[k] for k in _GATES)))
    return tuple(result)


def _stage(r: _Reader, entries: Any, stage: str, step: str, header: str,
           migrations: Sequence[Migration], first: int = 0) -> tuple[CheckSpec, ...]:
    if not isinstance(entries, list):
        r.problem(r.display, f"{header} must be an array of tables: [[{header}]]")
        return ()
    specs: list[CheckSpec] = []
    ids: dict[str, str] = {}
    for i, entry in enumerate(entries):
        where = r.where(header, first + i, f"[[{header}]] #{i + 1}")
        if not isinstance(entry, dict):
            r.problem(where, f"each [[{header}]] must be a table with check = \"...\"")
            continue
        line = r.header_line(header, first + i) or 0
        for spec in _expand(r, entry, stage, step, where, line, migrations):
            if spec.test_id in ids:
                r.problem(where, f"test id {spec.test_id!r} repeats {ids[spec.test_id]}; give one an id = \"...\"")
            ids[spec.test_id] = where
            specs.append(spec)
    return tuple(specs)


def _expand(r: _Reader, entry: dict[str, Any], stage: str, step: str, where: str, line: int,
            migrations: Sequence[Migration]) -> list[CheckSpec]:
    kind_name = entry.get("check")
    if not isinstance(kind_name, str):
        r.problem(where, f"missing check = \"<kind>\"; valid kinds: {', '.join(planned())}")
        return []
    kind: Kind | None = KINDS.get(kind_name)
    if kind is None or not kind.planned:
        r.problem(where, f"unknown check kind {kind_name!r}; valid kinds: {', '.join(planned())}")
        return []
    where = f"{where} check={kind_name}"
    try:
        params = kind.validate({k: v for k, v in entry.items() if k not in COMMON_KEYS})
    except ParamError as exc:
        for message in exc.messages:
            r.problem(where, message)
        return []
    if kind.stages and stage not in kind.stages:
        r.problem(where, f"{kind.name} cannot be a {stage} check: {kind.stage_reason}")
        return []
    hint, custom_id = entry.get("hint", ""), entry.get("id")
    if not isinstance(hint, str) or (custom_id is not None and not isinstance(custom_id, str)):
        r.problem(where, "id and hint must be strings")
        return []
    if kind.per_migration:
        elements: list[Any] = [m.file for m in migrations]
    elif kind.expand:
        values = params[kind.expand]
        elements = list(values.items()) if isinstance(values, Mapping) else list(values)
        if not elements:
            r.problem(where, f"{kind.expand} is empty: list at least one element")
    else:
        elements = [None]
    specs = []
    for element in elements:
        label = kind.label(params, element)
        test_id = custom_id if custom_id and len(elements) == 1 else (
            f"{custom_id}[{label}]" if custom_id else f"{kind.name}[{label}]")
        specs.append(CheckSpec(kind.name, test_id, params, element, stage, step, where, line, hint))
    return specs


def _unknown(r: _Reader, table: dict[str, Any], allowed: set[str], where: str) -> None:
    for key in sorted(set(table) - allowed):
        r.problem(where, f"unknown key {key!r}; expected one of {sorted(allowed)}")


def _whole(r: _Reader, table: dict[str, Any], key: str, where: str) -> int | None:
    """A gate: a whole number, 0 or more (0 allows nothing), or absent."""
    value = table.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        unit, example = ("milliseconds", 5000) if key.endswith("_ms") else ("rows", 1000000)
        r.problem(where, f"{key} must be a whole number of {unit}, 0 or more, e.g. {key} = {example}; found {value!r}")
        return None
    return value


def _string(r: _Reader, table: dict[str, Any], key: str, where: str, required: bool = False) -> str | None:
    value = table.get(key)
    if value is None:
        if required:
            r.problem(where, f"missing {key} = \"...\"")
        return None
    if not isinstance(value, str) or not value.strip():
        r.problem(where, f"{key} must be a non-empty string, found {value!r}")
        return None
    return value


def _string_list(r: _Reader, table: dict[str, Any], key: str, where: str) -> list[str]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        r.problem(where, f"{key} must be a list of strings, found {value!r}")
        return []
    return value
