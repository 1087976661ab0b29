"""Message selectors: ActiveMQ's SQL-92 subset, compiled once to closures.

A selector is a boolean expression over a message's headers (never its body), given by a
consumer when it subscribes: STOMP's ``selector`` header, AMQP's ``x-selector`` consumer
argument.  A queue delivers to a selected consumer only the messages it matches and
leaves the others for other consumers (core/queue.py).

Theory of operation
-------------------
``compile_selector(text)`` runs a hand-written tokenizer and a recursive-descent parser
(no ``eval``, no parser library) and turns the tree into nested Python closures, once per
subscription; ``Selector.matches(message)`` then calls one closure per message.  Each
closure takes the message and returns a value: ``None`` is SQL's NULL (a header that is
not there, or an operation on one), booleans are SQL's TRUE/FALSE.  A message matches
only when the whole expression is ``True``: UNKNOWN does not match, so ``age > 18`` does
not match a message without ``age`` and neither does ``NOT (age > 18)``.

Grammar (JMS 1.1 §3.8.1 as ActiveMQ accepts it; keywords are case-insensitive)::

    or_expr     := and_expr (OR and_expr)*
    and_expr    := not_expr (AND not_expr)*
    not_expr    := NOT not_expr | comparison
    comparison  := sum ( ('=' | '<>' | '!=' | '<' | '<=' | '>' | '>=') sum
                       | IS [NOT] NULL
                       | [NOT] BETWEEN sum AND sum
                       | [NOT] IN '(' literal (',' literal)* ')'
                       | [NOT] LIKE string [ESCAPE string] )?
    sum         := product (('+' | '-') product)*
    product     := unary (('*' | '/' | '%') unary)*
    unary       := ('+' | '-') unary | primary
    primary     := literal | identifier | '(' or_expr ')'

Literals: ``'strings'`` with ``''`` for a quote; exact numerics (decimal, ``0x`` hex, an
optional ``L`` suffix); approximate numerics (``1.5``, ``.5``, ``7e3``, optional ``F``/``D``
suffix); ``TRUE``/``FALSE``; ``NULL`` only after ``IS``.  Identifiers are Java-like names
(ActiveMQ also allows ``.`` inside them) or ``"double-quoted"`` names (for header names
that are not identifiers, e.g. ``"content-type"``).

Identifiers name headers, except the JMS header names, which map onto the neutral
message fields: ``JMSMessageID`` (message id), ``JMSCorrelationID``, ``JMSPriority``,
``JMSTimestamp`` (the timestamp in milliseconds, as JMS has it), ``JMSDeliveryMode``
(``'PERSISTENT'`` / ``'NON_PERSISTENT'``) and ``JMSType`` (the ``JMSType`` header, else the
``type`` header STOMP clients send).

Types and coercion (ActiveMQ with ``convert_string_expressions``, always on here: STOMP
and MQTT headers are strings, and ``age > 18`` must match ``age:21``): a string compared
with, or used in arithmetic with, a number is read as a number when it is one (``'5' > 3``
is TRUE), and as a boolean (``'true'``/``'false'``) when compared with a boolean.  Otherwise
values of different kinds are not equal and not ordered: the comparison is FALSE (as
ActiveMQ answers), not an error.  Integer division truncates towards zero (Java); a
division by zero is NULL.  ``LIKE`` on a non-string is FALSE.

Bounds: a selector longer than ``MAX_LENGTH`` characters or nested deeper than
``MAX_DEPTH`` is refused, so a hostile subscription cannot exhaust the parser's or the
evaluator's stack.  Every error is a ``SelectorError`` (a ``ValueError``) whose message
says what was wrong and where.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from .message import Message

__all__ = ["MAX_DEPTH", "MAX_LENGTH", "Selector", "SelectorError", "compile_selector"]

MAX_LENGTH = 16_384  # characters of selector text
MAX_DEPTH = 40  # nesting of the expression (parentheses, operators); ~12 stack frames each

Evaluator = Callable[[Message], Any]


class SelectorError(ValueError):
    """A selector that does not parse (the adapter refuses the subscription with it)."""


class Selector:
    """A compiled selector: ``matches(message)`` is True when the expression is TRUE."""

    __slots__ = ("text", "_evaluate")

    def __init__(self, text: str, evaluate: Evaluator) -> None:
        self.text = text
        self._evaluate = evaluate

    def matches(self, message: Message) -> bool:
        return self._evaluate(message) is True

    def __repr__(self) -> str:
        return f"<Selector {self.text!r}>"


def compile_selector(text: str) -> Selector:
    """Parse ``text`` and compile it; raises ``SelectorError``.  An empty (blank)
    selector matches every message (JMS: an empty selector is no selector)."""
    if not isinstance(text, str):
        raise SelectorError(f"a selector is a string, not {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise SelectorError(f"selector is {len(text)} characters long; the limit is {MAX_LENGTH}")
    body = text.strip()
    # ActiveMQ's and Artemis's option prefixes: string conversion is always on here and
    # quoted identifiers cover hyphenated header names, so both are accepted and ignored.
    for prefix in ("convert_string_expressions:", "hyphenated_props:"):
        if body.startswith(prefix):
            body = body[len(prefix) :].strip()
    if not body:
        return Selector(text, _always_true)
    parser = _Parser(body)
    evaluate, _depth = parser.parse()
    return Selector(text, evaluate)


def _always_true(message: Message) -> bool:
    return True


# --- tokens ------------------------------------------------------------------------------

_KEYWORDS = frozenset(
    ("AND", "OR", "NOT", "BETWEEN", "IN", "LIKE", "ESCAPE", "IS", "NULL", "TRUE", "FALSE")
)

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<string>'(?:[^']|'')*')
  | (?P<unterminated>')
  | (?P<quoted>"(?:[^"]|"")*")
  | (?P<hex>0[xX][0-9a-fA-F]+[lL]?(?![\w$.]))
  | (?P<float>(?:\d+\.\d*|\.\d+)(?:[eE][+-]?\d+)?[fFdD]?(?![\w$.])
             |\d+[eE][+-]?\d+[fFdD]?(?![\w$.])
             |\d+[fFdD](?![\w$.]))
  | (?P<integer>\d+[lL]?(?![\w$.]))
  | (?P<name>[A-Za-z_$][\w$.]*)
  | (?P<op><>|!=|<=|>=|[=<>+\-*/%(),])
    """,
    re.VERBOSE | re.ASCII,
)


