"""Performance before and after (runbook Part 6.4 and the benchmarking appendix).

Each `[[perf]]` query of the plan is timed at the end of preflight (`perf_before`) and again at the end of post
(`perf_after`): one warm-up run, then `runs` timed runs of the query with every row fetched (what the
application waits for), the median kept, and one `EXPLAIN (ANALYZE, BUFFERS)` attached to the report row. Both
run on the read-only connection: the plan's SQL may read, never write.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg import sql

from pytest_phase4.errors import CheckFailed
from pytest_phase4.kinds.base import Kind, Param, register
from pytest_phase4.kinds.context import Context, NoBaseline
from pytest_phase4.plan.model import CheckSpec, Plan
from pytest_phase4.runextras import PerfResult, Timing


def measure(conn: psycopg.Connection[Any], query: str, runs: int) -> Timing:
    text = query.encode()
    conn.execute(text).fetchall()  # warm-up: caches and plan, as the application would see them
    times: list[float] = []
    for _ in range(runs):
        started = time.perf_counter()
        conn.execute(text).fetchall()
        times.append((time.perf_counter() - started) * 1000)
    plan = conn.execute(b"EXPLAIN (ANALYZE, BUFFERS) " + text).fetchall()
    return Timing(statistics.median(times), times, "\n".join(str(r[0]) for r in plan))


def _result(ctx: Context, spec: CheckSpec) -> PerfResult:
    p = spec.params
    gates = [f"<= {p['max_ms']:g} ms" if p["max_ms"] is not None else "",
             f"<= {p['max_regression_pct']:g}% slower" if p["max_regression_pct"] is not None else ""]
    result = ctx.extras.perf.setdefault(p["name"], PerfResult(p["name"], p["title"] or p["name"], p["query"]))
    result.gate = ", ".join(g for g in gates if g) or "none (recorded)"
    return result


def _attach(ctx: Context, spec: CheckSpec, when: str, timing: Timing) -> None:
    runs = ", ".join(f"{t:.1f}" for t in timing.runs_ms)
    ctx.extras.attach(spec, f"{spec.params['name']} {when}: median {timing.median_ms:.1f} ms (runs: {runs} ms); "
                            "EXPLAIN (ANALYZE, BUFFERS)", timing.explain)


def perf_before(ctx: Context, spec: CheckSpec) -> str:

    result = _result(ctx, spec)
    if ctx.applied_before_run:
        # Not a "before" time any more, and the query may read columns a migration dropped.
        result.before_note = f"no baseline: {len(ctx.applied_before_run)} migration(s) were already applied"
        raise NoBaseline(f"{result.before_note} when the run started (ledger)")
    ctx.known.quiesce()  # timings taken while read-ahead queries run would be inflated by them
    result.before = measure(ctx.conn, spec.params["query"], spec.params["runs"])
    _attach(ctx, spec, "before", result.before)
    return f"{result.title}: {result.before.median_ms:.1f} ms before (median of {spec.params['runs']})"


def perf_after(ctx: Context, spec: CheckSpec) -> str:
    p = spec.params
    result = _result(ctx, spec)
    query = p["query_after"] or p["query"]  # the same question asked of the new schema (e.g. a view)
    ctx.known.quiesce()  # timings taken while read-ahead queries run would be inflated by them
    after = result.after = measure(ctx.conn, query, p["runs"])
    _attach(ctx, spec, "after", after)
    before = result.before
    shown = f"{result.title}: {after.median_ms:.1f} ms after"
    if before is not None:
        shown += f", {before.median_ms:.1f} ms before ({result.improvement_pct:+.0f}% improvement)"
    if p["max_ms"] is not None and after.median_ms > p["max_ms"]:
        raise CheckFailed(f"median <= {p['max_ms']:g} ms", f"{after.median_ms:.1f} ms", result.title, sql=query,
                          hint=spec.hint or "read the EXPLAIN attached to this row: a sequential scan where an "
                                            "index of migration 8 should serve?")
    limit = p["max_regression_pct"]
    if limit is not None:
        if before is None:
            return f"{shown}; no baseline in this run: max_regression_pct not applied"
        regression = (after.median_ms - before.median_ms) / before.median_ms * 100 if before.median_ms else 0.0
        if regression > limit:
            raise CheckFailed(f"at most {limit:g}% slower than before ({before.median_ms:.1f} ms)",
                              f"{after.median_ms:.1f} ms ({regression:+.0f}%)", result.title, sql=query,
                              hint=spec.hint or "compare the EXPLAIN plans attached to the before and after rows")
    return shown


def _runs(params: Mapping[str, Any]) -> str | None:
    return "runs must be at least 1" if params["runs"] < 1 else None


_PARAMS = {"name": Param("str"), "query": Param("str"), "query_after": Param("str", False),
           "title": Param("str", False), "runs": Param("int", False, 5), "max_ms": Param("number", False),
           "max_regression_pct": Param("number", False)}
# Part 6.4 and the benchmarking appendix: the plan's [[perf]] entries become these two (plan.py)
register(
    Kind("perf_before", "times the query before migrating (median of runs) as the baseline", _PARAMS,
         label_fn=lambda p, _: str(p["name"]), constraint=_runs, run=perf_before, category="Performance",
         state=False),
    Kind("perf_after", "times the query after migrating; passes within max_ms and max_regression_pct", _PARAMS,
         label_fn=lambda p, _: str(p["name"]), constraint=_runs, run=perf_after, category="Performance",
         state=False),
)


def plan_indexes(plan: Plan) -> tuple[list[str], list[str]]:
    """The indexes the plan names (index_exists) and the LIKE patterns it counts (index_count)."""
    names: list[str] = []
    likes: list[str] = []
    for step in plan.steps:
        for spec in step.checks:
            if spec.kind == "index_exists":
                names.append(spec.element)
            elif spec.kind == "index_count":
                likes.append(spec.params["like"])
    return list(dict.fromkeys(names)), list(dict.fromkeys(likes))


def index_usage(conn: psycopg.Connection[Any], plan: Plan) -> list[tuple[str, str, int, int]]:
    """pg_stat_user_indexes rows (index, table, idx_scan, idx_tup_read) for the plan's indexes, most used first."""
    names, likes = plan_indexes(plan)
    if not names and not likes:
        return []
    query = sql.SQL(
        "SELECT indexrelname, relname, idx_scan, idx_tup_read FROM pg_stat_user_indexes "
        "WHERE schemaname = {} AND (indexrelname = ANY({}) OR indexrelname LIKE ANY({})) "
        "ORDER BY idx_scan DESC, indexrelname").format(sql.Literal(plan.schema), sql.Literal(names),
                                                       sql.Literal(likes))
    return [(str(a), str(b), int(c), int(d)) for a, b, c, d in conn.execute(query).fetchall()]
