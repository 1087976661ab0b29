"""The selector compiler against a naive tree-walking evaluator (Hypothesis).

Random expression trees are rendered to selector text (fully parenthesised, keywords in
random case), compiled by core.selector and evaluated against random headers; a plain
recursive evaluator written from the JMS rules (three-valued logic, numeric coercion of
numeric strings, unlike kinds compare FALSE and ``<>`` is ``NOT =``, integer division truncating, division by
zero NULL) must give the same answer.
"""

from __future__ import annotations

import random
import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from baedal.core.message import Message
from baedal.core.selector import compile_selector

NAMES = ["a", "b", "c", "missing"]
INTS = st.integers(-50, 50)
STRINGS = st.sampled_from(["", "x", "ab", "a_b", "10", "-3", "2.5", "it's", "%"])

literal = st.one_of(st.tuples(st.just("int"), INTS), st.tuples(st.just("str"), STRINGS))
value_leaf = st.one_of(literal, st.tuples(st.just("id"), st.sampled_from(NAMES)))
value = st.recursive(
    value_leaf,
    lambda inner: st.one_of(
        st.tuples(st.just("arith"), st.sampled_from(["+", "-", "*", "/"]), inner, inner),
        st.tuples(st.just("neg"), inner),
    ),
    max_leaves=3,
)
comparison = st.one_of(
    st.tuples(st.just("cmp"), st.sampled_from(["=", "<>", "<", "<=", ">", ">="]), value, value),
    st.tuples(st.just("between"), value, value, value, st.booleans()),
    st.tuples(st.just("in"), value, st.lists(STRINGS, min_size=1, max_size=3), st.booleans()),
    st.tuples(st.just("like"), value, st.sampled_from(["a%", "_", "%b", "a\\_b", "%"]), st.booleans()),
    st.tuples(st.just("isnull"), value, st.booleans()),
)
condition = st.recursive(
    comparison,
    lambda inner: st.one_of(
        st.tuples(st.just("and"), inner, inner),
        st.tuples(st.just("or"), inner, inner),
        st.tuples(st.just("not"), inner),
    ),
    max_leaves=4,
)
header_value = st.one_of(INTS, STRINGS)
headers = st.dictionaries(st.sampled_from(["a", "b", "c"]), header_value)


def quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def render(node: Any, keyword: Any) -> str:
    kind = node[0]
    if kind == "int":
        return str(node[1]) if node[1] >= 0 else f"({node[1]})"
    if kind == "str":
        return quote(node[1])
    if kind == "id":
        return node[1]
    if kind == "arith":
        return f"({render(node[2], keyword)} {node[1]} {render(node[3], keyword)})"
    if kind == "neg":
        return f"(-{render(node[1], keyword)})"
    if kind == "cmp":
        return f"({render(node[2], keyword)} {node[1]} {render(node[3], keyword)})"
    if kind == "between":
        no = keyword("NOT ") if node[4] else ""
        return (
            f"({render(node[1], keyword)} {no}{keyword('BETWEEN')} {render(node[2], keyword)} "
            f"{keyword('AND')} {render(node[3], keyword)})"
        )
    if kind == "in":
        no = keyword("NOT ") if node[3] else ""
        return f"({render(node[1], keyword)} {no}{keyword('IN')} ({', '.join(quote(s) for s in node[2])}))"
    if kind == "like":
        no = keyword("NOT ") if node[3] else ""
        return f"({render(node[1], keyword)} {no}{keyword('LIKE')} {quote(node[2])} {keyword('ESCAPE')} '\\')"
    if kind == "isnull":
        no = keyword("NOT ") if node[2] else ""
        return f"({render(node[1], keyword)} {keyword('IS')} {no}{keyword('NULL')})"
    if kind in ("and", "or"):
        return f"({render(node[1], keyword)} {keyword(kind.upper())} {render(node[2], keyword)})"
    if kind == "not":
        return f"({keyword('NOT')} {render(node[1], keyword)})"
    raise AssertionError(kind)