class _Token:
    __slots__ = ("kind", "value", "position")

    def __init__(self, kind: str, value: Any, position: int) -> None:
        self.kind = kind  # "string", "number", "name", "keyword", "op", "end"
        self.value = value
        self.position = position

    def describe(self) -> str:
        if self.kind == "end":
            return "end of selector"
        if self.kind == "string":
            return f"string '{self.value}'"
        return f"{self.value!s}"


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    end = len(text)
    while position < end:
        match = _TOKEN.match(text, position)
        if match is None:
            raise SelectorError(f"unexpected character {text[position]!r} at position {position + 1}")
        kind = match.lastgroup
        raw = match.group()
        if kind == "string":
            tokens.append(_Token("string", raw[1:-1].replace("''", "'"), position))
        elif kind == "unterminated":
            raise SelectorError(f"unterminated string starting at position {position + 1}")
        elif kind == "quoted":
            tokens.append(_Token("name", raw[1:-1].replace('""', '"'), position))
        elif kind in ("hex", "float", "integer"):
            tokens.append(_Token("number", _numeric_literal(kind, raw, position), position))
        elif kind == "name":
            upper = raw.upper()
            if upper in _KEYWORDS:
                tokens.append(_Token("keyword", upper, position))
            else:
                tokens.append(_Token("name", raw, position))
        elif kind == "op":
            tokens.append(_Token("op", "<>" if raw == "!=" else raw, position))
        position = match.end()
    tokens.append(_Token("end", None, end))
    return tokens


def _numeric_literal(kind: str, raw: str, position: int) -> int | float:
    try:
        if kind == "hex":
            return int(raw.rstrip("lL"), 16)
        if kind == "float":
            return float(raw.rstrip("fFdD"))
        return int(raw.rstrip("lL"))
    except ValueError:  # more digits than Python converts (sys.int_info.default_max_str_digits)
        raise SelectorError(f"number at position {position + 1} is too long") from None


# --- values ------------------------------------------------------------------------------


def _number(value: Any) -> int | float | None:
    """``value`` as a number, or None: numbers as they are, numeric strings parsed
    (STOMP/MQTT headers), everything else (booleans included) is not a number."""
    kind = value.__class__
    if kind is int or kind is float:
        return value
    if kind is str:
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            pass
        try:
            number = float(text)
        except ValueError:
            return None
        return number
    if kind is bool:
        return None
    if isinstance(value, int):  # Timestamp and other int subclasses
        return int(value)
    if isinstance(value, (float, Decimal)):
        return float(value)
    return None


