"""Noticing a Redis that came back empty (restarted without persistence, or replaced).

Such a Redis has lost every subscription, queued event, cursor and lease, yet it answers, and
the gateway would go on as if nothing happened: channels stay open, ``/health`` stays green,
and no subscriber hears of a change again. So the store carries an identity — a random name
written at the first start (``Keys.store_identity``) — that each process remembers (in memory,
and in data_dir across its restarts) and checks at start, every ``CHECK_SECONDS`` and whenever
the event hub has reconnected. When it is missing or different, the process

- logs an error (the data was lost: nothing the gateway can bring back),
- runs its ``on_reset`` hook (the composition root closes the WebSocket channels with the
  "subscribe again" close code and makes the DIMSE senders read their cursors afresh),
- has one process of the cluster (the first to claim ``Keys.store_reset``) announce SCP Status
  Change RESTARTED with COLD START to the configured DIMSE peers (and to any AE that has
  subscribed since),
- and reports the reset in ``/health`` details (``report``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Awaitable, Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.store.keys import Keys
from gateway.ups import events as ev
from gateway.ups.ports import SubscriptionStore
from gateway.ups.uids import GLOBAL_SUBSCRIPTION

log = logging.getLogger("gateway.events")

CHECK_SECONDS = 2.0
# WebSocket close code for "the gateway lost your subscription: subscribe again, then reconnect"
# (4000-4999: private use, RFC 6455 §7.4.2). Used by gateway/rest/websocket.py.
RESUBSCRIBE_CLOSE_CODE = 4100
RESET_CLAIM_SECONDS = 86400  # how long the claim on announcing one reset is kept


class StoreWatch:
    def __init__(self, client: aioredis.Redis, keys: Keys, subscriptions: SubscriptionStore,
                 peers: list[str], on_reset: Callable[[], Awaitable[None]] | None = None,
                 remember: Callable[[str], None] | None = None):
        """``remember(identity)`` keeps the identity across this process's restarts (in
        data_dir), so that a store emptied while the process was down is noticed at start."""
        self.redis = client
        self.keys = keys
        self.subscriptions = subscriptions
        self.peers = list(peers)
        self.on_reset = on_reset
        self.remember = remember
        self.identity: str | None = None
        self.resets: list[dict] = []  # what /health says: when, from which identity to which
        self._wake = asyncio.Event()

    async def started(self, remembered: str | None = None) -> None:
        """Learn the store's identity, writing it if this is the store's first start.
        ``remembered``: the identity this process's previous run knew; another one now means
        the store came back empty (or was replaced) while the process was down."""
        self.identity = await self._current()
        if remembered and remembered != self.identity:
            self.identity = remembered
            await self.check()
        elif self.remember is not None:
            self.remember(self.identity)

    def hub_notified(self, by_ae: dict | None) -> None:
        """An event hub listener: None means the hub (re)subscribed — Redis may have restarted —
        so check at once."""
        if by_ae is None:
            self._wake.set()

    async def run(self) -> None:
        """Check the identity until cancelled (a supervised task)."""
        while True:
            try:  # (asyncio.timeout: wait_for may swallow a cancellation on Python 3.11)
                async with asyncio.timeout(CHECK_SECONDS):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.check()
            except RedisError as exc:
                log.debug("store identity not checked: redis unavailable",
                          extra={"error": str(exc)})

    async def check(self) -> bool:
        """True (after reacting) when the store is not the one this process knew."""
        raw = await self.redis.get(self.keys.store_identity())
        if raw is not None and raw.decode() == self.identity:
            return False
        previous = self.identity
        self.identity = current = await self._current()
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        log.error("Redis came back without the gateway's data (restarted without persistence, "
                  "or replaced): subscriptions, queued events and delivery positions are lost; "
                  "event channels are closed so that subscribers subscribe again",
                  extra={"previous": previous, "store": current})
        self.resets = (self.resets + [{"at": when, "previous": previous, "store": current}])[-5:]
        if self.remember is not None:
            self.remember(current)
        if self.on_reset is not None:
            await self.on_reset()
        claimed = await self.redis.set(self.keys.store_reset(current), "1", nx=True,
                                       ex=RESET_CLAIM_SECONDS)
        if claimed:
            recipients = sorted(set(self.peers) | set(await self.subscriptions.subscribers()))
            sent = await self.subscriptions.broadcast(
                recipients, ev.SCP_STATUS_CHANGE, GLOBAL_SUBSCRIPTION,
                ev.scp_status("RESTARTED", "COLD START"))
            log.info("SCP status RESTARTED announced", extra={"recipients": sent,
                                                              "list_status": "COLD START"})
        return True

    def report(self) -> dict:
        """For ``/health``: the store's identity and the resets this process noticed."""
        body: dict = {"identity": self.identity}
        if self.resets:
            body["resets"] = self.resets
            body["detail"] = ("Redis came back empty: subscriptions and queued events were "
                              "lost; WebSocket channels were closed (code "
                              f"{RESUBSCRIBE_CLOSE_CODE}: subscribe again) and DIMSE peers were "
                              "sent RESTARTED, COLD START")
        return body

    async def _current(self) -> str:
        key = self.keys.store_identity()
        await self.redis.set(key, uuid.uuid4().hex, nx=True)
        return (await self.redis.get(key)).decode()
