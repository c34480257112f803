"""The OpenAPI 3.1 document, generated from the route table and the msgspec types (never written by
hand), and the /docs page: Swagger UI from a Python package's bundled files, so it works offline.

The document states what the server accepts and answers, exactly: schemathesis checks both ways
(`tests/test_fuzz.py`), and generated clients are built from it (`tests/test_generated_client.py`).
msgspec's schemas are adjusted for that here: patterns in JSON Schema's syntax, integral numbers
as `integer`, request defaults in words (a `default` makes openapi-typescript demand the field),
every field of an answer `required` (the encoder always sends it) and timestamps as `date-time`.
Rules no schema can state are listed per operation (`x-inventoryd-rules`): each names the status
and the problem's `field` it is refused with, in the operation's description too."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from inventoryd import __version__, limits
from inventoryd.http import keys
from inventoryd.http.common import Route
from inventoryd.http.schemas import NO_SURROGATE, STORABLE_TEXT, AvailabilityOut, Problem, documented_pattern

SWAGGER_UI_PATH: Path | None
try:
    from openapi_ui_bundles.swagger_ui import static_path as SWAGGER_UI_PATH
except ImportError:  # the docs page says so instead of failing the service
    SWAGGER_UI_PATH = None

_ERRORS = {
    400: "Malformed request: bad JSON (also a key given twice in one object: I-JSON, RFC 7493), a bad query parameter or header",
    401: "No valid bearer token (also on public routes, when the Authorization header sent is not valid)",
    403: "The token's role or owner may not do this",
    404: "No such event, reservation, ticket or route",
    409: "Refused by the rules: sold out, limit exceeded, hold expired, conflict …",
    413: f"Body larger than {limits.REQUEST_BODY_BYTES_MAX} bytes",
    415: "Body is not application/json",
    422: "Valid JSON, invalid content: `field` names what is wrong",
    429: "Rate limited: retry after Retry-After seconds",
    503: "Overloaded or recovering: retry after Retry-After (with the same Idempotency-Key)",
}
_SCHEMAS = "#/components/schemas/"
_HEADERS = "#/components/headers/"
_RATE_LIMIT_NOTE = "sent when the caller is rate limited: a user or service token (admins are not), and /v1/auth/* by client address"
HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-ID": {
        "description": "The request's own X-Request-ID if it sent a usable one (1-128 printable characters), else one made here",
        "required": True,
        "schema": {"type": "string", "minLength": 1},
    },
    "RateLimit-Limit": {"description": f"Requests the bucket holds; {_RATE_LIMIT_NOTE}", "schema": {"type": "integer", "minimum": 1}},
    "RateLimit-Remaining": {"description": f"Requests left in the bucket; {_RATE_LIMIT_NOTE}", "schema": {"type": "integer", "minimum": 0}},
    "RateLimit-Reset": {
        "description": f"Seconds until the bucket is full again; {_RATE_LIMIT_NOTE}",
        "schema": {"type": "integer", "minimum": 0},
    },
    "Retry-After": {"description": "Seconds to wait before retrying", "required": True, "schema": {"type": "integer", "minimum": 1}},
    "Idempotent-Replayed": {
        "description": "Sent on a retry with an Idempotency-Key already answered: this is the first answer again, nothing changed",
        "schema": {"type": "string", "enum": ["true"]},
    },
    "Location": {"description": "Where the created resource is", "required": True, "schema": {"type": "string", "format": "uri-reference"}},
}


@dataclass(frozen=True, slots=True)
class Rule:
    """A rule no schema can state: a request breaking it is answered `status`, with the problem's
    `field` matching `field` (`[*]`: any index)."""

    status: int
    field: str
    text: str


_CURSOR_RULE = Rule(400, "cursor", "`cursor` must be a `next_cursor` this service answered for the same query")
_EVENT_TIMES = (
    Rule(422, "$.ends_at", "`ends_at` is not before `starts_at`"),
    Rule(422, "$.sale_ends_at", "`sale_ends_at` is after `sale_starts_at` when both are set"),
    Rule(422, "$.sale_starts_at", "an event with a waiting room (`queue`) has `sale_starts_at`"),
    Rule(422, "$.queue.opens_at", "`queue.opens_at` is at or before `sale_starts_at`"),
)
_BUYER_NAMED = Rule(
    422,
    "$.user_id",
    "a service or admin token names the buyer in `user_id`; an attendee or organizer acts for themselves"
    " (omit `user_id`, or give their own: another is 403)",
)
_SEATED_CAPACITY = "a seated ticket type is created with `capacity` 0: its seats come from the seat map"
_SEATS_NAMED = (
    Rule(422, "$.seats", "the event has a seat map (and, for a reserve, the ticket type is seated)"),
    Rule(422, "$.seats[*]", "each seat is on the event's map, named once (and, for a reserve, of the ticket type)"),
)
_SECTION_RULE = Rule(400, "section", "`section` is a section of the event's map")
RULES: dict[str, tuple[Rule, ...]] = {
    "create_event": (
        Rule(422, "$.ticket_types[*].code", "ticket type codes are unique within the event"),
        Rule(422, "$.ticket_types[*].capacity", _SEATED_CAPACITY),
        *_EVENT_TIMES,
    ),
    "add_ticket_type": (Rule(422, "$.capacity", _SEATED_CAPACITY),),
    "put_seatmap": (
        Rule(422, "$", "a seat map has at least one section or block"),
        Rule(422, "$.sections[*].rows[*].seats[*]", "a seat appears once, and a row is given once (one list of adjacent seats)"),
        Rule(
            422, "$.sections[*].rows[*].seats[*].ticket_type",
            "each seat has a ticket type (its own, its row's or its section's), a seated type of the event",
        ),
        Rule(422, "$.blocks[*]", f"a block's seats appear nowhere else, and the map holds at most {limits.SEATMAP_SEATS_MAX:,} seats"),
        Rule(422, "$.blocks[*].ticket_type", "a block's ticket type is a seated type of the event"),
    ),
    "block_seats": _SEATS_NAMED,
    "unblock_seats": _SEATS_NAMED,
    "get_seats": (_SECTION_RULE,),
    "seatmap_svg": (_SECTION_RULE,),
    "update_event": tuple(Rule(rule.status, rule.field, rule.text + ", once the change is applied") for rule in _EVENT_TIMES),
    "create_reservation": (
        _BUYER_NAMED,
        Rule(422, "$.quantity", "`quantity` or `seats` is given; with both, `quantity` is the number of seats"),
        Rule(422, "$.waitlist", "exact `seats` cannot wait: `waitlist` is for a quantity"),
        *_SEATS_NAMED,
    ),
    "join_queue": (_BUYER_NAMED,),
    "list_events": (
        _CURSOR_RULE,
        Rule(400, "q", f"`q` has at least one word (letters or digits) and at most {limits.CATALOGUE_QUERY_WORDS_MAX}"),
        Rule(400, "min_price", "`min_price` is not above `max_price`"),
    ),
    "create_webhook": (
        Rule(
            422, "$.url",
            "the URL is http(s), without credentials or a fragment, and its host resolves to public addresses only"
            " (loopback, private and link-local ones are refused unless the operator allows them)",
        ),
        Rule(422, "$.types", "each change type is named once"),
    ),
    "webhook_deliveries": (_CURSOR_RULE,),
    "event_reservations": (_CURSOR_RULE,),
    "my_reservations": (_CURSOR_RULE,),
    "user_reservations": (_CURSOR_RULE,),
}
# Descriptions for operations whose answers need more than the summary.
_DESCRIPTIONS = {
    "logout": "Only a user's session can be ended: an API token (service, admin) has none, and is answered 403;"
    " revoke such a token with `inventoryd token revoke` instead.",
    "availability_stream": "Each event is `event: availability` with the availability as JSON in `data`: one at once,"
    f" then one after each change (changes within {limits.STREAM_UPDATE_INTERVAL_S} s are sent together); a comment"
    f" line every {limits.STREAM_HEARTBEAT_S:g} s when nothing changes, and the server ends the stream after"
    f" {limits.STREAM_DURATION_MAX_S:g} s (reconnect). At most {limits.STREAM_SUBSCRIBERS_MAX} streams are open at"
    " once (503 beyond). An event with a seat map also sends `event: seats` (every seat's status, as GET"
    " .../seats answers) first, then `event: seat_changes` with `{seats: {SEAT_ID: status}}` for each change.",
}


def build(routes: tuple[Route, ...]) -> dict[str, Any]:
    requests = {route.request_body for route in routes if route.request_body is not None}
    answers = {route.response_body for route in routes if route.response_body is not None} | {Problem, AvailabilityOut}
    if requests & answers:
        raise ValueError(f"{requests & answers} serve both requests and answers: give each its own type")
    ordered = sorted(requests | answers, key=lambda kind: getattr(kind, "__name__", str(kind)))
    schemas, components = msgspec.json.schema_components(ordered, ref_template=_SCHEMAS + "{name}")
    schema_of = dict(zip(ordered, schemas, strict=True))
    _adjust_components(components, [schema_of[kind] for kind in requests], [schema_of[kind] for kind in answers], ordered)
    if any(route.media_type == "text/event-stream" for route in routes):
        components[_STREAM_EVENT] = _stream_event("availability", schema_of[AvailabilityOut])
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, schema_of)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "inventoryd",
            "version": __version__,
            "description": "Ticket inventory for on-sales: one actor per event, a group-committed PostgreSQL log.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": components,
            "headers": HEADERS,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A user's access token (JWT) or an API token `ivd_…` from `inventoryd token create`",
                }
            },
        },
    }


def _operation(route: Route, schema_of: dict[Any, Any]) -> dict[str, Any]:
    """One route as the document states it: description and rules, parameters, body, answers."""
    rules = RULES.get(route.name, ())
    operation: dict[str, Any] = {"operationId": route.name, "summary": route.summary, "tags": [_tag(route)]}
    description = _DESCRIPTIONS.get(route.name, "")
    if rules:
        description += "\n\nRules the schema cannot state:\n" + "".join(
            f"\n- {rule.text} ({rule.status}, `field`: `{rule.field}`)" for rule in rules
        )
        operation["x-inventoryd-rules"] = [{"status": r.status, "field": r.field, "rule": r.text} for r in rules]
    if description:
        operation["description"] = description.strip()
    if parameters := _parameters(route):
        operation["parameters"] = _documented(parameters)
    if route.request_body is not None:
        operation["requestBody"] = {
            "required": not route.body_optional,
            "content": {"application/json": {"schema": schema_of[route.request_body]}},
        }
    operation["responses"] = _responses(route, schema_of, rules)
    operation["security"] = [] if route.public else [{"bearer": []}]
    return operation


def _parameters(route: Route) -> list[dict[str, Any]]:
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": _PATH_PARAMETERS.get(name, {"type": "string"})}
        for name in _path_parameters(route.path)
    ]
    parameters += [
        {"name": query.name, "in": "query", "required": False, "description": query.description, "schema": query.schema}
        for query in route.query
    ]
    if route.idempotent:
        parameters.append(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "A retry with the same key and body gets the original answer and changes nothing",
                "schema": {
                    "type": "string",
                    "pattern": f"^[ -~]{{1,{limits.IDEMPOTENCY_KEY_BYTES_MAX}}}$",
                    "description": "printable ASCII",
                },
            }
        )
    return parameters


def _responses(route: Route, schema_of: dict[Any, Any], rules: tuple[Rule, ...]) -> dict[str, Any]:
    success: dict[str, Any] = {"description": route.summary, "headers": _headers(route, route.success_status)}
    if route.response_body is not None:
        success["content"] = {route.media_type: {"schema": schema_of[route.response_body]}}
    elif route.media_type == "text/event-stream":
        success["content"] = {route.media_type: {"schema": {"$ref": _SCHEMAS + _STREAM_EVENT}}}
    elif route.name == "openapi":
        success["content"] = {route.media_type: {"schema": _OPENAPI_DOCUMENT}}
    elif route.success_status != 204:
        success["content"] = {route.media_type: {"schema": {"type": "string"}}}
    if route.name in _LINKS:
        success["links"] = _LINKS[route.name]
    responses: dict[str, Any] = {str(route.success_status): success}
    if route.name == "create_reservation":
        responses["202"] = {
            "description": "Joined the waiting list (sold out, and `waitlist` was true)",
            "headers": _headers(route, 202),
            "content": success["content"],
        }
    if route.name == "join_queue":
        responses["200"] = {
            "description": "Already in line (or admitted): the same entry as before",
            "headers": _headers(route, 200),
            "content": success["content"],
        }
    problem = {"application/problem+json": {"schema": schema_of[Problem]}}
    for status in _error_statuses(route):
        description = _ERRORS[status]
        refusals = [rule.text for rule in rules if rule.status == status]
        if refusals:
            description += "; also for the rules the schema cannot state: " + "; ".join(refusals)
        responses[str(status)] = {"description": description, "headers": _headers(route, status), "content": problem}
    return responses


# Path parameters that reach SQL as text: PostgreSQL cannot store a NUL (answered 400).
_PATH_PARAMETERS: dict[str, dict[str, Any]] = {"user_id": {"type": "string", "pattern": STORABLE_TEXT}}
_OPENAPI_DOCUMENT = {
    "description": "An OpenAPI 3.1 document: this one",
    "type": "object",
    "required": ["openapi", "info", "paths", "components"],
    "properties": {"openapi": {"type": "string", "const": "3.1.0"}, "info": {"type": "object"}, "paths": {"type": "object"}},
}


_STREAM_EVENT = "AvailabilityEvent"


def _stream_event(name: str, data: dict[str, Any]) -> dict[str, Any]:
    """One server-sent event (OpenAPI 3.1: the schema of a text/event-stream describes each event)."""
    return {
        "title": _STREAM_EVENT,
        "description": f"One server-sent event: `event: {name}`, and `data`: JSON",
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"type": "string", "const": name},
            "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": data},
        },
    }


def _headers(route: Route, status: int) -> dict[str, Any]:
    names = ["X-Request-ID", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"]
    if status in (429, 503):
        names.append("Retry-After")
    if route.idempotent and status < 300:
        names.append("Idempotent-Replayed")
    if status == 201 and route.name in _CREATES_WITH_LOCATION:
        names.append("Location")
    return {name: {"$ref": _HEADERS + name} for name in names}


# The creates whose 201 names the new resource in Location.
_CREATES_WITH_LOCATION = ("create_event", "add_ticket_type")


def _documented(value: Any) -> Any:
    """Patterns as the document states them (see schemas.documented_pattern)."""
    if isinstance(value, list):
        return [_documented(item) for item in value]
    if not isinstance(value, dict):
        return value
    result = {key: _documented(item) for key, item in value.items()}
    pattern = result.get("pattern")
    if isinstance(pattern, str):
        result["pattern"], dropped = documented_pattern(pattern)
        if dropped:
            result["description"] = f"{result['description']}. {NO_SURROGATE}" if "description" in result else NO_SURROGATE
    return result


def _whole_numbers(value: Any) -> Any:
    """`int | float (a multiple of 1)` (schemas.whole_number) is JSON Schema's `integer`."""
    if isinstance(value, list):
        return [_whole_numbers(item) for item in value]
    if not isinstance(value, dict):
        return value
    result = {key: _whole_numbers(item) for key, item in value.items()}
    branches = result.get("anyOf")
    if isinstance(branches, list):
        integers = [branch for branch in branches if branch.get("type") == "integer"]
        kept = [
            branch
            for branch in branches
            if not (
                branch.get("type") == "number"
                and branch.get("multipleOf") == 1
                and any({**branch, "type": "integer", "multipleOf": 1} == {**integer, "multipleOf": 1} for integer in integers)
            )
        ]
        if len(kept) == 1:
            del result["anyOf"]
            result.update(kept[0])
        else:
            result["anyOf"] = kept
    return result