def _boolean(value: Any) -> bool | None:
    if value.__class__ is bool:
        return value
    if value.__class__ is str:
        lowered = value.strip().lower()
        if lowered == "true":
            return True
        if lowered == "false":
            return False
    return None


def _pair(left: Any, right: Any) -> tuple[Any, Any] | None:
    """Both operands as one comparable kind (number, string, boolean), or None when they
    cannot be compared (the comparison is then FALSE)."""
    left_kind = left.__class__
    right_kind = right.__class__
    if left_kind is str and right_kind is str:
        return left, right
    if left_kind is bool or right_kind is bool:
        a, b = _boolean(left), _boolean(right)
        return None if a is None or b is None else (a, b)
    if left_kind is bytes:
        left = left.decode("utf-8", "replace")
        return _pair(left, right)
    if right_kind is bytes:
        return _pair(left, right.decode("utf-8", "replace"))
    a, b = _number(left), _number(right)
    if a is None or b is None:
        return None
    return a, b


def _equal(left: Any, right: Any) -> bool | None:
    if left is None or right is None:
        return None
    pair = _pair(left, right)
    return False if pair is None else pair[0] == pair[1]


def _ordered(compare: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool | None]:
    def ordering(left: Any, right: Any) -> bool | None:
        if left is None or right is None:
            return None
        pair = _pair(left, right)
        if pair is None or pair[0].__class__ is bool:
            return False  # booleans are not ordered; unlike kinds are not comparable
        return compare(pair[0], pair[1])

    return ordering


_COMPARISONS: dict[str, Callable[[Any, Any], bool | None]] = {
    "=": _equal,
    "<>": lambda a, b: None if (result := _equal(a, b)) is None else not result,
    "<": _ordered(lambda a, b: a < b),
    "<=": _ordered(lambda a, b: a <= b),
    ">": _ordered(lambda a, b: a > b),
    ">=": _ordered(lambda a, b: a >= b),
}


def _divide(a: int | float, b: int | float) -> int | float | None:
    if b == 0:
        return None
    if a.__class__ is int and b.__class__ is int:
        quotient = abs(a) // abs(b)  # Java's long division truncates towards zero
        return quotient if (a < 0) == (b < 0) else -quotient
    return a / b


def _modulo(a: int | float, b: int | float) -> int | float | None:
    if b == 0:
        return None
    return math.fmod(a, b) if (a.__class__ is float or b.__class__ is float) else int(math.fmod(a, b))


_ARITHMETIC: dict[str, Callable[[Any, Any], Any]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": _divide,
    "%": _modulo,
}


def _header(name: str) -> Evaluator:
    def header(message: Message) -> Any:
        headers = message.headers
        return None if headers is None else headers.get(name)

    return header


def _jms_timestamp(message: Message) -> Any:
    timestamp = message.timestamp
    return None if timestamp is None else int(timestamp) * 1000


def _jms_type(message: Message) -> Any:
    headers = message.headers
    if headers is None:
        return None
    value = headers.get("JMSType")
    return headers.get("type") if value is None else value


_JMS_FIELDS: dict[str, Evaluator] = {
    "JMSMessageID": lambda message: message.message_id,
    "JMSCorrelationID": lambda message: message.correlation_id,
    "JMSPriority": lambda message: message.priority,
    "JMSTimestamp": _jms_timestamp,
    "JMSDeliveryMode": lambda message: "PERSISTENT" if message.persistent else "NON_PERSISTENT",
    "JMSType": _jms_type,
}


def _like_pattern(pattern: str, escape: str | None) -> re.Pattern[str]:
    parts: list[str] = []
    chars = iter(pattern)
    for char in chars:
        if escape is not None and char == escape:
            following = next(chars, None)
            if following is None:
                raise SelectorError(f"LIKE pattern {pattern!r} ends with its escape character")
            parts.append(re.escape(following))
        elif char == "%":
            parts.append(".*")
        elif char == "_":
            parts.append(".")
        else:
            parts.append(re.escape(char))
    return re.compile("".join(parts), re.DOTALL)


# --- parser ------------------------------------------------------------------------------

