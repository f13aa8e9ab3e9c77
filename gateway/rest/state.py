"""What the REST application holds, under typed keys (``web.AppKey``): set once by
``create_app``, read by the handlers — nothing else is shared between them; and what a request
carries from the middleware to its handler (``web.RequestKey``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Protocol

from aiohttp import web

from gateway.config import Rest
from gateway.events.fanout import WebSocketFanout
from gateway.security.credentials import Authenticator
from gateway.security.principal import Principal
from gateway.ups.service import UPSService

Health = Callable[[], Awaitable[dict]]


class Tickets(Protocol):
    """Where WebSocket tickets are kept (``gateway.store.tickets.RedisTickets``)."""

    async def put(self, ticket: str, grant: dict[str, Any], ttl_seconds: int) -> bool: ...

    async def take(self, ticket: str) -> dict[str, Any] | None: ...


@dataclass
class Security:
    """What the REST front end needs to check callers (``gateway.rest.auth``)."""

    authenticator: Authenticator
    tickets: Tickets
    ticket_ttl: int
    allowed_origins: frozenset[str]

SETTINGS = web.AppKey("settings", Rest)
SERVICE = web.AppKey("service", UPSService)
FANOUT = web.AppKey("fanout", WebSocketFanout)
HEALTH = web.AppKey("health", Health)
ORIGIN = web.AppKey("origin", Callable[[web.Request], str])
SECURITY = web.AppKey("security", Security)

# Per request.
REQUEST_ID = web.RequestKey("id", str)
REQUESTER = web.RequestKey("requester", str)  # the calling AE, once a credential names one
PRINCIPAL = web.RequestKey("principal", Principal)  # who the caller is (auth on)
