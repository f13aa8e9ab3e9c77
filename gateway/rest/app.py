"""The aiohttp application: one dispatcher that recognises UPS-RS resources in any accepted
spelling, a middleware that turns every failure into a clear HTTP answer, and /health."""

from __future__ import annotations

import itertools
import logging
import time
from typing import Awaitable, Callable

from aiohttp import web
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway import logs
from gateway.rest import paths, subscriptions, workitems
from gateway.rest.messages import error_response, problem
from gateway.ups.errors import UPSError

log = logging.getLogger("gateway.rest")
_request_ids = itertools.count(1)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request["id"] = rid = f"r{next(_request_ids)}"
    logs.bind(request=rid, peer=request.remote)
    started = time.perf_counter()
    try:
        response = await handler(request)
    except UPSError as error:
        response = error_response(request, error)
    except web.HTTPRequestEntityTooLarge as exc:
        response = problem(request, 413, f"the request body exceeds the limit of "
                           f"{request.app['config'].rest.max_body_bytes} bytes")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = problem(request, exc.status, exc.text or exc.reason, headers={
            k: v for k, v in exc.headers.items() if k.lower() == "allow"})
    except (RedisConnectionError, RedisTimeoutError) as exc:
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
    base = request.app["config"].rest.base_path
    resource = paths.parse(request.path, base)
    method = request.method
    if resource is None:
        raise web.HTTPNotFound(text=f"no UPS-RS resource at {request.path}; the worklist is at "
                               f"{base}/workitems")
    kind, uid, ae = resource.kind, resource.uid, resource.ae
    extra = request.app.get("extra_routes", {})
    if kind == "workitems":
        if method == "POST":
            return await workitems.create(request)
        if method == "GET":
            return await workitems.search(request)
        allowed = "GET, POST"
    elif kind == "workitem":
        if method == "GET":
            return await workitems.retrieve(request, uid)
        if method in ("POST", "PUT"):
            return await workitems.update(request, uid)
        allowed = "GET, POST, PUT"
    elif kind == "state":
        if method in ("PUT", "POST"):
            return await workitems.change_state(request, uid, ae)
        allowed = "PUT"
    elif kind == "cancelrequest":
        if method == "POST":
            return await workitems.request_cancel(request, uid, ae)
        allowed = "POST"
    elif kind in extra:
        return await extra[kind](request, resource)
    else:
        raise web.HTTPNotImplemented(text=f"{kind} is not available on this gateway")
    raise web.HTTPMethodNotAllowed(method, allowed.split(", "),
                                   text=f"{method} is not allowed here; use {allowed}")


def create_app(gateway) -> web.Application:
    """The REST/WebSocket front end of ``gateway`` (a ``gateway.app.Gateway``)."""
    config = gateway.config
    app = web.Application(client_max_size=config.rest.max_body_bytes,
                          middlewares=[errors_middleware])
    app["config"] = config
    app["service"] = gateway.service
    app["gateway"] = gateway
    app["public_origin"] = _origin_function(config.rest.public_url)
    app["extra_routes"] = dict(subscriptions.ROUTES)
    app.router.add_get("/health", health)
    app.router.add_route("*", "/{tail:.*}", dispatch)
    return app


async def health(request: web.Request) -> web.Response:
    report = await request.app["gateway"].health()
    return web.json_response(report, status=200 if report["status"] == "ok" else 503)


def _origin_function(public_url: str | None):
    if public_url:
        origin = public_url.rstrip("/")
        return lambda request: origin
    return lambda request: f"{request.scheme}://{request.host}"
