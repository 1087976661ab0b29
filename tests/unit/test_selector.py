"""core.selector: ActiveMQ's SQL-92 selector subset, compiled to closures.

The examples table follows the JMS 1.1 specification (§3.8.1) and ActiveMQ's selector
documentation; the truth tables pin SQL's three-valued logic on missing headers.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from baedal.core.message import Message
from baedal.core.properties import Timestamp
from baedal.core.selector import MAX_DEPTH, MAX_LENGTH, Selector, SelectorError, compile_selector


def message(headers: dict[str, Any] | None = None, **fields: Any) -> Message:
    persistent = fields.pop("persistent", False)
    priority = fields.pop("priority", 0)
    return Message.build("ex", "rk", b"body", persistent=persistent, priority=priority, headers=headers, **fields)


def matches(selector: str, headers: dict[str, Any] | None = None, **fields: Any) -> bool:
    return compile_selector(selector).matches(message(headers, **fields))


# (selector, headers, expected) — JMS 1.1 §3.8.1 and ActiveMQ's documented examples.
DOCUMENTED = [
    ("JMSType = 'car' AND color = 'blue' AND weight > 2500", {"JMSType": "car", "color": "blue", "weight": 3000}, True),
    ("JMSType = 'car' AND color = 'blue' AND weight > 2500", {"JMSType": "car", "color": "blue", "weight": 2000}, False),
    ("JMSType = 'car' AND color = 'blue' AND weight > 2500", {"type": "car", "color": "blue", "weight": "2600"}, True),
    ("country IN ('UK', 'US', 'France')", {"country": "UK"}, True),
    ("country IN ('UK', 'US', 'France')", {"country": "Peru"}, False),
    ("country NOT IN ('UK', 'US', 'France')", {"country": "Peru"}, True),
    ("country NOT IN ('UK', 'US', 'France')", {}, False),  # NULL NOT IN (...) is unknown
    ("phone LIKE '12%3'", {"phone": "123"}, True),
    ("phone LIKE '12%3'", {"phone": "12993"}, True),
    ("phone LIKE '12%3'", {"phone": "1234"}, False),
    ("word LIKE 'l_se'", {"word": "lose"}, True),
    ("word LIKE 'l_se'", {"word": "loose"}, False),
    ("underscored LIKE '\\_%' ESCAPE '\\'", {"underscored": "_foo"}, True),
    ("underscored LIKE '\\_%' ESCAPE '\\'", {"underscored": "bar"}, False),
    ("phone NOT LIKE '12%3'", {"phone": "1234"}, True),
    ("age BETWEEN 15 AND 19", {"age": 15}, True),
    ("age BETWEEN 15 AND 19", {"age": 19}, True),
    ("age BETWEEN 15 AND 19", {"age": 20}, False),
    ("age NOT BETWEEN 15 AND 19", {"age": 20}, True),
    ("age NOT BETWEEN 15 AND 19", {"age": 17}, False),
    ("prop_name IS NULL", {}, True),
    ("prop_name IS NULL", {"prop_name": "x"}, False),
    ("prop_name IS NOT NULL", {"prop_name": "x"}, True),
    ("quantity * 2 > 10", {"quantity": 6}, True),
    ("quantity * 2 > 10", {"quantity": 5}, False),
    ("(price - discount) / 2.0 >= 10.5", {"price": 30, "discount": 9}, True),
    ("(price - discount) / 2.0 >= 10.5", {"price": 30, "discount": 10}, False),
    ("(price - discount) / 2 = 10", {"price": 30, "discount": 9}, True),
    ("description = 'it''s'", {"description": "it's"}, True),
    ("flag = TRUE", {"flag": True}, True),
    ("flag = FALSE", {"flag": True}, False),
    ("flag", {"flag": True}, True),
    ("NOT flag", {"flag": False}, True),
    ("size > 1.5e3", {"size": 1501}, True),
    ("size = 0x10", {"size": 16}, True),
    ("size = 16L", {"size": 16}, True),
    ("ratio < .5", {"ratio": 0.25}, True),
    ("-level < 0", {"level": 3}, True),
    ("a = 1 OR b = 2 AND c = 3", {"a": 1}, True),  # AND binds tighter than OR
    ("(a = 1 OR b = 2) AND c = 3", {"a": 1}, False),
    ("\"content-type\" = 'text/plain'", {"content-type": "text/plain"}, True),
    ("convert_string_expressions:age > 18", {"age": "21"}, True),
    ("name <> 'x'", {"name": "y"}, True),
    ("name != 'x'", {"name": "x"}, False),
    ("7 / 2 = 3", {}, True),  # Java long division
    ("-7 / 2 = -3", {}, True),  # ... truncating towards zero
    ("7.0 / 2 = 3.5", {}, True),
    ("x / 0 = 1", {"x": 1}, False),  # division by zero is NULL
    ("10 % 4 = 2", {}, True),
]


@pytest.mark.parametrize(("selector", "headers", "expected"), DOCUMENTED)
def test_documented_examples(selector: str, headers: dict[str, Any], expected: bool) -> None:
    assert matches(selector, headers) is expected


# --- string headers are coerced, as ActiveMQ's STOMP does -------------------------------


def test_string_header_compares_as_a_number() -> None:
    assert matches("priority_level > 3", {"priority_level": "5"})
    assert not matches("priority_level > 3", {"priority_level": "2"})
    assert matches("amount = 2.5", {"amount": "2.50"})
    assert matches("amount + 1 = 3.5", {"amount": "2.5"})


def test_non_numeric_string_against_a_number_is_false_not_an_error() -> None:
    assert not matches("age > 3", {"age": "old"})
    assert matches("NOT (age > 3)", {"age": "old"})  # FALSE, as ActiveMQ answers, not UNKNOWN
    assert not matches("age + 1 > 3", {"age": "old"})


def test_string_boolean_compares_with_a_boolean() -> None:
    assert matches("urgent = TRUE", {"urgent": "true"})
    assert matches("urgent = FALSE", {"urgent": "False"})
    assert not matches("urgent = TRUE", {"urgent": "yes"})


def test_amqp_typed_headers() -> None:
    assert matches("n = 5", {"n": 5})
    assert matches("f > 1.0", {"f": 1.5})
    assert matches("d = 1.25", {"d": Decimal("1.25")})
    assert matches("t > 1000", {"t": Timestamp(2000)})
    assert matches("s = 'abc'", {"s": b"abc"})
    assert not matches("b = 1", {"b": True})  # a boolean is not the number 1


def test_strings_order_lexically() -> None:
    assert matches("name < 'm'", {"name": "apple"})
    assert not matches("name < 'm'", {"name": "zebra"})


def test_booleans_are_not_ordered() -> None:
    assert not matches("flag > FALSE", {"flag": True})


def test_like_on_a_number_is_false() -> None:
    assert not matches("n LIKE '1%'", {"n": 12})


def test_like_matches_across_newlines() -> None:
    assert matches("text LIKE 'a%b'", {"text": "a\nb"})


def test_like_special_regex_characters_are_literal() -> None:
    assert matches("v LIKE 'a.b*(c)'", {"v": "a.b*(c)"})
    assert not matches("v LIKE 'a.b'", {"v": "axb"})


def test_in_list_with_numbers() -> None:
    assert matches("code IN (1, 2, 3)", {"code": 2})
    assert matches("code IN (1, 2, 3)", {"code": "3"})
    assert matches("code IN ('1', '2')", {"code": 1})


# --- JMS header names -------------------------------------------------------------------


def test_jms_names_map_onto_neutral_fields() -> None:
    m = message(
        {}, message_id="m-1", correlation_id="c-9", timestamp=1_700_000_000, persistent=True, priority=7
    )
    assert compile_selector("JMSMessageID = 'm-1'").matches(m)
    assert compile_selector("JMSCorrelationID = 'c-9'").matches(m)
    assert compile_selector("JMSPriority > 5").matches(m)
    assert compile_selector("JMSTimestamp = 1700000000000").matches(m)
    assert compile_selector("JMSDeliveryMode = 'PERSISTENT'").matches(m)
    transient = message({}, priority=1)
    assert compile_selector("JMSDeliveryMode = 'NON_PERSISTENT'").matches(transient)
    assert not compile_selector("JMSPriority > 5").matches(transient)
    assert compile_selector("JMSTimestamp IS NULL").matches(transient)


def test_message_without_headers() -> None:
    assert matches("x IS NULL", None)
    assert not matches("x = 1", None)


def test_keywords_are_case_insensitive() -> None:
    assert matches("a between 1 and 3 and b is not null and c not in ('x') or false", {"a": 2, "b": 1, "c": "y"})


# --- three-valued logic -------------------------------------------------------------------

T, F, U = "(1 = 1)", "(1 = 2)", "(missing = 1)"
VALUE = {T: True, F: False, U: None}

AND_TABLE = {
    (T, T): True, (T, F): False, (T, U): None,
    (F, T): False, (F, F): False, (F, U): False,
    (U, T): None, (U, F): False, (U, U): None,
}
OR_TABLE = {
    (T, T): True, (T, F): True, (T, U): True,
    (F, T): True, (F, F): False, (F, U): None,
    (U, T): True, (U, F): None, (U, U): None,
}


def truth(selector: str) -> bool | None:
    """TRUE, FALSE or UNKNOWN: UNKNOWN is neither the expression nor its negation."""
    if matches(selector, {}):
        return True
    if matches(f"NOT ({selector})", {}):
        return False
    return None


@pytest.mark.parametrize(("pair", "expected"), list(AND_TABLE.items()))
def test_and_truth_table(pair: tuple[str, str], expected: bool | None) -> None:
    assert truth(f"{pair[0]} AND {pair[1]}") is expected


@pytest.mark.parametrize(("pair", "expected"), list(OR_TABLE.items()))
def test_or_truth_table(pair: tuple[str, str], expected: bool | None) -> None:
    assert truth(f"{pair[0]} OR {pair[1]}") is expected


@pytest.mark.parametrize(("operand", "expected"), [(T, False), (F, True), (U, None)])
def test_not_truth_table(operand: str, expected: bool | None) -> None:
    assert truth(f"NOT {operand}") is expected


@pytest.mark.parametrize(
    "selector",
    [
        "missing = 1", "missing <> 1", "missing > 1", "missing + 1 = 2", "missing BETWEEN 1 AND 2",
        "missing NOT BETWEEN 1 AND 2", "missing IN ('a')", "missing NOT IN ('a')",
        "missing LIKE 'a%'", "missing NOT LIKE 'a%'", "1 BETWEEN missing AND 2",
    ],
)
def test_operations_on_a_missing_header_are_unknown(selector: str) -> None:
    assert truth(selector) is None


def test_between_with_one_unknown_bound_can_still_be_false() -> None:
    assert truth("5 BETWEEN missing AND 2") is False
    assert truth("1 BETWEEN 2 AND missing") is False


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "fragment"),
    [
        ("a = ", "expected a value"),
        ("a = 'open", "unterminated string"),
        ("a ==  1", "expected a value"),
        ("a = 1 b", "expected an operator"),
        ("a IS 1", "expected NULL"),
        ("a BETWEEN 1 2", "expected AND"),
        ("a IN 1", "'(' after IN"),
        ("a IN ('x' 'y')", "',' or ')'"),
        ("a IN (b)", "a literal"),
        ("a LIKE b", "string pattern"),
        ("a LIKE 'x' ESCAPE 'ab'", "one-character"),
        ("a LIKE 'x\\' ESCAPE '\\'", "ends with its escape"),
        ("(a = 1", "')'"),
        ("a # 1", "unexpected character '#'"),
        ("a NOT = 1", "BETWEEN, IN or LIKE"),
    ],
)
def test_bad_selectors_say_what_is_wrong(selector: str, fragment: str) -> None:
    with pytest.raises(SelectorError) as caught:
        compile_selector(selector)
    assert fragment in str(caught.value)


def test_selector_error_is_a_value_error() -> None:
    assert issubclass(SelectorError, ValueError)


def test_too_long_and_too_deep_are_refused() -> None:
    with pytest.raises(SelectorError, match="limit"):
        compile_selector("a = 1 OR " * (MAX_LENGTH // 9) + "a = 1")
    with pytest.raises(SelectorError, match="nested"):
        compile_selector("(" * (MAX_DEPTH + 1) + "a = 1" + ")" * (MAX_DEPTH + 1))
    with pytest.raises(SelectorError, match="nested"):
        compile_selector("NOT " * 1000 + "a")
    with pytest.raises(SelectorError, match="nested"):
        compile_selector("a" + " + 1" * 1000 + " = 0")
    with pytest.raises(SelectorError, match="too long"):
        compile_selector("a = " + "9" * 5000)


def test_long_flat_or_chain_evaluates_without_deep_recursion() -> None:
    selector = compile_selector(" OR ".join(f"a = {i}" for i in range(1000)))
    assert selector.matches(message({"a": 999}))
    assert not selector.matches(message({"a": -1}))


def test_empty_selector_matches_everything() -> None:
    assert compile_selector("").matches(message(None))
    assert compile_selector("   ").matches(message({"a": 1}))


def test_selector_keeps_its_text() -> None:
    selector = compile_selector("a = 1")
    assert isinstance(selector, Selector)
    assert selector.text == "a = 1"


# --- fuzz: arbitrary text parses or raises SelectorError, nothing else ----------------------

SELECTOR_PIECES = st.sampled_from(
    [
        "a", "b", "JMSPriority", "'x'", "'it''s'", "1", "2.5", "0x1F", "1e3", "TRUE", "FALSE", "NULL",
        "AND", "OR", "NOT", "BETWEEN", "IN", "LIKE", "ESCAPE", "IS", "(", ")", ",", "=", "<>", "<",
        ">", "<=", ">=", "+", "-", "*", "/", "%", "'%'", "'_'", '"h-1"', "'",
    ]
)
HEADERS = st.dictionaries(
    st.sampled_from(["a", "b", "h-1"]),
    st.one_of(st.integers(-(10**20), 10**20), st.floats(), st.text(max_size=5), st.booleans(), st.none()),
)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_raises_only_selector_error(text: str) -> None:
    try:
        compile_selector(text)
    except SelectorError:
        pass


@settings(max_examples=500, deadline=None)
@given(st.lists(SELECTOR_PIECES, max_size=25), HEADERS)
def test_token_soup_parses_or_raises_selector_error_and_evaluates_quietly(
    pieces: list[str], headers: dict[str, Any]
) -> None:
    try:
        selector = compile_selector(" ".join(pieces))
    except SelectorError:
        return
    assert selector.matches(message(headers)) in (True, False)
