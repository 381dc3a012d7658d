"""The canary's outcome, told to the rest of the fleet through the canary's own database. No pytest here.

Workers may run on other hosts (xdist's --tx ssh=...), so nothing assumes a shared filesystem: a canary target,
once its run ended, writes one row into its own database (the plugin's schema, keyed by the fleet's run id, which
the controller hands every worker); any other target reads it there, read-only, before it starts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

_DDL = """
CREATE SCHEMA IF NOT EXISTS pytest_phase4;
CREATE TABLE IF NOT EXISTS pytest_phase4.fleet_canary (
    run_id text NOT NULL,
    target text NOT NULL,
    green boolean NOT NULL,
    summary text NOT NULL,
    published_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, target)
);
COMMENT ON TABLE pytest_phase4.fleet_canary IS 'pytest-phase4 fleets: how each canary run ended, for the others'
"""


@dataclass(frozen=True)
class Told:
    green: bool
    summary: str  # the canary's outcome: "tenant_01 halted at preflight: ..."


def publish(dsn: str, run_id: str, target: str, told: Told) -> None:
    with psycopg.connect(dsn, autocommit=False, connect_timeout=10) as conn:
        conn.execute(_DDL)
        conn.execute("INSERT INTO pytest_phase4.fleet_canary (run_id, target, green, summary) VALUES (%s, %s, %s, %s)"
                     " ON CONFLICT (run_id, target) DO UPDATE SET green = excluded.green, summary = excluded.summary",
                     (run_id, target, told.green, told.summary))


def read(dsn: str, run_id: str, target: str) -> Told | None:
    """The canary's row for this fleet run, read-only; None while it has not published (or cannot be reached)."""
    try:
        with psycopg.connect(make_conninfo(dsn, options="-c default_transaction_read_only=on"), autocommit=True,
                             connect_timeout=10) as conn:
            if conn.execute("SELECT to_regclass('pytest_phase4.fleet_canary')").fetchone() == (None,):
                return None
            row: Any = conn.execute("SELECT green, summary FROM pytest_phase4.fleet_canary WHERE run_id = %s AND "
                                    "target = %s", (run_id, target)).fetchone()
    except psycopg.OperationalError:
        return None
    return Told(bool(row[0]), str(row[1])) if row else None


def wait(dsn: str, run_id: str, target: str, timeout_s: float, poll_s: float = 0.5,
         clock: Callable[[], float] = time.monotonic) -> Told | None:
    """Poll until the canary published or the timeout ended (None)."""
    end = clock() + timeout_s
    while True:
        told = read(dsn, run_id, target)
        if told is not None or clock() >= end:
            return told
        time.sleep(poll_s)
