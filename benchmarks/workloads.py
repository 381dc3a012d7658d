"""What benchmarks/run.py times: the plugin (in-process pytest), the runbook's psql script, pgTAP, the floor and
the checksum snapshot. Each function returns seconds (or raises); nothing here prints."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Generator, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from pytest_phase4.db.pool import Pool
from pytest_phase4.plan.model import CheckSpec
from pytest_phase4.plugin.nodes import RUN_KEY
from pytest_phase4.safety import baselines, snapshot
from pytest_phase4.safety.snapshot import Snapshot

HERE = Path(__file__).resolve().parent
SEED_SCRIPT = HERE / "runbook_part_6_1.sql"
PGTAP_PACKAGES = ["postgresql-15-pgtap", "libtap-parser-sourcehandler-pgtap-perl"]


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


# -- plans ---------------------------------------------------------------------------------------------------
def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


def write_plan(folder: Path, name: str, migrations_dir: Path, post: Sequence[Mapping[str, Any]]) -> Path:
    """A plan of [[post]] checks only, in folder/checks/phase4.toml, with a pytest.ini beside it."""
    lines = ["[phase4]", f"name = {toml_value(name)}", 'schema = "public"',
             f"migrations_dir = {toml_value(str(migrations_dir))}", ""]
    for entry in post:
        lines += ["[[post]]", *(f"{k} = {toml_value(v)}" for k, v in entry.items()), ""]
    (folder / "checks").mkdir(parents=True, exist_ok=True)
    plan = folder / "checks" / "phase4.toml"
    plan.write_text("\n".join(lines))
    (folder / "pytest.ini").write_text("[pytest]\ninitial_sort = original\n")
    return plan


# -- the plugin ----------------------------------------------------------------------------------------------
class Timer:
    """Times collection and the test loop of one in-process pytest run.

    With `before` (the row counts recorded before the benchmark applied the migrations), the run compares with
    them as with a baseline from before its migrations: row_counts_unchanged runs instead of being skipped for
    want of one, as in the pgTAP twin."""

    def __init__(self, before: Mapping[str, int] | None = None) -> None:
        self.collect = self.loop = 0.0
        self.outcomes: Counter[str] = Counter()
        self.durations: dict[str, float] = {}  # nodeid -> seconds of its call
        self.reads: list[tuple[tuple[tuple[str, ...], ...], float]] = []  # each read-ahead read and its seconds
        self.before = before

    @pytest.hookimpl(wrapper=True)
    def pytest_collection(self, session: pytest.Session) -> Generator[None, object, object]:
        started = time.perf_counter()
        try:
            return (yield)
        finally:
            self.collect = time.perf_counter() - started

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        run = session.config.stash.get(RUN_KEY, None)
        if run is not None:
            run.read_log = self.reads
            if self.before is not None:  # the benchmark migrated outside the run: hand it the baseline
                snap = Snapshot("public", dict(self.before), taken_at="before the benchmark's migrations")
                run.baseline = lambda: baselines.Choice(baselines.Baseline(snap, None))  # type: ignore[method-assign]

    @pytest.hookimpl(wrapper=True)
    def pytest_runtestloop(self, session: pytest.Session) -> Generator[None, object, object]:
        started = time.perf_counter()
        try:
            return (yield)
        finally:
            self.loop = time.perf_counter() - started

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call":
            self.durations[report.nodeid] = report.duration
        if report.when == "call" or report.outcome != "passed":
            self.outcomes[report.outcome] += 1


def pytest_args(plan: Path, dsn: str, *extra: str) -> list[str]:
    folder = plan.parent.parent
    return ["--phase4", f"--phase4-plan={plan}", f"--dsn={dsn}", "-p", "no:cacheprovider", "-q",
            f"--rootdir={folder}", "-c", str(folder / "pytest.ini"), f"--phase4-report-dir={folder / 'reports'}",
            *extra]


def plugin_inprocess(plan: Path, dsn: str, before: Mapping[str, int] | None = None) -> Timer:
    """One pytest run in this process; every check must pass and none be skipped, or the timing means nothing."""
    timer = Timer(before)
    with contextlib.redirect_stdout(io.StringIO()) as out:
        code = pytest.main(pytest_args(plan, dsn), plugins=[timer])
    if code != 0 or set(timer.outcomes) != {"passed"}:
        raise RuntimeError(f"the plugin run did not pass every check (exit {code}, {dict(timer.outcomes)}):\n"
                           f"{out.getvalue()[-3000:]}")
    return timer


def plugin_subprocess(plan: Path, dsn: str) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", *pytest_args(plan, dsn)], capture_output=True,
                          text=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"pytest exited {done.returncode}:\n{done.stdout[-3000:]}")
    return elapsed


# -- what the verification reads, and the floor --------------------------------------------------------------
def _scanned(conn: psycopg.Connection[Any], query: sql.Composable | str) -> set[str]:
    plan = conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) {}").format(
        query if isinstance(query, sql.Composable) else sql.SQL(query))).fetchone()[0]  # type: ignore[index]
    found: set[str] = set()

    def walk(node: Mapping[str, Any]) -> None:
        if "Relation Name" in node:
            found.add(node["Relation Name"])
        for child in node.get("Plans", ()):
            walk(child)

    walk(plan[0]["Plan"])
    return found


def tables_read(conn: psycopg.Connection[Any], specs: Iterable[CheckSpec]) -> list[str]:
    """Every table the checks read: named ones, and those the server actually scans for views and queries."""
    tables: set[str] = set()
    for spec in specs:
        if spec.kind in ("row_counts_unchanged", "tables_have_rows"):
            tables.add(spec.element)
        elif spec.kind == "no_orphans":
            tables |= {spec.element.child.table, spec.element.parent.table}
        elif spec.kind == "view_rowcount_matches":
            view, base = spec.element
            tables |= {base} | _scanned(conn, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(view)))
        elif spec.kind == "query_returns":
            tables |= _scanned(conn, spec.params["query"])
    return sorted(tables)


def count_pass(conn: psycopg.Connection[Any], tables: Iterable[str]) -> float:
    started = time.perf_counter()
    for table in tables:
        conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("public", table))).fetchone()
    return time.perf_counter() - started


def checksum_queries(conn: psycopg.Connection[Any], tables: Iterable[str]) -> list[sql.Composed]:
    """Checksum formula 1 (snapshots before formula 2): count(*) and sum(hashtextextended(ROW(c1, ...)::text, 0))."""
    queries = []
    for table in tables:
        cols = [r[0] for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped"
            " ORDER BY attnum", (f"public.{table}",)).fetchall()]
        queries.append(sql.SQL("SELECT count(*), coalesce(sum(hashtextextended(ROW({})::text, 0)), 0) FROM {}").format(
            sql.SQL(", ").join(map(sql.Identifier, cols)), sql.Identifier("public", table)))
    return queries


def plugin_snapshot(conn: psycopg.Connection[Any], pool: Pool) -> float:
    """The plugin's full snapshot (snapshot.take: the same formula over every column of every table, counts
    from the same scans, and the catalog fingerprint), its tables side by side on the read-ahead pool."""
    started = time.perf_counter()
    snapshot.take(conn, "public", None, pool)
    return time.perf_counter() - started


def run_all(conn: psycopg.Connection[Any], queries: Iterable[sql.Composed]) -> float:
    started = time.perf_counter()
    for query in queries:
        conn.execute(query).fetchall()
    return time.perf_counter() - started


# -- the runbook's own script --------------------------------------------------------------------------------
def seed_script(dsn: str, timeout: float, script: Path = SEED_SCRIPT) -> tuple[float | None, str]:
    """The Part 6.1 psql script as written; None when it runs past the timeout (the server stops it too)."""
    env = {**os.environ, "PGAPPNAME": "phase4-bench-seed", "PGOPTIONS": f"-c statement_timeout={int(timeout * 1000)}"}
    started = time.perf_counter()
    try:
        done = subprocess.run(["psql", "-X", "-d", dsn, "-f", str(script)], capture_output=True, text=True,
                              env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        _cancel(dsn, "phase4-bench-seed")
        return None, ""
    elapsed = time.perf_counter() - started
    if "statement timeout" in done.stderr:
        return None, done.stdout
    if done.returncode != 0 or "ERROR" in done.stderr:
        raise RuntimeError(f"the runbook's script failed: {done.stderr.strip()[:2000]}")
    return elapsed, done.stdout


def _cancel(dsn: str, app: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = %s", (app,))


# -- pgTAP ---------------------------------------------------------------------------------------------------
def pgtap_ready(dsn: str) -> str | None:
    """Install pgTAP into schema tap (not public: the checks count public's tables); None, or why not."""
    for attempt in range(2):
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("CREATE SCHEMA IF NOT EXISTS tap")
                conn.execute("CREATE EXTENSION IF NOT EXISTS pgtap SCHEMA tap")
            if shutil.which("pg_prove"):
                return None
        except psycopg.Error as exc:
            if attempt:
                return f"CREATE EXTENSION pgtap failed: {exc.diag.message_primary or exc}"
        if attempt == 0 and (why := _install_pgtap()):
            return why
    return "pg_prove not found after installing " + " ".join(PGTAP_PACKAGES)


def _install_pgtap() -> str | None:
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return f"pgTAP is not installed; install {' '.join(PGTAP_PACKAGES)}"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(["apt-get", "install", "-y", "-q", *PGTAP_PACKAGES], capture_output=True, text=True,
                          env=env, check=False)
    return None if done.returncode == 0 else f"apt-get install failed: {done.stderr.strip()[-500:]}"


def pgtap_file(conn: psycopg.Connection[Any], folder: Path, specs: Iterable[CheckSpec],
               before: Mapping[str, int]) -> Path:
    """The same assertions as the plugin's checks, one pgTAP test each (names composed with psycopg.sql)."""
    ident, lit = sql.Identifier, sql.Literal
    tests: list[sql.Composable] = []
    for spec in specs:
        if spec.kind == "row_counts_unchanged":
            tests.append(sql.SQL("SELECT is((SELECT count(*) FROM {}), {}::bigint, {})").format(
                ident(spec.element), lit(before[spec.element]), lit(f"row count unchanged: {spec.element}")))
        elif spec.kind == "query_returns":  # the plan's own SQL, as the plugin runs it
            tests.append(sql.SQL("SELECT is(({})::text, {}, {})").format(
                sql.SQL(spec.params["query"]), lit(str(spec.params["expect"])), lit(spec.params["name"])))
        elif spec.kind == "no_orphans":
            c, p = spec.element.child, spec.element.parent
            tests.append(sql.SQL(
                "SELECT is((SELECT count(*) FROM {} c WHERE c.{} IS NOT NULL AND NOT EXISTS "
                "(SELECT 1 FROM {} p WHERE p.{} = c.{})), 0::bigint, {})").format(
                ident(c.table), ident(c.column), ident(p.table), ident(p.column), ident(c.column),
                lit(f"no orphans: {spec.element}")))
        elif spec.kind == "view_rowcount_matches":
            view, base = spec.element
            where = spec.params.get("where", {}).get(view)
            tests.append(sql.SQL("SELECT is((SELECT count(*) FROM {}), (SELECT count(*) FROM {}{}), {})").format(
                ident(view), ident(base), (sql.SQL(" WHERE ") + sql.SQL(where)) if where else sql.SQL(""),
                lit(f"view rows: {view} = {base}")))
        elif spec.kind == "rls_policies":
            table = spec.params["table"]
            tests.append(sql.SQL("SELECT ok((SELECT relrowsecurity FROM pg_class WHERE oid = {}::regclass) AND (SELECT "
                                 "count(*) FROM pg_policies WHERE schemaname = 'public' AND tablename = {}) = {}, {})"
                                 ).format(lit(f"public.{table}"), lit(table), lit(spec.params["count"]),
                                          lit(f"rls policies: {table}")))
        else:
            raise ValueError(f"no pgTAP twin for {spec.kind}")
    lines = [t.as_string(conn) + ";" for t in tests]
    path = folder / "part_6_1.pg"
    path.write_text("\n".join(["SET search_path = public, tap;", f"SELECT plan({len(tests)});", *lines,
                               "SELECT * FROM finish();", ""]))
    return path


def pg_prove(dsn: str, path: Path) -> float:
    params = conninfo_to_dict(dsn)
    started = time.perf_counter()
    done = subprocess.run(["pg_prove", "-h", str(params["host"]), "-p", str(params["port"]), "-U",
                           str(params["user"]), "-d", str(params["dbname"]), str(path)],
                          capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0 or "All tests successful" not in done.stdout:
        raise RuntimeError(f"pg_prove failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return elapsed


def pgtap_sql(dsn: str, path: Path) -> float:
    """The pgTAP file's SQL alone, on a connection opened beforehand (plan() wants a fresh session)."""
    text = path.read_text()
    with psycopg.connect(dsn, autocommit=True) as conn:
        started = time.perf_counter()
        for statement in text.split(";\n"):
            if statement.strip():
                cur = conn.execute(statement.encode())
                if cur.description is not None:
                    cur.fetchall()
        return time.perf_counter() - started
