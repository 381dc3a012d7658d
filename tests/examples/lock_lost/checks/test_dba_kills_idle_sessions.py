"""Between two steps a DBA ends the idle sessions on the database, the run's own lock holder among them."""

import pytest


@pytest.mark.phase4_after("preflight")
def test_dba_ends_idle_sessions(phase4_db):
    ended = phase4_db.execute("SELECT count(pg_catalog.pg_terminate_backend(pid)) FROM pg_catalog.pg_locks"
                              " WHERE locktype = 'advisory' AND granted"
                              " AND database = (SELECT oid FROM pg_catalog.pg_database"
                              " WHERE datname = current_database())").fetchone()
    assert ended == (1,)
