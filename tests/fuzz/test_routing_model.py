"""Hypothesis: every exchange type routes exactly as a naive reference model does.

Random sequences of bind / unbind operations and random routing keys or headers go to
the real exchanges (``core/exchange.py``: the topic trie with its cache, the direct
table, the fanout list, ``headers_match``) and to models written for obviousness:

* topic: one regex per binding pattern (``*`` = exactly one word, ``#`` = zero or more
  words; an empty routing key has zero words, as in RabbitMQ);
* direct: string equality; fanout: every bound destination;
* headers: RabbitMQ's ``rabbit_exchange_type_headers``: ``x-match`` all / any /
  all-with-x / any-with-x, ``x-`` binding arguments ignored unless ``-with-x``, a void
  binding value matches on presence, and a value matches only one of the same type
  class (all integer widths are one class; bool, float, string... are others).
"""

from __future__ import annotations

import re
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from baedal.core.exchange import (
    Binding,
    DirectExchange,
    FanoutExchange,
    HeadersExchange,
    TopicExchange,
    headers_match,
)
from baedal.core.properties import Timestamp

MODEL = settings(max_examples=300, deadline=None)


class Destination:
    is_queue = True

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


DESTINATIONS = [Destination(f"q{i}") for i in range(5)]
destinations = st.sampled_from(DESTINATIONS)


def words_of(key: str) -> list[str]:
    return key.split(".") if key else []


# --- topic ------------------------------------------------------------------------------


def topic_regex(pattern: str) -> re.Pattern[str]:
    """Each word of the key is written as '.word'; '*' eats one, '#' any number."""
    parts = []
    for word in words_of(pattern):
        if word == "*":
            parts.append(r"\.[^.]*")
        elif word == "#":
            parts.append(r"(?:\.[^.]*)*")
        else:
            parts.append(re.escape("." + word))
    return re.compile("".join(parts))


def topic_matches(pattern: str, routing_key: str) -> bool:
    return (
        topic_regex(pattern).fullmatch("".join("." + w for w in words_of(routing_key))) is not None
    )


topic_words = st.sampled_from(["a", "b", "c", "", "*", "#"])
key_words = st.sampled_from(["a", "b", "c", ""])
topic_patterns = st.lists(topic_words, max_size=5).map(".".join)
routing_keys = st.lists(key_words, max_size=5).map(".".join)


def test_topic_regex_model_agrees_with_the_spec_examples() -> None:
    """The model itself, on RabbitMQ's tutorial examples and the empty-key rule."""
    assert topic_matches("*.orange.*", "quick.orange.rabbit")
    assert not topic_matches("*.orange.*", "quick.orange.male.rabbit")
    assert topic_matches("lazy.#", "lazy")
    assert topic_matches("lazy.#", "lazy.orange.male.rabbit")
    assert topic_matches("#", "") and topic_matches("", "")
    assert not topic_matches("*", "")
    assert topic_matches("*", ".") is False and topic_matches("*.*", ".")
    assert topic_matches("#.a.#", "a") and not topic_matches("#.a.#", "b")


def bind_operations(
    patterns: st.SearchStrategy[Any],
) -> st.SearchStrategy[list[tuple[bool, Any, Destination]]]:
    """(add?, pattern-or-arguments, destination); removes often hit an existing binding."""
    return st.lists(st.tuples(st.booleans() | st.just(True), patterns, destinations), max_size=25)


def apply(
    exchange: Any, operations: list[tuple[bool, Any, Destination]], key_of: Any
) -> list[tuple[Destination, Any]]:
    """Run the operations on the exchange and on a set model; return the model."""
    model: dict[tuple[Any, ...], tuple[Destination, Any]] = {}
    for add, spec_value, destination in operations:
        routing_key, arguments = key_of(spec_value)
        model_key = (id(destination), routing_key, repr(sorted(arguments.items())))
        if add:
            exchange.add_binding(Binding(exchange.name, destination, routing_key, arguments))
            model[model_key] = (destination, spec_value)
        else:
            exchange.remove_binding(destination, routing_key, arguments)
            model.pop(model_key, None)
    return list(model.values())


def names(destinations_found: list[Any]) -> list[str]:
    return sorted(d.name for d in destinations_found)


@MODEL
@given(bind_operations(topic_patterns), st.lists(routing_keys, min_size=1, max_size=6))
def test_topic_exchange_routes_like_the_regex_model(
    operations: list[tuple[bool, str, Destination]], keys: list[str]
) -> None:
    exchange = TopicExchange("/", "topic")
    bindings = apply(exchange, operations, lambda pattern: (pattern, {}))
    for key in keys + keys:  # twice: the second answer comes from the route cache
        found = exchange.route(key, None)
        assert len(found) == len({id(d) for d in found}), f"duplicates for {key!r}: {found}"
        expected = sorted({d.name for d, pattern in bindings if topic_matches(pattern, key)})
        assert names(found) == expected, (
            f"key {key!r}, bindings {sorted((d.name, p) for d, p in bindings)}"
        )


