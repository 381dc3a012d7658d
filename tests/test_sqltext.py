"""Migration text split by PostgreSQL's own parser (pglast): statements, lines, offsets, transaction control and
parse errors with file:line. Pure parsing: no database."""

from __future__ import annotations

import pytest

from pytest_phase4.db import sqltext

FILE = """-- Migration: héllo (a comment with a ';' and non-ASCII text)
CREATE TABLE é (a int); /* a ; comment */ INSERT INTO é VALUES ('ü;ü');

CREATE FUNCTION f() RETURNS int LANGUAGE sql
BEGIN ATOMIC
  SELECT 1;
  SELECT 2;
END;
DO $body$ BEGIN PERFORM 'a;b'; END $body$;
SELECT E'it\\'s; here', $$x;y$$, "we;ird" FROM t
-- the last statement has no ';'
"""


def test_statements_come_with_their_line_offset_and_exact_text() -> None:
    statements = sqltext.split(FILE)
    assert [(s.line, s.text.split()[0]) for s in statements] == [
        (2, "CREATE"), (2, "INSERT"), (4, "CREATE"), (9, "DO"), (10, "SELECT")]
    for s in statements:  # the offset points at the text as it stands in the file: errors map back to lines
        assert FILE[s.start:s.start + len(s.text)] == s.text
    assert statements[1].text == "INSERT INTO é VALUES ('ü;ü')"
    assert statements[2].text.endswith("SELECT 2;\nEND")  # a BEGIN ATOMIC body is one statement
    assert statements[3].code == "DO $body$ BEGIN PERFORM 'a;b'; END $body$"
    assert statements[4].text.startswith("SELECT E'it\\'s; here', $$x;y$$")
    assert statements[4].head == "SELECT E'it\\'s; here', $$x;y$$, \"we;ird\" FROM t"


def test_comments_and_blanks_only_are_no_statement() -> None:
    assert sqltext.split("-- nothing here\n/* nor ; here */\n;;\n") == []


@pytest.mark.parametrize(("text", "word"), [
    ("SELECT 1;\nBEGIN;\nSELECT 2;", "BEGIN"),
    ("select 1; commit", "commit"),
    ("SELECT 1;\nEND;", "END"),
    ("SAVEPOINT a;", "SAVEPOINT"),
    ("start transaction isolation level serializable", "start"),
    ("PREPARE TRANSACTION 'x'", "PREPARE"),
])
def test_transaction_control_is_found_by_the_parse_tree(text: str, word: str) -> None:
    found = sqltext.transaction_control(text)
    assert found is not None
    assert found.code.split()[0] == word


@pytest.mark.parametrize("text", [
    "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END",
    "DO $$ BEGIN COMMIT; END $$",  # a procedure's own business, inside a string to the parser
    "SELECT 'BEGIN; COMMIT;'",
    "-- COMMIT;\nSELECT 1",
])
def test_no_false_transaction_control(text: str) -> None:
    assert sqltext.transaction_control(text) is None


def test_a_file_the_parser_rejects_names_file_and_line() -> None:
    with pytest.raises(sqltext.SqlSyntaxError) as caught:
        sqltext.split("SELECT 'é';\n\n  SELEC 2;\n", "20250101_x.sql")
    assert (caught.value.file, caught.value.line) == ("20250101_x.sql", 3)
    assert str(caught.value).startswith('20250101_x.sql:3: syntax error at or near "SELEC" (PostgreSQL\'s parser')


def test_psql_meta_commands_are_refused_with_their_line() -> None:
    with pytest.raises(sqltext.SqlSyntaxError) as caught:
        sqltext.split("SELECT 1;\n\\set x 1\n", "m.sql")
    assert caught.value.line == 2
    assert "psql meta-commands" in str(caught.value)


def test_line_of_a_server_position() -> None:
    text = "SELECT 1;\nSELECT x\nFROM nowhere;"
    assert sqltext.line_of(text, text.index("nowhere") + 1) == 3
    assert sqltext.line_of(text, 1) == 1


def test_the_hand_written_lexer_is_gone() -> None:
    source = sqltext.__file__
    with open(source, encoding="utf-8") as f:
        code = f.read()
    assert "pglast" in code
    for leftover in ("_quote_end", "_block_comment_end", "_DOLLAR", "_merge_atomic"):
        assert leftover not in code


def test_a_password_literal_never_reaches_a_report_through_a_statement_head() -> None:
    role, mapping = sqltext.split("CREATE ROLE app LOGIN PASSWORD 's3cr''et' VALID UNTIL 'infinity';\n"
                                  "ALTER USER MAPPING FOR app SERVER s OPTIONS (SET password 'x y');")
    assert role.head == "CREATE ROLE app LOGIN PASSWORD *** VALID UNTIL 'infinity'"
    assert mapping.head == "ALTER USER MAPPING FOR app SERVER s OPTIONS (SET password ***)"
    assert role.text.endswith("'s3cr''et' VALID UNTIL 'infinity'")  # what the server receives is untouched
