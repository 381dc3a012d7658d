"""Which statements of a pending migration the blast radius leaves out of its copy (copyfilter.py): unit tests of
the classification, no database needed."""

from __future__ import annotations

import pytest

from pytest_phase4.blast import copyfilter
from pytest_phase4.db import sqltext

LEFT_OUT = [
    ("CREATE ROLE reporting NOLOGIN", "roles, databases and tablespaces belong to the whole server"),
    ("GRANT reporting TO app", "roles, databases and tablespaces"),
    ("ALTER DATABASE crm SET app.jwt_secret = 'x'", "roles, databases and tablespaces"),
    ("GRANT CONNECT ON DATABASE crm TO reporting", "roles, databases and tablespaces"),
    ("COMMENT ON ROLE app IS 'x'", "roles, databases and tablespaces"),
    ("ALTER SYSTEM SET work_mem = '64MB'", "ALTER SYSTEM changes the server's configuration"),
    ("REASSIGN OWNED BY old TO new", "REASSIGN OWNED also changes"),
    ("ALTER PUBLICATION supabase_realtime ADD TABLE sales", "the copy has no publications"),
    ("DROP PUBLICATION supabase_realtime", "the copy has no publications"),
    ("CREATE USER MAPPING FOR PUBLIC SERVER reporting", "the copy has no user mappings"),
    ("COPY sales TO PROGRAM 'curl -d @- https://example.com'", "a file or a program on the database server"),
    ("SELECT dblink_exec('dbname=other', 'DELETE FROM feed')", "dblink_exec() acts beyond the database"),
    ("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'x') THEN CREATE ROLE x; END IF; END $$",
     "it runs CREATE ROLE x: roles, databases and tablespaces"),
    ("DO $$ BEGIN PERFORM pg_terminate_backend(42); END $$", "pg_terminate_backend() acts beyond the database"),
]
KEPT = [
    "GRANT SELECT ON sales TO reporting",
    "COMMENT ON TABLE sales IS 'x'",
    "ALTER TABLE sales DROP COLUMN customer_name",
    "DO $$ BEGIN UPDATE sales SET total = 0 WHERE total IS NULL; END $$",
    "CREATE VIEW remote AS SELECT * FROM dblink('dbname=other', 'SELECT 1') AS t(x int)",  # not called here
    "COPY sales FROM STDIN",
]


@pytest.mark.parametrize(("text", "why"), LEFT_OUT)
def test_statements_that_act_beyond_the_copy_are_left_out_with_why(text: str, why: str) -> None:
    (statement,) = sqltext.split(text)
    assert why in (copyfilter.not_on_copy(statement) or "")


@pytest.mark.parametrize("text", KEPT)
def test_statements_of_the_database_itself_run_on_the_copy(text: str) -> None:
    (statement,) = sqltext.split(text)
    assert copyfilter.not_on_copy(statement) is None


def test_a_statement_left_out_is_named_with_its_string_constants_masked() -> None:
    texts = ["ALTER DATABASE crm SET app.jwt_secret = 'super-secret-jwt'", "ALTER ROLE app SET x = E'a\\'b'",
             "DO $body$ BEGIN CREATE ROLE x PASSWORD 'pw'; END $body$"]
    assert [copyfilter.shown(s) for t in texts for s in sqltext.split(t)] == [
        "ALTER DATABASE crm SET app.jwt_secret = '***'", "ALTER ROLE app SET x = '***'", "DO $$***$$"]


def test_a_statement_naming_a_role_that_a_statement_left_out_creates_is_left_out_too() -> None:
    """GRANT ... TO a role the migration creates would fail on the copy only because CREATE ROLE did not run."""
    absent: set[str] = set()
    text = ("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'reporting') THEN CREATE ROLE reporting; "
            "END IF; END $$; GRANT SELECT ON sales TO reporting; CREATE POLICY r ON sales FOR SELECT TO reporting "
            "USING (true); GRANT SELECT ON sales TO authenticated")
    found = [copyfilter.not_on_copy(s, absent) for s in sqltext.split(text)]
    assert found[1:] == ["it names role reporting, which a statement not tried on the copy creates"] * 2 + [None]
    assert absent == {"reporting"}
