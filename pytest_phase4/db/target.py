"""Which database a run targets, and the guarded connections to it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pytest_phase4.db import dsn as dsnlib
from pytest_phase4.db.embedded import EmbeddedPostgres, EmbeddedUnavailable, start_embedded
from pytest_phase4.errors import TargetError

APPLICATION_NAME = "pytest-phase4"
_LIBPQ_ENV = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE")


@dataclass
class Target:
    dsn: str
    source: str  # "--dsn", "PHASE4_DSN", "libpq environment", "embedded (local)", ...
    embedded: EmbeddedPostgres | None = None
    secrets: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return dsnlib.redact(self.dsn) if self.dsn else "libpq defaults (PGHOST, PGDATABASE, ...)"

    def scrub(self, text: str) -> str:
        return dsnlib.scrub(text, self.secrets)

    def connect(self, *, read_only: bool, autocommit: bool,
                settings: dict[str, str] | None = None) -> psycopg.Connection[Any]:
        """Open a connection; read-only ones refuse writes at the server (default_transaction_read_only).

        `settings` become server settings of the session (statement_timeout, lock_timeout), set at connect so
        that no statement runs without them."""
        params = conninfo_to_dict(self.dsn) if self.dsn else {}
        options = str(params.get("options", "") or "")
        wanted = {**(settings or {}), **({"default_transaction_read_only": "on"} if read_only else {})}
        options = " ".join([options, *(f"-c {k}={v}" for k, v in wanted.items())]).strip()
        extra: dict[str, Any] = {"application_name": params.get("application_name") or APPLICATION_NAME,
                                 "connect_timeout": params.get("connect_timeout") or 10}
        if options:
            extra["options"] = options
        conninfo = make_conninfo(self.dsn, **extra)
        try:
            return psycopg.connect(conninfo, autocommit=autocommit)
        except (psycopg.OperationalError, psycopg.ProgrammingError) as exc:
            raise TargetError(dsnlib.connect_error_message(self.dsn, exc)) from None

    def close(self) -> None:
        if self.embedded is not None:
            self.embedded.stop()
            self.embedded = None


def resolve(cli_dsn: str | None) -> Target | None:
    """The user's target: --dsn, then PHASE4_DSN, then libpq's environment; None means "start one"."""
    for source, value in (("--dsn", cli_dsn), ("PHASE4_DSN", os.environ.get("PHASE4_DSN"))):
        if value:
            _parse(value)
            return Target(value, source, secrets=_secrets(value))
    if any(os.environ.get(name) for name in _LIBPQ_ENV):
        return Target("", "libpq environment", secrets=_secrets(""))
    return None


def _parse(value: str) -> None:
    try:
        conninfo_to_dict(value)
    except psycopg.ProgrammingError as exc:
        raise TargetError(dsnlib.connect_error_message(value, exc)) from None


def _secrets(value: str) -> list[str]:
    found = [dsnlib.password_of(value) or "", *dsnlib.secrets_from_env()]
    return [s for s in found if s]


def start_throwaway(database: str) -> Target:
    """Start an embedded server and create an empty database on it."""
    try:
        server = start_embedded()
    except EmbeddedUnavailable as exc:
        raise TargetError(str(exc)) from None
    try:
        dsn = server.create_database(database)
    except BaseException:
        server.stop()
        raise
    return Target(dsn, f"embedded throwaway PostgreSQL ({server.kind})", embedded=server)


def system_identifier(conn: psycopg.Connection[Any]) -> str:
    """The cluster's system identifier, or "" when this role may not read it (pg_control_system() needs superuser
    or pg_monitor). Read in a savepoint, so a refusal leaves the connection's transaction usable."""
    try:
        with conn.transaction():
            row = conn.execute("SELECT system_identifier::text FROM pg_control_system()").fetchone()
    except psycopg.Error:
        return ""
    return str(row[0]) if row else ""