def _adjust_components(
    components: dict[str, Any], requests: list[dict[str, Any]], answers: list[dict[str, Any]], kinds: list[Any]
) -> None:
    """What msgspec generates, made exact for requests and answers (see the module's docstring)."""
    structs = _structs(kinds)
    request_names = _reachable(requests, components)
    answer_names = _reachable(answers, components)
    if request_names & answer_names:
        raise ValueError(f"{sorted(request_names & answer_names)} serve both requests and answers: give each its own type")
    for name, schema in list(components.items()):
        kind = structs.get(name)
        if kind is not None:
            if name in answer_names:
                _as_answer(schema, kind)
            else:
                _as_request(schema, kind)
        components[name] = _documented(_whole_numbers(schema))


def _as_request(schema: dict[str, Any], kind: type) -> None:
    extra = getattr(kind, "json_schema_extra", None)
    if extra:
        schema.update(extra)
    for field in msgspec.inspect.type_info(kind).fields:  # type: ignore[attr-defined]
        prop = schema["properties"][field.encode_name]
        if "default" in prop:
            default = prop.pop("default")
            if default is not None:
                note = f"Default: {json.dumps(default)}."
                prop["description"] = f"{prop['description']}. {note}" if "description" in prop else note


def _as_answer(schema: dict[str, Any], kind: type) -> None:
    """Every field an answer always has is required; a field a struct that omits defaults leaves
    out when None is optional, and never null; timestamps are RFC 3339 (`date-time`)."""
    omits = kind.__struct_config__.omit_defaults  # type: ignore[attr-defined]
    required = []
    for field in msgspec.inspect.type_info(kind).fields:  # type: ignore[attr-defined]
        prop = schema["properties"][field.encode_name]
        prop.pop("default", None)
        if omits and not field.required:
            if field.default is None and "anyOf" in prop:
                branches = [branch for branch in prop.pop("anyOf") if branch != {"type": "null"}]
                prop.update(branches[0] if len(branches) == 1 else {"anyOf": branches})
        else:
            required.append(field.encode_name)
        _timestamps(prop, field.type)
    schema["required"] = required


