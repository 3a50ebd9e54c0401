"""Schemathesis against the live ``guarded`` gateway, driven by its own OpenAPI document.

Every operation but the endless ``GET /events/stream`` gets positive and negative
requests (bodies, headers, methods) with a fresh user's token. The gateway must never
answer 5xx, and every answer must have a documented status, content type and schema;
schema-valid requests must be accepted, undeclared methods answered 405 with ``Allow``,
and authenticated operations refused without a token.

The operations are generated at collection time from ``docs/openapi.yaml`` (the stack
does not run yet), and the first test proves that the gateway serves exactly that
document at ``/openapi.json``. ``schemathesis.pytest.from_fixture`` would load it from the
gateway instead, but schemathesis 4.32 cannot run lazily loaded schemas on pytest 9.2.
"""

from __future__ import annotations

import os
import secrets

import httpx
import pytest
import schemathesis
import yaml
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from gateway.translate import MAX_ID_CHARS
from tests.support.stack import ROOT, Stack

DOCUMENT = ROOT / "docs" / "openapi.yaml"
MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "100"))  # per operation
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    positive_data_acceptance,
    unsupported_method,
    ignored_auth,
]
CONFIG = schemathesis.Config.from_dict(
    # "all": positive and negative data. Hypothesis' deadline is off in schemathesis.
    {"generation": {"mode": "all", "max-examples": MAX_EXAMPLES}}
)
schema = schemathesis.openapi.from_path(DOCUMENT, config=CONFIG).exclude(path="/events/stream")


@pytest.fixture(scope="module")
def bearer(guarded: Stack) -> dict[str, str]:
    """The Authorization header of a user no other test knows."""
    return {"Authorization": f"Bearer {guarded.token(f'schemathesis-{secrets.token_hex(4)}')}"}


def test_the_gateway_serves_the_committed_document(guarded: Stack, bearer: dict[str, str]) -> None:
    """The committed document is the gateway's own surfaces; the served one adds the
    back-ends' transcoded routes at runtime (docs/mesh.md) and keeps the rest as it is."""
    with httpx.Client(verify=guarded.ssl_context(), timeout=10) as client:
        served = client.get(f"{guarded.base_url}/openapi.json", headers=bearer)
    assert served.status_code == 200
    committed, document = yaml.safe_load(DOCUMENT.read_text()), served.json()
    for path, operations in committed["paths"].items():
        assert document["paths"][path] == operations, path
    for name, schema in committed["components"]["schemas"].items():
        assert document["components"]["schemas"][name] == schema, name
    rest = {k: v for k, v in document.items() if k not in ("paths", "components")}
    assert rest == {k: v for k, v in committed.items() if k not in ("paths", "components")}


@pytest.mark.parametrize(("length", "status"), [(MAX_ID_CHARS, 200), (MAX_ID_CHARS + 1, 400)])
def test_the_idempotency_key_has_the_documented_limit(
    guarded: Stack, bearer: dict[str, str], length: int, status: int
) -> None:
    key = secrets.token_hex(length)[:length]
    with httpx.Client(verify=guarded.ssl_context(), timeout=10) as client:
        r = client.post(
            f"{guarded.base_url}/messages",
            headers={**bearer, "Idempotency-Key": key},
            json={"content": {"type": "text", "text": "keyed"}},
        )
    assert r.status_code == status, r.text
    if status == 200:
        assert r.json()["message"]["id"] == key


@schema.parametrize()
def test_api(case: schemathesis.Case, guarded: Stack, bearer: dict[str, str]) -> None:
    case.call_and_validate(
        base_url=guarded.base_url,
        headers=bearer,
        checks=CHECKS,
        verify=str(guarded.ca_file),
        timeout=15,
    )
