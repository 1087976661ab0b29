"""The SCRAM server state machine (protocols/kafka/sasl.py) and the stored credentials
(core/scram.py): RFC 7677's test vector, the failures that must end an exchange, and
Hypothesis over the parsers of client messages (only ``ScramError`` may come out)."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from baedal.core.scram import (
    CredentialFormatError,
    ScramCredential,
    credentials_from_json,
    credentials_to_json,
    derive,
    derive_all,
)
from baedal.protocols.kafka.sasl import (
    MAX_MESSAGE_BYTES,
    ScramError,
    ScramServer,
    ScramState,
    parse_client_final,
    parse_client_first,
)

# RFC 7677 §3: SCRAM-SHA-256, user "user", password "pencil".
RFC_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
RFC_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC_SERVER_FIRST = (
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
RFC_CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
RFC_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

RFC_CREDENTIAL = derive("SCRAM-SHA-256", "pencil", salt=RFC_SALT, iterations=4096)


def rfc_server() -> ScramServer:
    return ScramServer(
        "SCRAM-SHA-256",
        lambda name: RFC_CREDENTIAL if name == "user" else None,
        server_nonce=RFC_SERVER_NONCE,
    )


def client_final(mechanism: str, password: str, client_first_bare: str, server_first: bytes) -> bytes:
    """What a SCRAM client answers to ``server_first`` (RFC 5802 §3), written out here
    independently of the server's code."""
    digest = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}[mechanism]
    fields = dict(part.split("=", 1) for part in server_first.decode().split(","))
    salted = hashlib.pbkdf2_hmac(digest, password.encode(), base64.b64decode(fields["s"]), int(fields["i"]))
    client_key = hmac.digest(salted, b"Client Key", digest)
    without_proof = f"c=biws,r={fields['r']}"
    auth_message = f"{client_first_bare},{server_first.decode()},{without_proof}".encode()
    signature = hmac.digest(hashlib.new(digest, client_key).digest(), auth_message, digest)
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()


def test_rfc7677_test_vector_authenticates_and_the_server_signature_matches() -> None:
    server = rfc_server()
    assert server.step(RFC_CLIENT_FIRST) == RFC_SERVER_FIRST
    assert server.state is ScramState.AWAITING_CLIENT_FINAL
    assert server.step(RFC_CLIENT_FINAL) == RFC_SERVER_FINAL
    assert server.state is ScramState.DONE
    assert server.username == "user"


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_derived_credentials_authenticate_the_password_and_refuse_another(mechanism: str) -> None:
    credentials = derive_all("s3cret")
    assert set(credentials) == {"SCRAM-SHA-256", "SCRAM-SHA-512"}
    assert credentials["SCRAM-SHA-256"].salt != credentials["SCRAM-SHA-512"].salt
    for password, ok in (("s3cret", True), ("wrong", False)):
        server = ScramServer(mechanism, {"alice": credentials[mechanism]}.get)
        first = server.step(b"n,,n=alice,r=clientnonce123")
        final = client_final(mechanism, password, "n=alice,r=clientnonce123", first)
        if ok:
            answer = server.step(final)
            assert answer.startswith(b"v=") and server.username == "alice"
        else:
            with pytest.raises(ScramError, match="invalid credentials"):
                server.step(final)
            assert server.state is ScramState.FAILED and server.username is None


def test_an_unknown_user_gets_a_stable_made_up_salt_and_fails_only_at_the_proof() -> None:
    answers = [ScramServer("SCRAM-SHA-256", lambda name: None).step(b"n,,n=nobody,r=abc") for _ in range(2)]
    salts = [dict(p.split("=", 1) for p in a.decode().split(","))["s"] for a in answers]
    assert salts[0] == salts[1]  # asking twice does not reveal that the user is unknown
    server = ScramServer("SCRAM-SHA-256", lambda name: None)
    first = server.step(b"n,,n=nobody,r=abc")
    with pytest.raises(ScramError):
        server.step(client_final("SCRAM-SHA-256", "anything", "n=nobody,r=abc", first))


def test_a_client_final_replayed_into_another_exchange_is_refused() -> None:
    credential = derive("SCRAM-SHA-256", "pw")
    first_exchange = ScramServer("SCRAM-SHA-256", lambda name: credential)
    server_first = first_exchange.step(b"n,,n=u,r=nonce1")
    captured = client_final("SCRAM-SHA-256", "pw", "n=u,r=nonce1", server_first)
    first_exchange.step(captured)
    second = ScramServer("SCRAM-SHA-256", lambda name: credential)
    second.step(b"n,,n=u,r=nonce1")  # same client nonce, fresh server nonce
    with pytest.raises(ScramError, match="nonce"):
        second.step(captured)
    # And the same exchange does not take another message once done.
    with pytest.raises(ScramError):
        first_exchange.step(captured)