def _timestamps(prop: dict[str, Any], kind: Any) -> None:
    if isinstance(kind, msgspec.inspect.DateTimeType):
        prop["format"] = "date-time"
    elif isinstance(kind, msgspec.inspect.UnionType) and any(isinstance(t, msgspec.inspect.DateTimeType) for t in kind.types):
        for branch in prop.get("anyOf", [prop]):
            if branch.get("type") == "string":
                branch["format"] = "date-time"


def _structs(kinds: list[Any]) -> dict[str, type]:
    """The struct types reachable from `kinds`, by component name (msgspec names them by class)."""
    found: dict[str, type] = {}

    def visit(info: Any) -> None:
        if isinstance(info, msgspec.inspect.StructType):
            if info.cls.__name__ in found:
                return
            found[info.cls.__name__] = info.cls
            for field in info.fields:
                visit(field.type)
        elif isinstance(info, msgspec.inspect.Metadata):
            visit(info.type)
        elif isinstance(info, msgspec.inspect.UnionType):
            for item in info.types:
                visit(item)
        elif isinstance(
            info, (msgspec.inspect.ListType, msgspec.inspect.VarTupleType, msgspec.inspect.SetType, msgspec.inspect.FrozenSetType)
        ):
            visit(info.item_type)
        elif isinstance(info, msgspec.inspect.DictType):
            visit(info.value_type)

    for info in msgspec.inspect.multi_type_info(kinds):
        visit(info)
    return found


