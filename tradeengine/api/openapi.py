"""OpenAPI 3.1 document and a docs page, built from the same endpoint table that builds the routes.

Because routes and documentation come from one list, a route cannot exist undocumented; the
schemas are the pydantic models' own JSON Schema (2020-12, which OpenAPI 3.1 uses).
"""

from __future__ import annotations

import html
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from tradeengine.api.auth import PrincipalKind
from tradeengine.api.schemas import ErrorResponse

_PATH_PARAM = re.compile(r"{(\w+)}")

ContentType = Literal["application/json", "text/plain", "text/html"]


@dataclass(frozen=True)
class Endpoint:
    """One operation: how to route it, what it accepts and returns, and who may call it."""

    method: str
    path: str  # OpenAPI template, e.g. /v1/traders/{traderId}; path params are UUIDs
    handler: Callable[..., Awaitable[Any]]
    summary: str
    tag: str
    operation_id: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    also: tuple[int, ...] = ()  # other success statuses (e.g. 200 for an idempotent provision)
    auth: frozenset[PrincipalKind] | None = None  # None: public
    rate_limit: str | None = None  # name of the limiter
    errors: tuple[int, ...] = ()
    aliases: tuple[str, ...] = ()  # the seed's /functions/v1/... paths
    content_type: ContentType = "application/json"
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def path_params(self) -> list[str]:
        return _PATH_PARAM.findall(self.path)


_ERROR_TEXT = {
    400: "Bad request: the message names the field.",
    401: "Missing, malformed, expired or unknown bearer token.",
    403: "The token may not do this (wrong kind, other user, tier limits).",
    404: "No such resource for this caller (other users' rows are not found either).",
    409: "Conflicts with the resource's state.",
    413: "Request body too large.",
    422: "Body or query failed validation: the message names each field.",
    429: "Per-user rate limit; see Retry-After.",
    503: "A dependency (model, machine provider) is unavailable or not configured.",
}


def build_openapi(endpoints: Iterable[Endpoint], *, title: str, version: str) -> dict[str, Any]:
    endpoints = list(endpoints)
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [(ErrorResponse, "serialization")]
    for ep in endpoints:
        if ep.body is not None:
            models.append((ep.body, "validation"))
        if ep.query is not None:
            models.append((ep.query, "validation"))
        if ep.response is not None:
            models.append((ep.response, "serialization"))
    unique = list(dict.fromkeys(models))
    refs, definitions = models_json_schema(unique, by_alias=True, ref_template="#/components/schemas/{model}")
    schemas: dict[str, Any] = dict(definitions.get("$defs", {}))

    def ref(model: type[BaseModel], mode: JsonSchemaMode) -> dict[str, Any]:
        return dict(refs[(model, mode)])

    paths: dict[str, dict[str, Any]] = {}
    for ep in endpoints:
        for index, path in enumerate((ep.path, *ep.aliases)):
            operation = _operation(ep, ref, schemas, alias=index > 0)
            paths.setdefault(path, {})[ep.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": (
                "Control plane of tradeengine. Authenticate with `Authorization: Bearer <token>`: a "
                "Supabase-style user JWT (HS256 or JWKS ES256/RS256, aud `authenticated`, sub = user id), "
                "a service-role JWT (admin), or a tenant token (`tet_...`, analyze only). Errors are "
                '`{"success": false, "error": "..."}`. Money is sent as decimal strings.'
            ),
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT or tet_ tenant token"}
            },
        },
    }


def _operation(
    ep: Endpoint,
    ref: Callable[[type[BaseModel], JsonSchemaMode], dict[str, Any]],
    schemas: dict[str, Any],
    *,
    alias: bool,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": ep.operation_id + ("_seed" if alias else ""),
        "summary": ep.summary + (" (seed path alias)" if alias else ""),
        "tags": [ep.tag],
    }
    if ep.description:
        op["description"] = ep.description
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
        for name in ep.path_params()
    ]
    if ep.query is not None:
        query_schema = _resolve(ref(ep.query, "validation"), schemas)
        required = set(query_schema.get("required", []))
        for name, prop in query_schema.get("properties", {}).items():
            param: dict[str, Any] = {
                "name": name,
                "in": "query",
                "required": name in required,
                "schema": prop,
            }
            if "description" in prop:
                param["description"] = prop["description"]
            parameters.append(param)
    if parameters:
        op["parameters"] = parameters
    if ep.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": ref(ep.body, "validation")}},
        }
    responses: dict[str, Any] = {}
    for status in (ep.status, *ep.also):
        if ep.response is not None:
            content = {"application/json": {"schema": ref(ep.response, "serialization")}}
        elif ep.content_type == "application/json":
            content = {"application/json": {"schema": {"type": "object"}}}
        else:
            content = {ep.content_type: {"schema": {"type": "string"}}}
        responses[str(status)] = {"description": "Success", "content": content}
    error_schema = {"application/json": {"schema": ref(ErrorResponse, "serialization")}}
    statuses = set(ep.errors)
    if ep.auth is not None:
        statuses |= {401, 403}
    if ep.body is not None or ep.query is not None:
        statuses |= {400, 422}
    if ep.body is not None:
        statuses.add(413)
    if ep.path_params():
        statuses.add(404)
    if ep.rate_limit:
        statuses.add(429)
    for status in sorted(statuses):
        responses[str(status)] = {"description": _ERROR_TEXT.get(status, "Error"), "content": error_schema}
    # Anything else (405, unknown routes, our own bugs) still comes as the error envelope.
    responses["default"] = {"description": "Error", "content": error_schema}
    op["responses"] = responses
    op["security"] = [{"bearerAuth": []}] if ep.auth is not None else []
    return op


