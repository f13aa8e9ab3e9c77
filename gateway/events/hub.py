"""The process-wide notification hub: one Redis pub/sub subscription feeds the local deliverers.

Every Lua step that queues events PUBLISHes them in the same atomic step (``prelude.lua``): the
events and, per subscriber AE, which stream entry holds which. The hub decodes each notification
once and hands it to its listeners as entries by AE — the WebSocket fan-out (one delivery round
for a notification to a hundred AEs) and each DIMSE peer's sender — which send them without
reading the streams when they follow their cursors. A notification the hub cannot decode, and
every reconnection to Redis, is passed on as None: "any AE may have events; read the streams".

A commit made by this process hands its notification to the hub as soon as it returns
(``published_here``), so local subscribers do not wait for Redis to echo it back; the echo, or
whichever copy comes second, is passed over.

The same channel carries one more kind of message: a WebSocket takeover (``announce_takeover``),
which a process publishes when a channel there takes an AE's delivery over, so that the other
processes close their channels of that AE at once rather than at their next lease check.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Callable

import msgpack
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.events.queue import QueuedEntry, published_entries
from gateway.store.keys import Keys

log = logging.getLogger("gateway.events")

Listener = Callable[[dict[str, list[QueuedEntry]] | None], None]
TakeoverListener = Callable[[str, str], None]  # (AE, the new lease owner)
_TAKEOVER = b"ws-takeover"
RECONNECT_SECONDS = 1.0


# Notifications handed over by this process's own commits and not yet echoed by Redis (or echoed
# and not yet handed over): bounded, since an echo lost with a connection never comes.
HANDED_OVER_KEPT = 4096


class EventHub:
    def __init__(self, client: aioredis.Redis, keys: Keys):
        self.redis = client
        self.channel = keys.notify()
        self._listeners: list[Listener] = []
        self._takeover_listeners: list[TakeoverListener] = []
        self._once: OrderedDict[int, None] = OrderedDict()
        self.ready = asyncio.Event()  # subscribed: what is published from now on is heard

    def listen(self, listener: Listener) -> None:
        """Call ``listener(entries by AE)`` for every notification (None: read every queue)."""
        self._listeners.append(listener)

    def unlisten(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def listen_takeovers(self, listener: TakeoverListener) -> None:
        """Call ``listener(ae, owner)`` when a process takes an AE's WebSocket delivery over."""
        self._takeover_listeners.append(listener)

    async def announce_takeover(self, ae: str, owner: str) -> None:
        await self.redis.publish(self.channel, msgpack.packb([_TAKEOVER, ae, owner]))  # rare

    def published_here(self, data: bytes) -> None:
        """A notification this process's commit just published: delivered now, and its echo
        from Redis (whichever of the two comes first counts) is then passed over."""
        self._heard(data)

    def _heard(self, data: bytes) -> None:
        mark = hash(data)
        if mark in self._once:  # the other copy of this notification came first
            del self._once[mark]
            return
        self._once[mark] = None
        if len(self._once) > HANDED_OVER_KEPT:
            self._once.popitem(last=False)
        self._notify(_decode(data))

    def _notify(self, by_ae: dict[str, list[QueuedEntry]] | None) -> None:
        for listener in list(self._listeners):
            listener(by_ae)

    async def run(self) -> None:
        """Listen until cancelled (a supervised task), reconnecting after Redis is lost."""
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self.ready.set()
                self._notify(None)  # what was published while we were not subscribed
                async for message in pubsub.listen():
                    if message and message.get("type") == "message":
                        self._received(message["data"])
            except (RedisError, OSError) as exc:
                self.ready.clear()
                log.warning("event hub lost Redis; reconnecting", extra={"error": str(exc)})
                self._notify(None)  # let deliverers poll meanwhile
                await asyncio.sleep(RECONNECT_SECONDS)
            finally:
                try:
                    await pubsub.aclose()
                except (RedisError, OSError):
                    pass

    def _received(self, data: bytes) -> None:
        """A message from Redis: a takeover (a 3-element array; a notification has 2) or a
        notification."""
        if data[:1] == b"\x93":
            try:
                message = msgpack.unpackb(data, raw=True)
            except (ValueError, msgpack.UnpackException):
                message = None
            if isinstance(message, list) and len(message) == 3 and message[0] == _TAKEOVER:
                for listener in list(self._takeover_listeners):
                    listener(message[1].decode(), message[2].decode())
                return
        self._heard(data)


def _decode(data: bytes) -> dict[str, list[QueuedEntry]] | None:
    try:
        entries, events = msgpack.unpackb(data, raw=True)
        return published_entries(events, entries)
    except (ValueError, TypeError, IndexError, msgpack.UnpackException):
        log.warning("undecodable event notification: reading every queue",
                    extra={"bytes": len(data)})
        return None
