"""UPS-RS requests and event channels as audit events (``gateway.audit``): one middleware,
outside the error middleware so that it sees every final answer, and the channel's 101."""

from __future__ import annotations

import logging
from typing import Callable

import orjson
from aiohttp import web

from gateway.audit import messages as a
from gateway.rest import paths
from gateway.rest.state import PRINCIPAL, REQUESTER, SETTINGS

log = logging.getLogger("gateway.audit")

Record = Callable[[a.AuditEvent], None]
_ACTIONS = {("workitems", "POST"): "C", ("workitem", "GET"): "R", ("workitem", "POST"): "U",
            ("workitem", "PUT"): "U", ("state", "PUT"): "U", ("state", "POST"): "U",
            ("cancelrequest", "POST"): "U", ("subscription", "POST"): "U",
            ("subscription", "DELETE"): "U", ("suspend", "POST"): "U",
            ("mpps", "POST"): "U", ("mpps", "GET"): "R"}  # an MPPS changes its UPS workitem


def audit_middleware(record: Record):
    @web.middleware
    async def middleware(request: web.Request, handler) -> web.StreamResponse:
        response = await handler(request)
        try:
            event = await _event(request, response)
            if event is not None:
                record(event)
        except Exception:  # noqa: BLE001 - auditing never fails a request
            log.exception("audit event not recorded", extra={"path": request.path})
        return response

    return middleware


def channel_opened(record: Record):
    """``on_response_prepare``: the event channel's handshake succeeded (101)."""

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        if isinstance(response, web.WebSocketResponse) and response.status == 101:
            record(_base(request, a.USER_AUTHENTICATION, "E", a.SUCCESS, type_code=a.LOGIN,
                         description="event channel opened"))

    return on_prepare


async def _event(request: web.Request, response: web.StreamResponse) -> a.AuditEvent | None:
    status = response.status
    outcome = a.SUCCESS if status < 400 else a.MINOR_FAILURE if status < 500 \
        else a.SERIOUS_FAILURE
    warning = response.headers.get("Warning") if status >= 400 else None
    if status == 401:
        return _base(request, a.USER_AUTHENTICATION, "E", outcome, type_code=a.LOGIN,
                     description=warning)
    if status == 403:
        return _base(request, a.SECURITY_ALERT, "E", outcome,
                     type_code=a.USE_OF_RESTRICTED_FUNCTION, description=warning)
    resource = paths.parse(request.path, request.app[SETTINGS].base_path)
    if resource is None:
        return None
    if isinstance(response, web.WebSocketResponse):
        return _base(request, a.USER_AUTHENTICATION, "E", a.SUCCESS, type_code=a.LOGOUT,
                     description="event channel closed") if response.prepared else None
    if resource.kind in ("workitems", "mwl") and request.method == "GET":
        return _base(request, a.QUERY, "E", outcome, description=warning,
                     query=request.query_string)
    if resource.kind == "tickets":
        return _base(request, a.USER_AUTHENTICATION, "E", outcome, type_code=a.LOGIN,
                     description=warning or "WebSocket ticket issued")
    action = _ACTIONS.get((resource.kind, request.method))
    if action is None:
        return None
    event = _base(request, a.PROCEDURE_RECORD, action, outcome, description=warning)
    event.workitem = resource.uid or _created_uid(response)
    if resource.kind == "workitem" and request.method == "GET":
        event.patient_id, event.patient_name = _patient_of(getattr(response, "body", None))
    elif resource.kind in ("workitems", "workitem"):
        event.patient_id, event.patient_name = _patient_of(await _body(request))
    return event


def _base(request: web.Request, event_id, action: str, outcome: int, **more) -> a.AuditEvent:
    principal = request.get(PRINCIPAL)
    resource = paths.parse(request.path, request.app[SETTINGS].base_path)
    ae = request.get(REQUESTER) or (resource.ae if resource is not None else None)
    return a.AuditEvent(event_id, action, outcome,
                        user=principal.name if principal is not None else None, ae=ae,
                        address=request.remote, **more)


def _created_uid(response: web.StreamResponse) -> str | None:
    location = response.headers.get("Location", "")
    return location.rsplit("/", 1)[-1] or None if "/workitems/" in location else None


async def _body(request: web.Request) -> bytes | None:
    """The request's payload (already read by the handler: aiohttp keeps it)."""
    try:
        return await request.read()
    except (web.HTTPException, ConnectionError):
        return None


def _patient_of(raw) -> tuple[str | None, str | None]:
    """Patient ID and Name of a DICOM JSON dataset (or one-element array) in ``raw``."""
    if not isinstance(raw, (bytes, bytearray)) or not raw:
        return None, None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None, None
    if isinstance(body, list) and len(body) == 1:
        body = body[0]
    if not isinstance(body, dict):
        return None, None
    return _value(body.get("00100020")), _name(_value(body.get("00100010")))


def _value(element) -> object:
    if isinstance(element, dict) and isinstance(element.get("Value"), list) and element["Value"]:
        return element["Value"][0]
    return None


def _name(value) -> str | None:
    if isinstance(value, dict):
        value = value.get("Alphabetic")
    return value if isinstance(value, str) else None
