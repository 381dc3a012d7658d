"""The targets file of a fleet (--phase4-targets=FILE, TOML), read and checked before anything connects.

`[[target]]` names a database through the environment variable holding its DSN (`dsn_env`); `[[source]]` names a
server through one and a read-only query that returns database names (tenant databases on one server), each of
which becomes a target with that DSN's dbname replaced. A password is never in the file: it stays in the
environment, and a DSN never leaves this module but through `FleetTarget.dsn()`.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pytest_phase4.db import dsn as dsnlib

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")  # a folder name and a pytest id: fullmatch (no final "\n")
_TARGET_KEYS = {"name", "dsn_env"}
_SOURCE_KEYS = {"dsn_env", "query"}
_EXAMPLE_QUERY = "query = \"SELECT datname FROM pg_database WHERE datname LIKE 'tenant_%' ORDER BY 1\""
_SECRET = re.compile(r"dsn$|password|passwd|secret", re.IGNORECASE)


class TargetsError(Exception):
    """The targets file cannot be used: every problem, each on its line, names the file and what to do."""


@dataclass(frozen=True)
class FleetTarget:
    name: str
    dsn_env: str  # the environment variable holding the DSN (of the server, for a [[source]]'s targets)
    dbname: str | None = None  # a [[source]]'s database: replaces the DSN's dbname
    # resolved by the controller (fleet/resolve.py): the complete conninfo it reached, no password; the database's
    # identity as its server said (JSON); or why it could not connect; and the DSN it read, its password left out
    conninfo: str = ""
    expect: str = ""
    unreachable: str = ""
    given: str = ""

    def dsn(self) -> str:
        """The DSN, from the environment of the process that asks (a remote xdist worker has its own), refused when
        it does not parse or names another place than the controller's (only its password may differ)."""
        value = os.environ.get(self.dsn_env, "")
        if not value:
            raise TargetsError(f"target {self.name}: the environment variable {self.dsn_env} is not set here; set "
                               "it to the target's DSN in the environment of every process that runs targets")
        try:
            dsn = make_conninfo(value, dbname=self.dbname) if self.dbname else value
            here = without_password(dsn)
        except psycopg.ProgrammingError:
            raise TargetsError(f"target {self.name}: {self.dsn_env} does not hold a valid DSN in this process's "
                               "environment (its value is not shown: it may hold a password); nothing connected"
                               ) from None
        if self.given and conninfo_to_dict(here) != conninfo_to_dict(self.given):  # URL or key=value alike
            raise TargetsError(f"target {self.name}: {self.dsn_env} in this process's environment names "
                               f"{dsnlib.target_label(here)}, the fleet's controller resolved "
                               f"{dsnlib.target_label(self.given)}; refused, nothing connected: set the same DSN "
                               "in every process that runs targets")
        return dsn

    def to_json(self) -> dict[str, str | None]:
        return {"name": self.name, "dsn_env": self.dsn_env, "dbname": self.dbname, "conninfo": self.conninfo,
                "expect": self.expect, "unreachable": self.unreachable, "given": self.given}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FleetTarget:
        return cls(str(data["name"]), str(data["dsn_env"]), data.get("dbname"), str(data.get("conninfo") or ""),
                   str(data.get("expect") or ""), str(data.get("unreachable") or ""), str(data.get("given") or ""))


def without_password(dsn: str) -> str:
    return make_conninfo("", **{k: v for k, v in conninfo_to_dict(dsn).items()
                                if k not in ("password", "sslpassword")})


@dataclass(frozen=True)
class Source:
    dsn_env: str
    query: str
    where: str  # file:entry, for messages


def read(file: Path, path: str) -> tuple[list[FleetTarget], list[Source], int | None]:
    """The file's targets, its sources (their queries not run yet) and its `[fleet] canary`; all problems at once.
    `path` is the file as the user named it, for the messages."""
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise TargetsError(f"--phase4-targets={path}: cannot read it ({exc}); name a TOML file of [[target]] "
                           "entries") from None
    except tomllib.TOMLDecodeError as exc:
        raise TargetsError(f"--phase4-targets={path}: not valid TOML ({exc})") from None
    problems: list[str] = []
    extra = sorted(set(data) - {"target", "source", "fleet"})
    if extra:
        problems.append(f"{path}: unknown table(s) {', '.join(extra)}; expected [[target]], [[source]] and [fleet]")
    targets: list[FleetTarget] = []
    for i, entry in enumerate(_entries(data, "target", path, problems), 1):
        where = f"{path}: [[target]] #{i}"
        if _refuse_secrets(entry, where, problems) or _unknown(entry, _TARGET_KEYS, where, problems):
            continue
        name, env = entry.get("name"), entry.get("dsn_env")
        if not isinstance(name, str) or not NAME.fullmatch(name):
            problems.append(f"{where}: name = {name!r}: expected letters, digits, '_', '.', '-' (up to 63), e.g. "
                            "name = \"tenant_07\"")
        elif not isinstance(env, str) or not env:
            problems.append(f"{where} ({name}): dsn_env missing; name the environment variable that holds its DSN, "
                            "e.g. dsn_env = \"TENANT_07_DSN\"")
        else:
            targets.append(FleetTarget(name, env))
    sources: list[Source] = []
    for i, entry in enumerate(_entries(data, "source", path, problems), 1):
        where = f"{path}: [[source]] #{i}"
        if _refuse_secrets(entry, where, problems) or _unknown(entry, _SOURCE_KEYS, where, problems):
            continue
        env, query = entry.get("dsn_env"), entry.get("query")
        if not isinstance(env, str) or not env or not isinstance(query, str) or not query.strip():
            problems.append(f"{where}: expected dsn_env (the environment variable of the server's DSN) and query "
                            f"(SQL returning database names), e.g. {_EXAMPLE_QUERY}")
        else:
            sources.append(Source(env, query, where))
    canary = _canary(data.get("fleet", {}), path, problems)
    if not targets and not sources and not problems:
        problems.append(f"{path}: no [[target]] and no [[source]]; add one [[target]] with name and dsn_env per "
                        "database")
    if problems:
        raise TargetsError("\n".join(problems))
    return targets, sources, canary


