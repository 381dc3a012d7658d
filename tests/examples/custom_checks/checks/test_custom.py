"""Custom checks: plain pytest tests in the plan's folder, using the plugin's fixtures."""

import psycopg
import pytest


@pytest.mark.phase4_after("20250101000001_create_views.sql")
def test_view_names_come_from_customers(phase4_db: psycopg.Connection) -> None:
    row = phase4_db.execute("SELECT count(*) FROM sales_with_details WHERE customer_name IS NULL").fetchone()
    assert row == (0,)


@pytest.mark.phase4_after("20250101000002_drop_denormalized.sql")
def test_verification_connection_cannot_write(phase4_db: psycopg.Connection) -> None:
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        phase4_db.execute("DELETE FROM sales")


def test_sales_lost_the_copied_name(migration_20250101000002_drop_denormalized, phase4_db: psycopg.Connection) -> None:
    """Asks for migration 2 by its fixture: runs in its step, after the marked check above."""
    assert migration_20250101000002_drop_denormalized.applied
    columns = phase4_db.execute("SELECT column_name FROM information_schema.columns WHERE table_name = 'sales'")
    assert ("customer_name",) not in columns.fetchall()


def test_snapshot_recorded_before_migrating(phase4_snapshot: dict[str, int]) -> None:
    assert phase4_snapshot == {"customers": 10, "sales": 100, "tickets": 50}
