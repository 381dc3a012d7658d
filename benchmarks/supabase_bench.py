"""The Supabase-shaped workload of benchmarks/run.py (supabase_app.py builds it): what it times and reports.

On the same data, alternating and repeated (medians):
  1. the plugin: the post-migration verification (every table's row count as before, no orphan in any of the 80
     foreign keys, every view's rows against its base table's with their soft-delete conditions, policies), the
     pytest test loop in-process, with each check's own time;
  2. the count floor: count(*) of each table the checks read, one after the other on one connection;
  3. the plugin's content checksums of every kept column of every table (snapshot.take, as a run records them
     before its first migration), against
  4. the scan floor: one sequential read of every kept column of each table (count(col) of each column, index
     scans off), on one connection;
  5. the runbook's Part 6.1 SQL written for this schema (its own shapes: counts, NOT IN, view counts), with a
     timeout, and the same assertions in pgTAP (SQL in one session, as pg_prove runs it).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import psycopg
import supabase_app as app
import workloads as w
from psycopg import sql

from pytest_phase4.db import catalog, migrate
from pytest_phase4.db.embedded import EmbeddedPostgres
from pytest_phase4.db.pool import Pool
from pytest_phase4.db.seed import load_setup
from pytest_phase4.plan.load import load_plan
from pytest_phase4.safety import snapshot


def say(text: str) -> None:
    import sys

    print(text, file=sys.stderr, flush=True)


def build(server: EmbeddedPostgres, rows: int, folder: Path) -> tuple[str, dict[str, int], Path]:
    """The application at `rows`, migrated and vacuumed; the row counts before the migrations; the plan."""
    plan_path = app.write(folder / "app")
    plan = load_plan(plan_path)
    dsn = server.create_database("supabase_app")
    started = time.perf_counter()
    with psycopg.connect(dsn) as conn:
        load_setup(conn, plan, settings={"bench.rows": str(rows)})
    say(f"supabase: loaded {len(app.TABLES)} tables ({rows:,} rows in each large one) in "
        f"{time.perf_counter() - started:.1f} s")
    with psycopg.connect(dsn, autocommit=True) as conn:
        before = catalog.count_all_tables(conn, "public")
    started = time.perf_counter()
    with psycopg.connect(dsn) as conn:
        for migration in plan.migrations:
            migrate.apply(conn, migration, plan.name, plan.schema)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    say(f"supabase: applied {len(plan.migrations)} migrations and vacuumed in {time.perf_counter() - started:.1f} s")
    return dsn, before, plan_path


def seed_script_text(conn: psycopg.Connection[Any]) -> str:
    """The runbook's Part 6.1 shapes for this schema: the row counts in one UNION ALL, each foreign key as
    `col IS NOT NULL AND col NOT IN (SELECT id FROM parent)`, each view's count."""
    counts = "\nUNION ALL\n".join(
        sql.SQL("SELECT {} AS table_name, COUNT(*) AS row_count FROM {}").format(
            sql.Literal(t.name), sql.Identifier(t.name)).as_string(conn) for t in app.TABLES)
    parts = ["-- Part 6.1 as the runbook writes it, for the Supabase-shaped schema", counts + "\nORDER BY table_name;"]
    for relation in app.relations():
        child, parent = (side.strip().split(".") for side in relation.split("->"))
        parts.append(sql.SQL("SELECT {}, COUNT(*) FROM {} WHERE {} IS NOT NULL AND {} NOT IN (SELECT {} FROM {});"
                             ).format(sql.Literal(f"{child[0]}_{child[1]}_fk"), sql.Identifier(child[0]),
                                      sql.Identifier(child[1]), sql.Identifier(child[1]), sql.Identifier(parent[1]),
                                      sql.Identifier(parent[0])).as_string(conn))
    for name, *_ in app.VIEWS:
        parts.append(sql.SQL("SELECT {}, COUNT(*) FROM {};").format(sql.Literal(f"{name}_rows"),
                                                                     sql.Identifier(name)).as_string(conn))
    return "\n".join(parts) + "\n"