def _entries(data: dict[str, Any], key: str, path: str, problems: list[str]) -> list[dict[str, Any]]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(e, dict) for e in value):
        problems.append(f"{path}: {key} must be an array of tables: write [[{key}]]")
        return []
    return value


def _refuse_secrets(entry: dict[str, Any], where: str, problems: list[str]) -> bool:
    found = sorted(k for k in entry if _SECRET.search(k))
    if found:
        problems.append(f"{where}: {', '.join(found)} refused: never a DSN or password in the targets file; put "
                        "the DSN in an environment variable and name it with dsn_env")
    return bool(found)


def _unknown(entry: dict[str, Any], known: set[str], where: str, problems: list[str]) -> bool:
    extra = sorted(set(entry) - known)
    if extra:
        problems.append(f"{where}: unknown key(s) {', '.join(extra)}; expected {', '.join(sorted(known))}")
    return bool(extra)


def _canary(fleet: Any, path: str, problems: list[str]) -> int | None:
    if not isinstance(fleet, dict) or set(fleet) - {"canary"}:
        problems.append(f"{path}: [fleet] takes one key, canary = N (how many targets must finish green first)")
        return None
    value = fleet.get("canary")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        problems.append(f"{path}: [fleet] canary = {value!r}: expected a whole number (0 for none)")
        return None
    return value


def check_environment(targets: list[FleetTarget], sources: list[Source], path: str) -> None:
    """Every variable set, every database named once: refused before anything connects."""
    problems = []
    envs = dict.fromkeys([t.dsn_env for t in targets] + [s.dsn_env for s in sources])
    unset = [e for e in envs if not os.environ.get(e)]
    if unset:
        problems.append(f"{path}: environment variable(s) not set: {', '.join(unset)}; set each to its target's DSN "
                        "(nothing connected)")
    for env in envs:
        if env not in unset:
            try:
                conninfo_to_dict(os.environ[env])
            except psycopg.ProgrammingError:
                problems.append(f"{path}: {env} does not hold a valid DSN (its value is not shown: it may hold a "
                                "password)")
    if problems:
        raise TargetsError("\n".join(problems))


def check_unique(targets: list[FleetTarget], path: str) -> None:
    problems = []
    seen: dict[str, list[str]] = {}  # by folder name: a case-insensitive filesystem makes A and a one folder
    for t in targets:
        seen.setdefault(t.name.lower(), []).append(t.name)
    if dup := [(n, names) for n, names in seen.items() if len(names) > 1]:
        shown = ", ".join(n if len(set(names)) == 1 else f"{n} (as {', '.join(names)})" for n, names in dup)
        whatever = ", whatever its case" if any(len(set(names)) > 1 for _, names in dup) else ""
        problems.append(f"{path}: target name(s) given twice: {shown}; each target needs its own name{whatever} (its "
                        "reports and backups go in a folder of that name)")
    where: dict[tuple[str, str, str], str] = {}
    for t in targets:
        key = database_key(t.dsn())
        if key in where and where[key] != t.name:
            problems.append(f"{path}: targets {where[key]} and {t.name} are the same database ({key[2]} on "
                            f"{key[0] or 'the default host'}:{key[1] or '5432'}); list each database once")
        where.setdefault(key, t.name)
    if problems:
        raise TargetsError("\n".join(problems))


def database_key(dsn: str) -> tuple[str, str, str]:
    params = conninfo_to_dict(dsn)
    return (str(params.get("host") or params.get("hostaddr") or os.environ.get("PGHOST", "")),
            str(params.get("port") or os.environ.get("PGPORT", "")),
            str(params.get("dbname") or os.environ.get("PGDATABASE", "") or params.get("user") or ""))


def _shown(value: object) -> str:
    """A value a [[source]] query returned, fit to quote: a registry's column may hold DSNs, passwords included."""
    if not isinstance(value, str):
        return type(value).__name__ if value is not None else "NULL"
    return repr(dsnlib.redact(value)[:80])


def expand(source: Source) -> list[FleetTarget]:
    """Run a [[source]]'s query read-only on its server: each database name it returns becomes a target."""
    dsn = os.environ[source.dsn_env]
    try:
        with psycopg.connect(make_conninfo(dsn, options="-c default_transaction_read_only=on"),
                             autocommit=True, connect_timeout=10) as conn:
            rows = conn.execute(source.query.encode()).fetchall()
    except psycopg.Error as exc:
        raise TargetsError(dsnlib.scrub(f"{source.where}: its query failed on {source.dsn_env}'s server: "
                                        f"{str(exc).strip().splitlines()[0]}", [dsnlib.password_of(dsn) or ""])
                           ) from None
    found, bad = [], []
    for row in rows:
        name = row[0] if row else None
        if isinstance(name, str) and NAME.fullmatch(name):
            found.append(FleetTarget(name, source.dsn_env, name))
        else:
            bad.append(_shown(name))
    if bad:
        raise TargetsError(f"{source.where}: its query returned name(s) that are not plain database names: "
                           f"{', '.join(bad[:5])}; expected letters, digits, '_', '.', '-' (a query returning one "
                           "column of datname)")
    return found
