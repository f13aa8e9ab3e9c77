"""Cross-site request refusal: a page on a foreign origin must not change the worklist or open
an AE's event channel through the user's browser (body-less POSTs and WebSocket handshakes are
not held back by CORS preflights). Applies with authentication on or off.

A request is cross-site when it carries an ``Origin`` header that is not listed in
``rest.cors_allow_origins`` (nor the origin of ``rest.public_url``). Requests without ``Origin``
(curl, DICOM toolkits, servers) are not browsers' cross-site requests and pass. The request's
own ``Host`` is deliberately not trusted as "same origin": a DNS-rebinding page sends a matching
Host.
"""

from __future__ import annotations

from aiohttp import web

SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))


def allowed_origins(cors_allow_origins: list[str], public_url: str | None) -> frozenset[str]:
    origins = {o.rstrip("/").lower() for o in cors_allow_origins}
    if public_url:
        scheme, _, rest = public_url.partition("://")
        origins.add(f"{scheme}://{rest.split('/', 1)[0]}".lower())
    return frozenset(origins)


def is_websocket_handshake(request: web.Request) -> bool:
    return request.method == "GET" and request.headers.get("Upgrade", "").lower() == "websocket"


def refused_origin(request: web.Request, allowed: frozenset[str]) -> str | None:
    """The foreign Origin of a state-changing request or WebSocket handshake, else None."""
    origin = request.headers.get("Origin")
    if origin is None:
        return None
    if request.method in SAFE_METHODS and not is_websocket_handshake(request):
        return None
    if "*" in allowed or origin.rstrip("/").lower() in allowed:
        return None
    return origin
