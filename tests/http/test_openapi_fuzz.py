"""Schemathesis over /api/openapi.json: generated requests never get a 500.

The document is built from the same route table the server registers, so this also
checks the document against the server: statuses, content types and response bodies
must match what it promises.  Long polls and WebSockets are left out (they wait by
design).  Bounded: a few examples per operation, about 10-20 s in all.
"""

from __future__ import annotations

import copy

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from baedal.protocols.http import openapi

EXAMPLES = 12


def _fuzzable_document() -> dict:
    document = copy.deepcopy(openapi.document())
    for path, operations in list(document["paths"].items()):
        for method, operation in list(operations.items()):
            if operation.get("x-baedal-long-running"):
                del operations[method]
        if not operations:
            del document["paths"][path]
    return document


schema = schemathesis.openapi.from_dict(_fuzzable_document())


@pytest.fixture(scope="module")
def fuzz_session(shared_http_broker):
    session = requests.Session()
    session.auth = ("guest", "guest")
    return shared_http_broker.http_url, session


def test_document_is_openapi_3_1_and_lists_every_served_route(shared_http_broker):
    document = requests.get(shared_http_broker.http_url + "/api/openapi.json", timeout=5).json()
    assert document["openapi"] == "3.1.0"
    from baedal.protocols.http.catalog import ROUTES

    assert sum(len(ops) for ops in document["paths"].values()) == len(ROUTES)
    for route in ROUTES:
        assert route.method.lower() in document["paths"][route.path]


@schema.parametrize()
@settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)
def test_generated_requests_never_get_a_server_error(case, fuzz_session):
    base_url, session = fuzz_session
    response = case.call(base_url=base_url, session=session, timeout=10)
    case.validate_response(
        response,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )
