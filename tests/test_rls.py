"""Row-level security exposure (issue 12): the catalog rules of rls_exposure, each failing then passing once its
fix is applied, and the persona counts, on real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from pytest_phase4.db import catalog
from pytest_phase4.errors import PlanError
from pytest_phase4.plan.load import load_plan
from pytest_phase4.plan.model import Persona, RlsSettings
from pytest_phase4.rls import exposure, persona_count, personas, policy_expr
from pytest_phase4.rls.exposure import Scope
from pytest_phase4.rls.persona_seen import Counted, Relation, Seen

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


# Each catalog rule: objects that break it, twins that do not (created beside them), the finding each bad object
# gets, and its fix, after which nothing is found.
RULES = {
    "security_definer_view (0010), through a view too": (
        "CREATE VIEW leaky AS SELECT * FROM notes;"
        "CREATE VIEW inner_v WITH (security_invoker = true) AS SELECT * FROM notes;"
        "CREATE VIEW outer_v AS SELECT id FROM inner_v;"
        "GRANT SELECT ON leaky, outer_v TO anon, authenticated;",
        "CREATE VIEW safe WITH (security_invoker = true) AS SELECT * FROM notes;"
        "CREATE VIEW internal AS SELECT * FROM notes; GRANT SELECT ON internal TO service_role;"
        "CREATE VIEW plain AS SELECT 1 AS one; GRANT SELECT ON safe, plain TO anon, authenticated;",
        ['view public.leaky [splinter 0010 security_definer_view]: readable by anon, authenticated (subject to '
         'row-level security), runs with its owner postgres\'s rights (no security_invoker) over RLS table(s) '
         'public.notes: they see every row postgres sees; fix: ALTER VIEW "public"."leaky" SET (security_invoker '
         '= true) (PostgreSQL 15+: the view then reads with the rights of whoever queries it), or REVOKE SELECT ON '
         '"public"."leaky" FROM anon, authenticated',
         "view public.outer_v [splinter 0010 security_definer_view]: readable by anon, authenticated * over RLS "
         "table(s) public.notes: *"],
        "ALTER VIEW leaky SET (security_invoker = true); ALTER VIEW outer_v SET (security_invoker = true)"),
    "materialized_view_in_api (0016)": (
        "CREATE MATERIALIZED VIEW per_tenant AS SELECT tenant_id, count(*) FROM notes GROUP BY 1;"
        "GRANT SELECT ON per_tenant TO authenticated;",
        "CREATE MATERIALIZED VIEW private_stats AS SELECT count(*) FROM notes;"
        "GRANT SELECT ON private_stats TO service_role;",
        ["materialized view public.per_tenant [splinter 0016 materialized_view_in_api]: readable by authenticated "
         "(subject to row-level security), holds their rows with no row-level security of its own over RLS "
         "table(s) public.notes: they see every row postgres sees; fix: REVOKE SELECT ON \"public\".\"per_tenant\" "
         "FROM authenticated, or move it to a schema the API does not expose"],
        "REVOKE SELECT ON per_tenant FROM authenticated"),
    "rls_enabled_no_policy (0008)": (
        "CREATE TABLE locked (id int); ALTER TABLE locked ENABLE ROW LEVEL SECURITY; GRANT SELECT ON locked TO anon;",
        "CREATE TABLE guarded (id int, tenant_id int); ALTER TABLE guarded ENABLE ROW LEVEL SECURITY;"
        "CREATE POLICY mine ON guarded TO authenticated USING (tenant_id = 1);",
        ["table public.locked [splinter 0008 rls_enabled_no_policy]: row-level security is enabled and no policy "
         "exists, so no role subject to it sees or writes any row (readable by anon); fix: CREATE POLICY ... ON "
         "\"public\".\"locked\" for the roles that use it, or ALTER TABLE \"public\".\"locked\" DISABLE ROW LEVEL "
         "SECURITY if it is not meant to be protected"],
        "CREATE POLICY anon_reads ON locked FOR SELECT TO anon USING (id > 0)"),
    "policy_exists_rls_disabled (0007)": (
        "CREATE TABLE loose (id int, tenant_id int);"
        "CREATE POLICY mine ON loose TO authenticated USING (tenant_id = 1);",
        "CREATE TABLE guarded (id int, tenant_id int); ALTER TABLE guarded ENABLE ROW LEVEL SECURITY;"
        "CREATE POLICY mine ON guarded TO authenticated USING (tenant_id = 1);",
        ["table public.loose [splinter 0007 policy_exists_rls_disabled]: policies mine exist but row-level "
         "security is disabled, so they are ignored (no role but its owner may read it yet); fix: ALTER TABLE "
         "\"public\".\"loose\" ENABLE ROW LEVEL SECURITY"],
        "ALTER TABLE loose ENABLE ROW LEVEL SECURITY"),
    "rls_disabled_in_public (0013)": (
        "CREATE TABLE open_table (id int); GRANT SELECT ON open_table TO anon, authenticated;",
        "CREATE SCHEMA private; CREATE TABLE private.internal (id int); GRANT SELECT ON private.internal TO anon;",
        ["table public.open_table [splinter 0013 rls_disabled_in_public]: in exposed schema public without "
         "row-level security (readable by anon, authenticated; default privileges or a later GRANT expose every "
         "row); fix: ALTER TABLE \"public\".\"open_table\" ENABLE ROW LEVEL SECURITY and CREATE POLICY ... for the "
         "roles that use it"],
        "ALTER TABLE open_table ENABLE ROW LEVEL SECURITY; CREATE POLICY reads ON open_table USING (id > 0)"),
    "rls_policy_always_true (0024)": (
        "CREATE POLICY anyone_edits ON notes FOR UPDATE TO authenticated USING (true);"
        "CREATE POLICY anyone_adds ON notes FOR INSERT TO anon WITH CHECK (1 = 1);",
        "CREATE POLICY public_read ON notes FOR SELECT TO anon USING (true);"  # reading for all: on purpose
        "CREATE POLICY own_edits ON notes FOR UPDATE TO authenticated USING (tenant_id = 1)"
        " WITH CHECK (tenant_id = 1);"
        "CREATE POLICY admin_edits ON notes FOR DELETE TO service_role USING (true);",
        ["policy anyone_adds on public.notes [splinter 0024 rls_policy_always_true]: permissive, for INSERT by "
         "anon, with WITH CHECK ((1 = 1)): any of them may write every row of every tenant; fix: ALTER POLICY "
         "\"anyone_adds\" ON \"public\".\"notes\" with a condition on the row (e.g. tenant_id = the caller's "
         "tenant), or drop it",
         "policy anyone_edits on public.notes [splinter 0024 rls_policy_always_true]: permissive, for UPDATE by "
         "authenticated, with USING (true) and no WITH CHECK (so USING's true applies to the new rows too): *"],
        "ALTER POLICY anyone_edits ON notes USING (tenant_id = 1); ALTER POLICY anyone_adds ON notes WITH CHECK "
        "(tenant_id = 1)"),
    "function_search_path_mutable (0011, 0028)": (
        "CREATE FUNCTION purge() RETURNS void LANGUAGE sql SECURITY DEFINER AS 'DELETE FROM notes';",
        "CREATE FUNCTION purge_fixed() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = ''"
        " AS 'BEGIN DELETE FROM public.notes; RETURN NULL; END';"  # a trigger function: no /rpc serves it
        "CREATE FUNCTION purge_private() RETURNS void LANGUAGE sql SECURITY DEFINER AS 'DELETE FROM notes';"
        "REVOKE EXECUTE ON FUNCTION purge_private() FROM PUBLIC;"
        "CREATE FUNCTION invoker() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM notes';",
        ["function public.purge() [splinter 0011 function_search_path_mutable, 0028]: SECURITY DEFINER (runs as "
         "postgres, bypassing row-level security), executable by PUBLIC, without a fixed search_path: a caller's "
         "search_path decides which tables and functions its unqualified names mean; fix: ALTER FUNCTION "
         "\"public\".\"purge\"() SET search_path = '' (and qualify every name in its body), or REVOKE EXECUTE ON "
         "FUNCTION \"public\".\"purge\"() FROM PUBLIC"],
        "ALTER FUNCTION purge() SET search_path = ''; REVOKE EXECUTE ON FUNCTION purge() FROM PUBLIC"),
    "a read policy on a tenant's table that reads nothing of the row (0024, to reading: ours)": (
        "CREATE POLICY signed_in ON notes FOR SELECT TO authenticated"
        " USING (current_setting('request.jwt.claims', true)::jsonb ->> 'aud' = 'authenticated');",
        "CREATE POLICY own_reads ON notes FOR SELECT TO authenticated"
        " USING (tenant_id = current_setting('app.tenant', true)::int);"
        "CREATE TABLE plans (id int); ALTER TABLE plans ENABLE ROW LEVEL SECURITY;"  # no tenant column
        "CREATE POLICY plans_read ON plans FOR SELECT TO authenticated USING (pg_has_role('authenticated', 'USAGE'));",
        ["policy signed_in on public.notes [splinter 0024 rls_policy_always_true, to reading too: ours]: permissive, "
         "for SELECT by authenticated, with USING ((((current_setting('request.jwt.claims'::text, true))::jsonb ->> "
         "'aud'::text) = 'authenticated'::text)), which reads nothing of the row: any of them may read every row "
         "of every tenant; fix: *"],
        "ALTER POLICY signed_in ON notes USING (tenant_id = current_setting('app.tenant', true)::int)"),
    "rls_references_user_metadata (0015)": (
        "CREATE POLICY meta ON notes FOR SELECT TO authenticated"
        " USING (tenant_id = (current_setting('request.jwt.claims', true)::jsonb -> 'user_metadata' ->> 't')::int);",
        "CREATE POLICY app ON notes FOR SELECT TO authenticated"  # app_metadata: set by the server only
        " USING (tenant_id = (current_setting('request.jwt.claims', true)::jsonb -> 'app_metadata' ->> 't')::int);",
        ["policy meta on public.notes [splinter 0015 rls_references_user_metadata]: for SELECT by authenticated, it "
         "reads user_metadata, which the caller sets itself (user_metadata through auth.updateUser, request headers "
         "and cookies with each request): a caller picks the rows it may read; fix: *"],
        "DROP POLICY meta ON notes"),
    "rule with the owner's rights (ours)": (
        "CREATE RULE purge_on_edit AS ON UPDATE TO notes DO ALSO DELETE FROM notes WHERE tenant_id <> new.tenant_id;",
        "CREATE RULE keep AS ON DELETE TO notes DO INSTEAD NOTHING;"  # append-only: no action
        "CREATE TABLE log (id int); CREATE RULE log_insert AS ON INSERT TO log DO ALSO DELETE FROM notes;"
        "REVOKE ALL ON log FROM PUBLIC; ALTER TABLE log ENABLE ROW LEVEL SECURITY;"
        "CREATE POLICY p ON log TO service_role USING (true)",
        ["rule purge_on_edit on public.notes [a rule runs with the owner's rights; no splinter lint]: ON UPDATE, "
         "fired by anon, authenticated (who may UPDATE public.notes): its actions run with the rights of postgres, "
         "the owner, so the row-level security of every table they read or write is bypassed: a caller writes any "
         "tenant's rows through it; fix: DROP RULE \"purge_on_edit\" ON \"public\".\"notes\" and do it in a "
         "trigger function that is SECURITY INVOKER (or checks the caller's tenant)"],
        "DROP RULE purge_on_edit ON notes"),
}


@pytest.mark.parametrize(("bad", "twin", "expected", "fix"), RULES.values(), ids=RULES.keys())
def test_each_catalog_rule_fails_its_object_passes_its_twin_and_its_fix(
        db: psycopg.Connection[Any], bad: str, twin: str, expected: list[str], fix: str) -> None:
    db.execute(bad)
    db.execute(twin)
    found = [f.text for f in exposure.findings(db, Scope(everything=True), RlsSettings())]
    assert len(found) == len(expected), found
    for text, pattern in zip(found, expected, strict=True):
        assert _fnmatch(text, pattern), f"{text}\n!=\n{pattern}"
    db.execute(fix)
    assert exposure.findings(db, Scope(everything=True), RlsSettings()) == []


def _fnmatch(text: str, pattern: str) -> bool:
    import fnmatch

    return fnmatch.fnmatchcase(text, pattern.replace("[", "[[]")) if "*" in pattern else text == pattern


def test_the_plan_scope_sees_only_what_the_plan_created_or_changed(db: psycopg.Connection[Any]) -> None:
    db.execute("CREATE VIEW leaky AS SELECT * FROM notes; GRANT SELECT ON leaky TO anon;"
               "CREATE VIEW fresh AS SELECT * FROM notes; GRANT SELECT ON fresh TO anon;")
    fresh = db.execute("SELECT 'fresh'::regclass::oid::int8").fetchone()[0]  # type: ignore[index]
    scope = Scope(relations={fresh}, origin={fresh: "created by 2_views.sql"})
    found = [f.text for f in exposure.findings(db, scope, RlsSettings())]
    assert [t.split(":")[0] for t in found] == ["view public.fresh (created by 2_views.sql) [splinter 0010 "
                                                "security_definer_view]"]
    # the exposed schemas decide: the same view in a schema the API does not serve is nobody's business here
    assert exposure.findings(db, scope, RlsSettings(exposed_schemas=("api",))) == []


PERSONA_VIEWS = """
CREATE VIEW notes_definer AS SELECT n.id, n.tenant_id, n.body FROM notes n;
CREATE VIEW notes_invoker WITH (security_invoker = true) AS SELECT n.id, n.tenant_id FROM notes n WHERE n.id > 2;
GRANT SELECT ON notes_definer, notes_invoker TO anon, authenticated;
"""


def test_counting_as_personas_in_one_read_only_snapshot(db: psycopg.Connection[Any]) -> None:
    db.execute(PERSONA_VIEWS)
    team = [Persona("tenant_1", "authenticated", settings={"app.tenant": "1"}), Persona("anon", "anon")]
    persona_count.can_become(db, team)
    counted = persona_count.count(db, team, {}, ["public"], "tenant_id")
    assert sorted(counted.relations) == ["public.notes", "public.notes_definer", "public.notes_invoker"]
    assert counted.totals["public.notes"] == Seen(10, {"0": 5, "1": 5})
    seen = counted.seen["tenant_1"]
    assert seen["public.notes"] == Seen(5, {"1": 5})
    assert seen["public.notes_definer"] == Seen(10, {"0": 5, "1": 5}, own=5, own_tenants={"1": 5})
    assert seen["public.notes_invoker"] == Seen(4, {"1": 4}, own=4, own_tenants={"1": 4})
    assert counted.seen["anon"]["public.notes_definer"] == Seen(10, {"0": 5, "1": 5}, own=0, own_tenants={})
    assert counted.relations["public.notes_definer"].under == ("public.notes",)
    # the connection is as it was: no transaction, the checking role, no persona setting left
    assert db.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert db.execute("SELECT current_user, current_setting('app.tenant', true)").fetchone() == ("postgres", "")
    leaks = personas.view_leaks(counted, {"public.notes_definer", "public.notes_invoker"}, ["tenant_1", "anon"])
    assert leaks == [
        "persona tenant_1 sees 10 rows of view public.notes_definer; by tenant: 0 5, 1 5; read with its own rights "
        "(security_invoker) the view's definition shows it 5; by tenant: 1 5: 5 row(s) it may not see (5 of "
        "tenant 0); of the RLS table(s) under it, the persona sees: public.notes 5; the view runs with its owner "
        "postgres's rights",
        "persona anon sees 10 rows of view public.notes_definer; by tenant: 0 5, 1 5; read with its own rights "
        "(security_invoker) the view's definition shows it 0: 10 row(s) it may not see (5 of tenant 0, 5 of "
        "tenant 1); of the RLS table(s) under it, the persona sees: public.notes 0; the view runs with its owner "
        "postgres's rights"]
    assert personas.view_leaks(counted, {"public.notes_invoker"}, ["tenant_1", "anon"]) == []  # not the plan's


def test_a_persona_the_checking_role_cannot_become_is_one_clear_error(
        db: psycopg.Connection[Any], scratch_dsn: str) -> None:
    db.execute("DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'phase4_outsider') THEN "
               "CREATE ROLE phase4_outsider LOGIN; END IF; END $$")
    team = [Persona("signed_in", "authenticated"), Persona("ghost", "phase4_no_such_role"),
            Persona("admin", "service_role")]
    with psycopg.connect(make_conninfo(scratch_dsn, user="phase4_outsider"), autocommit=True) as outsider, \
            pytest.raises(persona_count.PersonaError) as failed:
        persona_count.can_become(outsider, team)
    assert failed.value.render().splitlines()[:6] == [
        "expected: each persona's role to exist and to be one the checking role may SET ROLE to",
        "found:    3 problem(s)",
        "where:    the plan's [[persona]] entries",
        "  persona signed_in: the checking role phase4_outsider may not SET ROLE authenticated: SET ROLE needs "
        "membership in the role; as a superuser or a role with ADMIN OPTION on it: GRANT authenticated TO "
        "phase4_outsider (on Supabase, postgres is a member of anon, authenticated and service_role already)",
        "  persona ghost: role phase4_no_such_role does not exist on this server; create it (roles are cluster-wide: "
        "CREATE ROLE phase4_no_such_role NOLOGIN) or fix the persona's role",
        "  persona admin: the checking role phase4_outsider may not SET ROLE service_role: SET ROLE needs "
        "membership in the role; as a superuser or a role with ADMIN OPTION on it: GRANT service_role TO "
        "phase4_outsider (on Supabase, postgres is a member of anon, authenticated and service_role already)"]
    db.execute("GRANT service_role TO phase4_outsider")
    with psycopg.connect(make_conninfo(scratch_dsn, user="phase4_outsider"), autocommit=True) as outsider, \
            pytest.raises(persona_count.PersonaError) as failed:
        persona_count.can_become(outsider, [Persona("admin", "service_role")])
    assert failed.value.details == ["persona admin: role service_role is a superuser or has BYPASSRLS: it sees every "
                                    "row, whatever the policies; a persona stands for a role subject to row-level "
                                    "security"]
    db.execute("REVOKE service_role FROM phase4_outsider")


def test_a_user_query_gives_the_persona_a_real_user_or_a_clear_error(db: psycopg.Connection[Any]) -> None:
    found = Persona("user", "authenticated", {"role": "authenticated"},
                    user_query="SELECT id AS sub, tenant_id FROM notes WHERE tenant_id = 1 ORDER BY id LIMIT 1")
    assert persona_count.resolve_claims(db, found) == {"role": "authenticated", "sub": 1, "tenant_id": 1}
    missing = Persona("nobody", "authenticated", {}, user_query="SELECT id AS sub FROM notes WHERE id < 0")
    with pytest.raises(persona_count.PersonaError) as failed:
        persona_count.resolve_claims(db, missing)
    assert failed.value.summary == "expected persona nobody's user_query to return one row, found 0 row(s)"
    assert failed.value.hint == "pick one real user, e.g. ... ORDER BY id LIMIT 1"


def _moment(label: str, totals: dict[str, int], seen: dict[str, int], checker_rls: bool = False) -> personas.Moment:
    rel = Relation("public.notes", "public", "notes", "r", True, "postgres", False, True)
    counted = Counted({rel.name: rel}, {rel.name: Seen(sum(totals.values()), totals)},
                      {rel.name} if checker_rls else set(), {"p": {rel.name: Seen(sum(seen.values()), seen)}})
    return personas.Moment(label, "preflight" if label.startswith("before") else label, frozenset(), None, counted)  # type: ignore[arg-type]


@pytest.mark.parametrize(("totals", "seen", "checker_rls", "flagged"), [
    ({"1": 5, "2": 5}, {"1": 5}, False, ""),  # nothing moved
    ({"1": 9, "2": 5}, {"1": 9}, False, ""),  # the application added 4 rows of the persona's tenant
    ({"1": 3, "2": 2}, {"1": 3}, False, ""),  # ... or deleted some of both tenants
    ({"1": 5, "2": 5}, {"1": 5, "2": 5}, False, "tenant 2: 0 -> 5 seen, the table 5 -> 5"),  # a tenant's rows
    ({"1": 5, "2": 9}, {"1": 5, "2": 6}, False, "tenant 2: 0 -> 6 seen, the table 5 -> 9"),  # ... among new ones
    ({"1": 5, "2": 5}, {"1": 2}, False, "tenant 1: 5 -> 2 seen, the table 5 -> 5"),  # narrowed: the app breaks
    ({"1": 9, "2": 5}, {"1": 9}, True, "tenant 1: 5 -> 9 seen, the table 5 -> 9"),  # totals unknown: any change
], ids=["same", "app inserts", "app deletes", "widened", "widened among inserts", "narrowed", "checker under RLS"])
def test_a_kept_table_is_compared_per_tenant_against_its_own_rows(
        totals: dict[str, int], seen: dict[str, int], checker_rls: bool, flagged: str) -> None:
    before = _moment("before the first migration", {"1": 5, "2": 5}, {"1": 5})
    after = _moment("2_policy.sql", totals, seen, checker_rls)
    found = personas.table_changes(before, after, ["p"])
    if not flagged:
        assert found == []
    else:
        assert len(found) == 1
        assert found[0].startswith(f"persona p sees {sum(seen.values())} rows of table public.notes after "
                                   "2_policy.sql, 5 before the first migration")
        assert found[0].endswith(flagged)


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


BAD_PLAN = """
[phase4]
name = "x"

