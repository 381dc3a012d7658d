"""Row-level security (issue 12), on real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from pytest_phase4 import catalog

# Supabase's API roles; roles are cluster-wide, so only where they do not exist yet.
API_ROLES = """
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon') THEN CREATE ROLE anon NOLOGIN; END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN CREATE ROLE authenticated NOLOGIN;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
    CREATE ROLE service_role NOLOGIN BYPASSRLS;
  END IF;
END $$;
"""
# notes: 10 rows, tenants 0 and 1; authenticated sees its tenant's (app.tenant), anon nothing.
NOTES = """
CREATE TABLE notes (id int PRIMARY KEY, tenant_id int NOT NULL, body text);
INSERT INTO notes SELECT g, g % 2, 'note ' || g FROM generate_series(1, 10) g;
ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_tenant ON notes TO authenticated USING (tenant_id = current_setting('app.tenant', true)::int);
GRANT SELECT, INSERT, UPDATE, DELETE ON notes TO anon, authenticated, service_role;
"""


@pytest.fixture
def db(scratch_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(scratch_dsn, autocommit=True) as conn:
        conn.execute(API_ROLES)
        conn.execute(NOTES)
        yield conn


def test_a_view_over_a_table_whose_rls_the_checker_bypasses_is_counted_as_the_table(
        db: psycopg.Connection[Any]) -> None:
    db.execute("DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'phase4_owner') THEN "
               "CREATE ROLE phase4_owner NOLOGIN; END IF; END $$; ALTER TABLE notes OWNER TO phase4_owner;"
               "CREATE VIEW notes_all AS SELECT * FROM notes; ALTER VIEW notes_all OWNER TO phase4_owner;"
               "ANALYZE notes; SET ROLE phase4_owner")  # its owner checks: not a superuser
    assert catalog.count_view(db, "public", "notes_all") == catalog.RowsOf("notes")  # the owner bypasses RLS
    db.execute("RESET ROLE; ALTER TABLE notes FORCE ROW LEVEL SECURITY; SET ROLE phase4_owner")
    assert catalog.count_view(db, "public", "notes_all") == 0  # now it applies to the owner too: none of 10
    db.execute("RESET ROLE; DROP VIEW notes_all; DROP TABLE notes")  # nothing of the role's left behind
