"""Second round of attacks on the rollback (issue 10): a DBA on a live database, the application writing between
the run and `--phase4-rollback`. Each test asserts the SAFE outcome (nothing lost or changed without being listed
and consented to, no false "proven"), so it fails while its hole is open. Plain SQL outside the plugin checks."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from test_rollback_attacks import M1, M2, SETUP, out

from helpers import Project, append, ledger_files


@pytest.mark.xfail(strict=True, reason="a type change rewrites every row with no UPDATE counted and the revert casts "
                   "the converted values back: it must compare them with the backup (or refuse) - not a small fix")
def test_revert_of_a_type_change_with_using_does_not_keep_the_converted_values(
        project: Callable[..., Project]) -> None:
    """`ALTER COLUMN price TYPE bigint USING (price * 100)::bigint` (to cents) rewrites every row without an UPDATE:
    the record sees no row change, the revert casts back to numeric, and 10.5 comes back as 1050, "proven"."""
    p = project("mini", "safe")
    append(p, SETUP, "ALTER TABLE tickets ADD COLUMN price numeric;\nUPDATE tickets SET price = id + 0.5;\n")
    append(p, M1, "ALTER TABLE tickets ALTER COLUMN price TYPE bigint USING (price * 100)::bigint;\n")
    assert p.run("-m", "preflight", seed=True).ret == 0
    prices = p.query("SELECT id, price FROM tickets ORDER BY id")
    p.run("--phase4-confirm-destructive")
    assert len(ledger_files(p)) == 3
    result = p.run("-v", "--phase4-rollback")
    if result.ret != 0:  # a refusal is safe when it names the column and changed nothing
        assert "public.tickets.price" in out(result), out(result)
        assert p.query("SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
                       " WHERE attrelid = 'tickets'::regclass AND attname = 'price'") == [("bigint",)]
        return
    assert p.query("SELECT id, price FROM tickets ORDER BY id") == prices, out(result)


def test_the_refill_fires_no_rule_of_the_application(project: Callable[..., Project]) -> None:
    """The application audits updates with a rule (`ON UPDATE ... DO ALSO INSERT`): DISABLE TRIGGER does not stop
    rules, so the refill's UPDATE writes 100 audit rows claiming the application updated every sale ("no trigger
    fired", "proven")."""
    p = project("mini", "safe")
    p.run("--phase4-confirm-destructive", seed=True)
    assert len(ledger_files(p)) == 3
    p.execute("CREATE TABLE app_audit (what text);"
              " CREATE RULE sales_audit AS ON UPDATE TO sales DO ALSO INSERT INTO app_audit VALUES ('sale ' || new.id)")
    result = p.run("-v", "--phase4-rollback")
    assert result.ret == 0, out(result)
    assert p.query("SELECT count(*) FROM app_audit") == [(0,)], out(result)
    assert p.query("SELECT ev_enabled FROM pg_rewrite WHERE rulename = 'sales_audit'") == [("O",)]


def test_rows_a_migration_truncated_are_brought_back_or_listed(project: Callable[..., Project]) -> None:
    """`TRUNCATE sessions` in a migration: pg_stat_xact_user_tables counts no deleted row for a TRUNCATE, so the
    record holds no row change, the revert neither brings the 30 rows back nor names the table, and says
    "COMPLETE and proven" (the ledger forgets the migration)."""
    p = project("mini", "safe")
    append(p, SETUP, "CREATE TABLE sessions (id int PRIMARY KEY, token text NOT NULL);\n"
                     "INSERT INTO sessions SELECT g, md5(g::text) FROM generate_series(1, 30) g;\n")
    append(p, M2, "TRUNCATE sessions;\n")
    p.run("--phase4-confirm-destructive", seed=True)
    assert len(ledger_files(p)) == 3
    result = p.run("-v", "--phase4-rollback")
    assert p.query("SELECT count(*) FROM sessions") == [(30,)] or "public.sessions" in out(result), out(result)
