"""The OpenAPI document covers every route, and docs/api.md is generated from the current one."""

from __future__ import annotations

from pathlib import Path

from tradeengine import __version__
from tradeengine.api.control import endpoints, route_table
from tradeengine.api.openapi import build_openapi, render_markdown

REPO = Path(__file__).resolve().parents[2]


def _document() -> dict[str, object]:
    return build_openapi(endpoints(), title="tradeengine control API", version=__version__)


def test_document_lists_every_route_with_error_envelope_and_security() -> None:
    doc = _document()
    assert doc["openapi"] == "3.1.0"
    paths = doc["paths"]
    assert isinstance(paths, dict)
    documented = {f"{m.upper()} {p}" for p, ops in paths.items() for m in ops}
    assert documented == set(route_table())
    for alias in ("generate-strategy", "analyze-signal", "provision-machine", "destroy-machine"):
        assert f"/functions/v1/{alias}" in paths
    update = paths["/v1/traders/{traderId}"]["patch"]
    assert update["security"] == [{"bearerAuth": []}]
    assert update["parameters"][0] == {
        "name": "traderId",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "format": "uuid"},
    }
    assert update["responses"]["404"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorResponse"
    }
    assert paths["/health"]["get"]["security"] == []
    listing = paths["/v1/signals"]["get"]
    names = {p["name"] for p in listing["parameters"]}
    assert names == {"userId", "symbol", "traderId", "since", "until", "cursor", "limit", "status"}
    schemas = doc["components"]["schemas"]  # type: ignore[index]
    # camelCase on the wire, money as strings in responses
    assert "signalCode" in schemas["TraderOut"]["properties"]
    assert schemas["PositionOut"]["properties"]["entryPrice"]["type"] == "string"


def test_docs_api_md_is_current() -> None:
    expected = render_markdown(_document())
    actual = (REPO / "docs" / "api.md").read_text()
    assert actual == expected, "docs/api.md is stale: run python -m tradeengine.api.openapi > docs/api.md"
