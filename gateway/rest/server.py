"""The HTTP server under the UPS-RS application, with the limits a client cannot grow past
(``rest`` in config.yaml; docs/operations.md, "Limits"):

* ``max_connections`` open connections (HTTP and WebSocket alike): one more is answered
  ``503`` with a ``Warning`` and closed at once, before anything it sends is read;
* ``header_timeout_seconds`` from connecting to the end of the first request's headers (a
  connection that says nothing, or trickles its headers, gets ``408`` and is closed); a later
  request on a kept-alive connection must begin and bring its headers within
  ``keepalive_seconds`` of the previous response (aiohttp's keep-alive timer, which trickled
  bytes do not reset);
* ``max_header_bytes`` per request line and header field (aiohttp answers 400; we add the
  ``Warning``);
* the body deadline (``body_timeout_seconds``) is kept where bodies are read
  (``messages.read_json``): ``408``.

aiohttp is used through its public pieces, except that the server this module makes copies the
handler arguments of the one ``AppRunner`` made (``Server._kwargs``); tests/test_limits_rest.py
checks each limit, so an aiohttp that changes it fails there.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from gateway.config import Rest

log = logging.getLogger("gateway.rest")

LINGERING_SECONDS = 2.0  # how long an unread body is drained after the answer, then closed


SHUTDOWN_SECONDS = 5.0


class Runner(web.AppRunner):
    """``web.AppRunner`` whose connections are ``GuardedHandler``s."""

    def __init__(self, app: web.Application, limits: Rest):
        super().__init__(app, access_log=None, handle_signals=False,
                         # a stop waits this long for requests in flight (aiohttp: 60 s)
                         shutdown_timeout=SHUTDOWN_SECONDS,
                         keepalive_timeout=limits.keepalive_seconds,
                         max_line_size=limits.max_header_bytes,
                         max_field_size=limits.max_header_bytes,
                         lingering_time=LINGERING_SECONDS)
        self.limits = limits

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        return GuardedServer(self.limits, plain.request_handler,
                             request_factory=plain.request_factory,
                             handler_cancellation=plain.handler_cancellation,
                             loop=asyncio.get_running_loop(), **plain._kwargs)


class GuardedServer(web.Server):
    def __init__(self, limits: Rest, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.limits = limits

    def __call__(self) -> RequestHandler:
        return GuardedHandler(self, self.limits, loop=self._loop, **self._kwargs)


class GuardedHandler(RequestHandler):
    def __init__(self, manager: GuardedServer, limits: Rest, **kwargs):
        super().__init__(manager, **kwargs)
        self.limits = limits
        self.header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        manager = self._manager
        if manager is not None and len(manager.connections) > self.limits.max_connections:
            log.warning("HTTP connection refused: rest.max_connections connections are open",
                        extra={"peer": _peer(transport), "limit": self.limits.max_connections})
            self._refuse(503, "Service Unavailable",
                         f"more than {self.limits.max_connections} connections are open; "
                         "try again later", retry_after=True)
            return
        self.header_timer = self._loop.call_later(self.limits.header_timeout_seconds,
                                                  self._headers_late)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.header_timer is not None and self._request_count:
            self.header_timer.cancel()
            self.header_timer = None

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None
        super().connection_lost(exc)

    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """aiohttp's own answers to what does not parse (a header line too long, a bad request
        line) get the ``Warning`` every refusal carries."""
        response = super().handle_error(request, status, exc, message)
        if status < 500 and "Warning" not in response.headers:
            reason = getattr(exc, "message", None) or message or "the request does not parse"
            response.headers["Warning"] = _warning(str(reason))
        return response

    def _headers_late(self) -> None:
        self.header_timer = None
        if self._request_count or self.transport is None:
            return
        seconds = self.limits.header_timeout_seconds
        log.info("HTTP connection closed: no complete request headers in time",
                 extra={"peer": _peer(self.transport), "seconds": seconds})
        self._refuse(408, "Request Timeout", f"the request headers did not arrive within "
                     f"{seconds:g} s (rest.header_timeout_seconds)")

    def _refuse(self, status: int, reason: str, text: str, retry_after: bool = False) -> None:
        transport = self.transport
        if transport is None:
            return
        extra = "Retry-After: 5\r\n" if retry_after else ""
        transport.write(f"HTTP/1.1 {status} {reason}\r\nWarning: {_warning(text)}\r\n{extra}"
                        "Content-Length: 0\r\nConnection: close\r\n\r\n".encode("latin-1"))
        self.force_close()


def _warning(text: str) -> str:
    clean = " ".join(text.split()).encode("latin-1", "replace").decode("latin-1")
    return f'299 ups-gateway: {clean}'


def _peer(transport) -> str | None:
    peer = transport.get_extra_info("peername") if transport is not None else None
    return f"{peer[0]}:{peer[1]}" if peer else None
