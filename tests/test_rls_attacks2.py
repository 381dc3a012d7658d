"""Second round of attacks on row-level security exposure (issue 12): migrations that let `anon` or tenant A read
or write other tenants' rows while rls_exposure and the personas stay green. Same application, personas and
helpers as tests/test_rls_attacks.py (tests/examples/rls_attacks/)."""

from __future__ import annotations

from collections.abc import Callable

from test_rls_attacks import as_user, assert_fails_naming, attacked, seen, total

from conftest import Project

# PostgREST serves every function of an exposed schema as /rpc/<name>. A SECURITY DEFINER one (search_path fixed,
# as rule 0011 asks) that returns one json value, not a set, aggregates every tenant's tickets for anon: splinter
# 0028/0029 flag any SECURITY DEFINER function the API roles may execute; ours only set-returning ones, and the
# personas count relations, never functions.
JSON_RPC = """
CREATE FUNCTION public.ticket_export() RETURNS json LANGUAGE sql STABLE SECURITY DEFINER SET search_path = ''
  AS $$ SELECT coalesce(json_agg(json_build_object('id', t.id, 'tenant_id', t.tenant_id, 'title', t.title)), '[]')
        FROM public.tickets t $$;
"""


def test_a_definer_function_returning_one_json_value_is_caught(project: Callable[..., Project]) -> None:
    p = attacked(project, ("ticket_export", JSON_RPC))
    result = p.run("-v", seed=True)
    every = total(p, "SELECT count(*) FROM public.tickets")
    assert seen(p, "SELECT json_array_length(public.ticket_export())", "anon") == every  # /rpc/ticket_export
    assert_fails_naming(result, "20250701000001_ticket_export", "public.ticket_export")


# An auto-updatable view without security_invoker writes its table with the owner's rights: row-level security of
# the table is bypassed for UPDATE and DELETE through it. Granted UPDATE and DELETE but not SELECT (a "write-only
# endpoint"), nobody counts as reading it: rls_exposure's readers hold SELECT, the personas see "no SELECT
# privilege" and count writes of tables only. DELETE and UPDATE without a WHERE clause need no SELECT.
WRITE_VIEW = """
CREATE VIEW public.ticket_updates AS SELECT id, tenant_id, title, status FROM public.tickets;
REVOKE SELECT ON public.ticket_updates FROM anon, authenticated;
"""


def test_a_definer_view_writable_but_not_readable_is_caught(project: Callable[..., Project]) -> None:
    p = attacked(project, ("ticket_updates", WRITE_VIEW))
    result = p.run("-v", seed=True)
    every = total(p, "SELECT count(*) FROM public.tickets")
    with as_user(p, "anon") as conn:  # rolled back
        assert conn.execute("UPDATE public.ticket_updates SET title = 'defaced'").rowcount == every
        assert conn.execute("DELETE FROM public.comments").rowcount == 0  # the table itself: nothing
    assert_fails_naming(result, "20250701000001_ticket_updates", "public.ticket_updates")
