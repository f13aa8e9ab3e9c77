"""The OpenAPI 3.1 description of every route, generated from the one route table
(``rest.app.ROUTES``, each resource kind's canonical paths in ``paths.TEMPLATES``) plus the
routes at the origin root (``/health``, ``/metrics``) and itself. Served at
``{base_path}/openapi.json``; ``docs/openapi.json`` is this document for the default base path
(``python -m gateway.rest.write_openapi > docs/openapi.json`` writes it; a test checks it is
current).

Every (kind, method) of the route table must have an entry in ``OPERATIONS``: a route added
without its description stops the application from being made (``document`` raises), so a
described route cannot be missing and a served one cannot be undescribed.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import orjson
from aiohttp import web

from gateway import __version__
from gateway.rest import paths
from gateway.rest.media import DICOM_JSON, DICOM_XML

XML_PARTS = f'multipart/related; type="{DICOM_XML}"'
WARNING = {"$ref": "#/components/headers/Warning"}

_DATASET = {"$ref": "#/components/schemas/Dataset"}
_DATASETS = {"type": "array", "items": _DATASET}
_XML = {"type": "string", "description": "PS3.19 Native DICOM Model document(s)"}


def _payload(description: str, required: bool = True) -> dict:
    return {"required": required, "description": description, "content": {
        DICOM_JSON: {"schema": {"oneOf": [_DATASET, {**_DATASETS, "maxItems": 1}]}},
        "application/json": {"schema": {"oneOf": [_DATASET, {**_DATASETS, "maxItems": 1}]}},
        DICOM_XML: {"schema": _XML},
        XML_PARTS: {"schema": _XML}}}


def _answer(description: str, body: bool = False, headers: tuple[str, ...] = ()) -> dict:
    out: dict[str, Any] = {"description": description}
    named = {"Warning": WARNING}
    named.update((h, {"schema": {"type": "string", "format": "uri"}}) for h in headers)
    out["headers"] = named
    if body:
        out["content"] = {DICOM_JSON: {"schema": _DATASETS}, XML_PARTS: {"schema": _XML}}
    return out


def _errors(*codes: int) -> dict:
    text = {400: "Invalid request (the Warning header and the body say what)",
            404: "No such workitem or subscription", 406: "No acceptable media type",
            409: "Inconsistent with the workitem's state", 410: "The workitem was purged",
            413: "The payload is too large", 415: "Unsupported Content-Type",
            503: "The worklist store is unavailable or too contended; try again"}
    return {str(code): {"description": text[code], "headers": {"Warning": WARNING},
                        "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/Error"}}}}
            for code in codes}


def _param(name: str, where: str, description: str, schema: dict | None = None,
           required: bool = False, **more: Any) -> dict:
    return {"name": name, "in": where, "description": description,
            "required": required or where == "path", "schema": schema or {"type": "string"},
            **more}


_ACCEPT = _param("accept", "query", "Response media type, in place of the Accept header "
                 "(PS3.18 §8.3.3.1)")
_MATCH = _param("match", "query", "Matching keys: {keyword or tag[.keyword…]}={value}",
                {"type": "object", "additionalProperties": {"type": "string"}},
                style="form", explode=True)
_LOCK = _param("deletionlock", "query", "Hold a deletion lock", {"type": "boolean"})
# A search's fuzzy matching and paging parameters (UPS-RS and MWL-RS alike).
_PAGING = [_param("fuzzymatching", "query", "Fuzzy person-name matching", {"type": "boolean"}),
           _param("offset", "query", "Results to skip", {"type": "integer"}),
           _param("limit", "query", "Results per page", {"type": "integer"})]

# (kind, method) → the operation (PS3.18 chapter 11 transactions).
OPERATIONS: dict[tuple[str, str], dict] = {
    ("workitems", "POST"): {
        "operationId": "CreateWorkitem", "summary": "Create a workitem (PS3.18 §11.4)",
        "parameters": [_param("workitem", "query", "The workitem UID (else SOP Instance UID "
                                                   "in the payload, else assigned)")],
        "requestBody": _payload("A SCHEDULED workitem"),
        "responses": {"201": _answer("Created (a Warning when created with modifications)",
                                     headers=("Location", "Content-Location")),
                      **_errors(400, 409, 413, 415, 503)}},
    ("workitems", "GET"): {
        "operationId": "SearchWorkitems", "summary": "Search the worklist (PS3.18 §11.9)",
        "parameters": [_MATCH, _param("includefield", "query", "Attributes to return, or all"),
                       *_PAGING, _ACCEPT],
        "responses": {"200": _answer("Matches (a Warning when more can be requested)",
                                     body=True),
                      "204": _answer("No match"), **_errors(400, 406, 503)}},
    ("workitem", "GET"): {
        "operationId": "RetrieveWorkitem", "summary": "Retrieve a workitem (PS3.18 §11.5)",
        "parameters": [_ACCEPT],
        "responses": {"200": {**_answer("The workitem", headers=("Content-Location",)),
                              "content": {DICOM_JSON: {"schema": {**_DATASETS, "maxItems": 1}},
                                          XML_PARTS: {"schema": _XML},
                                          DICOM_XML: {"schema": _XML}}},
                      **_errors(404, 406, 410, 503)}},
    ("workitem", "POST"): {
        "operationId": "UpdateWorkitem", "summary": "Update a workitem (PS3.18 §11.6)",
        "parameters": [_param("transaction-uid", "query", "The Transaction UID (else "
                                                          "(0008,1195) in the payload)")],
        "requestBody": _payload("The attributes to set"),
        "responses": {"200": _answer("Updated", headers=("Content-Location",)),
                      **_errors(400, 404, 409, 410, 413, 415, 503)}},
    ("state", "PUT"): {
        "operationId": "ChangeWorkitemState",
        "summary": "Change a workitem's state: claim, complete, cancel (PS3.18 §11.7)",
        "requestBody": _payload("Procedure Step State and Transaction UID"),
        "responses": {"200": _answer("Changed", headers=("Content-Location",)),
                      **_errors(400, 404, 409, 410, 415, 503)}},
    ("cancelrequest", "POST"): {
        "operationId": "RequestCancellation",
        "summary": "Ask the performer to cancel a workitem (PS3.18 §11.8)",
        "requestBody": _payload("Reason, contact (optional)", required=False),
        "responses": {"202": _answer("Accepted", headers=("Content-Location",)),
                      **_errors(400, 404, 409, 410, 415, 503)}},
    ("subscription", "POST"): {
        "operationId": "CreateSubscription",
        "summary": "Subscribe an AE to a workitem or the worklist (PS3.18 §11.10)",
        "parameters": [_LOCK, _param("filter", "query", "Filtered global subscription: "
                                                         "Key=Value,Key=Value")],
        "responses": {"201": _answer("Subscribed; the event channel's URL",
                                     headers=("Location", "Content-Location")),
                      **_errors(400, 404, 410, 503)}},
    ("subscription", "DELETE"): {
        "operationId": "DeleteSubscription", "summary": "Unsubscribe (PS3.18 §11.11)",
        "responses": {"200": _answer("Unsubscribed"), **_errors(400, 404, 503)}},
    ("subscription", "GET"): {
        "operationId": "OpenNotificationConnectionAtSubscription",
        "summary": "The event channel at the subscription's URL (WebSocket upgrade only)",
        "responses": {"101": _answer("Switching to the WebSocket event channel"),
                      "405": {"description": "Not a WebSocket upgrade"}}},
    ("suspend", "POST"): {
        "operationId": "SuspendGlobalSubscription",
        "summary": "Stop subscribing the AE to new workitems (PS3.18 §11.12)",
        "responses": {"200": _answer("Suspended"), **_errors(400, 404, 503)}},
    ("channel", "GET"): {
        "operationId": "OpenNotificationConnection",
        "summary": "The AE's WebSocket event channel (PS3.18 §11.13): one DICOM JSON event "
                   "per text frame",
        "responses": {"101": _answer("Switching to the WebSocket event channel"),
                      "400": {"description": "Not a WebSocket upgrade"}}},
    ("root", "GET"): {
        "operationId": "ServiceRoot",
        "summary": "The service root: where the resources are (a WebSocket upgrade here is told "
                   "to name its AE title, {base}/ws/subscribers/{AETitle}); OPTIONS is Retrieve "
                   "Capabilities",
        "responses": {"200": {"description": "The resources' URLs",
                              "content": {"application/json": {}}}, **_errors(400)}},
    ("tickets", "POST"): {
        "operationId": "IssueChannelTicket",
        "summary": "A single-use ticket for opening one AE's event channel where the WebSocket "
                   "handshake cannot carry a credential (?ticket= on the channel URL)",
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "required": ["ae_title"],
            "properties": {"ae_title": {"type": "string", "maxLength": 16}}}}}},
        "responses": {"201": {"description": "The ticket", "content": {"application/json": {
            "schema": {"type": "object", "properties": {
                "ticket": {"type": "string"}, "expires_in": {"type": "number"}}}}}},
                      **_errors(400, 503),
                      "401": {"description": "No valid credential (auth.enabled)"},
                      "403": {"description": "The credential may not watch for that AE"}}},
}
# Methods the route table serves with the same operation as another (one description each).
ALIASES = {("workitem", "PUT"): ("workitem", "POST"), ("state", "POST"): ("state", "PUT")}

# Routes outside the route table: path (from the origin root, or under base_path) → method → op.
ROOT_ROUTES: dict[str, dict[str, dict]] = {
    "/health": {"GET": {"operationId": "Health", "summary": "Up or down per component",
                        "responses": {"200": {"description": "Every component is up"},
                                      "503": {"description": "A component is down, named"}}}},
    "/metrics": {"GET": {"operationId": "Metrics", "summary": "Prometheus metrics "
                         "(docs/observability.md)",
                         "responses": {"200": {"description": "Prometheus text format"}}}},
}
SELF = "/openapi.json"  # under base_path

_INCLUDEFIELD = _param("includefield", "query", "Attributes to return, or all")
# Services that add their own routes (``create_app`` extensions), under base_path: path →
# method → operation. A registered route missing here stops ``document``.
SERVICES: dict[str, dict[str, dict]] = {
    "/modality-scheduled-procedure-steps": {"GET": {
        "operationId": "SearchModalityScheduledProcedureSteps",
        "summary": "Search the Modality Worklist: SCHEDULED workitems as MWL entries "
                   "(PS3.18 chapter 14)",
        "parameters": [_MATCH, _INCLUDEFIELD,
                       *_PAGING, _ACCEPT],
        "responses": {"200": _answer("Matching entries (a Warning when more can be requested)",
                                     body=True),
                      "204": _answer("No match"), **_errors(400, 406, 503)}}},
    "/modality-performed-procedure-steps/{uid}": {
        "POST": {"operationId": "CreateOrUpdateModalityPerformedProcedureStep",
                 "summary": "Create an MPPS (201), or with ?update set its attributes "
                            "(PS3.18 chapter 15)",
                 "parameters": [_param("update", "query", "Present: an Update, not a Create",
                                       allowEmptyValue=True),
                                _param("requester", "query", "The requesting AE title")],
                 "requestBody": _payload("The MPPS attributes"),
                 "responses": {"201": _answer("Created", headers=("Location",
                                                                  "Content-Location")),
                               "200": _answer("Updated"),
                               **_errors(400, 404, 409, 413, 415, 503)}},
        "GET": {"operationId": "RetrieveModalityPerformedProcedureStep",
                "summary": "Retrieve an MPPS (PS3.18 chapter 15)",
                "parameters": [_INCLUDEFIELD, _ACCEPT],
                "responses": {"200": {**_answer("The MPPS", headers=("Content-Location",)),
                                      "content": {DICOM_JSON: {"schema": _DATASETS},
                                                  XML_PARTS: {"schema": _XML},
                                                  DICOM_XML: {"schema": _XML}}},
                              **_errors(400, 404, 406, 503)}}},
}
_SERVICE_PARAMETERS = {"uid": "The instance UID"}


def document(routes: Mapping[str, Mapping[str, Callable]], base_path: str,
             registered: set[tuple[str, str]] | None = None,
             scopes: Mapping[str, Mapping[str, str]] | None = None) -> dict:
    """The OpenAPI 3.1 document of ``routes`` served under ``base_path``, and of the other
    ``registered`` routes (``(router path, METHOD)``: the origin root's, the extensions');
    None: as ``create_app`` registers them by default. ``scopes`` (kind → method → scope, the
    table next to the routes) names what each operation needs when ``auth.enabled``."""
    path_items: dict[str, dict] = {}
    for path, methods in _others(base_path, registered).items():
        path_items[path] = methods
    for kind, methods in routes.items():
        if kind not in paths.TEMPLATES:
            raise KeyError(f"route kind {kind!r} has no path in paths.TEMPLATES")
        for method in methods:
            key = ALIASES.get((kind, method), (kind, method))
            if key not in OPERATIONS:
                raise KeyError(f"route {method} {kind} has no description in openapi.OPERATIONS")
            operation = dict(OPERATIONS[key])
            if key != (kind, method):
                operation["operationId"] += f"_{method}"
            scope = (scopes or {}).get(kind, {}).get(method)
            if scope:
                operation["x-ups-scope"] = scope
            for template in paths.TEMPLATES[kind]:
                item = path_items.setdefault(template, {"parameters": _path_parameters(template)})
                op = dict(operation)
                if len(paths.TEMPLATES[kind]) > 1 and "{requester}" in template:
                    op["operationId"] += "_AsRequester"
                item[method.lower()] = op
    path_items[SELF] = {"get": {"operationId": "OpenAPI", "summary": "This description",
                                "responses": {"200": {"description": "OpenAPI 3.1",
                                                      "content": {"application/json": {}}}}}}
    for item in path_items.values():
        if not item.get("parameters"):
            item.pop("parameters", None)
    return {
        "openapi": "3.1.0",
        "info": {"title": "ups-gateway UPS-RS", "version": __version__,
                 "description": "One DICOM UPS worklist (PS3.18 chapter 11). Every error "
                                "carries `Warning: 299 <service>: <reason>`; "
                                "docs/conformance.md says what each status means."},
        "servers": [{"url": base_path or "/"}],
        # Off by default (auth.enabled): no credential, or either of these (docs/security.md);
        # an operation's x-ups-scope is the scope its credential needs.
        "security": [{}, {"bearer": []}, {"apiKey": []}, {"apiKeyHeader": []}],
        "paths": dict(sorted(path_items.items())),
        "components": {
            "schemas": {
                "Dataset": {"type": "object", "description": "A DICOM JSON dataset (PS3.18 F.2)",
                            "propertyNames": {"pattern": "^[0-9A-Fa-f]{8}$"},
                            "additionalProperties": {"type": "object",
                                                     "required": ["vr"]}},
                "Error": {"type": "object", "required": ["error"], "properties": {
                    "error": {"type": "string"},
                    "status": {"type": "string", "description": "The DIMSE status, 0xHHHH"}}}},
            "headers": {"Warning": {"description": "299 <service>: <text> (PS3.18 §8.4.4)",
                                    "schema": {"type": "string"}}},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "apiKey": {"type": "http", "scheme": "ApiKey",
                           "description": "Authorization: ApiKey <key>"},
                "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}},
    }


def _others(base_path: str, registered: set[tuple[str, str]] | None) -> dict[str, dict]:
    """Path items of the registered routes outside the table, each looked up in ROOT_ROUTES
    (origin root) or SERVICES (under base_path; also reachable at the root, the same route)."""
    if registered is None:
        registered = {("/health", "GET"), ("/metrics", "GET")}
        registered |= {(base_path + path, method) for path, methods in SERVICES.items()
                       for method in methods}
    items: dict[str, dict] = {}
    for path, method in sorted(registered):
        if method == "HEAD":  # (aiohttp adds one to every GET)
            continue
        relative = path[len(base_path):] if base_path and path.startswith(base_path + "/") \
            else path
        relative = relative.rstrip("/") or "/"
        if relative in ROOT_ROUTES:
            table, where = ROOT_ROUTES, {"servers": [{"url": "/"}]}
        elif relative in SERVICES:
            table, where = SERVICES, {}
        else:
            raise KeyError(f"route {method} {path} has no description in openapi.SERVICES")
        methods = list(table[relative]) if method == "*" else [method]
        for name in methods:
            if name not in table[relative]:
                raise KeyError(f"route {name} {path} has no description in openapi.SERVICES")
            item = items.setdefault(relative, dict(where))
            if relative in SERVICES and "parameters" not in item:
                item["parameters"] = [_param(n, "path", text)
                                      for n, text in _SERVICE_PARAMETERS.items()
                                      if "{" + n + "}" in relative]
            item[name.lower()] = table[relative][name]
    return items


def described(doc: dict) -> set[tuple[str, str]]:
    """(path, METHOD) of every operation the document describes (base-relative paths)."""
    return {(path, method.upper()) for path, item in doc["paths"].items()
            for method in item if method not in ("parameters", "servers")}


def _path_parameters(template: str) -> list[dict]:
    names = {"workitem": "The workitem UID", "requester": "The requesting AE title",
             "aetitle": "The subscriber AE title"}
    return [_param(name, "path", text) for name, text in names.items()
            if "{" + name + "}" in template]


def route(doc: dict) -> Callable:
    body = orjson.dumps(doc, option=orjson.OPT_INDENT_2)

    async def openapi_route(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    return openapi_route
