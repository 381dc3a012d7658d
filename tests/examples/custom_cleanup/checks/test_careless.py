"""A careless custom check: it leaves a transaction open and turns the read-only guard off."""

import psycopg
import pytest


@pytest.mark.phase4_after("20250101000001_create_views.sql")
def test_careless(phase4_db: psycopg.Connection) -> None:
    phase4_db.execute("SET default_transaction_read_only = off")
    phase4_db.autocommit = False
    assert phase4_db.execute("SELECT count(*) FROM sales").fetchone() == (100,)  # holds a lock on sales


@pytest.mark.phase4_after("20250101000002_drop_denormalized.sql")
def test_guard_is_back(phase4_db: psycopg.Connection) -> None:
    assert phase4_db.autocommit
    assert phase4_db.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
