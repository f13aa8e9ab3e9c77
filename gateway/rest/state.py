"""What the REST application holds, under typed keys (``web.AppKey``): set once by
``create_app``, read by the handlers — nothing else is shared between them; and what a request
carries from the middleware to its handler (``web.RequestKey``)."""

from __future__ import annotations

from typing import Awaitable, Callable

from aiohttp import web

from gateway.config import Rest
from gateway.events.fanout import WebSocketFanout
from gateway.metrics import Metrics
from gateway.ups.service import UPSService

Health = Callable[[], Awaitable[dict]]

SETTINGS = web.AppKey("settings", Rest)
SERVICE = web.AppKey("service", UPSService)
FANOUT = web.AppKey("fanout", WebSocketFanout)
HEALTH = web.AppKey("health", Health)
ORIGIN = web.AppKey("origin", Callable[[web.Request], str])
METRICS = web.AppKey("metrics", Metrics)

# Per request.
REQUEST_ID = web.RequestKey("id", str)
OPERATION = web.RequestKey("operation", str)  # the UPS transaction (its handler's name)
REQUESTER = web.RequestKey("requester", str)  # the calling AE, once a credential names one