def _reachable(schemas: list[dict[str, Any]], components: dict[str, Any]) -> set[str]:
    names: set[str] = set()
    pending = list(schemas)
    while pending:
        text = json.dumps(pending.pop())
        for part in text.split('"$ref": "' + _SCHEMAS)[1:]:
            name = part.split('"', 1)[0]
            if name not in names:
                names.add(name)
                pending.append(components[name])
    return names


def _link(operation_id: str, **parameters: str) -> dict[str, Any]:
    return {"operationId": operation_id, "parameters": parameters}


# What an answer's ids lead to: clients (and schemathesis' stateful phase) follow these.
_EVENT_ID = "$response.body#/id"
_LINKS: dict[str, dict[str, Any]] = {
    "create_event": {
        name: _link(name, event_id=_EVENT_ID)
        for name in (
            "get_event",
            "create_reservation",
            "get_availability",
            "availability_stream",
            "get_report",
            "event_reservations",
            "update_event",
            "add_ticket_type",
        )
    },
    "create_reservation": {
        name: _link(name, reservation_id="$response.body#/id")
        for name in ("get_reservation", "confirm_reservation", "cancel_reservation")
    },
    "confirm_reservation": {
        name: _link(name, ticket_id="$response.body#/tickets/0/id") for name in ("get_ticket", "check_in_ticket")
    },
}


