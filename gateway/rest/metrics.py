"""Metrics at the REST edge: the one hook that counts and times every UPS-RS request (a
middleware, outermost, so it sees the answer the error middleware made), and ``/metrics``.

The operation is the UPS transaction the route table chose (its handler's name: ``create``,
``search``, ``change_state`` …, the same names the DIMSE side uses); requests that reach no
route count as ``unrouted``. WebSocket channels are not requests here (their lifetime is not a
latency): ``upsgw_websocket_channels`` counts them.
"""

from __future__ import annotations

import time

from aiohttp import web

from gateway.metrics import CONTENT_TYPE, Metrics, outcome_of_http
from gateway.rest.state import METRICS, OPERATION

PROTOCOL = "rest"
UNROUTED = "unrouted"
_NOT_REQUESTS = frozenset(("/metrics", "/health"))


def middleware(metrics: Metrics):
    @web.middleware
    async def metrics_middleware(request: web.Request, handler) -> web.StreamResponse:
        started = time.perf_counter()
        response = await handler(request)
        if request.path in _NOT_REQUESTS or isinstance(response, web.WebSocketResponse):
            return response
        metrics.request(PROTOCOL, request.get(OPERATION, UNROUTED),
                        outcome_of_http(response.status, "Warning" in response.headers),
                        time.perf_counter() - started)
        return response

    return metrics_middleware


async def metrics_route(request: web.Request) -> web.Response:
    body = await request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