[rls]
exposed_schemas = "public"
tenant = "tenant_id"

[[persona]]
name = "a b"
role = ""
extra = 1
claims = { sub = [1] }
settings = { "app tenant" = "1" }

[[persona]]
name = "dup"
role = "anon"

[[persona]]
name = "dup"
role = "anon"

[[post]]
check = "rls_exposure"
scope = "everything"
"""


def test_persona_and_rls_mistakes_are_reported_with_their_lines(tmp_path: Any) -> None:
    plan = tmp_path / "phase4.toml"
    plan.write_text(BAD_PLAN)
    with pytest.raises(PlanError) as failed:
        load_plan(plan, display="phase4.toml")
    assert [str(p) for p in failed.value.problems] == [
        "phase4.toml [rls]: unknown key 'tenant'; expected one of ['api_roles', 'exposed_schemas', 'tenant_column']",
        "phase4.toml [rls]: exposed_schemas must be a non-empty list of names, e.g. exposed_schemas = "
        "[\"public\", \"api\"]; found 'public'",
        "phase4.toml:9 [[persona]] #1: unknown key 'extra'; expected one of ['claims', 'claims_setting', 'name', "
        "'role', 'settings', 'user_query']",
        "phase4.toml:9 [[persona]] #1: name must be a short name of letters, digits, \"_\", \".\" or \"-\" (it "
        "names the persona in test results and the report), e.g. name = \"tenant_a\"; found 'a b'",
        "phase4.toml:9 [[persona]] #1: role must name the database role the persona reads as, e.g. role = "
        "\"authenticated\"; found ''",
        "phase4.toml:9 [[persona]] #1: claims must be a table of strings, numbers or booleans, e.g. claims = { sub "
        "= \"...\", tenant_id = \"...\", role = \"authenticated\" }; found {'sub': [1]}",
        "phase4.toml:9 [[persona]] #1: settings: 'app tenant' is not a setting's name (letters, digits, _ and "
        "dots, e.g. app.tenant_id)",
        "phase4.toml:20 [[persona]] #3: persona 'dup' is named twice (first at phase4.toml:16 [[persona]] #2); "
        "give each a name of its own",
        "phase4.toml:24 [[post]] #1 check=rls_exposure: scope must be \"plan\" or \"schemas\"",
    ]


def test_personas_add_their_checks_to_preflight_and_every_migration(tmp_path: Any) -> None:
    (tmp_path / "migrations").mkdir()
    for name in ("1_a.sql", "2_b.sql"):
        (tmp_path / "migrations" / name).write_text("SELECT 1;\n")
    plan = tmp_path / "phase4.toml"
    plan.write_text('[phase4]\nname = "x"\n\n[[persona]]\nname = "a"\nrole = "anon"\nclaims = { sub = "u1" }\n\n'
                    '[[migration]]\nfile = "1_a.sql"\n\n[[migration]]\nfile = "2_b.sql"\n')
    loaded = load_plan(plan)
    assert [(s.step, s.test_id) for step in loaded.steps for s in step.checks] == [
        ("preflight", "personas"), ("1_a.sql", "personas"), ("2_b.sql", "personas")]
    assert loaded.rls.personas == (Persona("a", "anon", {"sub": "u1", "role": "anon"}, line=4),)
    assert loaded.rls.exposed_schemas == ("public",)


def test_a_plan_without_personas_is_unchanged(tmp_path: Any) -> None:
    plan = tmp_path / "phase4.toml"
    plan.write_text('[phase4]\nname = "x"\n\n[[post]]\ncheck = "rls_exposure"\nallow = ["public.stats"]\n')
    loaded = load_plan(plan)
    assert [s.test_id for step in loaded.steps for s in step.checks] == ["rls_exposure[plan]"]
    assert loaded.rls == RlsSettings()


def test_a_migration_is_counted_again_when_it_may_change_what_a_persona_sees(tmp_path: Any) -> None:
    from pytest_phase4.db.changes import Change, Record, RowChange
    from pytest_phase4.db.inventory import Obj

    column = Obj(1259, 1, 2, "table column", "public.notes.body", (), (), {})
    policy = Obj(3256, 9, 0, "policy", "own_tenant on public.notes", (), (), {}, "public.notes")
    file = tmp_path / "m.sql"
    file.write_text("ALTER TABLE notes ADD COLUMN body text;\n")
    quiet = Record("m.sql", [Change("created", None, column)], [])
    assert not personas.relevant(quiet, file)
    assert personas.relevant(Record("m.sql", [Change("created", None, policy)], []), file)
    assert personas.relevant(Record("m.sql", [], [RowChange("public.notes", 0, 3, 0)]), file)
    assert personas.relevant(None, file)  # applied without a record: count
    file.write_text("ALTER TABLE notes ADD COLUMN body text;\nGRANT service_role TO anon;\n")  # not in the record
    assert personas.relevant(quiet, file)


def test_a_relation_a_persona_cannot_be_counted_in_proves_nothing_and_says_why(db: psycopg.Connection[Any]) -> None:
    db.execute("CREATE FUNCTION refuse_anon() RETURNS int LANGUAGE plpgsql AS $$ BEGIN IF current_user = 'anon' THEN"
               " RAISE 'not for anon'; END IF; RETURN 1; END $$;"
               "CREATE VIEW guarded AS SELECT id FROM notes WHERE refuse_anon() = 1;"
               "GRANT SELECT ON guarded TO anon")
    team = [Persona("anon", "anon")]
    counted = persona_count.count(db, team, {}, ["public"], "tenant_id")
    assert counted.seen["anon"]["public.guarded"] == Seen(note="SQL error: not for anon [SQLSTATE P0001]")
    assert personas.uncounted(counted, {"public.guarded"}, ["anon"]) == [
        "persona anon: public.guarded could not be counted (SQL error: not for anon [SQLSTATE P0001])"]
    assert personas.uncounted(counted, set(), ["anon"]) == []  # a view the plan did not make: not its business


@pytest.mark.parametrize(("expr", "off"), [
    ("(auth.uid() IS NOT NULL)", True), ("(tenant_id = tenant_id)", True), ("true", True),
    ("(tenant_id = auth.tenant_id())", False), ("(author_id = auth.uid())", False),
    ("(EXISTS (SELECT 1 FROM m WHERE m.user_id = auth.uid()))", False), (None, False)])
def test_a_write_policy_that_reads_nothing_of_the_row_is_told_apart(expr: str | None, off: bool) -> None:
    assert policy_expr.off_the_row(expr) is off
