"""SCRAM credentials (RFC 5802, RFC 7677) kept with each user.

A SCRAM server never sees the password: it checks the client's proof against
``StoredKey = H(HMAC(SaltedPassword, "Client Key"))`` and proves itself with
``ServerKey = HMAC(SaltedPassword, "Server Key")``, where ``SaltedPassword`` is
PBKDF2-HMAC-H(password, salt, iterations).  Neither can be computed from RabbitMQ's
``rabbit_password_hashing_sha256`` hash (one SHA-256 round over salt + password), so the
credentials are derived whenever a password is set and stored next to that hash, one per
mechanism, as Kafka stores them in its metadata log (``ScramCredential``: salt,
iterations, stored key, server key).  A user whose password was only ever given as a
hash (an older definitions file) has none: PLAIN still works for it, SCRAM does not.

This module holds the credential only; the exchange of messages lives with the protocol
that offers SCRAM (``protocols/kafka/sasl.py``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from dataclasses import dataclass
from typing import Any

# Kafka's mechanism names (KIP-84) and their hash functions.
MECHANISMS: dict[str, str] = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}
# Kafka refuses fewer than 4096 iterations (ScramMechanism.minIterations); its own tools
# default to 4096 as well.
DEFAULT_ITERATIONS = 4096
MIN_ITERATIONS = 4096
# A bound for credentials read from a definitions document: a crafted iteration count
# must not make one login cost minutes of CPU.  Kafka's maximum is 16384.
MAX_ITERATIONS = 16384
SALT_BYTES = 16


@dataclass(frozen=True)
class ScramCredential:
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "salt": base64.b64encode(self.salt).decode("ascii"),
            "iterations": self.iterations,
            "stored_key": base64.b64encode(self.stored_key).decode("ascii"),
            "server_key": base64.b64encode(self.server_key).decode("ascii"),
        }


def salted_password(mechanism: str, password: str, salt: bytes, iterations: int) -> bytes:
    # RFC 5802 §2.2 Hi() is PBKDF2 with HMAC-H and one block (dklen = H's size).
    # The password should be SASLprep'd (RFC 4013); like Kafka's ScramFormatter, it is
    # used as UTF-8 as given.
    return hashlib.pbkdf2_hmac(MECHANISMS[mechanism], password.encode("utf-8"), salt, iterations)


def derive(
    mechanism: str, password: str, salt: bytes | None = None, iterations: int = DEFAULT_ITERATIONS
) -> ScramCredential:
    """The credential for ``password`` (a fresh random salt unless one is given)."""
    digest = MECHANISMS[mechanism]
    salt = salt if salt is not None else os.urandom(SALT_BYTES)
    salted = salted_password(mechanism, password, salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", digest)
    stored_key = hashlib.new(digest, client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", digest)
    return ScramCredential(salt, iterations, stored_key, server_key)


def derive_all(password: str, iterations: int = DEFAULT_ITERATIONS) -> dict[str, ScramCredential]:
    """One credential per mechanism, each with its own salt."""
    return {mechanism: derive(mechanism, password, iterations=iterations) for mechanism in MECHANISMS}


def credentials_to_json(credentials: dict[str, ScramCredential]) -> dict[str, Any]:
    return {mechanism: credential.to_json() for mechanism, credential in sorted(credentials.items())}


class CredentialFormatError(ValueError):
    """A stored or imported SCRAM credential that does not have the right shape."""


def credentials_from_json(value: Any) -> dict[str, ScramCredential]:
    """Parse ``{"SCRAM-SHA-256": {"salt", "iterations", "stored_key", "server_key"}}``
    (what ``credentials_to_json`` writes); raises ``CredentialFormatError``."""
    if not isinstance(value, dict):
        raise CredentialFormatError("scram_credentials must be an object")
    result: dict[str, ScramCredential] = {}
    for mechanism, item in value.items():
        if mechanism not in MECHANISMS:
            raise CredentialFormatError(f"unknown SCRAM mechanism {mechanism!r}")
        if not isinstance(item, dict):
            raise CredentialFormatError(f"{mechanism}: must be an object")
        iterations = item.get("iterations")
        if type(iterations) is not int or not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
            raise CredentialFormatError(
                f"{mechanism}: iterations must be an integer from {MIN_ITERATIONS} to {MAX_ITERATIONS}"
            )
        size = hashlib.new(MECHANISMS[mechanism]).digest_size
        fields: dict[str, bytes] = {}
        for key in ("salt", "stored_key", "server_key"):
            text = item.get(key)
            if not isinstance(text, str):
                raise CredentialFormatError(f"{mechanism}: {key} must be a base64 string")
            try:
                fields[key] = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                raise CredentialFormatError(f"{mechanism}: {key} is not base64") from None
        if len(fields["stored_key"]) != size or len(fields["server_key"]) != size:
            raise CredentialFormatError(f"{mechanism}: keys must be {size} bytes")
        if not fields["salt"]:
            raise CredentialFormatError(f"{mechanism}: empty salt")
        result[mechanism] = ScramCredential(
            fields["salt"], iterations, fields["stored_key"], fields["server_key"]
        )
    return result
