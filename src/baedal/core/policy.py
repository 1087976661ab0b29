"""Policies and operator policies: validation, matching and merging (RabbitMQ 3.10 rules).

A policy names a regular expression (searched, unanchored, in queue or exchange names),
what it applies to (``queues``, ``exchanges`` or ``all`` -- RabbitMQ 3.10 refuses
anything else), a priority and a definition (``max-length``, ``message-ttl``, ...).
Each queue or exchange gets at most one policy and one operator policy: the matching one
with the highest priority (ties broken by name, so the choice is deterministic).

How the three sources combine, as RabbitMQ 3.10's classic queues do it (checked against
a running 3.10.8, see tests/integration/test_policy_effects.py):

* policy and operator policy: for the numeric limits (``MIN_KEYS``) the lower value
  wins; operator policies may only set those keys.
* policy (already merged) and the queue's ``x-`` arguments: for ``MIN_KEYS`` the lower
  value wins too (RabbitMQ's ``res_min``); for the others (dead-lettering, overflow,
  queue-mode, and an exchange's alternate exchange) the argument wins.

Nothing here knows a protocol; the vhost calls ``queue_arguments`` and hands the result
to ``QueueSettings``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

APPLY_TO = ("queues", "exchanges", "all")

# policy key -> the queue argument it stands in for
QUEUE_ARGUMENTS = {
    "message-ttl": "x-message-ttl",
    "expires": "x-expires",
    "max-length": "x-max-length",
    "max-length-bytes": "x-max-length-bytes",
    "overflow": "x-overflow",
    "dead-letter-exchange": "x-dead-letter-exchange",
    "dead-letter-routing-key": "x-dead-letter-routing-key",
    "delivery-limit": "x-delivery-limit",
    "queue-mode": "x-queue-mode",
}
# Stream settings a policy may set (core/stream.py applies them; there the policy wins
# over the argument, as in RabbitMQ 3.10's rabbit_stream_queue).
STREAM_POLICY_ARGUMENTS = {
    "max-length-bytes": "x-max-length-bytes",
    "max-age": "x-max-age",
    "stream-max-segment-size-bytes": "x-stream-max-segment-size-bytes",
}
MIN_KEYS = frozenset(
    (
        "message-ttl",
        "expires",
        "max-length",
        "max-length-bytes",
        "delivery-limit",
        "max-in-memory-length",
        "max-in-memory-bytes",
    )
)
OPERATOR_KEYS = MIN_KEYS
OVERFLOW_VALUES = ("drop-head", "reject-publish", "reject-publish-dlx")

# Keys RabbitMQ 3.10 accepts that Baedal stores and exports but which have no effect
# on classic queues (mirroring, federation, memory-residency settings; the stream keys
# take effect on streams only).  Accepting them
# lets a RabbitMQ export be imported; GET shows them back unchanged.
INERT_KEYS = frozenset(
    (
        "queue-mode",
        "max-in-memory-length",
        "max-in-memory-bytes",
        "ha-mode",
        "ha-params",
        "ha-sync-mode",
        "ha-sync-batch-size",
        "ha-promote-on-shutdown",
        "ha-promote-on-failure",
        "queue-master-locator",
        "queue-leader-locator",
        "max-age",
        "stream-max-segment-size-bytes",
        "federation-upstream",
        "federation-upstream-set",
    )
)


class PolicyError(ValueError):
    """A policy RabbitMQ would refuse; ``str()`` is RabbitMQ's wording."""


def erlang_term(value: Any) -> str:
    """Format a JSON value the way RabbitMQ's messages print it (``<<"x">>``, ``-1``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '<<"' + value.replace("\\", "\\\\").replace('"', '\\"') + '">>'
    if isinstance(value, int | float):
        return repr(value)
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ",".join(erlang_term(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "#{" + ",".join(f"{erlang_term(k)} => {erlang_term(v)}" for k, v in value.items()) + "}"
        )
    return repr(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_value(key: str, value: Any) -> None:
    """One definition entry, with RabbitMQ 3.10's error text."""

    def fail(what: str) -> PolicyError:
        return PolicyError(f"{erlang_term(value)} is not a valid {what}")

    if key == "max-length":
        if not _is_int(value) or value < 0:
            raise fail("maximum length")
    elif key in ("max-length-bytes",):
        if not _is_int(value) or value < 0:
            raise fail("maximum length in bytes")
    elif key == "message-ttl":
        if not _is_int(value) or value < 0:
            raise fail("message TTL")
    elif key == "expires":
        if not _is_int(value) or value < 1:
            raise fail("queue expiry")
    elif key == "delivery-limit":
        if not _is_int(value) or value < 0:
            raise fail("delivery limit")
    elif key == "overflow":
        if value not in OVERFLOW_VALUES:
            raise fail("overflow value")
    elif key == "dead-letter-exchange":
        if not isinstance(value, str):
            raise fail("dead letter exchange name")
    elif key == "dead-letter-routing-key":
        if not isinstance(value, str):
            raise fail("dead letter routing key")
    elif key == "alternate-exchange":
        if not isinstance(value, str):
            raise fail("alternate exchange name")
    elif key == "queue-mode":
        if value not in ("default", "lazy"):
            raise fail("queue-mode value")
    elif key == "ha-mode":
        if value not in ("all", "exactly", "nodes"):
            raise fail("ha-mode value")
    elif key in ("max-in-memory-length",):
        if not _is_int(value) or value < 0:
            raise fail("maximum memory in messages")
    elif key == "max-age":
        from .stream import parse_interval  # stream imports queue, which imports us

        if not isinstance(value, str) or parse_interval(value) is None:
            raise fail("max age")
    elif key in ("max-in-memory-bytes", "stream-max-segment-size-bytes"):
        if not _is_int(value) or value < 0:
            raise fail("maximum memory in bytes")


