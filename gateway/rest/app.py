"""The aiohttp application: one route table for the UPS-RS resources, reached in any accepted
spelling (``paths``), a middleware that turns every failure into a clear HTTP answer, and /health.
"""

from __future__ import annotations

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
from gateway.rest import paths, subscriptions, tickets, workitems
from gateway.rest.audit_hook import Record, audit_middleware, channel_opened
from gateway.rest.auth import security_middleware
from gateway.rest.messages import BodyTimeout, error_response, problem
from gateway.rest.state import (FANOUT, HEALTH, ORIGIN, REQUEST_ID, SECURITY, SERVICE, SETTINGS,
                                Health, Security)
from gateway.security.principal import PERFORM, READ, WATCH, WRITE
from gateway.ups.errors import UPSError
from gateway.ups.service import UPSService

log = logging.getLogger("gateway.rest")
_request_ids = itertools.count(1)

Handler = Callable[[web.Request, paths.Resource], Awaitable[web.StreamResponse]]

# Resource kind (``paths.Resource.kind``) → method → handler.
ROUTES: dict[str, dict[str, Handler]] = {
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
        response = await handler(request)
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
    if log.isEnabledFor(logging.DEBUG) and not isinstance(response, web.WebSocketResponse):
        log.debug("request", extra={"request": rid, "method": request.method,
                                    "path": request.path, "status": response.status,
                                    "ms": round((time.perf_counter() - started) * 1000, 2)})
    return response


async def dispatch(request: web.Request) -> web.StreamResponse:
    base = request.app[SETTINGS].base_path
    resource = paths.parse(request.path, base)
    if resource is None:
        raise web.HTTPNotFound(text=f"no UPS-RS resource at {request.path}; the worklist is at "
                               f"{base}/workitems")
    methods = ROUTES.get(resource.kind)
    if methods is None:  # a path of rest/mwl.py or rest/mpps.py that they do not serve
        raise web.HTTPNotFound(text=f"no resource at {request.path}")
    handler = methods.get(request.method)
    if handler is None:
        allowed = list(methods)
        raise web.HTTPMethodNotAllowed(request.method, allowed, text=f"{request.method} is not "
                                       f"allowed here; use {', '.join(allowed)}")
    return await handler(request, resource)


def create_app(settings: Rest, service: UPSService, fanout: WebSocketFanout,
               health: Health, security: Security, audit: Record | None = None,
               extensions: Sequence[Callable[[web.Application], None]] = ()
               ) -> web.Application:
    """The REST/WebSocket front end: UPS-RS on ``service``, event channels on ``fanout``,
    /health answered by ``health()``, callers checked as ``security`` says, what happened
    told to ``audit`` (when auditing is on); each of ``extensions`` adds its own routes (the
    PS3.18 Modality Worklist and MPPS services, ``rest/mwl.py``, ``rest/mpps.py``)."""
    middlewares = [errors_middleware, security_middleware(scope_of)]
    if audit is not None:
        middlewares.insert(0, audit_middleware(audit))
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=middlewares)
    if audit is not None:
        app.on_response_prepare.append(channel_opened(audit))
    app[SECURITY] = security
    app[SETTINGS] = settings
    app[SERVICE] = service
    app[FANOUT] = fanout
    app[HEALTH] = health
    app[ORIGIN] = _origin_function(settings.public_url)
    app.router.add_get("/health", health_route)
    for install in extensions:
        install(app)
    app.router.add_route("*", "/{tail:.*}", dispatch)
    return app


async def health_route(request: web.Request) -> web.Response:
    report = await request.app[HEALTH]()
    return web.json_response(report, status=200 if report["status"] == "ok" else 503)


def _origin_function(public_url: str | None) -> Callable[[web.Request], str]:
    if public_url:
        origin = public_url.rstrip("/")
        return lambda request: origin
    return lambda request: f"{request.scheme}://{request.host}"