@pytest.mark.parametrize(
    "first, final",
    [
        (b"p=tls-unique,,n=user,r=abc", None),  # channel binding asked for
        (b"n,,n=user", None),  # no nonce
        (b"n,,n=,r=abc", None),  # empty user
        (b"n,,n=us=er,r=abc", None),  # bad escape
        (b"n,a=other,n=user,r=abc", None),  # authzid is not the user
        (b"n,,m=ext,n=user,r=abc", None),  # mandatory extension
        (b"n,,n=user,r=abc,tokenauth=true", None),  # delegation token
        (b"n,,n=user,r=a\x01c", None),  # unprintable nonce
        (b"n,,n=\xff,r=abc", None),  # not UTF-8
        (b"n,,n=" + b"u" * MAX_MESSAGE_BYTES + b",r=abc", None),  # too long
        (RFC_CLIENT_FIRST, b"c=biws,r=rOprNGfwEbeRWgbNEkqOWRONG,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="),
        (RFC_CLIENT_FIRST, RFC_CLIENT_FINAL.replace(b"c=biws", b"c=eSws")),  # other gs2 header
        (RFC_CLIENT_FIRST, RFC_CLIENT_FINAL[:-10]),  # proof cut short (not base64)
        (RFC_CLIENT_FIRST, RFC_CLIENT_FINAL.replace(b"p=dHzb", b"p=dHza")),  # wrong proof
        (RFC_CLIENT_FIRST, b"garbage"),
    ],
)
def test_bad_messages_fail_the_exchange_with_scram_error(first: bytes, final: bytes | None) -> None:
    server = rfc_server()
    with pytest.raises(ScramError):
        server.step(first)
        assert final is not None
        server.step(final)
    assert server.state is ScramState.FAILED
    with pytest.raises(ScramError):  # failed for good
        server.step(RFC_CLIENT_FIRST)


def test_user_names_with_escaped_comma_and_equals_are_decoded() -> None:
    assert parse_client_first(b"n,,n=a=2Cb=3Dc,r=xyz").username == "a,b=c"
    assert parse_client_first(b"n,a=a=2Cb,n=a=2Cb,r=xyz").gs2_header == "n,a=a=2Cb,"


def test_credentials_round_trip_through_json_and_bad_ones_are_refused() -> None:
    credentials = derive_all("pw")
    assert credentials_from_json(credentials_to_json(credentials)) == credentials
    good = credentials_to_json({"SCRAM-SHA-256": credentials["SCRAM-SHA-256"]})["SCRAM-SHA-256"]
    for bad in (
        [],
        {"SCRAM-SHA-1": good},
        {"SCRAM-SHA-256": {**good, "iterations": 10**9}},
        {"SCRAM-SHA-256": {**good, "iterations": 100}},
        {"SCRAM-SHA-256": {**good, "stored_key": "AAAA"}},
        {"SCRAM-SHA-256": {**good, "salt": "not base64!"}},
        {"SCRAM-SHA-256": {**good, "server_key": None}},
    ):
        with pytest.raises(CredentialFormatError):
            credentials_from_json(bad)
    assert isinstance(credentials["SCRAM-SHA-512"], ScramCredential)
    assert len(credentials["SCRAM-SHA-512"].stored_key) == 64


# -- fuzz: the parsers and the state machine only ever raise ScramError ----------------

SCRAMMISH = st.lists(
    st.sampled_from([b"n", b"y", b"p=x", b"a=", b"n=", b"r=", b"c=", b"p=", b"m=", b"s=", b"i=",
                     b",", b"=2C", b"=3D", b"=", b"biws", b"user", b"\x00", b"\xff", b"\x7f",
                     b"tokenauth=true", b"abc", b"=="]),
    max_size=20,
).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=200), SCRAMMISH))
def test_fuzz_client_message_parsers_raise_only_scram_error(data: bytes) -> None:
    for parse in (parse_client_first, parse_client_final):
        try:
            parse(data)
        except ScramError:
            pass


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200), SCRAMMISH), st.one_of(st.binary(max_size=200), SCRAMMISH))
def test_fuzz_state_machine_raises_only_scram_error_and_never_authenticates(first: bytes, final: bytes) -> None:
    server = rfc_server()
    try:
        server.step(first)
        server.step(final)
    except ScramError:
        assert server.state is ScramState.FAILED
        return
    # Passing needs the real proof for the nonce the server made up.
    assert (first, final) == (RFC_CLIENT_FIRST, RFC_CLIENT_FINAL)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=120))
def test_fuzz_a_valid_first_then_any_final_raises_only_scram_error(final: bytes) -> None:
    server = rfc_server()
    server.step(RFC_CLIENT_FIRST)
    with pytest.raises(ScramError):
        server.step(final)
