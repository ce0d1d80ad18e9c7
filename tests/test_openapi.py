"""GET /api/v1/openapi.json describes exactly the /api/v1 routes the app serves."""

from __future__ import annotations

import re

import httpx
from fake_azure import open_fake_azure
from harness import open_gateway

from omixa.web.http.app import create_app


def served_operations(app) -> set[tuple[str, str]]:
    """(path in OpenAPI form, method) of every /api/v1 route of the Quart app."""
    operations = set()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1"):
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            operations.add((path, method.lower()))
    return operations


async def test_every_api_route_is_in_the_spec_and_nothing_else(tmp_path):
    async with open_fake_azure() as fake, open_gateway(f"sqlite:///{tmp_path / 'o.db'}", fake) as gw:
        async with httpx.AsyncClient(base_url=gw.base_url) as client:
            fetched = await client.get("/openapi.json")  # no key needed
        assert fetched.status_code == 200
        spec = fetched.json()
        served = served_operations(create_app(gw.engine))  # the same routes the server runs
    assert spec["openapi"].startswith("3.1")
    described = {(path, method) for path, item in spec["paths"].items() for method in item}
    assert served == described
    schemas = spec["components"]["schemas"]
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            assert operation["responses"], (path, method)
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path":
                    assert "{" + parameter["name"] + "}" in path
    # Every reference resolves.
    refs = set(re.findall(r'"#/components/schemas/([^"]+)"', fetched.text))
    assert refs <= schemas.keys()
    # Every error code the server can send is in the envelope's enum.
    error = schemas["Error"]["properties"]["error"]["properties"]
    own_codes, upstream_codes = error["code"]["anyOf"]
    assert "top_up_disabled" in own_codes["enum"]
    assert re.fullmatch(upstream_codes["pattern"], "context_length_exceeded")
    assert not re.fullmatch(upstream_codes["pattern"], "400")
    # And every type: OpenAI's.
    assert error["type"]["enum"] == [
        "insufficient_quota",
        "invalid_request_error",
        "requests",
        "server_error",
        "tokens",
    ]
