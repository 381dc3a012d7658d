"""Check kinds that run the plan's own SQL on the read-only verification connection: it may read, never write.

`query_returns` passes on one explicit value, `explain_under` on an execution time, `query_runs` when the query
runs without error (e.g. a view over columns a migration dropped, or a function's body); an SQL error fails the
check with the server's message, never a traceback (checkcontext.run_check)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from pytest_phase4.errors import CheckFailed
from pytest_phase4.kinds.base import Kind, Param, register
from pytest_phase4.kinds.context import Context
from pytest_phase4.plan.model import CheckSpec


def explain_under(ctx: Context, spec: CheckSpec) -> str:
    query, limit = spec.params["query"], spec.params["max_ms"]
    ctx.known.quiesce()  # a timing taken while read-ahead queries run would be inflated by them
    plan = ctx.conn.execute(b"EXPLAIN (ANALYZE, FORMAT JSON) " + query.encode()).fetchone()[0]  # type: ignore[index]
    ms = float(plan[0]["Execution Time"])
    if ms >= limit:
        raise CheckFailed(f"execution time < {limit:g} ms", f"{ms:.1f} ms", spec.params["name"], sql=query,
                          hint=spec.hint or "check the plan for sequential scans; migration 8's indexes may help")
    return f"{spec.params['name']}: {ms:.1f} ms (limit {limit:g} ms)"


def query_returns(ctx: Context, spec: CheckSpec) -> str:
    query, expect = spec.params["query"], spec.params["expect"]
    rows = ctx.conn.execute(query.encode()).fetchall()
    if len(rows) != 1 or len(rows[0]) != 1:
        raise CheckFailed("exactly one row with one column", f"{len(rows)} row(s)", spec.params["name"], sql=query)
    value = rows[0][0]
    if not _equal(value, expect):
        raise CheckFailed(repr(expect), repr(value), spec.params["name"], sql=query, hint=spec.hint)
    return f"{spec.params['name']}: {value!r}"


def _equal(value: Any, expect: Any) -> bool:
    if isinstance(expect, bool) or isinstance(value, bool):
        return value is expect
    if isinstance(expect, int | float) and isinstance(value, int | float | Decimal):
        return Decimal(str(value)) == Decimal(str(expect))
    return str(value) == str(expect)


def query_runs(ctx: Context, spec: CheckSpec) -> str:
    cur = ctx.conn.execute(spec.params["query"].encode())
    rows = len(cur.fetchall()) if cur.description is not None else None
    return f"{spec.params['name']}: ran without error" + (f", {rows:,} row(s)" if rows is not None else "")


register(
    Kind("explain_under", "EXPLAIN ANALYZE execution time of query is under max_ms",
         {"name": Param("str"), "query": Param("str"), "max_ms": Param("number")},
         label_fn=lambda p, _: str(p["name"]), run=explain_under, category="Performance", state=False),
    Kind("query_returns", "the query's single value equals expect",
         {"name": Param("str"), "query": Param("str"), "expect": Param("scalar")},
         label_fn=lambda p, _: str(p["name"]), run=query_returns),
    Kind("query_runs", "the query runs without error", {"name": Param("str"), "query": Param("str")},
         label_fn=lambda p, _: str(p["name"]), run=query_runs),
)
