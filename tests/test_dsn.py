"""DSN display and connection-error messages: no password may survive any path, checked on real servers."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from helpers import require_password
from pytest_phase4.db.dsn import connect_error_message, password_of, redact, scrub, secrets_from_env, target_label
from pytest_phase4.db.embedded import EmbeddedPostgres, start_embedded

SECRET = "S3cr3t-Xyzzy"
ODD_SECRET = "p@ss:w/rd"  # needs percent-encoding in a URL
ODD_ENCODED = "p%40ss%3Aw%2Frd"

PARSEABLE = [
    f"postgresql://alice:{SECRET}@db.example.com:5433/sales?sslmode=require",
    f"postgres://alice:{SECRET}@db.example.com/sales",
    f"host=db.example.com port=5433 user=alice password={SECRET} dbname=sales",
    f"host=db.example.com user=alice password='{SECRET}' dbname=sales",
    f"postgresql://alice@db.example.com/sales?password={SECRET}",
    f"postgresql://alice:{SECRET}@[::1]:5433/sales",
    f"postgresql://alice:{SECRET}@h1:5433,h2:5434/sales",
]
MALFORMED = [
    f"postgresql://alice:{SECRET}@[::1/sales",  # libpq quotes this whole URI in its error
    f"postgresql://alice:{SECRET}@db.example.com/sales?foo=bar",
    f"postgresql://alice@db.example.com/sales?password={SECRET}&x",
    f"host=db.example.com password={SECRET} dbname",
    f"host=db.example.com password='{SECRET} dbname=sales",
    f"host=db.example.com password {SECRET} dbname=sales",
    f"host=db.example.com sslpassword={SECRET} bogus",
    f"alice:{SECRET}@db.example.com/sales",
]


def no_secret(text: str, *secrets: str) -> None:
    for secret in secrets or (SECRET,):
        assert secret.lower() not in text.lower(), text


@pytest.mark.parametrize("dsn", PARSEABLE)
def test_redact_keeps_target_and_hides_password(dsn: str) -> None:
    shown = redact(dsn)
    no_secret(shown)
    assert "password=***" in shown
    assert "alice" in shown
    assert "sales" in shown
    assert conninfo_to_dict(shown)["password"] == "***"


def test_redact_exact_form() -> None:
    assert redact(PARSEABLE[0]) == (
        "user=alice password=*** dbname=sales host=db.example.com port=5433 sslmode=require"
    )
    assert redact("host=/tmp/pg port=5432 dbname=x") == "dbname=x host=/tmp/pg port=5432"


def test_redact_percent_encoded_password() -> None:
    dsn = f"postgresql://alice:{ODD_ENCODED}@db.example.com/sales"
    assert password_of(dsn) == ODD_SECRET
    no_secret(redact(dsn), ODD_SECRET, ODD_ENCODED, "w%2Frd", "w/rd")


@pytest.mark.parametrize("dsn", MALFORMED)
def test_redact_unparseable_never_echoes_password(dsn: str) -> None:
    with pytest.raises(psycopg.ProgrammingError):
        conninfo_to_dict(dsn)
    shown = redact(dsn)
    no_secret(shown)
    assert "***" in shown
    assert "db.example.com" in shown or "::1" in shown


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        (f"postgresql://alice:{SECRET}@h/db", SECRET),
        (f"host=h password={SECRET}", SECRET),
        (f"postgresql://alice:{ODD_ENCODED}@h/db", ODD_SECRET),
        ("postgresql://alice@h/db", None),
        (f"postgresql://alice:{SECRET}@[::1/db", SECRET),
        (f"host=h sslpassword=other password='{SECRET}", SECRET),
        (f"host=h sslpassword={SECRET}", None),
    ],
)
def test_password_of(dsn: str, expected: str | None) -> None:
    assert password_of(dsn) == expected


def test_password_comes_only_from_the_dsn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPASSWORD", SECRET)
    assert password_of("host=h user=alice") is None
    assert secrets_from_env() == [SECRET]
    monkeypatch.delenv("PGPASSWORD")
    assert secrets_from_env() == []


def test_scrub_raw_and_percent_encoded() -> None:
    text = f"a {ODD_SECRET} b {ODD_ENCODED} c {ODD_ENCODED.lower()} d p%40ss:w%2frd e"
    cleaned = scrub(text, [ODD_SECRET, ""])
    no_secret(cleaned, ODD_SECRET, ODD_ENCODED, "p%40ss")
    assert cleaned == "a *** b *** c *** d *** e"
    assert scrub("x=caf%C3%A9+au+lait y=café au lait", ["café au lait"]) == "x=*** y=***"
    assert scrub("nothing to hide", []) == "nothing to hide"
    assert scrub("nothing to hide", [""]) == "nothing to hide"


@pytest.mark.parametrize(
    ("dsn", "label"),
    [
        (f"postgresql://alice:{SECRET}@db.example.com:5433/sales", "db.example.com:5433/sales"),
        ("host=db.example.com dbname=sales", "db.example.com:5432/sales"),
        ("host=/tmp/pg port=6000 dbname=sales", "socket /tmp/pg:6000/sales"),
        ("postgresql://alice@[::1]:5433/sales", "[::1]:5433/sales"),
        ("postgresql://alice@h1:1,h2:2/sales", "h1:1,h2:2/sales"),
        (f"postgresql://alice:{SECRET}@[::1/sales", "(unparseable DSN)"),
    ],
)
def test_target_label(dsn: str, label: str) -> None:
    assert target_label(dsn) == label


def failure(dsn: str) -> psycopg.OperationalError | psycopg.ProgrammingError:
    try:
        psycopg.connect(dsn, connect_timeout=5).close()
    except (psycopg.OperationalError, psycopg.ProgrammingError) as exc:
        return exc
    raise AssertionError(f"connecting to {redact(dsn)} unexpectedly worked")


def test_connection_refused() -> None:
    dsn = "postgresql://u:pw@127.0.0.1:1/x"
    message = connect_error_message(dsn, failure(dsn))
    assert message.startswith("cannot connect to PostgreSQL at 127.0.0.1:1/x")
    assert "Connection refused" in message
    assert "HINT: is a PostgreSQL server running on 127.0.0.1 port 1? Check --dsn / PHASE4_DSN." in message
    assert "pw" not in message
    assert "Traceback" not in message


@pytest.mark.parametrize("dsn", MALFORMED)
def test_malformed_dsn_message(dsn: str) -> None:
    exc = failure(dsn)
    assert isinstance(exc, psycopg.ProgrammingError)
    message = connect_error_message(dsn, exc)
    no_secret(message)
    assert message.startswith("could not parse the PostgreSQL DSN")
    assert "postgresql://user@host:5432/dbname" in message
    assert "host=... port=5432 dbname=..." in message


def test_percent_encoded_secret_in_unparseable_dsn(monkeypatch: pytest.MonkeyPatch) -> None:
    dsn = f"postgresql://alice:{ODD_ENCODED}@[::1/sales"
    message = connect_error_message(dsn, failure(dsn))
    no_secret(message, ODD_SECRET, ODD_ENCODED, "w%2Frd")


# --- against a real server -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedPostgres]:
    pg = start_embedded()
    yield pg
    pg.stop()


def test_wrong_password_message_hides_it(server: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch) -> None:
    if server.kind != "local":
        pytest.skip("pg_hba.conf is written from here, so this needs a local cluster")
    require_password(server, "carol", "right-horse-battery")
    good = make_conninfo(server.dsn, user="carol", password="right-horse-battery")
    with psycopg.connect(good) as conn:
        assert conn.execute("select current_user").fetchone() == ("carol",)

    dsn = make_conninfo(server.dsn, user="carol", password=SECRET)
    message = connect_error_message(dsn, failure(dsn))
    no_secret(message)
    assert 'password authentication failed for user "carol"' in message
    assert "HINT: check the user and password" in message
    assert target_label(server.dsn).removesuffix("/postgres") in message

    # A password from the environment is scrubbed too, should the server or libpq echo it.
    monkeypatch.setenv("PGPASSWORD", SECRET)
    bare = make_conninfo(server.dsn, user="carol")
    exc = failure(bare)
    echoed = type(exc)(f"{exc} (tried {SECRET})")
    no_secret(connect_error_message(bare, echoed))


def test_missing_database_is_named(server: EmbeddedPostgres) -> None:
    dsn = make_conninfo(server.dsn, dbname="no_such_db", password=SECRET)
    message = connect_error_message(dsn, failure(dsn))
    no_secret(message)
    assert 'database "no_such_db" does not exist' in message
    assert 'HINT: database "no_such_db" does not exist: create it (createdb no_such_db)' in message
