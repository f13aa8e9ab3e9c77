"""The WebSocket event channel (PS3.18 §8.10, decisions.md): one subscriber AE per connection,
one DICOM JSON event report per text frame.

A subscription outlives its WebSocket: events are queued per AE in Redis while nobody listens, and
a client that reconnects receives what it missed, in order. If the bounded backlog dropped events
meanwhile, the client is told with an SCP Status Change report (UPS List Status COLD START: query
the worklist again) instead of losing them silently.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
import weakref

from aiohttp import WSMsgType, web
from redis.exceptions import RedisError

from gateway.events.fanout import LEASE_MS, TRANSPORT, WebSocketFanout
from gateway.events.hub import EventHub
from gateway.events.queue import Lease, QueueReader

log = logging.getLogger("gateway.events")

REPLACED = 4000  # close code: a newer connection for the same AE took over

_fanouts: weakref.WeakKeyDictionary[EventHub, WebSocketFanout] = weakref.WeakKeyDictionary()


def fanout_for(gateway) -> WebSocketFanout:
    """The process's WebSocket fan-out (one per notification hub), made on first use."""
    if gateway.hub not in _fanouts:
        _fanouts[gateway.hub] = WebSocketFanout(gateway.store, gateway.hub)
    return _fanouts[gateway.hub]


async def channel(request: web.Request, ae: str) -> web.StreamResponse:
    ws = web.WebSocketResponse(heartbeat=30.0, autoping=True)
    if not ws.can_prepare(request).ok:
        raise web.HTTPBadRequest(text="this is the WebSocket event channel: open it with a "
                                 "WebSocket upgrade (GET, Upgrade: websocket)")
    events = Channel(request.app["gateway"], ws, request.transport, ae, request.get("id"))
    # Take over the AE's delivery before the handshake completes: once the client sees 101,
    # no older connection sends it anything more.
    await events.take_over()
    await ws.prepare(request)
    await events.run()
    return ws


class Channel:
    """One WebSocket: its lease on the AE's delivery and its registration. Reading the queue,
    sending the frames and renewing the lease are the process's ``WebSocketFanout``'s job."""

    def __init__(self, gateway, ws: web.WebSocketResponse, transport, ae: str,
                 request_id: str | None):
        self.gateway = gateway
        self.ws = ws
        self.transport = transport
        self.ae = ae
        self.request_id = request_id
        store = gateway.store
        self.subs = gateway.service.watch.subs
        self.fanout = fanout_for(gateway)
        self.lease = Lease(store, TRANSPORT, ae, LEASE_MS)
        self.reader = QueueReader(store, TRANSPORT, ae, self.lease)
        self.id = uuid.uuid4().hex
        self.sending: asyncio.Task | None = None  # frames to a slow client, outside the rounds
        self._replaced = False
        self._ended = asyncio.Event()  # the client left, or another connection took over

    async def take_over(self) -> None:
        await self.lease.hold(take=True)
        await self.subs.register_channel(self.ae, self.id, LEASE_MS / 1000)

    async def run(self) -> None:
        receiver = asyncio.create_task(self._receive())
        self.gateway.channels.add(self)
        self.fanout.add(self)
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
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.fanout.remove(self)
            self.gateway.channels.discard(self)
            receiver.cancel()
            await asyncio.gather(receiver, return_exceptions=True)
            if self.sending is not None:
                self.sending.cancel()
            await self.subs.unregister_channel(self.ae, self.id)
            await self.lease.release()
            if not self.ws.closed:
                await self.ws.close()
            log.info("event channel closed", extra={"ae": self.ae, "request": self.request_id})

    def replaced(self) -> None:
        """Another connection (here or in another process) now delivers this AE's events."""
        self._replaced = True
        self._ended.set()

    @property
    def closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

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

    async def close_after_delivery(self) -> None:
        """At shutdown: send what is still queued for this AE, then close (going away)."""
        try:
            await self.fanout.deliver(self)
        except (ConnectionResetError, RedisError):
            pass
        await self.ws.close(code=1001, message=b"gateway shutting down")

    async def _receive(self) -> None:
        # Clients send nothing meaningful; reading keeps pings/close handshakes flowing.
        try:
            async for message in self.ws:
                if message.type == WSMsgType.ERROR:
                    break
        finally:
            self._ended.set()  # the client left: end the channel now