def scan_floor_queries(kept: Mapping[str, list[str]]) -> list[sql.Composed]:
    return [sql.SQL("SELECT {} FROM {}").format(
        sql.SQL(", ").join(sql.SQL("count({})").format(sql.Identifier(c)) for c in cols),
        sql.Identifier("public", table)) for table, cols in kept.items()]


def scan_floor(conn: psycopg.Connection[Any], queries: Iterable[sql.Composed]) -> float:
    """One sequential read of every kept column of each table: index scans off, parallel workers as the server
    sets them (as for the count floor)."""
    with conn.transaction():
        for setting in ("enable_indexscan", "enable_indexonlyscan", "enable_bitmapscan"):
            conn.execute(sql.SQL("SET LOCAL {} = off").format(sql.Identifier(setting)))
        started = time.perf_counter()
        for query in queries:
            conn.execute(query).fetchall()
        return time.perf_counter() - started


def plugin_checksums(conn: psycopg.Connection[Any], pool: Pool, kept: Mapping[str, list[str]],
                     counts: Mapping[str, int]) -> float:
    """The kept-column checksums of every table as a run records them before its first migration (the counts
    were taken in the same moment: capture_before passes them in), with the catalog fingerprint."""
    started = time.perf_counter()
    snapshot.take(conn, "public", kept, pool, counts=counts)
    return time.perf_counter() - started


def bench(args: argparse.Namespace, server: EmbeddedPostgres, tmp: Path) -> dict[str, Any]:
    dsn, before, _ = build(server, args.rows, tmp)
    post = app.post_checks()
    plan = w.write_plan(tmp / "supabase-post", "bench: Supabase-shaped post-migration verification",
                        tmp / "app" / "migrations", post)
    specs = load_plan(plan).post
    conn = psycopg.connect(dsn, autocommit=True)
    read = w.tables_read(conn, specs)
    kept = {t: catalog.columns(conn, "public", t) for t in catalog.tables(conn, "public")}
    scans = scan_floor_queries(kept)
    tap_problem = w.pgtap_ready(dsn)
    tap_file = w.pgtap_file(conn, tmp / "supabase-post", specs, before) if tap_problem is None else None
    seed_file = tmp / "supabase_part_6_1.sql"
    seed_file.write_text(seed_script_text(conn))
    pool = Pool(lambda: psycopg.connect(dsn, autocommit=True), args.workers)
    say(f"supabase: {len(specs)} checks read {len(read)} tables")
    times: dict[str, list[float]] = {}
    per_check: dict[str, list[float]] = {}
    per_read: dict[str, list[float]] = {}

    def timed(name: str, fn: Callable[[], float]) -> None:
        times.setdefault(name, []).append(fn())

    def plugin() -> float:
        timer = w.plugin_inprocess(plan, dsn, before)
        for nodeid, seconds in timer.durations.items():
            per_check.setdefault(nodeid, []).append(seconds)
        for keys, seconds in timer.reads:
            per_read.setdefault(read_label(keys), []).append(seconds)
        return timer.loop

    w.plugin_inprocess(plan, dsn, before)  # warm-up
    w.count_pass(conn, read)
    seed: float | str | None = "not run"
    for round_ in range(args.repeat):
        say(f"supabase: round {round_ + 1}/{args.repeat}")
        timed("plugin", plugin)
        timed("floor", lambda: w.count_pass(conn, read))
        timed("checksum", lambda: plugin_checksums(conn, pool, kept, before))
        timed("scan_floor", lambda: scan_floor(conn, scans))
        if tap_file is not None:
            timed("pgtap_sql", lambda: w.pgtap_sql(dsn, tap_file))
        if seed is not None:
            seed, _ = w.seed_script(dsn, args.seed_timeout, seed_file)
            if seed is not None:
                times.setdefault("seed", []).append(seed)
    conn.close()
    pool.close()
    return {"times": times, "per_check": per_check, "per_read": per_read, "specs": specs, "read": read,
            "kept": kept, "tap_problem": tap_problem, "seed_timed_out": seed is None, "load": load_average()}


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def read_label(keys: tuple[tuple[str, ...], ...]) -> str:
    """What one read-ahead statement answered, in a few words."""
    first = keys[0]
    if len(keys) > 1 and first[0] == "count" and all(k[1] == first[1] or k[0] == "viewrows" for k in keys):
        return f"scan {first[1]}: count and {len(keys) - 1} FILTERed count(s)"
    if len(keys) > 1:
        return f"{len(keys)} one-value reads in one statement ({', '.join(sorted({k[1] for k in keys}))[:60]}...)"
    what, table, *rest = first
    if what in ("orphans", "loose", "outside"):
        how = {"orphans": "anti-join", "loose": "loose index scan", "outside": "dense keys"}[what]
        return f"{how} {table}.{rest[0]} -> {rest[1]}.{rest[2]}"
    return f"{what} {table}" + (f" {rest[0]}" if rest else "")


