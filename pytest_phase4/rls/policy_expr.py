"""What a row-level security policy's expression says, read from its text (pg_get_expr) with pglast: always true,
true whatever the row, or reading what the caller sets itself. No database, no pytest here."""

from __future__ import annotations

import re
from typing import Any

import pglast
from pglast import ast
from pglast.visitors import Skip, Visitor

_TRUE = {"true", "1=1"}
CHOSEN = re.compile(r"(?i)user_metadata|request\.headers|request\.cookies")  # what a caller sets itself


def always_true(expr: str | None) -> bool:
    return expr is not None and re.sub(r"[\s()]", "", expr.lower()) in _TRUE


def off_the_row(expr: str | None) -> bool:
    """Whether a policy expression does not depend on the row: no column of it is read (`auth.uid() IS NOT NULL`),
    or only as a column compared with itself (`tenant_id = tenant_id`). True for every row for whoever it is true
    for at all: on a tenant's table, every signed-in user writes every tenant's rows."""
    if expr is None:
        return False
    try:
        tree = pglast.parse_sql(f"SELECT {expr}")
    except pglast.parser.ParseError:
        return False
    found = _Columns()
    found(tree)
    return not found.used


class _Columns(Visitor):
    """The columns an expression reads, but for a column compared with itself."""

    def __init__(self) -> None:
        self.used = False

    def visit_A_Expr(self, ancestors: Any, node: ast.A_Expr) -> Any:
        op = [getattr(n, "sval", None) for n in node.name or ()]
        if op == ["="] and isinstance(node.lexpr, ast.ColumnRef) and node.lexpr == node.rexpr:
            return Skip
        return None

    def visit_ColumnRef(self, ancestors: Any, node: ast.ColumnRef) -> None:
        self.used = True
