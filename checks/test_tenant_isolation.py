"""Custom checks of the CRM example: tenant isolation, which the plan's check kinds do not express.

A custom check asks for the migration it verifies by that migration's fixture, `migration_<file name without
.sql>`: pytest applies the migration first (only if every earlier step passed in this run), the check runs in that
migration's step, after the plan's own verify checks, and it is skipped if the migration is not applied. A
failure halts the run before the next migration. `@pytest.mark.phase4_after("<file>")` places a check the same
way. `tenant_ids` and `rows_per_tenant` come from the repository's top-level conftest.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest


def test_products_link_suppliers_of_their_own_tenant(
    migration_20250315000003_enhance_reference_tables: Any, phase4_db: psycopg.Connection[Any]
) -> None:
    crossing = phase4_db.execute(
        "SELECT count(*) FROM products p JOIN suppliers s ON s.id = p.supplier_id"
        " WHERE s.tenant_id <> p.tenant_id").fetchone()
    assert crossing == (0,), "a product points at another tenant's supplier"


def test_every_tenant_got_its_suppliers(
    migration_20250315000003_enhance_reference_tables: Any, tenant_ids: list[int],
    rows_per_tenant: Callable[[str], dict[int, int]],
) -> None:
    assert sorted(rows_per_tenant("suppliers")) == tenant_ids


@pytest.mark.phase4_after("20250322000021_create_sales_views.sql")
def test_sales_view_keeps_each_tenants_rows(rows_per_tenant: Callable[[str], dict[int, int]]) -> None:
    assert rows_per_tenant("sales_with_details") == rows_per_tenant("sales")
