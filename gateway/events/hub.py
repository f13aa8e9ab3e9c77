"""The process-wide notification hub: one Redis pub/sub subscription wakes local deliverers.

Every Lua step that queues events PUBLISHes the subscriber AEs it queued for (newline-separated)
in the same atomic step. DIMSE senders wait on the hub per AE; the WebSocket fan-out listens to
whole notifications (``listen``), so that one message with a hundred AEs becomes one delivery
round, not a hundred wake-ups. Both still re-check their queues every few seconds in case a
notification was missed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Callable

from redis.exceptions import RedisError

log = logging.getLogger("gateway.events")


class EventHub:
    def __init__(self, redis, prefix: str):
        self.redis = redis
        self.channel = f"{prefix}notify"
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._listeners: list[Callable[[list[str] | None], None]] = []
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        ready = asyncio.Event()
        self._task = asyncio.create_task(self._listen(ready), name="event-hub")
        await asyncio.wait_for(ready.wait(), 10)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def waiter(self, ae: str) -> asyncio.Event:
        event = asyncio.Event()
        self._waiters[ae].add(event)
        return event

    def drop(self, ae: str, event: asyncio.Event) -> None:
        self._waiters[ae].discard(event)
        if not self._waiters[ae]:
            self._waiters.pop(ae, None)

    def wake(self, ae: str) -> None:
        for event in self._waiters.get(ae, ()):
            event.set()

    def listen(self, callback: Callable[[list[str] | None], None]) -> None:
        """Call ``callback(aes)`` with the AEs of every notification (None: any AE may have
        events, e.g. after the hub lost Redis for a while)."""
        self._listeners.append(callback)

    def _notify(self, aes: list[str] | None) -> None:
        for ae in (aes if aes is not None else list(self._waiters)):
            self.wake(ae)
        for callback in self._listeners:
            callback(aes)

    async def _listen(self, ready: asyncio.Event) -> None:
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                ready.set()
                async for message in pubsub.listen():
                    if message and message.get("type") == "message":
                        self._notify(message["data"].decode().split("\n"))
            except asyncio.CancelledError:
                await pubsub.aclose()
                raise
            except (RedisError, OSError) as exc:
                log.warning("event hub lost Redis; reconnecting", extra={"error": str(exc)})
                self._notify(None)  # let deliverers poll meanwhile
                await asyncio.sleep(1)
            finally:
                try:
                    await pubsub.aclose()
                except Exception:
                    pass


async def wait_for(hub: EventHub, event: asyncio.Event, timeout: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except asyncio.TimeoutError:
        pass
    event.clear()
