"""The docs print the error table from the code: they must not drift apart."""

from __future__ import annotations

from pathlib import Path

from gateway.errors import error_table

ROOT = Path(__file__).resolve().parents[2]


def test_protocol_doc_has_the_error_table_from_the_code() -> None:
    doc = (ROOT / "docs" / "protocol.md").read_text()
    for name, code, grpc_status, http, ws in error_table():
        row = f"| `{name}` | `{code}` | `{grpc_status}` | {http} | {ws} |"
        assert row in doc, f"docs/protocol.md is missing or has a stale row: {row}"


def test_readme_documents_every_gateway_variable() -> None:
    import dataclasses

    from gateway.config import GatewayConfig

    readme = (ROOT / "README.md").read_text()
    for f in dataclasses.fields(GatewayConfig):
        if f.name != "routes":
            assert f"`{f.name.upper()}`" in readme, f"README.md does not document {f.name.upper()}"
