"""The aiohttp application: one route table for the UPS-RS resources, reached in any accepted
spelling (``paths``), a middleware that turns every failure into a clear HTTP answer, and /health.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import Awaitable, Callable, Sequence

from aiohttp import web
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway import logs
from gateway.config import Rest
from gateway.events.fanout import WebSocketFanout
from gateway.metrics import Metrics, outcome_of_http
from gateway.rest import capabilities, cors, openapi, paths, subscriptions, tickets, workitems
from gateway.rest import metrics as rest_metrics
from gateway.rest.audit_hook import Record, audit_middleware, channel_opened
from gateway.rest.auth import OPEN_PATHS, security_middleware
from gateway.rest.messages import BodyTimeout, error_response, problem, read_body
from gateway.rest.state import (FANOUT, HEALTH, METRICS, OPERATION, ORIGIN, REQUEST_ID, SECURITY,
                                SERVICE, SETTINGS, SUBPROTOCOLS, Health, Security)
from gateway.security.principal import PERFORM, READ, WATCH, WRITE
from gateway.ups import status as st
from gateway.ups.attempt import commit_tracking
from gateway.ups.errors import OutcomeUnknown, UPSError
from gateway.ups.service import UPSService

log = logging.getLogger("gateway.rest")
_request_ids = itertools.count(1)

Handler = Callable[[web.Request, paths.Resource], Awaitable[web.StreamResponse]]

# Resource kind (``paths.Resource.kind``) → method → handler.
ROUTES: dict[str, dict[str, Handler]] = {
    "root": {"GET": subscriptions.channel_needs_ae},
    "workitems": {"POST": workitems.create, "GET": workitems.search},
    "workitem": {"GET": workitems.retrieve, "POST": workitems.update, "PUT": workitems.update},
    "state": {"PUT": workitems.change_state, "POST": workitems.change_state},
    "cancelrequest": {"POST": workitems.request_cancel},
    "subscription": {"POST": subscriptions.subscribe, "DELETE": subscriptions.unsubscribe,
                     "GET": subscriptions.channel_at_subscription},
    "suspend": {"POST": subscriptions.suspend},
    "channel": {"GET": subscriptions.channel},
    "tickets": {"POST": tickets.issue},
}

# The scope each route needs when auth is enabled (operation classes of issue 17; the same
# kinds and methods as ROUTES: tests/test_security_rest.py checks that none is missing).
SCOPES: dict[str, dict[str, str]] = {
    "root": {"GET": READ},
    "workitems": {"POST": WRITE, "GET": READ},
    "workitem": {"GET": READ, "POST": WRITE, "PUT": WRITE},
    "state": {"PUT": PERFORM, "POST": PERFORM},
    "cancelrequest": {"POST": PERFORM},
    "subscription": {"POST": WATCH, "DELETE": WATCH, "GET": WATCH},
    "suspend": {"POST": WATCH},
    "channel": {"GET": WATCH},
    "tickets": {"POST": WATCH},
    # The PS3.18 ch. 14/15 services (rest/mwl.py, rest/mpps.py): an MPPS drives its workitem.
    "mwl": {"GET": READ},
    "mpps": {"GET": READ, "POST": PERFORM},
}


def scope_of(resource: paths.Resource | None, method: str) -> str | None:
    """The scope ``method`` on ``resource`` needs (None: unknown, answered 404/405)."""
    if resource is None:
        return None
    return SCOPES[resource.kind].get(method)


@web.middleware
async def errors_middleware(request: web.Request, handler) -> web.StreamResponse:
    request[REQUEST_ID] = rid = f"r{next(_request_ids)}"
    logs.bind(request=rid, peer=request.remote)
    started = time.perf_counter()
    try:
        response = await _within_deadline(request, handler)
    except UPSError as error:
        response = error_response(request, error)
    except BodyTimeout as exc:
        log.info("request body too slow", extra={"request": rid, "path": request.path})
        response = problem(request, 408, str(exc))
        response.force_close()  # what is left of the body is not waited for
    except web.HTTPRequestEntityTooLarge:
        response = problem(request, 413, f"the request body exceeds the limit of "
                           f"{request.app[SETTINGS].max_body_bytes} bytes")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = problem(request, exc.status, exc.text or exc.reason, headers={
            k: v for k, v in exc.headers.items() if k.lower() == "allow"})
    except (RedisConnectionError, RedisTimeoutError, ReadOnlyError) as exc:
        # ReadOnlyError: a demoted master (a failover, reached without Sentinel) refuses writes
        log.error("redis unavailable", extra={"request": rid, "error": str(exc)})
        response = problem(request, 503, "the worklist store is unavailable; try again",
                           headers={"Retry-After": "5"})
    except Exception:  # a bug: answer, log, keep serving
        log.exception("unhandled error", extra={"request": rid, "path": request.path})
        response = problem(request, 500, "internal error; see the gateway log for "
                           f"request {rid}")
    # Refusals at INFO (with the reason the client was given), the rest at DEBUG.
    level = logging.INFO if response.status >= 400 else logging.DEBUG
    if log.isEnabledFor(level) and not isinstance(response, web.WebSocketResponse):
        warned = response.headers.get("Warning")
        log.log(level, "request", extra={
            "request": rid, "method": request.method, "path": request.path,
            "operation": request.get(OPERATION), "status": response.status,
            "outcome": outcome_of_http(response.status, warned is not None), "warning": warned,
            "ms": round((time.perf_counter() - started) * 1000, 2)})
    return response


async def _within_deadline(request: web.Request, handler) -> web.StreamResponse:
    """Serve ``request`` within ``rest.request_timeout`` once its body is in (so a slow upload
    is not blamed on the worklist); an event channel lives as long as its client. Cut short
    while its commit was in flight, the request's outcome is unknown, and the answer says so
    (504) rather than "try again" (503)."""
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return await handler(request)
    settings = request.app[SETTINGS]
    await read_body(request)  # within its own deadline; kept by aiohttp for the handler
    limit = settings.request_timeout
    deadline = asyncio.timeout(limit)
    with commit_tracking() as tracking:
        try:
            async with deadline:
                return await handler(request)
        except TimeoutError:
            if not deadline.expired():
                raise  # not ours
            if tracking.pending is not None:
                log.error("request timed out with its commit in flight: outcome unknown",
                          extra={"uid": tracking.pending, "timeout_s": limit})
                raise OutcomeUnknown(tracking.pending, "the store did not confirm it within "
                                     f"{limit:g} s") from None
            log.warning("request timed out", extra={"path": request.path, "timeout_s": limit})
            raise UPSError(st.PROCESSING_FAILURE, f"The worklist did not answer within "
                           f"{limit:g} s; try again") from None


async def dispatch(request: web.Request) -> web.StreamResponse:
    base = request.app[SETTINGS].base_path
    resource = paths.parse(request.path, base)
    if resource is None:
        raise web.HTTPNotFound(text=f"no UPS-RS resource at {request.path}; the worklist is at "
                               f"{base}/workitems")
    methods = ROUTES.get(resource.kind)
    # Retrieve Capabilities, of the route table's resources and the extensions' (a CORS
    # preflight never gets here)
    if request.method == "OPTIONS" and (
            methods is not None or resource.kind in request.app[capabilities.EXTENSIONS]):
        return capabilities.respond(request, resource.kind)
    if methods is None:  # a path of rest/mwl.py or rest/mpps.py that they do not serve
        raise web.HTTPNotFound(text=f"no resource at {request.path}")
    handler = methods.get(request.method)
    if handler is None:
        allowed = [*methods, "OPTIONS"]
        raise web.HTTPMethodNotAllowed(request.method, allowed, text=f"{request.method} is not "
                                       f"allowed here; use {', '.join(allowed)}")
    request[OPERATION] = handler.__name__
    logs.bind(uid=resource.uid, ae=resource.ae)  # the core's records name them too
    return await handler(request, resource)


def create_app(settings: Rest, service: UPSService, fanout: WebSocketFanout,
               health: Health, security: Security, audit: Record | None = None,
               extensions: Sequence[Callable[[web.Application], None]] = (),
               metrics: Metrics | None = None, metrics_need_auth: bool = False,
               subprotocols: list[str] | None = None) -> web.Application:
    """The REST/WebSocket front end: UPS-RS on ``service``, event channels on ``fanout``
    (accepting the WebSocket ``subprotocols``), /health answered by ``health()``, callers
    checked as ``security`` says, what happened told to ``audit`` (when auditing is on); each
    of ``extensions`` adds its own routes (the PS3.18 Modality Worklist and MPPS services,
    ``rest/mwl.py``, ``rest/mpps.py``); requests recorded in ``metrics`` and /metrics served
    from it (open like /health unless ``metrics_need_auth``). Metrics are outermost (they see
    the answer every other layer made), then CORS (``rest/cors.py``), so that every answer —
    refusals too — carries its headers and a preflight needs no credential."""
    open_paths = OPEN_PATHS | ({"/metrics"} if not metrics_need_auth else set())
    middlewares = [cors.cors_middleware(settings.cors_allow_origins, _methods_of, problem),
                   errors_middleware, security_middleware(scope_of, open_paths)]
    if audit is not None:
        middlewares.insert(1, audit_middleware(audit))
    if metrics is not None:
        middlewares.insert(0, rest_metrics.middleware(metrics))
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=middlewares)
    if audit is not None:
        app.on_response_prepare.append(channel_opened(audit))
    app[SECURITY] = security
    app[SETTINGS] = settings
    app[SERVICE] = service
    app[FANOUT] = fanout
    app[HEALTH] = health
    app[SUBPROTOCOLS] = list(subprotocols or [])
    app[ORIGIN] = _origin_function(settings.public_url)
    app[capabilities.ROUTE_TABLE] = ROUTES
    app[capabilities.EXTENSIONS] = {}
    app.router.add_get("/health", health_route)
    if metrics is not None:
        app[METRICS] = metrics
        app.router.add_get("/metrics", rest_metrics.metrics_route)
    for install in extensions:
        install(app)
    # The description of every route, made from the table and the routes the extensions added,
    # now: a route without a description fails here.
    description = openapi.document(ROUTES, settings.base_path, registered=_registered(app),
                                   scopes=SCOPES)
    app.router.add_get(settings.base_path + openapi.SELF, openapi.route(description))
    app.router.add_route("*", "/{tail:.*}", dispatch)
    return app


ANY_METHOD = ["GET", "POST", "PUT", "DELETE"]  # what a catch-all route of an extension may serve


async def _methods_of(request: web.Request) -> list[str] | None:
    """The methods offered at the request's path (None: no resource there): UPS-RS resources
    from the route table, /health and the extensions' routes from aiohttp's router."""
    resource = paths.parse(request.path, request.app[SETTINGS].base_path)
    if resource is not None and resource.kind in ROUTES:
        return list(ROUTES[resource.kind])
    methods: set[str] = set()
    for candidate in request.app.router.resources():
        if candidate.canonical == "/{tail}":  # the UPS-RS dispatcher itself
            continue
        match, allowed = await candidate.resolve(request)
        if match is not None or allowed:
            methods |= set(allowed)
    if not methods:
        return None
    if "*" in methods:
        methods = (methods - {"*"}) | set(ANY_METHOD)
    return sorted(methods - {"HEAD", "OPTIONS"})


def _registered(app: web.Application) -> set[tuple[str, str]]:
    """(path, METHOD) of every route added to the router so far."""
    found = set()
    for route in app.router.routes():
        info = route.resource.get_info()
        found.add((info.get("path") or info.get("formatter") or "", route.method))
    return found


async def health_route(request: web.Request) -> web.Response:
    report = await request.app[HEALTH]()
    return web.json_response(report, status=200 if report["status"] == "ok" else 503)


def _origin_function(public_url: str | None) -> Callable[[web.Request], str]:
    if public_url:
        origin = public_url.rstrip("/")
        return lambda request: origin
    return lambda request: f"{request.scheme}://{request.host}"
