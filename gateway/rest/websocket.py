"""The WebSocket event channel (PS3.18 §8.10, decisions.md): one subscriber AE per connection,
one DICOM JSON event report per text frame.

A subscription outlives its WebSocket: events are queued per AE in Redis while nobody listens, and
a client that reconnects receives what it missed, in order. If the bounded backlog dropped events
meanwhile, the client is told with an SCP Status Change report (UPS List Status COLD START: query
the worklist again) instead of losing them silently. Reading the queue, sending the frames and
renewing the lease are the process's ``WebSocketFanout``'s job; this module is the aiohttp side:
the handshake (AE title, subprotocol, limits: each refusal a 4xx with a Warning before any
upgrade), and the confirmations — the client's pongs to the ping that follows each batch of
frames, which are what makes events count as delivered.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
import uuid

from aiohttp import WSMsgType, web
from redis.exceptions import RedisError

from gateway.events.fanout import ChannelRefused, WebSocketFanout
from gateway.events.queue import QueuedEntry
from gateway.events.store_watch import RESUBSCRIBE_CLOSE_CODE
from gateway.rest.messages import problem
from gateway.rest.state import REQUEST_ID
from gateway.ups.errors import UPSError
from gateway.ups.watch import check_ae

log = logging.getLogger("gateway.events")

REPLACED = 4000  # close code: a channel for the same AE opened in another process took over
TOO_SLOW = 4001  # close code: the client confirmed nothing in time; its events stay queued
GOING_AWAY = 1001
CLOSE_SECONDS = 5.0  # a close handshake (and the write of its frame) takes at most this long
HEARTBEAT_SECONDS = 30.0


async def open_channel(request: web.Request, fanout: WebSocketFanout, ae: str,
                       subprotocols: list[str]) -> web.StreamResponse:
    try:
        check_ae(ae)  # exactly as Subscribe checks it
    except UPSError as error:
        return problem(request, 400, f"event channel: {error.message}")
    offered = [name.strip() for header in request.headers.getall("Sec-WebSocket-Protocol", ())
               for name in header.split(",") if name.strip()]
    chosen = next((p for p in offered if p in subprotocols), None)
    if offered and chosen is None:  # a 101 without one of them would be dropped by the client
        return problem(request, 400, f"event channel: none of the offered WebSocket "
                       f"subprotocols ({', '.join(offered)}) is supported; offer one of "
                       f"{', '.join(subprotocols)} or none")
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_SECONDS, autoping=False,
                               protocols=[chosen] if chosen else (), timeout=CLOSE_SECONDS)
    if not ws.can_prepare(request).ok:
        raise web.HTTPBadRequest(text="this is the WebSocket event channel: open it with a "
                                 "WebSocket upgrade (GET, Upgrade: websocket)")
    channel = Channel(fanout, ws, request.transport, ae, request.get(REQUEST_ID))
    # Take over the AE's delivery from other processes before the handshake completes: once
    # the client sees 101, no channel of another process sends it anything more.
    try:
        await fanout.open(channel)
    except ChannelRefused as refused:
        log.warning("event channel refused", extra={"ae": ae, "reason": refused.reason,
                                                    "request": channel.request_id})
        return problem(request, refused.status, f"event channel: {refused.reason}",
                       headers={"Retry-After": "10"} if refused.status == 503 else None)
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
        self.reader = None  # the fan-out's, on the AE's lease
        self.sending: asyncio.Task | None = None
        self.unconfirmed_bytes = 0
        # (ping token, last event before it, bytes, when sent), oldest first
        self._unconfirmed: collections.deque[tuple[int, QueuedEntry, int, float]] = \
            collections.deque()
        self._tokens = itertools.count(1)
        self._ending: tuple[int, bytes] | None = None  # close code and reason, when we end it
        self._ended = asyncio.Event()  # the client left, or we end the channel
        self._all_confirmed = asyncio.Event()
        self._all_confirmed.set()
        self.finished = asyncio.Event()  # ``run`` is over

    async def run(self) -> None:
        receiver = asyncio.create_task(self._receive())
        self.fanout.serve(self)
        log.info("event channel opened", extra={"ae": self.ae, "request": self.request_id,
                                                "protocol": self.ws.ws_protocol})
        try:
            try:
                await self.fanout.deliver(self)  # what was queued before this connection
            except RedisError as exc:  # the fan-out's next poll tries again
                log.warning("event channel delivery postponed: redis unavailable",
                            extra={"ae": self.ae, "error": str(exc)})
            await self._ended.wait()
            if self._ending is not None and not self.ws.closed:
                if self.sending is not None:
                    self.sending.cancel()
                await self._close(*self._ending)
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
                await self._close(1000, b"")
            log.info("event channel closed", extra={
                "ae": self.ae, "request": self.request_id,
                "code": self._ending[0] if self._ending else self.ws.close_code,
                "unconfirmed": self.unconfirmed_bytes})
            self.finished.set()

    async def _close(self, code: int, message: bytes) -> None:
        """Close with ``code``; a client that does not read cannot hold the close up."""
        try:
            await asyncio.wait_for(self.ws.close(code=code, message=message), CLOSE_SECONDS)
        except (asyncio.TimeoutError, ConnectionError, RuntimeError):
            pass
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()

    # ---- what the fan-out sees ------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.ws.closed

    @property
    def closing(self) -> bool:
        return self.transport is None or self.transport.is_closing() or self._ending is not None

    def replaced(self) -> None:
        """A channel for this AE in another process now delivers the AE's events."""
        self._end(REPLACED, b"replaced by a channel for this AE on another gateway process")

    def too_slow(self) -> None:
        self._end(TOO_SLOW, b"events not confirmed in time (not reading?); they stay queued")

    def _end(self, code: int, message: bytes) -> None:
        if self._ending is None:
            self._ending = (code, message)
        self._ended.set()

    def resubscribe(self) -> None:
        """The store lost this AE's subscriptions: end the channel, telling the client."""
        self._end(RESUBSCRIBE_CLOSE_CODE, b"the gateway lost its subscriptions: subscribe again")

    def can_send_now(self, frames: list[bytes]) -> bool:
        """Whether ``frames`` fit in the socket's write buffer, so that sending them does not
        wait for the client (aiohttp waits only once the buffer passes its high-water mark)."""
        transport = self.transport
        if self.closing:
            return False
        _, high = transport.get_write_buffer_limits()
        return transport.get_write_buffer_size() + sum(map(len, frames)) + 16 * len(frames) <= high

    async def send(self, frames: list[bytes], last: QueuedEntry) -> None:
        token = next(self._tokens)
        size = sum(map(len, frames))
        self._unconfirmed.append((token, last, size, time.monotonic()))
        self.unconfirmed_bytes += size
        self._all_confirmed.clear()
        for frame in frames:
            await self.ws.send_frame(frame, WSMsgType.TEXT)
        await self.ws.ping(token.to_bytes(8, "big"))  # its pong confirms the frames before it

    def stalled(self, now: float, timeout: float) -> bool:
        return bool(self._unconfirmed) and now - self._unconfirmed[0][3] > timeout

    def _confirm(self, payload: bytes) -> None:
        if len(payload) != 8:
            return  # the heartbeat's pong, or a client's own
        token = int.from_bytes(payload, "big")
        last = None
        while self._unconfirmed and self._unconfirmed[0][0] <= token:
            _, last, size, _ = self._unconfirmed.popleft()
            self.unconfirmed_bytes -= size
        if not self._unconfirmed:
            self._all_confirmed.set()
        if last is not None:
            self.fanout.confirmed(self, last)

    # ---- ending ---------------------------------------------------------------------------------

    async def close_after_delivery(self, wait: float = CLOSE_SECONDS) -> None:
        """At shutdown: send what is still queued for this AE, then close (going away); the
        close handshake lets the client's confirmations of the last frames arrive first."""
        try:
            await self.fanout.deliver(self)
            await asyncio.wait_for(self._all_confirmed.wait(), wait)
        except (ConnectionResetError, RedisError, asyncio.TimeoutError):
            pass
        self._end(GOING_AWAY, b"gateway shutting down")

    async def _receive(self) -> None:
        # Clients send nothing meaningful but pongs; reading keeps pings/close handshakes
        # flowing.
        try:
            async for message in self.ws:
                if message.type == WSMsgType.PONG:
                    self._confirm(message.data)
                elif message.type == WSMsgType.PING:
                    await self.ws.pong(message.data)
                elif message.type == WSMsgType.ERROR:
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
        started = time.monotonic()
        await asyncio.wait([asyncio.create_task(channel.close_after_delivery(timeout * 0.75))
                            for channel in channels], timeout=timeout)
        left = max(0.1, timeout - (time.monotonic() - started))
        await asyncio.wait([asyncio.create_task(channel.finished.wait())
                            for channel in channels], timeout=left)