def report(args: argparse.Namespace, found: Mapping[str, Any]) -> str:
    times, per_check = found["times"], found["per_check"]
    med = {k: w.median(v) for k, v in times.items()}
    n_checks = len(found["specs"])
    lines = [f"\n## Supabase-shaped workload: {len(app.TABLES)} tables, {args.rows:,} rows in each large table\n",
             "| measurement | median | min | runs | note |", "| --- | ---: | ---: | ---: | --- |"]

    def row(label: str, key: str, note: str = "") -> None:
        if key in times:
            values = times[key]
            lines.append(f"| {label} | {med[key] * 1000:,.1f} ms | {min(values) * 1000:,.1f} ms | {len(values)} "
                         f"| {note} |")
        else:
            lines.append(f"| {label} | {note} | | 0 | |")

    row("count floor: count(*) of each table the checks read", "floor", f"{len(found['read'])} tables")
    row(f"plugin: post-migration verification ({n_checks} checks)", "plugin",
        f"pytest test loop, in-process, --phase4-workers={args.workers}")
    seed_note = f"> {args.seed_timeout:g} s (timeout)" if found["seed_timed_out"] else "psql, as written"
    row("runbook Part 6.1 SQL for this schema", "seed", seed_note)
    row(f"pgTAP: the same {n_checks} assertions, SQL only", "pgtap_sql", found["tap_problem"] or "one session")
    columns = sum(len(c) for c in found["kept"].values())
    row("scan floor: one sequential read of every kept column", "scan_floor",
        f"{len(found['kept'])} tables, {columns} columns")
    row("plugin: content checksums of every kept column", "checksum", "snapshot.take, as before a migration")
    lines += ["", f"Load average at the end: {found['load']}.", "",
              "Slowest checks (median; a check waiting for its read-ahead shows the wait, not its query's cost):", ""]
    slow = sorted(per_check.items(), key=lambda kv: -w.median(kv[1]))[:args.slowest]
    lines += [f"- {w.median(v) * 1000:7.1f} ms  {k.split('::')[-1]}" for k, v in slow]
    reads = found["per_read"]
    total = sum(w.median(v) for v in reads.values())
    lines += ["", f"Slowest read-ahead statements (median; {len(reads)} in all, {total * 1000:,.0f} ms on "
              f"{args.workers} connections):", ""]
    slow = sorted(reads.items(), key=lambda kv: -w.median(kv[1]))[:args.slowest]
    lines += [f"- {w.median(v) * 1000:7.1f} ms  {k}" for k, v in slow]
    seed = args.seed_timeout if found["seed_timed_out"] else med.get("seed", float("nan"))
    plugin = med["plugin"]
    lines.append(f"\nratios[supabase]: plugin/count_floor={plugin / med['floor']:.2f} "
                 f"checksum/scan_floor={med['checksum'] / med['scan_floor']:.2f} "
                 f"seed_script/plugin={seed / plugin:.2f} "
                 f"pgtap/plugin={med.get('pgtap_sql', float('nan')) / plugin:.2f}")
    return "\n".join(lines)
