"""The revert's first change: drop what the plan created, never reaching an object it did not create. No pytest
here; runs in the rollback's transaction.
"""

from __future__ import annotations

from psycopg import errors

from pytest_phase4.db.inventory import Obj
from pytest_phase4.errors import CheckFailed
from pytest_phase4.safety import revert
from pytest_phase4.safety.revert_apply import RESTORE_HINT, Reverter


def drop_created(rv: Reverter) -> list[str]:
    """Drop in rounds, each statement without CASCADE in a savepoint: what another object still depends on
    waits for the next round; when a round drops nothing, what is left depends on something the plan did
    not create, and the revert is refused with PostgreSQL's own list of those dependents."""
    targets = rv.to_drop()
    _refuse_auto_dependents(rv, targets)
    done: list[str] = []
    remaining = targets
    while remaining:
        blocked: list[tuple[Obj, str]] = []
        for obj in remaining:
            statement = revert.drop_statement(obj)
            if statement is None:
                raise CheckFailed("objects the plan created that the rollback can drop", f"{obj.type} "
                                  f"{obj.identity}", "the migrations' record", hint=RESTORE_HINT)
            try:
                with rv.conn.transaction():
                    rv.conn.execute(statement)
            except errors.DependentObjectsStillExist as exc:
                blocked.append((obj, exc.diag.message_detail or str(exc)))
                continue
            done.append(f"{obj.type} {obj.identity}")
        if len(blocked) == len(remaining):
            details = [f"{o.type} {o.identity}: {d}" for o, d in blocked]
            raise CheckFailed("every object the plan created to be droppable without reaching anything else",
                              f"{len(blocked)} object(s) that objects the plan did not create depend on",
                              "the database now", details=[line for d in details for line in d.splitlines()],
                              hint="nothing was changed: drop or change those objects first (they are not the "
                                   "plan's), or use --phase4-rollback=restore")
        remaining = [o for o, _ in blocked]
    return done


def _refuse_auto_dependents(rv: Reverter, targets: list[Obj]) -> None:
    """Indexes, triggers, policies, constraints that PostgreSQL would drop silently with a plan object but
    that the plan did not create (the application's): refuse rather than lose them."""
    created = {(o.type, o.identity) for n in rv.nets if n.current is not None and n.original is None
               for o in [n.current]}
    outside: list[str] = []
    for obj in targets:
        rows = rv.conn.execute(
            "SELECT i.type, i.identity FROM pg_depend d"
            " CROSS JOIN LATERAL pg_identify_object(d.classid, d.objid, d.objsubid) i"
            " WHERE d.refclassid = %s AND d.refobjid = %s AND (%s = 0 OR d.refobjsubid = %s) AND d.deptype = 'a'"
            " AND d.classid NOT IN ('pg_attrdef'::regclass, 'pg_type'::regclass)"
            " AND NOT (d.classid = 'pg_class'::regclass AND d.objid = d.refobjid)",
            (obj.classid, obj.objid, obj.objsubid, obj.objsubid)).fetchall()
        for kind, identity in rows:
            if (kind, identity) not in created and kind != "sequence":
                outside.append(f"{kind} {identity} (not created by the plan) would be dropped with "
                               f"{obj.type} {obj.identity}")
    if outside:
        raise CheckFailed("every object the plan created to be droppable without reaching anything else",
                          f"{len(outside)} object(s) the plan did not create", "the database now",
                          details=outside, hint="nothing was changed: drop them first if they may go, or use "
                                                "--phase4-rollback=restore")
