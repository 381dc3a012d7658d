"""What each target of a fleet is, as its server says, resolved once by the controller before any target starts.
No pytest here.

The controller connects to every target read-only with the environment it was started with (libpq's PGDATABASE,
PGHOST, PGUSER... complete a DSN there) and keeps: the complete conninfo it reached (no password), which each
target's run is given as it is; and the database's identity (cluster system identifier and database name, else
server address and port), which tells two targets on one database apart whatever name reached it, and which each
target's run checks again before anything writes.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pytest_phase4.db import dsn as dsnlib
from pytest_phase4.db.target import system_identifier
from pytest_phase4.fleet.targets import FleetTarget, TargetsError, without_password

EXPECT_ENV = "PHASE4_FLEET_EXPECT"  # the identity a target's run must find where it connects (JSON)
_NOT_KEPT = ("password", "sslpassword", "options", "service")  # options: ours replaced the target's; a service
# entry is resolved into the rest. Kept: what libpq resolved of these (from the DSN, a service file or PG*), and
# whatever else the DSN named; not every key this libpq reports (sslcertmode is unknown to an older pg_dump's).
_KEPT = ("host", "hostaddr", "port", "dbname", "user", "sslmode", "sslrootcert", "sslcert", "sslkey", "sslcrl",
         "application_name", "connect_timeout", "target_session_attrs", "passfile", "gssencmode", "channel_binding",
         "krbsrvname")


def resolve(target: FleetTarget) -> FleetTarget:
    """The target with its conninfo and identity; with `unreachable` (one scrubbed line) when it cannot connect."""
    dsn = target.dsn()
    try:
        with psycopg.connect(make_conninfo(dsn, options="-c default_transaction_read_only=on"), autocommit=True,
                             connect_timeout=10) as conn:
            info = conn.info
            named = conninfo_to_dict(dsn)
            params = {k: v for k, v in info.get_parameters().items()
                      if k not in _NOT_KEPT and (k in _KEPT or k in named)}
            params.update(host=info.host, port=str(info.port), dbname=info.dbname, user=info.user)
            if options := named.get("options"):
                params["options"] = str(options)
            expect = identity(conn)
    except psycopg.Error as exc:
        reason = dsnlib.connect_error_message(dsn, exc).splitlines()[0]  # type: ignore[arg-type]
        return dataclasses.replace(target, unreachable=reason)
    return dataclasses.replace(target, conninfo=make_conninfo("", **params), expect=json.dumps(expect),
                               given=without_password(dsn))


def identity(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """The database a connection reached, as its server says; no secret in it."""
    row = conn.execute("SELECT current_database(), coalesce(host(inet_server_addr()), ''), "
                       "coalesce(inet_server_port()::text, '')").fetchone()
    assert row is not None
    ident = {"database": str(row[0]), "server": str(row[1]), "port": str(row[2])}
    ident["system_identifier"] = system_identifier(conn)
    if not ident["server"]:  # a Unix socket: its folder, whatever symlink led there, and port
        ident["server"] = os.path.realpath(conn.info.host) if conn.info.host.startswith("/") else conn.info.host
        ident["port"] = str(conn.info.port)
    return ident


def key(ident: dict[str, str]) -> tuple[str, ...]:
    if ident.get("system_identifier"):
        return ("cluster", ident["system_identifier"], ident["database"])
    return ("server", ident.get("server", ""), ident.get("port", ""), ident["database"])


def check_same_database(targets: list[FleetTarget], path: str) -> None:
    """Two targets on one database, as the servers say (an alias, a symlinked socket folder, a service entry)."""
    seen: dict[tuple[str, ...], str] = {}
    problems = []
    for t in targets:
        if not t.expect:
            continue
        ident = json.loads(t.expect)
        k = key(ident)
        if k in seen:
            problems.append(f"{path}: targets {seen[k]} and {t.name} reach the same database ({ident['database']}, "
                            f"as its server says: {'cluster ' + k[1] if k[0] == 'cluster' else k[1] + ':' + k[2]}); "
                            "list each database once (nothing was written)")
        seen.setdefault(k, t.name)
    if problems:
        raise TargetsError("\n".join(problems))


def check_reached(conn: psycopg.Connection[Any], name: str) -> str | None:
    """In a target's run: why the database it reached is not the one the fleet's controller resolved; None if it
    is (or outside a fleet)."""
    expected = os.environ.get(EXPECT_ENV)
    if not expected:
        return None
    want, here = json.loads(expected), identity(conn)
    fields = ("database", "system_identifier") if want.get("system_identifier") else ("database", "server", "port")
    if differ := [f for f in fields if want.get(f) != here.get(f)]:
        shown = "; ".join(f"{f}: expected {want.get(f)!r}, found {here.get(f)!r}" for f in differ)
        return (f"fleet target {name}: this run reached another database than the fleet's controller resolved "
                f"({shown}); nothing was done: check the target's DSN and the environment of this host")
    return None