# --- the naive evaluator -------------------------------------------------------------------


def as_number(v: Any) -> Any:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return v
    if isinstance(v, str):
        for parse in (int, float):
            try:
                return parse(v.strip())
            except ValueError:
                pass
    return None


def value_of(node: Any, h: dict[str, Any]) -> Any:
    kind = node[0]
    if kind in ("int", "str"):
        return node[1]
    if kind == "id":
        return h.get(node[1])
    if kind == "neg":
        inner = value_of(node[1], h)
        number = None if inner is None else as_number(inner)
        return None if number is None else 0 - number
    left, right = value_of(node[2], h), value_of(node[3], h)
    if left is None or right is None:
        return None
    x, y = as_number(left), as_number(right)
    if x is None or y is None:
        return None
    op = node[1]
    if op == "+":
        return x + y
    if op == "-":
        return x - y
    if op == "*":
        return x * y
    if y == 0:
        return None
    if isinstance(x, int) and isinstance(y, int):
        q = abs(x) // abs(y)
        return q if (x < 0) == (y < 0) else -q
    return x / y


def compare(op: str, left: Any, right: Any) -> bool | None:
    if left is None or right is None:
        return None
    if op == "<>":  # ActiveMQ: NOT (a = b), so unlike kinds are "not equal"
        return not compare("=", left, right)
    if isinstance(left, str) and isinstance(right, str):
        x, y = left, right
    else:
        x, y = as_number(left), as_number(right)
        if x is None or y is None:
            return False
    return {"=": x == y, "<>": x != y, "<": x < y, "<=": x <= y, ">": x > y, ">=": x >= y}[op]


def negate(v: bool | None, flag: bool) -> bool | None:
    if not flag or v is None:
        return v
    return not v


def truth(node: Any, h: dict[str, Any]) -> bool | None:
    kind = node[0]
    if kind == "cmp":
        return compare(node[1], value_of(node[2], h), value_of(node[3], h))
    if kind == "between":
        v = value_of(node[1], h)
        low = compare(">=", v, value_of(node[2], h))
        high = compare("<=", v, value_of(node[3], h))
        result = False if low is False or high is False else (None if low is None or high is None else True)
        return negate(result, node[4])
    if kind == "in":
        v = value_of(node[1], h)
        if v is None:
            return None
        return negate(any(compare("=", v, s) for s in node[2]), node[3])
    if kind == "like":
        v = value_of(node[1], h)
        if v is None:
            return None
        if not isinstance(v, str):
            return negate(False, node[3])
        pattern = node[2]
        regex, i = "", 0
        while i < len(pattern):
            ch = pattern[i]
            if ch == "\\":
                regex += re.escape(pattern[i + 1])
                i += 2
                continue
            regex += ".*" if ch == "%" else "." if ch == "_" else re.escape(ch)
            i += 1
        return negate(re.fullmatch(regex, v, re.DOTALL) is not None, node[3])
    if kind == "isnull":
        return (value_of(node[1], h) is None) != node[2]
    if kind == "not":
        return negate(truth(node[1], h), True)
    left, right = truth(node[1], h), truth(node[2], h)
    if kind == "and":
        if left is False or right is False:
            return False
        return None if left is None or right is None else True
    if left is True or right is True:
        return True
    return None if left is None or right is None else False


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(condition, headers, st.integers(0, 2**16))
def test_compiled_selectors_agree_with_the_naive_evaluator(tree: Any, h: dict[str, Any], seed: int) -> None:
    case = random.Random(seed)

    def keyword(word: str) -> str:
        return "".join(c.lower() if case.random() < 0.5 else c for c in word)

    text = render(tree, keyword)
    selector = compile_selector(text)
    message = Message.build("", "q", b"", headers=h)
    expected = truth(tree, h)
    assert selector.matches(message) is (expected is True), (text, h, expected)
    negated = compile_selector(f"NOT ({text})")
    assert negated.matches(message) is (expected is False), (text, h, expected)