Compiled = tuple[Evaluator, int]  # the closure and the depth of the tree under it


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.index = 0
        self.nesting = 0  # recursion on the way down (checked before descending)

    # token helpers

    @property
    def current(self) -> _Token:
        return self.tokens[self.index]

    def _advance(self) -> _Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def _keyword(self, word: str) -> bool:
        token = self.tokens[self.index]
        if token.kind == "keyword" and token.value == word:
            self.index += 1
            return True
        return False

    def _op(self, *ops: str) -> str | None:
        token = self.tokens[self.index]
        if token.kind == "op" and token.value in ops:
            self.index += 1
            return token.value  # type: ignore[no-any-return]
        return None

    def _fail(self, expected: str) -> SelectorError:
        token = self.current
        return SelectorError(
            f"expected {expected} at position {token.position + 1}, found {token.describe()}"
        )

    def _descend(self) -> None:
        self.nesting += 1
        if self.nesting > MAX_DEPTH:
            raise SelectorError(f"selector is nested deeper than {MAX_DEPTH} levels")

    @staticmethod
    def _deeper(depth: int) -> int:
        if depth >= MAX_DEPTH:
            raise SelectorError(f"selector is nested deeper than {MAX_DEPTH} levels")
        return depth + 1

    # grammar

    def parse(self) -> Compiled:
        compiled = self._or()
        if self.current.kind != "end":
            raise self._fail("an operator or the end of the selector")
        return compiled

    def _or(self) -> Compiled:
        first = self._and()
        if not (self.current.kind == "keyword" and self.current.value == "OR"):
            return first
        operands = [first]
        while self._keyword("OR"):
            operands.append(self._and())
        depth = self._deeper(max(d for _, d in operands))
        functions = tuple(f for f, _ in operands)

        def either(message: Message) -> bool | None:
            unknown = False
            for function in functions:
                value = function(message)
                if value is True:
                    return True
                if value is not False:  # NULL, or a non-boolean: UNKNOWN
                    unknown = True
            return None if unknown else False

        return either, depth

    def _and(self) -> Compiled:
        first = self._not()
        if not (self.current.kind == "keyword" and self.current.value == "AND"):
            return first
        operands = [first]
        while self._keyword("AND"):
            operands.append(self._not())
        depth = self._deeper(max(d for _, d in operands))
        functions = tuple(f for f, _ in operands)

        def both(message: Message) -> bool | None:
            unknown = False
            for function in functions:
                value = function(message)
                if value is False:
                    return False
                if value is not True:
                    unknown = True
            return None if unknown else True

        return both, depth

    def _not(self) -> Compiled:
        if self._keyword("NOT"):
            self._descend()
            operand, depth = self._not()
            self.nesting -= 1
            depth = self._deeper(depth)

            def negation(message: Message) -> bool | None:
                value = operand(message)
                if value is True:
                    return False
                if value is False:
                    return True
                return None

            return negation, depth
        return self._comparison()

    def _comparison(self) -> Compiled:
        left, depth = self._sum()
        token = self.current
        if token.kind == "op" and token.value in _COMPARISONS:
            self.index += 1
            right, right_depth = self._sum()
            compare = _COMPARISONS[token.value]
            return (lambda message: compare(left(message), right(message))), self._deeper(
                max(depth, right_depth)
            )
        if self._keyword("IS"):
            negated = self._keyword("NOT")
            if not self._keyword("NULL"):
                raise self._fail("NULL")
            if negated:
                return (lambda message: left(message) is not None), self._deeper(depth)
            return (lambda message: left(message) is None), self._deeper(depth)
        negated = self._keyword("NOT")
        if self._keyword("BETWEEN"):
            compiled = self._between(left, depth)
        elif self._keyword("IN"):
            compiled = self._in(left, depth)
        elif self._keyword("LIKE"):
            compiled = self._like(left, depth)
        elif negated:
            raise self._fail("BETWEEN, IN or LIKE after NOT")
        else:
            return left, depth
        if not negated:
            return compiled
        function, depth = compiled
        return (lambda message: None if (v := function(message)) is None else not v), depth

    def _between(self, left: Evaluator, depth: int) -> Compiled:
        low, low_depth = self._sum()
        if not self._keyword("AND"):
            raise self._fail("AND in BETWEEN")
        high, high_depth = self._sum()
        at_least = _COMPARISONS[">="]
        at_most = _COMPARISONS["<="]

        def between(message: Message) -> bool | None:
            value = left(message)
            lower = at_least(value, low(message))
            if lower is False:
                return False
            upper = at_most(value, high(message))
            if upper is False:
                return False
            return None if lower is None or upper is None else True

        return between, self._deeper(max(depth, low_depth, high_depth))

    def _literal(self) -> Any:
        token = self.current
        sign = 1
        if token.kind == "op" and token.value in ("+", "-"):
            sign = -1 if token.value == "-" else 1
            self.index += 1
            token = self.current
            if token.kind != "number":
                raise self._fail("a number")
        if token.kind in ("string", "number"):
            self.index += 1
            return token.value if token.kind == "string" else sign * token.value
        if token.kind == "keyword" and token.value in ("TRUE", "FALSE"):
            self.index += 1
            return token.value == "TRUE"
        raise self._fail("a literal")

    def _in(self, left: Evaluator, depth: int) -> Compiled:
        if not self._op("("):
            raise self._fail("'(' after IN")
        values = [self._literal()]
        while self._op(","):
            values.append(self._literal())
        if not self._op(")"):
            raise self._fail("',' or ')' in IN list")
        strings = frozenset(v for v in values if v.__class__ is str)
        others = tuple(v for v in values if v.__class__ is not str)

        def member(message: Message) -> bool | None:
            value = left(message)
            if value is None:
                return None
            if value.__class__ is str and value in strings:
                return True
            for candidate in others:
                if _equal(value, candidate):
                    return True
            if strings and value.__class__ is not str:
                for candidate in strings:
                    if _equal(value, candidate):
                        return True
            return False

        return member, self._deeper(depth)

    def _like(self, left: Evaluator, depth: int) -> Compiled:
        token = self.current
        if token.kind != "string":
            raise self._fail("a string pattern after LIKE")
        self.index += 1
        escape: str | None = None
        if self._keyword("ESCAPE"):
            escape_token = self.current
            if escape_token.kind != "string" or len(escape_token.value) != 1:
                raise self._fail("a one-character string after ESCAPE")
            self.index += 1
            escape = escape_token.value
        pattern = _like_pattern(token.value, escape)
        fullmatch = pattern.fullmatch

        def like(message: Message) -> bool | None:
            value = left(message)
            if value is None:
                return None
            if value.__class__ is bytes:
                value = value.decode("utf-8", "replace")
            if value.__class__ is not str:
                return False
            return fullmatch(value) is not None

        return like, self._deeper(depth)

    def _sum(self) -> Compiled:
        return self._chain(self._product, ("+", "-"))

    def _product(self) -> Compiled:
        return self._chain(self._unary, ("*", "/", "%"))

    def _chain(self, operand: Callable[[], Compiled], ops: tuple[str, ...]) -> Compiled:
        left, depth = operand()
        while (op := self._op(*ops)) is not None:
            right, right_depth = operand()
            left = _arithmetic(_ARITHMETIC[op], left, right)
            depth = self._deeper(max(depth, right_depth))
        return left, depth

    def _unary(self) -> Compiled:
        sign = self._op("+", "-")
        if sign is None:
            return self._primary()
        self._descend()
        operand, depth = self._unary()
        self.nesting -= 1
        if sign == "+":
            return _arithmetic(_ARITHMETIC["+"], _constant(0), operand), self._deeper(depth)
        return _arithmetic(_ARITHMETIC["-"], _constant(0), operand), self._deeper(depth)

    def _primary(self) -> Compiled:
        token = self.current
        if token.kind in ("string", "number"):
            self.index += 1
            return _constant(token.value), 0
        if token.kind == "keyword" and token.value in ("TRUE", "FALSE"):
            self.index += 1
            return _constant(token.value == "TRUE"), 0
        if token.kind == "name":
            self.index += 1
            field = _JMS_FIELDS.get(token.value)
            return (field if field is not None else _header(token.value)), 0
        if self._op("("):
            self._descend()
            inner, depth = self._or()
            self.nesting -= 1
            if not self._op(")"):
                raise self._fail("')'")
            return inner, self._deeper(depth)
        raise self._fail("a value, a header name or '('")


def _constant(value: Any) -> Evaluator:
    return lambda message: value


def _arithmetic(operation: Callable[[Any, Any], Any], left: Evaluator, right: Evaluator) -> Evaluator:
    def arithmetic(message: Message) -> Any:
        a = left(message)
        if a is None:
            return None
        b = right(message)
        if b is None:
            return None
        a = _number(a)
        b = _number(b)
        if a is None or b is None:
            return None  # arithmetic on a non-number: UNKNOWN (ActiveMQ: no match)
        try:
            return operation(a, b)
        except (ArithmeticError, ValueError):  # an int too large for a float, and such
            return None

    return arithmetic
