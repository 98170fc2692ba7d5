"""The OpenAPI document of a served topology's HTTP API, and a page that shows it.

The schemas of the events are msgspec's JSON Schema of each kind's input form (what a client
sends: the event type's fields but the stamped ones), so the document always says what the
API really checks.
"""

from __future__ import annotations

import copy
import html
from collections.abc import Mapping
from typing import Any

import msgspec

from .intake import Route

_ERROR = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "path": {"type": "string"}},
    "required": ["error"],
}


def _answer(description: str, schema: Any = None) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description}
    if schema is not None:
        answer["content"] = {"application/json": {"schema": schema}}
    return answer


def openapi_document(
    title: str, routes: Mapping[str, Route], *, token: bool, store: bool
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of an API taking ``routes``' kinds.

    Args:
        title: The API's title (the topology's name).
        routes: The kinds taken, by kind.
        token: Whether requests must carry a bearer token.
        store: Whether events can be read back (``GET /events``, ``GET /stats``).
    """
    kinds = sorted(routes)
    inputs = [routes[kind].input for kind in kinds]
    (refs, components) = msgspec.json.schema_components(
        inputs, ref_template="#/components/schemas/{name}"
    )
    by_kind = dict(zip(kinds, refs, strict=True))
    # On a kind's own route (and on POST /events when it takes one kind) "type" may be
    # left out: the same schema with "type" not required.
    on_route = {}
    for kind, ref in by_kind.items():
        name = ref["$ref"].rsplit("/", 1)[1]
        relaxed = copy.deepcopy(components[name])
        relaxed["required"] = [f for f in relaxed.get("required", []) if f != "type"]
        components[f"{name}OnItsRoute"] = relaxed
        on_route[kind] = {"$ref": f"#/components/schemas/{name}OnItsRoute"}
    any_event = (
        on_route[kinds[0]]
        if len(kinds) == 1
        else {"oneOf": refs, "discriminator": {"propertyName": "type"}}
    )
    refusals = {
        "400": _answer("Malformed JSON, with the position.", _ERROR),
        "404": _answer("A kind no route takes.", _ERROR),
        "413": _answer("The body is larger than http.max_body.", _ERROR),
        "415": _answer("Not JSON.", _ERROR),
        "422": _answer("An event failed its checks: nothing was accepted.", _ERROR),
        "503": _answer("No room in a ring within http.max_wait, or stopping: retry.", _ERROR),
    }
    if token:
        refusals["401"] = _answer("Missing or wrong bearer token.", _ERROR)
    accepted = {
        "202": _answer(
            "Every event of the request was accepted.",
            {"type": "object", "properties": {"accepted": {"type": "integer"}}},
        )
    }
    paths: dict[str, Any] = {
        "/events": {
            "post": {
                "summary": "Send one event or an array of them (all accepted, or none).",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"oneOf": [any_event, {"type": "array", "items": any_event}]}
                        }
                    },
                },
                "responses": {**accepted, **refusals},
            }
        },
        "/health": {
            "get": {
                "summary": "Whether events are taken.",
                "responses": {"200": _answer("Taking events."), "503": _answer("Stopping.")},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus text format.",
                "responses": {
                    "200": {
                        "description": "Counters and gauges.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    }
    for kind in kinds:
        paths[f"/events/{kind}"] = {
            "post": {
                "summary": f"Send {kind} events (the 'type' field may be left out).",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "oneOf": [
                                    on_route[kind],
                                    {"type": "array", "items": on_route[kind]},
                                ]
                            }
                        }
                    },
                },
                "responses": {**accepted, **refusals},
            }
        }
    if store:
        parameters = [
            {
                "name": name,
                "in": "query",
                "required": False,
                "schema": schema,
                "description": description,
            }
            for name, schema, description in (
                ("type", {"type": "string", "enum": kinds}, "Only events of this kind."),
                ("user_id", {"type": "integer"}, "Only this user's events."),
                ("from", {"type": "string"}, "Accepted at or after: Unix seconds or ISO 8601."),
                ("to", {"type": "string"}, "Accepted before: Unix seconds or ISO 8601."),
                (
                    "limit",
                    {"type": "integer", "minimum": 1, "maximum": 10000},
                    "Events per page (100).",
                ),
                ("cursor", {"type": "string"}, "The next_cursor of the page before."),
            )
        ]
        paths["/events"]["get"] = {
            "summary": "Stored events, oldest first, a page at a time.",
            "parameters": parameters,
            "responses": {
                "200": _answer(
                    "A page.",
                    {
                        "type": "object",
                        "properties": {
                            "events": {"type": "array", "items": {"type": "object"}},
                            "next_cursor": {"type": ["string", "null"]},
                        },
                    },
                ),
                "400": _answer("A parameter is wrong.", _ERROR),
            },
        }
        paths["/stats"] = {
            "get": {
                "summary": "Stored events per type and per day.",
                "responses": {"200": _answer("Counts.", {"type": "object"})},
            }
        }
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": f"ringflow: {title}", "version": "1"},
        "paths": paths,
        "components": {"schemas": components},
    }
    if token:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        document["security"] = [{"bearer": []}]
    return document


def docs_page(document: Mapping[str, Any]) -> str:
    """A self-contained HTML page of ``document``: its routes and each event's fields."""
    title = html.escape(document["info"]["title"])
    rows = []
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            rows.append(
                f"<tr><td><code>{method.upper()} {html.escape(path)}</code></td>"
                f"<td>{html.escape(operation['summary'])}</td></tr>"
            )
    kinds = []
    for name, schema in document["components"]["schemas"].items():
        fields = []
        required = set(schema.get("required", []))
        for field, spec in schema.get("properties", {}).items():
            shown = {k: v for k, v in spec.items() if k != "title"}
            fields.append(
                f"<tr><td><code>{html.escape(field)}</code></td>"
                f"<td>{'required' if field in required else 'optional'}</td>"
                f"<td><code>{html.escape(msgspec.json.encode(shown).decode())}</code></td></tr>"
            )
        kinds.append(f"<h3>{html.escape(name)}</h3><table>{''.join(fields)}</table>")
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "td{padding:.2em .8em;border-bottom:1px solid #ddd}</style></head><body>"
        f"<h1>{title}</h1><p>The machine-readable form: <a href='/openapi.json'>"
        "/openapi.json</a> (OpenAPI 3.1).</p>"
        f"<h2>Routes</h2><table>{''.join(rows)}</table>"
        f"<h2>Events</h2>{''.join(kinds)}</body></html>"
    )