def known_keys(operator: bool) -> frozenset[str]:
    if operator:
        return OPERATOR_KEYS
    return frozenset(QUEUE_ARGUMENTS) | {"alternate-exchange"} | INERT_KEYS


def validate_definition(definition: Any, operator: bool = False) -> dict[str, Any]:
    """A checked copy of a definition.  RabbitMQ's exports write operator policy
    definitions as a list of ``[key, value]`` pairs; both forms are accepted."""
    if isinstance(definition, list) and all(
        isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) for p in definition
    ):
        definition = {k: v for k, v in definition}
    if not isinstance(definition, dict):
        raise PolicyError(f"{erlang_term(definition)} is not a valid policy definition")
    if not definition:
        raise PolicyError("no policy provided")
    allowed = known_keys(operator)
    unknown = sorted(k for k in definition if k not in allowed)
    if unknown:
        terms = ",".join(f"{{{erlang_term(k)},{erlang_term(definition[k])}}}" for k in unknown)
        raise PolicyError(f"[{terms}] are not recognised policy settings")
    for key in sorted(definition):
        _check_value(key, definition[key])
    return dict(definition)


class Policy:
    """One policy (or operator policy) of one vhost."""

    __slots__ = (
        "vhost",
        "name",
        "pattern",
        "apply_to",
        "priority",
        "definition",
        "operator",
        "_regex",
    )

    def __init__(
        self,
        vhost: str,
        name: str,
        pattern: Any,
        definition: Any,
        *,
        apply_to: Any = "all",
        priority: Any = 0,
        operator: bool = False,
    ) -> None:
        if not isinstance(pattern, str):
            raise PolicyError(f"pattern should be regular expression but is {erlang_term(pattern)}")
        try:
            self._regex = re.compile(pattern)
        except (re.error, RecursionError, OverflowError) as exc:
            raise PolicyError(
                f"pattern should be regular expression but is invalid: {exc}"
            ) from None
        if apply_to not in APPLY_TO:
            raise PolicyError(
                f"apply-to '{apply_to}' unrecognised; should be 'queues', 'exchanges' or 'all'"
            )
        if not _is_int(priority):
            raise PolicyError(f"priority should be a number, actually was {erlang_term(priority)}")
        self.vhost = vhost
        self.name = name
        self.pattern = pattern
        self.apply_to: str = apply_to
        self.priority: int = priority
        self.definition = validate_definition(definition, operator)
        self.operator = operator

    def matches(self, kind: str, name: str) -> bool:
        """``kind`` is ``queues`` or ``exchanges``."""
        if self.apply_to != "all" and self.apply_to != kind:
            return False
        return self._regex.search(name) is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "vhost": self.vhost,
            "name": self.name,
            "pattern": self.pattern,
            "apply-to": self.apply_to,
            "definition": dict(self.definition),
            "priority": self.priority,
        }

    def __repr__(self) -> str:
        return f"<Policy {self.vhost}/{self.name} {self.pattern!r} p={self.priority}>"


def select(policies: Iterable[Policy], kind: str, name: str) -> Policy | None:
    """The policy that governs one object: highest priority wins, then the lowest name."""
    best: Policy | None = None
    for policy in policies:
        if not policy.matches(kind, name):
            continue
        if (
            best is None
            or policy.priority > best.priority
            or (policy.priority == best.priority and policy.name < best.name)
        ):
            best = policy
    return best


def effective_definition(policy: Policy | None, operator: Policy | None) -> dict[str, Any]:
    """What RabbitMQ shows as ``effective_policy_definition``: the policy, with the
    operator policy's keys added and, where both set a limit, the lower one."""
    merged = dict(policy.definition) if policy is not None else {}
    if operator is not None:
        for key, value in operator.definition.items():
            have = merged.get(key)
            if have is not None and key in MIN_KEYS and _is_int(have) and _is_int(value):
                merged[key] = min(have, value)
            else:
                merged[key] = value
    return merged


def queue_arguments(
    arguments: dict[str, Any], policy: Policy | None, operator: Policy | None
) -> dict[str, Any]:
    """A queue's arguments with its policies folded in (see the module docstring)."""
    if policy is None and operator is None:
        return arguments
    result = dict(arguments)
    from_policy: set[str] = set()
    for key, value in effective_definition(policy, operator).items():
        arg = QUEUE_ARGUMENTS.get(key)
        if arg is None:
            continue
        have = arguments.get(arg)
        if have is None:
            result[arg] = value
            from_policy.add(arg)
        elif key in MIN_KEYS and _is_int(have) and _is_int(value):
            result[arg] = min(have, value)
    # A policy's routing key without any dead-letter exchange has no effect in RabbitMQ
    # (an argument would be refused, a policy is not).
    if "x-dead-letter-routing-key" in from_policy and "x-dead-letter-exchange" not in result:
        del result["x-dead-letter-routing-key"]
    return result


def alternate_exchange(arguments: dict[str, Any], policy: Policy | None) -> str | None:
    """The argument wins over the policy (RabbitMQ's rabbit_exchange)."""
    value = arguments.get("alternate-exchange")
    if isinstance(value, str):
        return value
    if policy is not None:
        value = policy.definition.get("alternate-exchange")
        if isinstance(value, str):
            return value
    return None
