"""UPS-RS Subscribe, Unsubscribe and Suspend (PS3.18 §11.10–11.12) and the WebSocket channel."""

from __future__ import annotations

from aiohttp import web

from gateway.rest import websocket
from gateway.rest.messages import problem, service_url
from gateway.rest.paths import Resource
from gateway.rest.query import filter_terms, query_pairs
from gateway.rest.state import FANOUT, SERVICE, SETTINGS, SUBPROTOCOLS
from gateway.ups.errors import InvalidQuery
from gateway.ups.uids import FILTERED_GLOBAL_SUBSCRIPTION


def channel_url(request: web.Request, ae: str) -> str:
    base = service_url(request)
    scheme = "wss" if base.startswith("https") else "ws"
    return f"{scheme}{base[base.index(':'):]}/ws/subscribers/{ae}"


def _lock(request: web.Request) -> bool:
    value = request.query.get("deletionlock", request.query.get("DeletionLock", "false")).lower()
    if value not in ("true", "false"):
        raise InvalidQuery(f"deletionlock: {value!r} must be true or false")
    return value == "true"


async def subscribe(request: web.Request, resource: Resource) -> web.StreamResponse:
    lock = _lock(request)
    filtered = resource.uid == FILTERED_GLOBAL_SUBSCRIPTION
    terms = filter_terms(query_pairs(request.rel_url.raw_query_string), filtered=filtered)
    await request.app[SERVICE].subscribe(resource.uid, resource.ae, lock, terms)
    url = channel_url(request, resource.ae)
    return web.Response(status=201, headers={"Location": url, "Content-Location": url})


async def unsubscribe(request: web.Request, resource: Resource) -> web.StreamResponse:
    outcome = await request.app[SERVICE].unsubscribe(resource.uid, resource.ae)
    if not outcome.found:
        return problem(request, 404, outcome.message)
    return web.Response(status=200)


async def suspend(request: web.Request, resource: Resource) -> web.StreamResponse:
    outcome = await request.app[SERVICE].suspend(resource.uid, resource.ae)
    if not outcome.found:
        return problem(request, 404, outcome.message)
    return web.Response(status=200)


async def channel(request: web.Request, resource: Resource) -> web.StreamResponse:
    return await websocket.open_channel(request, request.app[FANOUT], resource.ae,
                                        request.app[SUBPROTOCOLS])


async def channel_at_subscription(request: web.Request, resource: Resource) -> web.StreamResponse:
    """The event channel opened at the subscription's own URL (a WebSocket upgrade only)."""
    if request.headers.get("Upgrade", "").lower() != "websocket":
        raise web.HTTPMethodNotAllowed(request.method, ["POST", "DELETE"])
    return await channel(request, resource)


async def channel_needs_ae(request: web.Request, resource: Resource) -> web.StreamResponse:
    """The service root: a WebSocket upgrade here (PS3.18 §8.10.4's bare form) cannot say whose
    events it wants (400); a plain GET is told where the resources are."""
    base = request.app[SETTINGS].base_path
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return problem(request, 400, "event channel: name the subscriber AE title in the URL, "
                       f"{base}/ws/subscribers/{{AETitle}} (the URL Subscribe returns)")
    return web.json_response({"workitems": f"{base}/workitems",
                              "event_channel": f"{base}/ws/subscribers/{{AETitle}}",
                              "capabilities": f"OPTIONS {base}/",
                              "openapi": f"{base}/openapi.json"})