def _resolve(schema: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    target = schema.get("$ref")
    if isinstance(target, str) and target.startswith("#/components/schemas/"):
        return dict(schemas[target.rsplit("/", 1)[1]])
    return schema


def docs_html(document: dict[str, Any]) -> str:
    """A self-contained page (no CDN): every operation, who may call it, parameters and bodies."""
    rows: list[str] = []
    for path, operations in document["paths"].items():
        for method, op in operations.items():
            secured = "bearer" if op.get("security") else "public"
            params = ", ".join(f"{p['name']} ({p['in']})" for p in op.get("parameters", []))
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
            body_name = str(body.get("$ref", "")).rsplit("/", 1)[-1]
            statuses = ", ".join(op["responses"])
            rows.append(
                "<tr>"
                f"<td><code>{html.escape(method.upper())}</code></td><td><code>{html.escape(path)}</code></td>"
                f"<td>{html.escape(op['summary'])}</td><td>{secured}</td><td>{html.escape(params)}</td>"
                f"<td>{html.escape(body_name)}</td><td>{html.escape(statuses)}</td>"
                "</tr>"
            )
    info = document["info"]
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(info['title'])} API</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}</style></head><body>"
        f"<h1>{html.escape(info['title'])} {html.escape(info['version'])}</h1>"
        f"<p>{html.escape(info['description'])}</p>"
        "<p>Machine-readable: <a href='/openapi.json'>/openapi.json</a> (OpenAPI 3.1).</p>"
        "<table><tr><th>Method</th><th>Path</th><th>Summary</th><th>Auth</th><th>Parameters</th>"
        "<th>Body</th><th>Statuses</th></tr>" + "".join(rows) + "</table></body></html>"
    )


def render_markdown(document: dict[str, Any]) -> str:
    """docs/api.md: every operation with its auth, parameters, body and responses (from the document)."""
    schemas: dict[str, Any] = document["components"]["schemas"]
    out = [
        f"# {document['info']['title']} (version {document['info']['version']})",
        "",
        "Generated from the OpenAPI 3.1 document (`GET /openapi.json`) by "
        "`python -m tradeengine.api.openapi > docs/api.md`; do not edit by hand.",
        "",
        document["info"]["description"],
        "",
    ]
    by_tag: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for path, operations in document["paths"].items():
        for method, op in operations.items():
            by_tag.setdefault(op["tags"][0], []).append((method.upper(), path, op))
    for tag, ops in by_tag.items():
        out += [f"## {tag}", ""]
        for method, path, op in ops:
            out += [f"### `{method} {path}`", "", op["summary"] + ".", ""]
            if op.get("description"):
                out += [op["description"], ""]
            out.append("Auth: " + ("bearer token" if op.get("security") else "none") + ".")
            out.append("")
            if op.get("parameters"):
                out += ["| parameter | in | type | required | description |", "|---|---|---|---|---|"]
                for p in op["parameters"]:
                    out.append(
                        f"| `{p['name']}` | {p['in']} | {_type(p['schema'])} "
                        f"| {'yes' if p['required'] else 'no'} "
                        f"| {p.get('description', '')} |"
                    )
                out.append("")
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if body is not None:
                out += ["Request body:", "", *_fields(body, schemas), ""]
            for status, response in op["responses"].items():
                schema = response.get("content", {}).get("application/json", {}).get("schema")
                name = _ref_name(schema) if schema else None
                label = f"`{name}`" if name else next(iter(response.get("content", {}) or {"-": None}))
                out.append(f"- **{status}**: {response['description']} ({label})")
            out.append("")
    out += ["## Schemas", ""]
    for name, schema in sorted(schemas.items()):
        out += [f"### `{name}`", "", *_fields(schema, schemas, top=True), ""]
    return "\n".join(out).rstrip() + "\n"


def _ref_name(schema: dict[str, Any]) -> str | None:
    ref = schema.get("$ref")
    return str(ref).rsplit("/", 1)[1] if isinstance(ref, str) else None


def _type(schema: dict[str, Any]) -> str:
    name = _ref_name(schema)
    if name:
        return f"`{name}`"
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    if "const" in schema:
        return f"`{schema['const']}`"
    if "anyOf" in schema:
        return " or ".join(_type(s) for s in schema["anyOf"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {_type(schema.get('items', {}))}"
    fmt = schema.get("format")
    return f"{kind} ({fmt})" if fmt else str(kind)


def _fields(schema: dict[str, Any], schemas: dict[str, Any], *, top: bool = False) -> list[str]:
    name = _ref_name(schema)
    if name and not top:
        return [f"`{name}` (see Schemas)."]
    target = schemas[name] if name else schema
    props: dict[str, Any] = target.get("properties", {})
    if not props:
        return [f"{_type(target)}."]
    required = set(target.get("required", []))
    rows = ["| field | type | required | description |", "|---|---|---|---|"]
    for field_name, prop in props.items():
        description = str(prop.get("description", "")).replace("\n", " ")
        rows.append(f"| `{field_name}` | {_type(prop)} | {'yes' if field_name in required else 'no'} | {description} |")
    return rows


if __name__ == "__main__":  # python -m tradeengine.api.openapi > docs/api.md
    import sys

    from tradeengine import __version__
    from tradeengine.api.control import endpoints

    sys.stdout.write(render_markdown(build_openapi(endpoints(), title="tradeengine control API", version=__version__)))
