"""UPS-RS Subscribe, Unsubscribe and Suspend (PS3.18 §11.10–11.12) and the WebSocket channel."""

from __future__ import annotations

from aiohttp import web

from gateway.events.websocket import channel
from gateway.rest.messages import problem, service_url
from gateway.rest.paths import Resource
from gateway.ups import matching
from gateway.ups.errors import InvalidQuery
from gateway.ups.uids import FILTERED_GLOBAL_SUBSCRIPTION

_NOT_FILTER = {"deletionlock", "filter", "accept", "charset"}


def channel_url(request: web.Request, ae: str) -> str:
    base = service_url(request)
    scheme = "wss" if base.startswith("https") else "ws"
    return f"{scheme}{base[base.index(':'):]}/ws/subscribers/{ae}"


def _lock(request: web.Request) -> bool:
    value = request.query.get("deletionlock", request.query.get("DeletionLock", "false")).lower()
    if value not in ("true", "false"):
        raise InvalidQuery(f"deletionlock: {value!r} must be true or false")
    return value == "true"


def _filter(request: web.Request, uid: str) -> dict | None:
    """Filter keys, as ``filter=Key=Value,Key=Value`` and/or plain ``Key=Value`` parameters."""
    pairs: list[tuple[str, str]] = []
    for name, value in request.query.items():
        if name.lower() == "filter":
            for part in filter(None, value.split(",")):
                key, sep, val = part.partition("=")
                if not sep:
                    raise InvalidQuery(f"filter: {part!r} is not Key=Value")
                if not matching.from_params([(key.strip(), val)]).keys:
                    # Plain unknown parameters are ignored, but a key named in filter= that is
                    # no attribute would silently widen the subscription to every workitem.
                    raise InvalidQuery(f"filter: {key.strip()!r} is not a UPS attribute "
                                       "keyword or tag")
                pairs.append((key.strip(), val))
        elif name.lower() not in _NOT_FILTER and uid == FILTERED_GLOBAL_SUBSCRIPTION:
            pairs.append((name, value))
    if not pairs:
        return None
    matching.from_params(pairs)  # validate now: a bad key is the subscriber's 400, not later
    return matching.filter_spec(pairs)


async def subscription(request: web.Request, resource: Resource) -> web.StreamResponse:
    uid, ae = resource.uid, resource.ae
    service = request.app["service"]
    if request.method == "GET" and request.headers.get("Upgrade", "").lower() == "websocket":
        return await channel(request, ae)
    if request.method == "POST":
        await service.subscribe(uid, ae, _lock(request), _filter(request, uid))
        url = channel_url(request, ae)
        return web.Response(status=201, headers={"Location": url, "Content-Location": url})
    if request.method == "DELETE":
        outcome = await service.unsubscribe(uid, ae)
        if not outcome.found:
            return problem(request, 404, outcome.message)
        return web.Response(status=200)
    raise web.HTTPMethodNotAllowed(request.method, ["POST", "DELETE"])


async def suspend(request: web.Request, resource: Resource) -> web.StreamResponse:
    if request.method != "POST":
        raise web.HTTPMethodNotAllowed(request.method, ["POST"])
    outcome = await request.app["service"].suspend(resource.uid, resource.ae)
    if not outcome.found:
        return problem(request, 404, outcome.message)
    return web.Response(status=200)


async def open_channel(request: web.Request, resource: Resource) -> web.StreamResponse:
    if request.method != "GET":
        raise web.HTTPMethodNotAllowed(request.method, ["GET"])
    return await channel(request, resource.ae)


ROUTES = {"subscription": subscription, "suspend": suspend, "channel": open_channel}
