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
import time
import uuid

import orjson
from aiohttp import WSMsgType, web
from redis.exceptions import RedisError

from gateway.events.hub import wait_for
from gateway.events.queue import Lease, LeaseLost, QueuedEntry, QueueReader
from gateway.ups import events as ev
from gateway.ups.dicomtime import UTC
from gateway.ups.uids import GLOBAL_SUBSCRIPTION

log = logging.getLogger("gateway.events")

_POLL_SECONDS = 5.0
_LEASE_MS = 15000
_REFRESH_SECONDS = 2.0
_BATCH = 200  # lease and channel registration are renewed this often, not per event
REPLACED = 4000  # close code: a newer connection for the same AE took over


async def channel(request: web.Request, ae: str) -> web.StreamResponse:
    ws = web.WebSocketResponse(heartbeat=30.0, autoping=True)
    if not ws.can_prepare(request).ok:
        raise web.HTTPBadRequest(text="this is the WebSocket event channel: open it with a "
                                 "WebSocket upgrade (GET, Upgrade: websocket)")
    events = Channel(request.app["gateway"], ws, ae, request.get("id"))
    # Take over the AE's delivery before the handshake completes: once the client sees 101,
    # no older connection sends it anything more.
    await events.take_over()
    await ws.prepare(request)
    await events.run()
    return ws


class Channel:
    def __init__(self, gateway, ws: web.WebSocketResponse, ae: str, request_id: str | None):
        self.gateway = gateway
        self.ws = ws
        self.ae = ae
        self.request_id = request_id
        store = gateway.store
        self.subs = gateway.service.watch.subs
        self.lease = Lease(store, "ws", ae, _LEASE_MS)
        self.reader = QueueReader(store, "ws", ae, self.lease)
        self.id = uuid.uuid4().hex
        self._delivering = asyncio.Lock()  # the loop and a shutdown drain never send twice

    async def take_over(self) -> None:
        await self.lease.hold(take=True)
        await self.subs.register_channel(self.ae, self.id, _LEASE_MS / 1000)

    async def run(self) -> None:
        hub = self.gateway.hub
        wake = hub.waiter(self.ae)
        receiver = asyncio.create_task(self._receive(wake))
        self.gateway.channels.add(self)
        log.info("event channel opened", extra={"ae": self.ae, "request": self.request_id})
        try:
            refreshed = time.monotonic()
            while not self.ws.closed and not receiver.done():
                if time.monotonic() - refreshed > _REFRESH_SECONDS:
                    if not await self.lease.hold():
                        await self.ws.close(code=REPLACED,
                                            message=b"replaced by a newer connection for this AE")
                        break
                    await self.subs.register_channel(self.ae, self.id, _LEASE_MS / 1000)
                    refreshed = time.monotonic()
                try:
                    await self._deliver()
                except LeaseLost:
                    await self.ws.close(code=REPLACED,
                                        message=b"replaced by a newer connection for this AE")
                    break
                await wait_for(hub, wake, _POLL_SECONDS)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            hub.drop(self.ae, wake)
            self.gateway.channels.discard(self)
            receiver.cancel()
            await asyncio.gather(receiver, return_exceptions=True)
            await self.subs.unregister_channel(self.ae, self.id)
            await self.lease.release()
            if not self.ws.closed:
                await self.ws.close()
            log.info("event channel closed", extra={"ae": self.ae, "request": self.request_id})

    async def close_after_delivery(self) -> None:
        """At shutdown: send what is still queued for this AE, then close (going away)."""
        try:
            await self._deliver()
        except (LeaseLost, ConnectionResetError, RedisError):
            pass
        await self.ws.close(code=1001, message=b"gateway shutting down")

    async def _deliver(self) -> None:
        async with self._delivering:
            await self._deliver_queued()

    async def _deliver_queued(self) -> None:
        while not self.ws.closed:
            entries, lost = await self.reader.pending(_BATCH)
            if not entries:
                return
            if lost:
                await self._send(overflow_notice(lost))
                log.warning("event backlog overflowed", extra={"ae": self.ae, "lost": lost})
            for entry in entries:
                await self._send(entry.frame())
            if not await self.reader.ack(entries[-1]) or len(entries) < _BATCH:
                return  # caught up (or lease lost: the next turn closes this channel)

    async def _send(self, frame: dict) -> None:
        await self.ws.send_str(orjson.dumps(frame).decode())

    async def _receive(self, wake: asyncio.Event) -> None:
        # Clients send nothing meaningful; reading keeps pings/close handshakes flowing.
        try:
            async for message in self.ws:
                if message.type == WSMsgType.ERROR:
                    break
        finally:
            wake.set()  # the client left: end the delivery loop now, not at its next poll


def overflow_notice(lost: int) -> dict:
    """An SCP Status Change telling a subscriber that ``lost`` events were dropped for it."""
    info = ev.scp_status("RESTARTED")
    info.update({"00741244": {"vr": "CS", "Value": ["WARM START"]},
                 "00741246": {"vr": "CS", "Value": ["COLD START"]}})
    entry = QueuedEntry("0-0", 0, ev.SCP_STATUS_CHANGE, GLOBAL_SUBSCRIPTION, info, 0)
    frame = entry.frame()
    frame["00000902"] = {"vr": "LO", "Value": [f"{lost} events were dropped; query again"[:64]]}
    return frame
