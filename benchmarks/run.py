"""Benchmark pytest-phase4's post-migration verification against the runbook's own SQL, pgTAP and the floor.

    python benchmarks/run.py --rows 200000

Builds the bundled CRM example (checks/) with --rows rows in each large table in a throwaway cluster, applies
the eight migrations, then times on the same data, alternating and repeated (medians):
  1. the plugin: the plan's [[post]] checks (the runbook's Part 6.1 with its view row counts), in-process pytest;
     the whole pytest run (a subprocess: start-up, plan, connection, snapshot, HTML report) is shown too;
  2. the runbook's Part 6.1 psql script as written (benchmarks/runbook_part_6_1.sql), with a timeout;
  3. the same assertions in pgTAP, run by pg_prove (Debian's postgresql-15-pgtap and
     libtap-parser-sourcehandler-pgtap-perl, installed here if missing);
  4. the floor: one count(*) pass over each table the verification reads;
and the content-checksum snapshot against its floor, the per-check overhead of a plan of --checks cheap checks
and its collection time. Prints a table, then one `ratios:` line. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
import supabase_bench
import workloads as w

from pytest_phase4.db import catalog, migrate
from pytest_phase4.db.embedded import EmbeddedPostgres, start_embedded
from pytest_phase4.db.pool import Pool
from pytest_phase4.db.seed import load_setup
from pytest_phase4.plan.load import load_plan

REPO = Path(__file__).resolve().parent.parent
PLAN = REPO / "checks" / "phase4.toml"
PART_6_1 = ("row_counts_unchanged", "query_returns", "no_orphans", "view_rowcount_matches")


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def build(server: EmbeddedPostgres, rows: int) -> tuple[str, dict[str, int]]:
    dsn = server.create_database("crm")
    plan = load_plan(PLAN)
    started = time.perf_counter()
    with psycopg.connect(dsn) as conn:
        load_setup(conn, plan, settings={"crm.scale": str(rows)})
    say(f"loaded {rows:,} rows per large table in {time.perf_counter() - started:.1f} s")
    with psycopg.connect(dsn, autocommit=True) as conn:
        before = catalog.count_all_tables(conn, "public")
    started = time.perf_counter()
    with psycopg.connect(dsn) as conn:
        for migration in plan.migrations:
            migrate.apply(conn, migration, plan.name, plan.schema)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")  # what a DBA does after a migration; every contender reads the same pages
    say(f"applied {len(plan.migrations)} migrations and vacuumed in {time.perf_counter() - started:.1f} s")
    return dsn, before


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000, help="rows in each large table (crm.scale)")
    ap.add_argument("--repeat", type=int, default=5, help="timed rounds (medians are reported)")
    ap.add_argument("--seed-timeout", type=float, default=60.0, help="seconds before the runbook's script is cut")
    ap.add_argument("--checks", type=int, default=5000, help="cheap checks in the overhead plan")
    ap.add_argument("--workload", choices=["bundled", "supabase", "both"], default="both",
                    help="the bundled CRM (checks/), the Supabase-shaped application (supabase_app.py), or both")
    ap.add_argument("--workers", type=int, default=2, help="--phase4-workers of the Supabase-shaped runs")
    ap.add_argument("--slowest", type=int, default=15, help="slowest checks listed for the Supabase-shaped workload")
    args = ap.parse_args()
    os.environ.pop("PHASE4_DSN", None)
    begun = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="phase4-bench-"))
    server = start_embedded()
    ratios = []
    try:
        if args.workload in ("bundled", "both"):
            dsn, before = build(server, args.rows)
            ratios.append(bench(args, dsn, before, tmp))
            server.drop_database("crm")
        if args.workload in ("supabase", "both"):
            found = supabase_bench.bench(args, server, tmp)
            text = supabase_bench.report(args, found)
            print(text)
            ratios.append(text.splitlines()[-1])
    finally:
        server.stop()
    print("\n" + "\n".join(ratios))
    say(f"total {time.perf_counter() - begun:.0f} s; work files in {tmp}")
    return 0


def bench(args: argparse.Namespace, dsn: str, before: dict[str, int], tmp: Path) -> str:
    # The runbook's Part 6.1 with its view row counts; the plan's other post checks belong to other issues.
    post = [e for e in tomllib.loads(PLAN.read_text())["post"] if e["check"] in PART_6_1]
    plan = w.write_plan(tmp / "post", "bench: Part 6.1", REPO / "checks" / "migrations", post)
    specs = load_plan(plan).post
    cheap = w.write_plan(tmp / "cheap", "bench: cheap checks", REPO / "checks" / "migrations", [
        {"check": "query_returns", "name": f"cheap {i}", "query": "SELECT 1", "expect": 1} for i in range(args.checks)])
    conn = psycopg.connect(dsn, autocommit=True)
    read = w.tables_read(conn, specs)
    everything = catalog.tables(conn, "public")
    checksums = w.checksum_queries(conn, everything)
    tap_problem = w.pgtap_ready(dsn)
    pool = Pool(lambda: psycopg.connect(dsn, autocommit=True), 2)  # as --phase4-workers=2, the default
    tap_file = w.pgtap_file(conn, tmp, specs, before) if tap_problem is None else None
    say(f"{len(specs)} checks read {len(read)} tables: {', '.join(read)}")
    say("pgTAP: " + (tap_problem or "ready"))

    times: dict[str, list[float]] = {}

    def timed(name: str, fn: Callable[[], float]) -> None:
        times.setdefault(name, []).append(fn())

    seed: float | str | None = "not run"
    seed_out = ""
    w.plugin_inprocess(plan, dsn, before)  # warm-up: imports, caches, hint bits
    w.count_pass(conn, everything)
    for round_ in range(args.repeat):
        say(f"round {round_ + 1}/{args.repeat}")
        timed("plugin", lambda: w.plugin_inprocess(plan, dsn, before).loop)
        timed("floor", lambda: w.count_pass(conn, read))
        if tap_file is not None:
            timed("pgtap_sql", lambda: w.pgtap_sql(dsn, tap_file))
            timed("pgtap", lambda: w.pg_prove(dsn, tap_file))
        timed("floor_all", lambda: w.count_pass(conn, everything))
        timed("checksum", lambda: w.run_all(conn, checksums))
        timed("snapshot", lambda: w.plugin_snapshot(conn, pool))
        if seed is not None:  # a script that timed out once is not run again: it would only time out again
            seed, seed_out = w.seed_script(dsn, args.seed_timeout)
            if seed is not None:
                times.setdefault("seed", []).append(seed)
    for _ in range(3):
        timed("whole", lambda: w.plugin_subprocess(plan, dsn))
        timer = w.plugin_inprocess(cheap, dsn)
        times.setdefault("cheap_loop", []).append(timer.loop)
        times.setdefault("cheap_collect", []).append(timer.collect)
        started = time.perf_counter()
        load_plan(cheap)
        times.setdefault("cheap_load", []).append(time.perf_counter() - started)
    started = time.perf_counter()
    for _ in range(1000):
        conn.execute("SELECT 1").fetchone()
    round_trip = (time.perf_counter() - started) / 1000
    conn.close()
    pool.close()
    if seed_out:
        (tmp / "runbook_part_6_1.out").write_text(seed_out)
    return report(args, times, specs, read, everything, tap_problem, seed is None, round_trip)


def report(args: argparse.Namespace, times: dict[str, list[float]], specs: object, read: list[str],
           everything: list[str], tap_problem: str | None, seed_timed_out: bool, round_trip: float) -> str:
    med = {k: w.median(v) for k, v in times.items()}
    n_checks = len(specs)  # type: ignore[arg-type]

    def row(label: str, key: str, note: str = "") -> None:
        if key in times:
            values = times[key]
            print(f"| {label} | {med[key] * 1000:,.1f} ms | {min(values) * 1000:,.1f} ms | {len(values)} | {note} |")
        else:
            print(f"| {label} | {note} | | 0 | |")

    cpus = os.cpu_count()
    print(f"\nrows per large table: {args.rows:,}; {cpus} CPUs; {platform.python_implementation()} "
          f"{platform.python_version()}; psycopg {psycopg.__version__}; {args.repeat} rounds\n")
    print("| measurement | median | min | runs | note |")
    print("| --- | ---: | ---: | ---: | --- |")
    row("floor: count(*) of each table the checks read", "floor", f"{len(read)} tables")
    row(f"plugin: post-migration verification ({n_checks} checks)", "plugin", "pytest test loop, in-process")
    row("plugin: whole pytest run", "whole", "subprocess: start-up, plan, connect, snapshot, HTML report")
    seed_note = f"> {args.seed_timeout:g} s (timeout)" if seed_timed_out else "psql, as written"
    row("runbook Part 6.1 script", "seed", seed_note)
    row(f"pgTAP: the same {n_checks} assertions, SQL only", "pgtap_sql", tap_problem or "one session, as pg_prove")
    row("pgTAP: pg_prove", "pgtap", tap_problem or "perl + psql start-up included")
    row("floor: count(*) of every table in the schema", "floor_all", f"{len(everything)} tables")
    row("checksum formula 1 (row text), table by table on one connection", "checksum", f"{len(everything)} tables")
    row("plugin: snapshot.take, formula 2 checksums of every table", "snapshot", "2 connections side by side (default)")
    per_check = w.median(times["cheap_loop"]) / args.checks
    collect = w.median(t + c for t, c in zip(times["cheap_load"], times["cheap_collect"], strict=True))
    print(f"| plugin overhead per check ({args.checks:,} query_returns SELECT 1) | {per_check * 1000:.3f} ms | | 3 | "
          f"incl. one round trip ({round_trip * 1000:.3f} ms) |")
    print(f"| collection of {args.checks:,} checks (plan load + pytest collection) | {collect * 1000:,.0f} ms | | 3 | "
          f"load {w.median(times['cheap_load']) * 1000:,.0f} ms |")
    plugin = med["plugin"]
    seed = args.seed_timeout if seed_timed_out else med.get("seed", float("nan"))
    pgtap = med.get("pgtap_sql", float("nan"))
    if seed_timed_out:
        print(f"\nThe runbook's script timed out: seed_script/plugin is a lower bound ({args.seed_timeout:g} s used).")
    line = (f"ratios: plugin/floor={plugin / med['floor']:.2f} seed_script/plugin={seed / plugin:.2f} "
            f"pgtap/plugin={pgtap / plugin:.2f} checksum/floor={med['snapshot'] / med['floor_all']:.2f}")
    print(f"\n{line}")
    return line


if __name__ == "__main__":
    raise SystemExit(main())