def _path_parameters(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}")]


def _tag(route: Route) -> str:
    if route.path.startswith("/v1/auth") or route.path.startswith("/v1/users/me"):
        return "accounts"
    if route.path.startswith("/v1/reservations") or route.path.startswith("/v1/tickets") or "reservations" in route.path:
        return "reservations"
    if route.path.startswith("/v1/events"):
        return "events"
    return "operations"


# Methods whose handlers read the body: into a schema, or to refuse one where they take none (422).
_READS_BODY = ("POST", "PATCH", "PUT")


def _error_statuses(route: Route) -> list[int]:
    # A bearer token that is not valid is refused on any route, and a caller's rate limit applies to every route.
    statuses = {401, 429}
    if route.path.startswith("/v1/") or route.name == "readyz":
        statuses.add(503)
    if route.query or route.idempotent or route.request_body is not None:
        statuses.add(400)
    if not route.public:
        statuses.add(403)
    if "{" in route.path or route.name in ("me", "create_webhook"):  # (a webhook's event_id)
        statuses.add(404)
    if route.idempotent or route.name in (
        "register", "check_in_ticket", "join_queue", "get_queue_line", "get_queue_challenge", "create_webhook",
    ):
        statuses.add(409)  # the rules, or an Idempotency-Key used for another request
    if route.method in _READS_BODY:
        statuses |= {413, 422}
    if route.request_body is not None:
        statuses.add(415)
    return sorted(statuses)


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=request.app[keys.OPENAPI], content_type="application/json")


_DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>inventoryd API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script src="/docs/init.js"></script>
</body>
</html>
"""
_DOCS_INIT = """window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true});
"""
# The docs page runs scripts and styles from this origin only.
_DOCS_POLICY = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'"


async def docs(request: web.Request) -> web.Response:
    if SWAGGER_UI_PATH is None:
        return web.Response(status=503, text="the docs page needs the openapi-ui-bundles package; /openapi.json works")
    return web.Response(text=_DOCS_PAGE, content_type="text/html", headers={"Content-Security-Policy": _DOCS_POLICY})


async def docs_init(request: web.Request) -> web.Response:
    return web.Response(text=_DOCS_INIT, content_type="text/javascript")


def add_static(app: web.Application) -> None:
    if SWAGGER_UI_PATH is not None:
        app.router.add_static("/docs/static", SWAGGER_UI_PATH, name="docs_static")
