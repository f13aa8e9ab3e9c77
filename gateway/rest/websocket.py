"""The WebSocket event channel (PS3.18 §8.10, decisions.md): one subscriber AE per connection,
one DICOM JSON event report per text frame.

A subscription outlives its WebSocket: events are queued per AE in Redis while nobody listens, and
a client that reconnects receives what it missed, in order. If the bounded backlog dropped events
meanwhile, the client is told with an SCP Status Change report (UPS List Status COLD START: query
the worklist again) instead of losing them silently. Reading the queue, sending the frames and
renewing the lease are the process's ``WebSocketFanout``'s job; this module is the aiohttp side.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from aiohttp import WSMsgType, web
from redis.exceptions import RedisError

from gateway.events.fanout import WebSocketFanout
from gateway.events.store_watch import RESUBSCRIBE_CLOSE_CODE
from gateway.rest.state import REQUEST_ID

log = logging.getLogger("gateway.events")

REPLACED = 4000  # close code: a newer connection for the same AE took over
GOING_AWAY = 1001


async def open_channel(request: web.Request, fanout: WebSocketFanout,
                       ae: str) -> web.StreamResponse:
    ws = web.WebSocketResponse(heartbeat=30.0, autoping=True)
    if not ws.can_prepare(request).ok:
        raise web.HTTPBadRequest(text="this is the WebSocket event channel: open it with a "
                                 "WebSocket upgrade (GET, Upgrade: websocket)")
    channel = Channel(fanout, ws, request.transport, ae, request.get(REQUEST_ID))
    # Take over the AE's delivery before the handshake completes: once the client sees 101,
    # no older connection sends it anything more.
    await fanout.open(channel)
    try:
        await ws.prepare(request)
    except BaseException:
        await fanout.close(channel)
        raise
    await channel.run()
    return ws


class Channel:
    """One WebSocket event channel, as the fan-out serves it (``fanout.Channel``)."""

    def __init__(self, fanout: WebSocketFanout, ws: web.WebSocketResponse, transport, ae: str,
                 request_id: str | None):
        self.fanout = fanout
        self.ws = ws
        self.transport = transport
        self.ae = ae
        self.request_id = request_id
        self.id = uuid.uuid4().hex
        self.reader = fanout.reader(ae)
        self.sending: asyncio.Task | None = None
        self._replaced = False
        self._resubscribe = False
        self._ended = asyncio.Event()  # the client left, or another connection took over

    async def run(self) -> None:
        receiver = asyncio.create_task(self._receive())
        self.fanout.serve(self)
        log.info("event channel opened", extra={"ae": self.ae, "request": self.request_id})
        try:
            try:
                await self.fanout.deliver(self)  # what was queued before this connection
            except RedisError as exc:  # the fan-out's next poll tries again
                log.warning("event channel delivery postponed: redis unavailable",
                            extra={"ae": self.ae, "error": str(exc)})
            await self._ended.wait()
            if self._replaced and not self.ws.closed:
                await self.ws.close(code=REPLACED,
                                    message=b"replaced by a newer connection for this AE")
            elif self._resubscribe and not self.ws.closed:
                await self.ws.close(code=RESUBSCRIBE_CLOSE_CODE,
                                    message=b"the gateway lost its subscriptions: subscribe again")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            receiver.cancel()
            await asyncio.gather(receiver, return_exceptions=True)
            if self.sending is not None:
                self.sending.cancel()
            try:
                await self.fanout.close(self)
            except RedisError as exc:  # its registration and lease expire on their own
                log.warning("event channel not unregistered: redis unavailable",
                            extra={"ae": self.ae, "error": str(exc)})
            if not self.ws.closed:
                await self.ws.close()
            log.info("event channel closed", extra={"ae": self.ae, "request": self.request_id})

    # ---- what the fan-out sees ------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.ws.closed

    @property
    def closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def replaced(self) -> None:
        """Another connection (here or in another process) now delivers this AE's events."""
        self._replaced = True
        self._ended.set()

    def resubscribe(self) -> None:
        """The store lost this AE's subscriptions: end the channel, telling the client."""
        self._resubscribe = True
        self._ended.set()

    def can_send_now(self, frames: list[bytes]) -> bool:
        """Whether ``frames`` fit in the socket's write buffer, so that sending them does not
        wait for the client (aiohttp waits only once the buffer passes its high-water mark)."""
        transport = self.transport
        if self.closing:
            return False
        _, high = transport.get_write_buffer_limits()
        return transport.get_write_buffer_size() + sum(map(len, frames)) + 16 * len(frames) <= high

    async def send(self, frames: list[bytes]) -> None:
        for frame in frames:
            await self.ws.send_frame(frame, WSMsgType.TEXT)

    # ---- ending ---------------------------------------------------------------------------------

    async def close_after_delivery(self) -> None:
        """At shutdown: send what is still queued for this AE, then close (going away)."""
        try:
            await self.fanout.deliver(self)
        except (ConnectionResetError, RedisError):
            pass
        await self.ws.close(code=GOING_AWAY, message=b"gateway shutting down")

    async def _receive(self) -> None:
        # Clients send nothing meaningful; reading keeps pings/close handshakes flowing.
        try:
            async for message in self.ws:
                if message.type == WSMsgType.ERROR:
                    break
        finally:
            self._ended.set()  # the client left: end the channel now


def close_for_resubscribe(fanout: WebSocketFanout) -> int:
    """Redis came back empty: end every open channel with the "subscribe again" close code."""
    channels = [channel for channel in fanout.channels if isinstance(channel, Channel)]
    for channel in channels:
        channel.resubscribe()
    return len(channels)


async def close_all(fanout: WebSocketFanout, timeout: float) -> None:
    """At shutdown: deliver what is queued for every open channel (GOING DOWN included), then
    close each, within ``timeout``."""
    channels = [channel for channel in fanout.channels if isinstance(channel, Channel)]
    if channels:
        await asyncio.wait([asyncio.create_task(channel.close_after_delivery())
                            for channel in channels], timeout=timeout)
