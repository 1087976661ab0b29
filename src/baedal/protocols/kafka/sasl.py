"""The server side of SASL SCRAM-SHA-256 / SCRAM-SHA-512 (RFC 5802, RFC 7677), as
Kafka runs it (KIP-84): sans-IO, one object per authentication.

Theory of operation
-------------------
Kafka carries each SCRAM message in one SaslAuthenticate request / response (after a
SaslHandshake that named the mechanism), so the exchange is two round trips::

    client-first  n,,n=<user>,r=<client nonce>
    server-first  r=<client nonce><server nonce>,s=<base64 salt>,i=<iterations>
    client-final  c=<base64 gs2 header>,r=<whole nonce>,p=<base64 proof>
    server-final  v=<base64 server signature>

``ScramServer.step`` takes a client message and returns the answer; the states are
AWAITING_CLIENT_FIRST → AWAITING_CLIENT_FINAL → DONE, and anything else (a malformed
or over-long message, a nonce that is not the one this exchange made, a wrong proof, a
message after the end) raises ``ScramError`` and leaves the object FAILED for good: the
Kafka listener answers SASL_AUTHENTICATION_FAILED and closes the connection, as Kafka's
``SaslServerAuthenticator`` does.

The password never reaches the server: the proof is checked against the stored
``StoredKey`` (``core/scram.py``).  Comparisons of secrets use ``hmac.compare_digest``.
An unknown user gets a made-up salt (the same one every time for the same name) and
fails only at the proof, so the first answer does not tell who exists.  A client-final
replayed from another exchange fails because the server nonce, fresh from ``secrets``
for every exchange, is part of both the nonce check and the signed message.

What is not offered: channel binding (``-PLUS`` mechanisms; a client that asks for it
with ``p=`` is refused), and Kafka's delegation tokens (``tokenauth=true`` extension).
The username is used as sent, without SASLprep, as Kafka's ``ScramFormatter`` does.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from ...core.scram import DEFAULT_ITERATIONS, MECHANISMS, SALT_BYTES, ScramCredential

__all__ = [
    "MAX_MESSAGE_BYTES",
    "ClientFinal",
    "ClientFirst",
    "ScramError",
    "ScramServer",
    "ScramState",
    "parse_client_final",
    "parse_client_first",
]

# The longest client message accepted, checked before anything is decoded.  A real
# client-first is well under 300 bytes (user name + a 24-32 character nonce); a
# client-final with a SHA-512 proof under 300 too.
MAX_MESSAGE_BYTES = 4096
# Server nonce: 24 random bytes, URL-safe base64 (no ',' and printable, RFC 5802 §7).
SERVER_NONCE_BYTES = 24
# Unknown users get a salt derived from this per-process secret (see the docstring).
_UNKNOWN_USER_SECRET = secrets.token_bytes(32)

FAILED_CREDENTIALS = "Authentication failed during authentication due to invalid credentials with SASL mechanism {}"


class ScramError(Exception):
    """The client's message is refused; ``str(exc)`` is the answer's error message."""


class ScramState(enum.Enum):
    AWAITING_CLIENT_FIRST = "awaiting client-first"
    AWAITING_CLIENT_FINAL = "awaiting client-final"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class ClientFirst:
    gs2_header: str  # "n,," or "n,a=<authzid>," (echoed base64'd in client-final)
    username: str
    nonce: str
    bare: str  # client-first-message-bare: part of the signed AuthMessage
    extensions: dict[str, str]


@dataclass(frozen=True)
class ClientFinal:
    channel_binding: bytes  # the decoded c= attribute
    nonce: str
    proof: bytes
    without_proof: str  # client-final-message-without-proof: part of AuthMessage


def _text(data: bytes) -> str:
    if len(data) > MAX_MESSAGE_BYTES:
        raise ScramError(f"SCRAM message of {len(data)} bytes is over {MAX_MESSAGE_BYTES}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ScramError("SCRAM message is not UTF-8") from None
    if "\0" in text:
        raise ScramError("SCRAM message contains NUL")
    return text


def _saslname(value: str) -> str:
    """RFC 5802 §5.1: ',' and '=' arrive as '=2C' and '=3D'; any other '=' is invalid."""
    if not value:
        raise ScramError("empty user name")
    out: list[str] = []
    i = 0
    while i < len(value):
        char = value[i]
        if char == "=":
            escape = value[i : i + 3]
            if escape == "=2C":
                out.append(",")
            elif escape == "=3D":
                out.append("=")
            else:
                raise ScramError("invalid '=' escape in user name")
            i += 3
        else:
            out.append(char)
            i += 1
    return "".join(out)


def _nonce(value: str) -> str:
    # RFC 5802 §7: printable = %x21-2B / %x2D-7E (no ',').
    if not value or any(not ("\x21" <= c <= "\x7e") or c == "," for c in value):
        raise ScramError("invalid nonce")
    return value


def _attribute(part: str, name: str) -> str:
    if len(part) < 2 or part[0] != name or part[1] != "=":
        raise ScramError(f"expected attribute '{name}='")
    return part[2:]


def _base64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ScramError(f"{what} is not base64") from None


def parse_client_first(data: bytes) -> ClientFirst:
    """``gs2-header client-first-message-bare``; raises ``ScramError`` only."""
    text = _text(data)
    parts = text.split(",")
    if len(parts) < 4:
        raise ScramError("client-first message is malformed")
    flag, authzid_part = parts[0], parts[1]
    if flag.startswith("p="):
        raise ScramError("channel binding is not supported")
    if flag not in ("n", "y"):
        raise ScramError("invalid GS2 channel-binding flag")
    authzid = _saslname(_attribute(authzid_part, "a")) if authzid_part else None
    bare_parts = parts[2:]
    if bare_parts[0].startswith("m="):
        raise ScramError("mandatory extensions are not supported")
    username = _saslname(_attribute(bare_parts[0], "n"))
    nonce = _nonce(_attribute(bare_parts[1], "r"))
    extensions: dict[str, str] = {}
    for part in bare_parts[2:]:
        key, equals, value = part.partition("=")
        if not key or not equals:
            raise ScramError("invalid SCRAM extension")
        extensions[key] = value
    if authzid is not None and authzid != username:
        # Kafka: "Authentication failed: Client requested an authorization id that is
        # different from username" (ScramSaslServer).
        raise ScramError("authorization id must be the user name")
    gs2_header = f"{flag},{authzid_part},"
    return ClientFirst(gs2_header, username, nonce, ",".join(bare_parts), extensions)


def parse_client_final(data: bytes) -> ClientFinal:
    """``c=...,r=...[,extensions],p=...``; raises ``ScramError`` only."""
    text = _text(data)
    parts = text.split(",")
    if len(parts) < 3:
        raise ScramError("client-final message is malformed")
    channel_binding = _base64(_attribute(parts[0], "c"), "channel binding")
    nonce = _nonce(_attribute(parts[1], "r"))
    proof = _base64(_attribute(parts[-1], "p"), "proof")
    for part in parts[2:-1]:
        key, equals, _value = part.partition("=")
        if not key or not equals:
            raise ScramError("invalid SCRAM extension")
    without_proof = ",".join(parts[:-1])
    return ClientFinal(channel_binding, nonce, proof, without_proof)


class ScramServer:
    """One SCRAM authentication.  ``lookup(username)`` returns the user's credential
    for this mechanism, or None.  ``server_nonce`` is for tests (RFC 7677's vector)."""

    def __init__(
        self,
        mechanism: str,
        lookup: Callable[[str], ScramCredential | None],
        server_nonce: str | None = None,
    ) -> None:
        if mechanism not in MECHANISMS:
            raise ValueError(f"not a SCRAM mechanism: {mechanism!r}")
        self.mechanism = mechanism
        self._digest = MECHANISMS[mechanism]
        self._size = hashlib.new(self._digest).digest_size
        self._lookup = lookup
        self._server_nonce = server_nonce or secrets.token_urlsafe(SERVER_NONCE_BYTES)
        self.state = ScramState.AWAITING_CLIENT_FIRST
        self.username: str | None = None  # set once DONE
        self._first: ClientFirst | None = None
        self._credential: ScramCredential | None = None
        self._known_user = False
        self._server_first = ""

    def step(self, message: bytes) -> bytes:
        """The answer to the client's next message; ``ScramError`` fails it for good."""
        try:
            if self.state is ScramState.AWAITING_CLIENT_FIRST:
                return self._client_first(message)
            if self.state is ScramState.AWAITING_CLIENT_FINAL:
                return self._client_final(message)
            raise ScramError(f"SCRAM exchange is {self.state.value}")
        except ScramError:
            self.state = ScramState.FAILED
            raise

    def _client_first(self, message: bytes) -> bytes:
        first = parse_client_first(message)
        if first.extensions.get("tokenauth", "false").lower() == "true":
            raise ScramError("delegation tokens are not supported")
        credential = self._lookup(first.username)
        self._known_user = credential is not None
        if credential is None:
            credential = self._unknown_user(first.username)
        self._first, self._credential = first, credential
        salt = base64.b64encode(credential.salt).decode("ascii")
        self._server_first = f"r={first.nonce}{self._server_nonce},s={salt},i={credential.iterations}"
        self.state = ScramState.AWAITING_CLIENT_FINAL
        return self._server_first.encode("ascii")

    def _unknown_user(self, username: str) -> ScramCredential:
        salt = hmac.digest(_UNKNOWN_USER_SECRET, username.encode("utf-8"), "sha256")[:SALT_BYTES]
        never = secrets.token_bytes(self._size)  # no proof hashes to this
        return ScramCredential(salt, DEFAULT_ITERATIONS, never, never)

    def _client_final(self, message: bytes) -> bytes:
        first, credential = self._first, self._credential
        assert first is not None and credential is not None
        final = parse_client_final(message)
        failed = FAILED_CREDENTIALS.format(self.mechanism)
        if not hmac.compare_digest(final.channel_binding, first.gs2_header.encode("utf-8")):
            raise ScramError("channel binding does not match the client-first message")
        if not hmac.compare_digest(final.nonce.encode("ascii"), (first.nonce + self._server_nonce).encode("ascii")):
            raise ScramError("invalid nonce")  # e.g. a client-final replayed from another exchange
        if len(final.proof) != self._size:
            raise ScramError(failed)
        auth_message = f"{first.bare},{self._server_first},{final.without_proof}".encode()
        client_signature = hmac.digest(credential.stored_key, auth_message, self._digest)
        client_key = bytes(a ^ b for a, b in zip(final.proof, client_signature, strict=True))
        stored_key = hashlib.new(self._digest, client_key).digest()
        if not hmac.compare_digest(stored_key, credential.stored_key) or not self._known_user:
            raise ScramError(failed)
        self.username = first.username
        self.state = ScramState.DONE
        server_signature = hmac.digest(credential.server_key, auth_message, self._digest)
        return b"v=" + base64.b64encode(server_signature)
