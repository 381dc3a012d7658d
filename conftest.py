"""This repository as a pytest-phase4 user project: fixtures for the custom checks of the bundled example
(`checks/test_*.py`), which `pytest --phase4` collects with the plan. The plugin's own test suite (`tests/`)
does not use them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import sql


@pytest.fixture
def tenant_ids(phase4_db: psycopg.Connection[Any]) -> list[int]:
    """The CRM's tenants, every table carries one of them in tenant_id."""
    return [int(r[0]) for r in phase4_db.execute("SELECT id FROM tenants ORDER BY id").fetchall()]


@pytest.fixture
def rows_per_tenant(phase4_db: psycopg.Connection[Any]) -> Callable[[str], dict[int, int]]:
    """rows_per_tenant("sales") -> {tenant id: rows}, counted in the database on the read-only connection."""

    def count(relation: str) -> dict[int, int]:
        query = sql.SQL("SELECT tenant_id, count(*) FROM {} GROUP BY tenant_id ORDER BY tenant_id").format(
            sql.Identifier(relation))
        return {int(tenant): int(rows) for tenant, rows in phase4_db.execute(query).fetchall()}

    return count
