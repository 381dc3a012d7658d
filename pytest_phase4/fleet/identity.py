"""Which database a run's evidence is about, without a password or a full DSN: the fleet target's name (set for a
fleet's child run), host, port, database and the cluster's system identifier (when the role may read it)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

FLEET_TARGET_ENV = "PHASE4_FLEET_TARGET"  # the child run of a fleet target knows the target's name


def describe(dsn: str, connection: Callable[[], psycopg.Connection[Any]]) -> dict[str, Any]:
    params: dict[str, Any] = conninfo_to_dict(dsn) if dsn else {}
    found: dict[str, Any] = {"name": os.environ.get(FLEET_TARGET_ENV) or None, "host": params.get("host"),
                             "port": params.get("port"), "dbname": params.get("dbname"), "system_identifier": None}
    try:
        conn = connection()
        info = conn.info
        found.update(host=info.host, port=str(info.port), dbname=info.dbname)
        row = conn.execute("SELECT system_identifier::text FROM pg_control_system()").fetchone()
        found["system_identifier"] = row[0] if row else None
    except Exception:  # the evidence is written whatever the connection's state: these fields stay unknown
        pass
    return found
