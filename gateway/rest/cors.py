"""Cross-origin requests (Fetch standard CORS) for browser apps served from another origin.

``rest.cors_allow_origins`` lists the origins (``scheme://host[:port]``) whose pages may call the
UPS-RS API; ``["*"]`` allows any, ``[]`` (the default) none: no CORS header is ever sent. An
allowed origin's requests get ``Access-Control-Allow-Origin`` and the response headers a UPS-RS
client must read (``Location``, ``Content-Location``, ``Warning``) exposed. A preflight (``OPTIONS``
with ``Access-Control-Request-Method``) is answered here for every resource of the route table:
204 with the resource's methods and the requested headers when the origin is allowed; 403 with a
Warning when it is not; 404 for a path that is no resource. Credentials (cookies) are not
allowed: a browser app sends its ``Authorization`` header explicitly.

``origin_allowed`` is the one test of an origin against the setting, for any other Origin check.
"""

from __future__ import annotations

from typing import Awaitable, Callable

from aiohttp import web

EXPOSED = "Location, Content-Location, Warning, Retry-After, X-UPS-Modifications"
MAX_AGE = "600"  # seconds a browser may keep a preflight's answer

Methods = Callable[[web.Request], Awaitable[list[str] | None]]  # a path's methods


def origin_allowed(allowed: list[str], origin: str | None) -> bool:
    return bool(origin) and ("*" in allowed or origin in allowed)


def cors_middleware(allowed: list[str], methods_of: Methods,
                    refuse: Callable[[web.Request, int, str], web.Response]):
    """The middleware (outermost, so error answers carry the headers too). ``refuse`` makes the
    403/404 answers of a preflight (``messages.problem``)."""
    allow_any = "*" in allowed

    def allow_origin(origin: str) -> dict[str, str]:
        return {"Access-Control-Allow-Origin": "*" if allow_any else origin, "Vary": "Origin"}

    @web.middleware
    async def cors(request: web.Request, handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if not allowed or not origin:
            return await handler(request)
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            return await preflight(request, origin)
        response = await handler(request)
        if origin_allowed(allowed, origin) and not response.prepared:
            response.headers.update(allow_origin(origin))
            response.headers["Access-Control-Expose-Headers"] = EXPOSED
        return response

    async def preflight(request: web.Request, origin: str) -> web.Response:
        if not origin_allowed(allowed, origin):
            return refuse(request, 403, f"cross-origin requests from {origin} are not allowed "
                          "(rest.cors_allow_origins)")
        methods = await methods_of(request)
        wanted = request.headers["Access-Control-Request-Method"].strip().upper()
        if methods is None or wanted not in (*methods, "OPTIONS"):  # OPTIONS: capabilities
            refusal = refuse(request, 404, f"no UPS-RS resource at {request.path}") \
                if methods is None else refuse(request, 405, f"{wanted} is not allowed on "
                                               f"{request.path}; use {', '.join(methods)}")
            refusal.headers.update(allow_origin(origin))
            refusal.headers["Access-Control-Expose-Headers"] = EXPOSED
            return refusal
        headers = {**allow_origin(origin),
                   "Access-Control-Allow-Methods": ", ".join(dict.fromkeys([*methods, "OPTIONS"])),
                   "Access-Control-Max-Age": MAX_AGE}
        requested = request.headers.get("Access-Control-Request-Headers", "").strip()
        if requested:
            headers["Access-Control-Allow-Headers"] = requested
        return web.Response(status=204, headers=headers)

    return cors
