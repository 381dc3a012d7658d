"""Load a plan's [setup] (the pre-migration schema and data) into an empty schema."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from pytest_phase4.db import catalog, sqltext
from pytest_phase4.errors import TargetError
from pytest_phase4.plan.model import Plan


def load_setup(conn: psycopg.Connection[Any], plan: Plan, settings: dict[str, str] | None = None,
               on_file: Callable[[str], None] = lambda name: None,
               read: Callable[[Path], str] = lambda path: path.read_text(encoding="utf-8")) -> None:
    """Run the setup files in one transaction, calling on_file(name) as each starts (each read by `read`: the
    promotion gate's checks its bytes). Refuses a schema that already holds tables: seeding is for empty scratch
    databases, never for one that holds data."""
    if not plan.setup_files:
        raise TargetError(f"the plan {plan.path} has no [setup] files to load: add [setup] files = [...] "
                          "or drop --phase4-seed")
    existing = catalog.tables(conn, plan.schema)
    if existing:
        shown = ", ".join(existing[:5]) + (", ..." if len(existing) > 5 else "")
        raise TargetError(f"refusing to seed: schema {plan.schema} already holds {len(existing)} table(s) "
                          f"({shown}). --phase4-seed only loads an empty database; create one "
                          "(createdb NAME) and point --dsn at it")
    values = {**plan.setup_settings, **(settings or {})}
    name, text = "settings", ""
    try:
        with conn.transaction():
            for key, value in values.items():
                conn.execute("SELECT set_config(%s, %s, true)", (key, value))
            for path in plan.setup_files:
                name, text = path.name, read(path)
                on_file(name)
                conn.execute(text.encode())
    except psycopg.Error as exc:
        pos = exc.diag.statement_position
        line = f":{sqltext.line_of(text, int(pos))}" if pos else ""
        raise TargetError(f"loading the plan's setup failed at {name}{line}: {exc.diag.message_primary or exc}; "
                          "nothing was loaded (one transaction)") from None
