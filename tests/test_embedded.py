"""The throwaway server: a real local cluster (or container) per test, and real failures when neither exists."""

from __future__ import annotations

import gc
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from pytest_phase4.db.embedded import EmbeddedPostgres, EmbeddedUnavailable, find_bindir, start_embedded

# An endpoint that cannot exist, so the container fallback fails the same way on every machine.
NO_DOCKER = "unix:///nonexistent/phase4/docker.sock"
needs_local = pytest.mark.skipif(find_bindir() is None, reason="no local initdb/pg_ctl")


def socket_dir(dsn: str) -> str:
    return str(conninfo_to_dict(dsn)["host"])


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedPostgres]:
    pg = start_embedded()
    yield pg
    pg.stop()


@needs_local
def test_local_cluster_answers_and_leaves_nothing_behind() -> None:
    started = time.perf_counter()
    pg = EmbeddedPostgres().start()
    up = time.perf_counter()
    try:
        assert pg.kind == "local"
        assert pg.bindir is not None
        assert Path(pg.bindir, "initdb").exists()
        assert pg.server_version is not None
        assert pg.server_version[0].isdigit()
        params = conninfo_to_dict(pg.dsn)
        assert params["user"] == "postgres"
        assert params["dbname"] == "postgres"
        assert "password" not in params
        with psycopg.connect(pg.dsn) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
            assert conn.execute("select current_user").fetchone() == ("postgres",)
        tmpdir = socket_dir(pg.dsn)
        assert os.path.isdir(tmpdir)
    finally:
        down = time.perf_counter()
        pg.stop()
        stopped = time.perf_counter()
    print(f"start {up - started:.2f} s, stop {stopped - down:.2f} s")
    assert not os.path.exists(tmpdir)
    pg.stop()  # idempotent
    with pytest.raises(RuntimeError, match="not started"):
        _ = pg.dsn


@needs_local
def test_context_manager_and_forgotten_server_are_cleaned_up() -> None:
    with EmbeddedPostgres() as pg:
        first = socket_dir(pg.dsn)
        with psycopg.connect(pg.dsn) as conn:
            assert conn.execute("select 2").fetchone() == (2,)
    assert not os.path.exists(first)

    forgotten = EmbeddedPostgres().start()
    second = socket_dir(forgotten.dsn)
    del forgotten
    gc.collect()
    assert not os.path.exists(second)


@needs_local
def test_two_clusters_side_by_side() -> None:
    with EmbeddedPostgres() as one, EmbeddedPostgres() as two:
        assert conninfo_to_dict(one.dsn)["port"] != conninfo_to_dict(two.dsn)["port"]
        with psycopg.connect(one.dsn, autocommit=True) as a, psycopg.connect(two.dsn, autocommit=True) as b:
            a.execute("create table only_in_one (id int)")
            assert b.execute("select to_regclass('only_in_one')").fetchone() == (None,)


def test_create_and_drop_database(server: EmbeddedPostgres) -> None:
    name = 'we"ird db'  # quoting must come from sql.Identifier, not string formatting
    dsn = server.create_database(name)
    assert conninfo_to_dict(dsn)["dbname"] == name
    with psycopg.connect(dsn) as conn:
        assert conn.execute("select current_database()").fetchone() == (name,)
    server.drop_database(name)
    with pytest.raises(psycopg.OperationalError, match="does not exist"):
        psycopg.connect(dsn).close()
    server.drop_database(name)  # dropping a missing database is not an error


def test_create_database_from_template(server: EmbeddedPostgres) -> None:
    base = server.create_database("phase4_template")
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute("create table seeded (id int); insert into seeded values (1), (2)")
    copy = server.create_database("phase4_copy", template="phase4_template")
    try:
        with psycopg.connect(copy) as conn:
            assert conn.execute("select count(*) from seeded").fetchone() == (2,)
    finally:
        server.drop_database("phase4_copy")
        server.drop_database("phase4_template")


def test_drop_database_disconnects_sessions(server: EmbeddedPostgres) -> None:
    dsn = server.create_database("phase4_busy")
    conn = psycopg.connect(dsn)
    try:
        server.drop_database("phase4_busy")
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select 1")
    finally:
        conn.close()


def test_container_without_engine_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", NO_DOCKER)
    started = time.perf_counter()
    with pytest.raises(EmbeddedUnavailable, match="no Docker engine is reachable"):
        EmbeddedPostgres("container").start()
    assert time.perf_counter() - started < 10


def test_nothing_available_explains_every_way_out(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", NO_DOCKER)
    with pytest.raises(EmbeddedUnavailable) as info:
        start_embedded(bindir=str(tmp_path))
    message = str(info.value)
    assert set(info.value.reasons) == {"local", "container"}
    assert f"initdb and pg_ctl were not found in {tmp_path}" in message
    assert "no Docker engine is reachable" in message
    assert "apt-get install postgresql" in message
    assert "start a Docker engine" in message
    assert "--dsn" in message
    assert "Traceback" not in message


@needs_local
def test_start_embedded_prefers_local() -> None:
    pg = start_embedded()
    try:
        assert pg.kind == "local"
    finally:
        pg.stop()


@needs_local
def test_base_dir_is_used_when_the_server_user_can_reach_it(tmp_path: Path) -> None:
    base = tmp_path / "clusters"
    base.mkdir()
    base.chmod(0o755)
    with EmbeddedPostgres(base_dir=str(base)) as pg:
        parent = Path(socket_dir(pg.dsn)).parent
        with psycopg.connect(pg.dsn) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
    if os.geteuid() == 0:
        # pytest's tmp_path is 0700 root: the postgres user cannot traverse it, so /tmp is used instead.
        assert parent == Path("/tmp")
    else:
        assert parent == base
    assert [p.name for p in base.iterdir() if not p.name.startswith("phase4-pg-template-")] == []


@needs_local
def test_server_start_failure_shows_the_server_log() -> None:
    # A real failure: the socket path exceeds the 107 bytes a unix socket name may have.
    base = Path("/tmp") / ("phase4-long-" + "x" * 100)
    base.mkdir(mode=0o755)
    try:
        with pytest.raises(RuntimeError, match="pg_ctl start failed") as info:
            EmbeddedPostgres(base_dir=str(base)).start()
        assert "is too long" in str(info.value)
        assert [p.name for p in base.iterdir() if not p.name.startswith("phase4-pg-template-")] == []
    finally:
        shutil.rmtree(base, ignore_errors=True)
