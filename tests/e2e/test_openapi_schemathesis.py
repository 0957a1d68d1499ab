"""The OpenAPI schema, checked against the running API by schemathesis.

A real daphne serves /api/schema/; schemathesis generates requests for every
operation (bounded: a few examples each, to keep the suite fast) and checks
that none answers 5xx and every response matches the schema (status code,
content type, body).
"""

from __future__ import annotations

import json
import re
import urllib.request
from typing import Any

import pytest
import schemathesis
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.checks import not_a_server_error

from tests.fixtures.servers import Server

# Examples per operation; the explicit and coverage phases add the boundary
# cases (empty, too long, wrong type) on top.
MAX_EXAMPLES = 12



def generated_schema() -> dict[str, Any]:
    # The same generator /api/schema/ runs (the test below checks the server
    # serves this very document). Built at collection time because
    # schemathesis' lazy fixture loader does not work with pytest 9 yet.
    return SchemaGenerator().get_schema(request=None, public=True)


schema = schemathesis.openapi.from_dict(generated_schema())


@pytest.fixture(scope="module")
def api_server(module_daphne_server: Server) -> Server:
    server = module_daphne_server
    # A room for the generated requests to find, with an event in its log.
    status, body = server.request("POST", "/api/rooms/", {"slug": "board-1"})
    assert status == 201, body
    server.request("POST", "/api/rooms/board-1/messages", {"type": "draw", "payload": {"x": 1}})
    return server


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_schema(case: Any, api_server: Server) -> None:
    server = api_server
    case.call_and_validate(
        base_url=server.http,
        headers={"Authorization": f"Token {server.token}"},
        checks=[not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance],
    )


def test_schema_and_docs_are_served(module_daphne_server: Server) -> None:
    with urllib.request.urlopen(module_daphne_server.http + "/api/schema/?format=json") as response:
        served = json.loads(response.read())
    assert served == json.loads(json.dumps(generated_schema()))
    assert {"/api/rooms/", "/api/rooms/{slug}/history", "/api/rooms/{slug}/messages", "/api/rooms/{slug}/state"} <= set(served["paths"])
    with urllib.request.urlopen(module_daphne_server.http + "/api/docs/") as response:
        assert b"swagger" in response.read().lower()


def test_the_run_reached_real_rooms(api_server: Server) -> None:
    """Not only 404s: the generated requests read and wrote the example room (runs after the run above)."""
    log = api_server.log.read_text()
    assert '"GET /api/rooms/board-1/history' in log and '"POST /api/rooms/board-1/messages' in log
    statuses = [int(code) for code in re.findall(r'" (\d{3}) \d+$', log, re.MULTILINE)]
    assert len(statuses) > 100 and 201 in statuses and 200 in statuses
    assert not [code for code in statuses if code >= 500]
