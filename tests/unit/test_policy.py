"""core/policy.py on its own: validation texts, matching, and how sources combine."""

from __future__ import annotations

import pytest

from baedal.core.policy import (
    Policy,
    PolicyError,
    alternate_exchange,
    effective_definition,
    queue_arguments,
    select,
)
from baedal.core.queue import QueueSettings


def policy(name: str, pattern: str, definition: dict, **kw: object) -> Policy:
    return Policy("/", name, pattern, definition, **kw)  # type: ignore[arg-type]


# What rabbitmqctl set_policy (RabbitMQ 3.10.8) printed for each, checked by hand.
@pytest.mark.parametrize(
    ("definition", "operator", "text"),
    [
        ({"foo": 1}, False, '[{<<"foo">>,1}] are not recognised policy settings'),
        (
            {"max-length": 5, "foo": 1, "bar": 2},
            False,
            '[{<<"bar">>,2},{<<"foo">>,1}] are not recognised policy settings',
        ),
        ({"max-length": "x"}, False, '<<"x">> is not a valid maximum length'),
        ({"max-length": -1}, False, "-1 is not a valid maximum length"),
        ({"max-length-bytes": "a"}, False, '<<"a">> is not a valid maximum length in bytes'),
        ({"message-ttl": 1.5}, False, "1.5 is not a valid message TTL"),
        ({"message-ttl": -1}, False, "-1 is not a valid message TTL"),
        ({"expires": 0}, False, "0 is not a valid queue expiry"),
        ({"overflow": "bogus"}, False, '<<"bogus">> is not a valid overflow value'),
        ({"dead-letter-exchange": 5}, False, "5 is not a valid dead letter exchange name"),
        ({"dead-letter-routing-key": 5}, False, "5 is not a valid dead letter routing key"),
        ({"alternate-exchange": 5}, False, "5 is not a valid alternate exchange name"),
        ({"queue-mode": "x"}, False, '<<"x">> is not a valid queue-mode value'),
        ({"delivery-limit": -1}, False, "-1 is not a valid delivery limit"),
        ({"ha-mode": "bogus"}, False, '<<"bogus">> is not a valid ha-mode value'),
        (
            {"consumer-timeout": 5},
            False,
            '[{<<"consumer-timeout">>,5}] are not recognised policy settings',
        ),
        ({}, False, "no policy provided"),
        (
            {"dead-letter-exchange": "x"},
            True,
            '[{<<"dead-letter-exchange">>,<<"x">>}] are not recognised policy settings',
        ),
        (
            {"overflow": "drop-head"},
            True,
            '[{<<"overflow">>,<<"drop-head">>}] are not recognised policy settings',
        ),
    ],
)
def test_validation_matches_rabbitmq_wording(definition: dict, operator: bool, text: str) -> None:
    with pytest.raises(PolicyError) as info:
        policy("p", ".*", definition, operator=operator)
    assert str(info.value) == text


def test_apply_to_and_pattern_are_validated() -> None:
    with pytest.raises(
        PolicyError,
        match="apply-to 'classic_queues' unrecognised; should be 'queues', 'exchanges' or 'all'",
    ):
        policy("p", ".*", {"max-length": 1}, apply_to="classic_queues")
    with pytest.raises(PolicyError, match="pattern should be regular expression but is invalid"):
        policy("p", "[", {"max-length": 1})
    with pytest.raises(PolicyError, match="priority should be a number"):
        policy("p", ".*", {"max-length": 1}, priority="x")


def test_accepted_keys() -> None:
    for definition in (
        {"queue-mode": "lazy"},
        {"ha-mode": "all"},
        {"dead-letter-routing-key": "k"},
        {"max-length": 0, "overflow": "reject-publish-dlx", "expires": 1},
    ):
        policy("p", ".*", definition)
    op = policy("o", ".*", [["max-length", 1000]], operator=True)  # RabbitMQ's export form
    assert op.definition == {"max-length": 1000}


def test_matching_is_an_unanchored_search_limited_by_apply_to() -> None:
    p = policy("p", "ord", {"max-length": 1}, apply_to="queues")
    assert p.matches("queues", "new-orders")
    assert not p.matches("exchanges", "new-orders")
    assert not p.matches("queues", "invoices")
    assert policy("a", "^x", {"max-length": 1}).matches("exchanges", "xy")


def test_highest_priority_wins_then_name() -> None:
    low = policy("b-low", ".*", {"max-length": 1}, priority=1)
    high = policy("z-high", ".*", {"max-length": 2}, priority=5)
    other = policy("a-other", "^nomatch$", {"max-length": 3}, priority=9)
    assert select([low, high, other], "queues", "q") is high
    tie1 = policy("a", ".*", {"max-length": 1}, priority=5)
    assert select([high, tie1], "queues", "q") is tie1
    assert select([other], "queues", "q") is None


def test_operator_policy_lower_limit_wins() -> None:
    user = policy("u", ".*", {"max-length": 10, "message-ttl": 100, "dead-letter-exchange": "d"})
    op = policy("o", ".*", {"max-length": 5, "message-ttl": 1000, "expires": 60000}, operator=True)
    assert effective_definition(user, op) == {
        "max-length": 5,
        "message-ttl": 100,
        "dead-letter-exchange": "d",
        "expires": 60000,
    }
    assert effective_definition(None, op) == op.definition
    assert effective_definition(None, None) == {}


def test_arguments_and_policies_combine_as_rabbitmq_classic_queues() -> None:
    user = policy(
        "u",
        ".*",
        {
            "max-length": 3,
            "overflow": "drop-head",
            "dead-letter-exchange": "pol-dlx",
            "message-ttl": 50,
        },
    )
    args = {"x-max-length": 5, "x-overflow": "reject-publish", "x-dead-letter-exchange": "arg-dlx"}
    merged = queue_arguments(args, user, None)
    assert merged["x-max-length"] == 3  # numeric: the lower wins
    assert merged["x-overflow"] == "reject-publish"  # the argument wins
    assert merged["x-dead-letter-exchange"] == "arg-dlx"
    assert merged["x-message-ttl"] == 50  # only the policy sets it
    assert queue_arguments({"x-max-length": 2}, user, None)["x-max-length"] == 2
    assert args == {
        "x-max-length": 5,
        "x-overflow": "reject-publish",
        "x-dead-letter-exchange": "arg-dlx",
    }


def test_policy_routing_key_without_exchange_is_ignored() -> None:
    p = policy("u", ".*", {"dead-letter-routing-key": "k"})
    settings = QueueSettings.merged({}, p, None)
    assert settings.dead_letter_routing_key is None
    settings = QueueSettings.merged({"x-dead-letter-exchange": "d"}, p, None)
    assert (settings.dead_letter_exchange, settings.dead_letter_routing_key) == ("d", "k")


def test_alternate_exchange_argument_wins() -> None:
    p = policy("u", ".*", {"alternate-exchange": "from-policy"}, apply_to="exchanges")
    assert alternate_exchange({}, p) == "from-policy"
    assert alternate_exchange({"alternate-exchange": "from-arg"}, p) == "from-arg"
    assert alternate_exchange({}, None) is None
