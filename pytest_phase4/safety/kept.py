"""Migrations a revert undid while keeping their row changes (a data migration's UPDATE of a kept table): the
same file is not applied again, it would change those rows a second time. No pytest here."""

from __future__ import annotations

from typing import Any

import psycopg

from pytest_phase4.db import changes


def keep_data(conn: psycopg.Connection[Any], kept: dict[str, tuple[str, str]]) -> None:
    """Remember the migrations whose row changes a revert kept (file -> (sha256, what they changed))."""
    if kept:
        conn.execute(changes.CREATE)
        conn.cursor().executemany("INSERT INTO pytest_phase4.kept_data (file, sha256, rows) VALUES (%s, %s, %s)"
                                  " ON CONFLICT (file, sha256) DO UPDATE SET at = now(), rows = excluded.rows",
                                  [(f, sha, rows) for f, (sha, rows) in kept.items()])


def kept_by_revert(conn: psycopg.Connection[Any], file: str, sha256: str) -> str | None:
    """Why applying this file again would repeat row changes a revert kept, or None."""
    if not changes.exists(conn, "kept_data"):
        return None
    row = conn.execute("SELECT at, rows FROM pytest_phase4.kept_data WHERE file = %s AND sha256 = %s",
                       (file, sha256)).fetchone()
    if row is None:
        return None
    return (f"a revert (--phase4-rollback, {row[0]:%Y-%m-%d %H:%M}) undid its schema changes and kept its row "
            f"changes ({row[1]}): applying the same file again would change those rows a second time. If it is "
            "meant to run again (its data part is idempotent, or removed), change the file (a comment at its top "
            "saying why is enough: its content then differs); or put the backup's rows back with "
            "--phase4-rollback=restore first")
