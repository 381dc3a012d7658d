"""Fleet throughput: databases per minute for the bundled example (checks/) run on a fleet of databases.

    python benchmarks/fleet.py --rows 10000 --targets 6 --rounds 2

Loads the bundled CRM once at --rows rows per large table into a template database of a throwaway cluster, then,
for each round and each worker count (-n 1, then -n 2, alternating), creates --targets databases from that template
and times `pytest --phase4 --phase4-targets=fleet.toml -n N --phase4-confirm-destructive` on them (the whole plan
on each target: preflight, backup, eight migrations with their checks, post, in a child pytest per target). Prints
each run's wall time, databases per minute, and `uptime` before and after (the machine may be shared). Not part of
the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from pytest_phase4.db.embedded import start_embedded
from pytest_phase4.db.seed import load_setup
from pytest_phase4.plan.load import load_plan

REPO = Path(__file__).resolve().parent.parent
PLAN = REPO / "checks" / "phase4.toml"


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000, help="rows in each large table (crm.scale)")
    ap.add_argument("--targets", type=int, default=6, help="databases in the fleet")
    ap.add_argument("--rounds", type=int, default=2, help="timed rounds per worker count (medians are reported)")
    ap.add_argument("--workers", default="1,2", help="worker counts to compare (-n)")
    args = ap.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    server = start_embedded()
    try:
        template = server.create_database("fleet_template")
        started = time.perf_counter()
        with psycopg.connect(template) as conn:
            load_setup(conn, load_plan(PLAN), settings={"crm.scale": str(args.rows)})
        say(f"loaded the bundled example at {args.rows:,} rows in {time.perf_counter() - started:.1f} s")
        times: dict[int, list[float]] = {n: [] for n in counts}
        for round_ in range(args.rounds):
            for n in counts:
                with tempfile.TemporaryDirectory() as tmp:
                    folder = Path(tmp)
                    env = dict(os.environ)
                    entries = []
                    for i in range(args.targets):
                        name = f"t{round_}_{n}_{i:02d}"
                        env[f"BENCH_{name.upper()}_DSN"] = server.create_database(name, template="fleet_template")
                        entries.append(f'[[target]]\nname = "{name}"\ndsn_env = "BENCH_{name.upper()}_DSN"\n')
                    (folder / "fleet.toml").write_text("\n".join(entries))
                    before = uptime()
                    started = time.perf_counter()
                    proc = subprocess.run(
                        [sys.executable, "-m", "pytest", "--phase4", f"--phase4-plan={PLAN}", "-n", str(n),
                         f"--phase4-targets={folder / 'fleet.toml'}", "--phase4-confirm-destructive", "-q",
                         "-p", "no:cacheprovider", f"--phase4-report-dir={folder / 'reports'}",
                         f"--phase4-backup-dir={folder / 'backups'}", f"--phase4-json={folder / 'fleet.json'}"],
                        cwd=REPO, env=env, capture_output=True, text=True, check=False)
                    elapsed = time.perf_counter() - started
                    summary = json.loads((folder / "fleet.json").read_text())["summary"] if (
                        folder / "fleet.json").exists() else proc.stdout[-500:]
                    times[n].append(elapsed)
                    say(f"round {round_ + 1}, -n {n}: {elapsed:.1f} s, {args.targets / elapsed * 60:.1f} databases/min "
                        f"({summary}; exit {proc.returncode})\n  before: {before}\n  after:  {uptime()}")
                    for i in range(args.targets):
                        server.drop_database(f"t{round_}_{n}_{i:02d}")
        print(f"| workers | runs | median wall time | databases per minute |  (rows {args.rows:,}, "
              f"{args.targets} databases)")
        for n, values in times.items():
            median = statistics.median(values)
            print(f"| -n {n} | {', '.join(f'{v:.1f} s' for v in values)} | {median:.1f} s | "
                  f"{args.targets / median * 60:.1f} |")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
