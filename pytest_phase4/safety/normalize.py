"""Compare SQL definitions as PostgreSQL means them, not as its deparser happens to print them.

A definition read from the catalog (`pg_get_constraintdef`, `pg_get_viewdef`, ...) is the deparse of a parse
tree; dump and restore parse that text again, and the new tree can deparse differently. Seen on PostgreSQL 15: a
`CHECK (name IN ('a', 'b'))` on a varchar column reads
`((name)::text = ANY ((ARRAY['a'::character varying, 'b'::character varying])::text[]))` before and
`((name)::text = ANY (ARRAY[('a'::character varying)::text, ('b'::character varying)::text]))` after. Both texts
are parsed here with PostgreSQL's own parser (pglast), the known rewrites are applied to the tree (a cast of an
ARRAY[...] to an array type becomes the same cast of each element), and the trees are printed again, without
the deparser's parentheses: equal output means the same definition; a changed value, column or operator still
differs. Only definitions whose text differs are parsed. No pytest here.
"""

from __future__ import annotations

import functools
from typing import Any

from pglast import ast, parse_sql
from pglast.stream import RawStream
from pglast.visitors import Visitor


class _Canonical(Visitor):
    def visit_TypeCast(self, ancestors: Any, node: ast.TypeCast) -> Any:
        name = node.typeName
        if isinstance(node.arg, ast.A_ArrayExpr) and name is not None and name.arrayBounds:
            element = ast.TypeName(names=name.names, typmods=name.typmods, typemod=name.typemod)
            return ast.A_ArrayExpr(elements=tuple(ast.TypeCast(arg=e, typeName=element)
                                                  for e in (node.arg.elements or ())))
        return None


@functools.lru_cache(maxsize=4096)
def canonical(text: str, wrap: str = "{}") -> str:
    """The statement `wrap.format(text)` parsed, rewritten and printed again; the text itself when it does not
    parse (then only an identical text compares equal)."""
    try:
        tree = parse_sql(wrap.format(text))
        _Canonical()(tree)
        return "; ".join(RawStream()(s) for s in tree)
    except Exception:  # pglast raises its own ParseError and, on odd input, others: fall back to the text
        return text


# How a definition of each kind becomes a statement the parser accepts.
_WRAP = {
    "view": "{}", "matview": "{}", "index": "{}", "trigger": "{}", "rule": "{}",
    "constraint": "ALTER TABLE x ADD {}", "expression": "SELECT {}",
    "policy": "CREATE POLICY p ON x {}",  # "AS PERMISSIVE FOR ALL TO r USING (...)", as snapshot.fingerprint writes
}


def same_text(kind: str, a: str | None, b: str | None) -> bool:
    if a == b:
        return True
    if a is None or b is None:
        return False
    if kind == "column":  # "type[ not null][ default <expr>]"
        (ta, _, da), (tb, _, db) = a.partition(" default "), b.partition(" default ")
        return ta == tb and same_text("expression", da or None, db or None)
    wrap = _WRAP.get(kind)
    return wrap is not None and canonical(a, wrap) == canonical(b, wrap)


# The fields of an inventory definition (inventory.py) that hold deparsed SQL, and how to parse each.
_FIELDS = {"def": None, "using": "expression", "check": "expression", "default": "expression",
           "generated": "expression"}
_DEF_KIND = {"table constraint": "constraint", "view": "view", "materialized view": "matview", "index": "index",
             "trigger": "trigger", "rule": "rule", "statistics object": "index"}


def same_definition(obj_type: str, a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two inventory definitions of one object (before and after a dump and restore) mean the same. A field only
    one of them has was not recorded by the version that wrote the other (an older snapshot): not compared."""
    if a == b:
        return True
    for key in a.keys() & b.keys():
        if a[key] == b[key]:
            continue
        kind = _FIELDS.get(key, "") if key != "def" else _DEF_KIND.get(obj_type)
        if key == "checks" and isinstance(a[key], list) and isinstance(b[key], list) and len(a[key]) == len(b[key]):
            if all(same_text("constraint", x, y) for x, y in zip(a[key], b[key], strict=True)):
                continue
            return False
        if not kind or not isinstance(a[key], str) or not isinstance(b[key], str):
            return False
        if not same_text(kind, a[key], b[key]):
            return False
    return True