@MODEL
@given(
    bind_operations(st.sampled_from(["a", "b", "", "a.b", "#", "*"])),
    st.lists(routing_keys, min_size=1),
)
def test_direct_exchange_routes_on_equal_keys_only(
    operations: list[tuple[bool, str, Destination]], keys: list[str]
) -> None:
    exchange = DirectExchange("/", "direct")
    bindings = apply(exchange, operations, lambda key: (key, {}))
    for key in keys:
        expected = sorted({d.name for d, bound in bindings if bound == key})
        assert sorted(set(names(exchange.route(key, None)))) == expected


@MODEL
@given(bind_operations(st.sampled_from(["", "a", "#"])), routing_keys)
def test_fanout_exchange_routes_to_every_bound_destination_once(
    operations: list[tuple[bool, str, Destination]], key: str
) -> None:
    exchange = FanoutExchange("/", "fanout")
    bindings = apply(exchange, operations, lambda key: (key, {}))
    found = exchange.route(key, None)
    assert names(found) == sorted({d.name for d, _ in bindings})


# --- headers ----------------------------------------------------------------------------


def type_class(value: Any) -> str:
    """rabbit_misc:type_class/1 over decoded values: every integer width is 'int'."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, Timestamp):
        return "timestamp"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    return type(value).__name__


def rabbit_headers_match(arguments: dict[str, Any], headers: dict[str, Any]) -> bool:
    mode = arguments.get("x-match", "all")
    with_x = mode.endswith("-with-x")
    pattern = {
        k: v for k, v in arguments.items() if k != "x-match" and (with_x or not k.startswith("x-"))
    }
    results = []
    for key, expected in pattern.items():
        if key not in headers:
            results.append(False)
        elif expected is None:  # void: presence is enough
            results.append(True)
        else:
            actual = headers[key]
            results.append(type_class(actual) == type_class(expected) and actual == expected)
    return all(results) if mode.startswith("all") else any(results)


header_keys = st.sampled_from(["a", "b", "c", "x-a", "x-b"])
# Values whose Python equality is RabbitMQ's (no two type classes compare equal).
same_class_values = st.one_of(
    st.none(), st.sampled_from(["1", "2", ""]), st.sampled_from([7, 8, -1])
)
x_match = st.sampled_from([None, "all", "any", "all-with-x", "any-with-x"])


@st.composite
def binding_arguments(
    draw: st.DrawFn, values: st.SearchStrategy[Any] = same_class_values
) -> dict[str, Any]:
    arguments = draw(st.dictionaries(header_keys, values, max_size=4))
    mode = draw(x_match)
    if mode is not None:
        arguments["x-match"] = mode
    return arguments


message_headers = st.dictionaries(
    header_keys, same_class_values.filter(lambda v: v is not None) | st.none(), max_size=5
)


@MODEL
@given(binding_arguments(), message_headers)
def test_headers_match_follows_rabbitmq(arguments: dict[str, Any], headers: dict[str, Any]) -> None:
    assert headers_match(arguments, headers) == rabbit_headers_match(arguments, headers)


@MODEL
@given(
    bind_operations(binding_arguments()),
    st.lists(message_headers, min_size=1, max_size=4),
)
def test_headers_exchange_routes_like_the_model(
    operations: list[tuple[bool, dict[str, Any], Destination]], messages: list[dict[str, Any]]
) -> None:
    exchange = HeadersExchange("/", "headers")
    bindings = apply(exchange, operations, lambda arguments: ("", arguments))
    for headers in messages:
        found = exchange.route("", SimpleNamespace(headers=headers))
        assert len(found) == len({id(d) for d in found})
        expected = sorted(
            {d.name for d, arguments in bindings if rabbit_headers_match(arguments, headers)}
        )
        assert names(found) == expected


@pytest.mark.parametrize(
    ("bound", "sent"),
    [(True, 1), (1, True), (1.0, 1), (Decimal(1), 1), (Timestamp(5), 5)],
    ids=["bool-int", "int-bool", "float-int", "decimal-int", "timestamp-int"],
)
def test_headers_values_of_different_type_classes_do_not_match(bound: Any, sent: Any) -> None:
    assert rabbit_headers_match({"k": bound}, {"k": sent}) is False
    assert headers_match({"k": bound}, {"k": sent}) is False
