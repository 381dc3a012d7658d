"""Scratch databases of a run's own (scratchdb.py): their names, and on a real server that two never share one
and a drop takes only its own; what a run does with a database of the old fixed name is in test_blast_attacks.py."""

from __future__ import annotations

import psycopg
from psycopg.conninfo import conninfo_to_dict

from pytest_phase4.db import scratchdb
from pytest_phase4.db.embedded import EmbeddedPostgres
from pytest_phase4.db.scratchdb import Scratch


def test_a_scratch_name_fits_63_bytes_and_keeps_its_token_and_purpose() -> None:
    long = "ü" * 40  # 80 bytes: cut by bytes, whole characters only
    name = scratchdb.name_for(long, "blast", "0123abcd")
    assert len(name.encode()) <= scratchdb.MAX_NAME
    assert name.endswith("_0123abcd_phase4_blast")
    assert name.startswith("ü" * 20)
    assert scratchdb.name_for("crm", "verify", "0123abcd") == "crm_0123abcd_phase4_verify"


def test_two_scratch_databases_of_one_target_never_share_a_name_and_each_drop_is_its_own(
        pg_server: EmbeddedPostgres, scratch_dsn: str) -> None:
    """Two runs on one server at once (CI jobs of two branches): each gets its own copy, closed to PUBLIC, and
    dropping one leaves the other; a database that only looks like a scratch copy (no token comment) is kept."""
    db = str(conninfo_to_dict(scratch_dsn)["dbname"])
    first, second = (scratchdb.create(scratch_dsn, db, "blast") for _ in range(2))
    lookalike = Scratch(f"{db}_phase4_blast", "", first.mark)
    pg_server.create_database(lookalike.name)
    try:
        assert first.name != second.name
        with psycopg.connect(pg_server.dsn) as conn:
            public = conn.execute("SELECT has_database_privilege('public', %s, 'CONNECT')", (first.name,)).fetchone()
        assert public == (False,)
        assert scratchdb.drop(scratch_dsn, first) is True
        assert scratchdb.drop(scratch_dsn, lookalike) is False  # not its oid: not ours, not dropped
        with psycopg.connect(pg_server.dsn) as conn:
            left = {r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (f"{db}_%",))}
        assert left == {second.name, lookalike.name}
    finally:
        scratchdb.drop(scratch_dsn, second)
        pg_server.drop_database(lookalike.name)
