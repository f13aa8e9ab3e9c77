"""Subscriptions in Redis: per-workitem subscribers, global (and filtered global) subscriptions,
and the registry of open WebSocket channels.

  p subs:{uid}     hash  AE → "1" (deletion lock) / "0"
  p aesubs:{ae}    set   workitems the AE is subscribed to
  p global         hash  AE → msgpack {lock, filter}; p gver counts its changes (create CAS)
  p subscribers    set   every AE that holds any subscription (SCP Status Change recipients)
  p chan:{ae}      zset  process id → expiry of that process's open WebSocket for the AE
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Iterable

from gateway.store.redis_store import RedisStore, lua, now_ms, pack, unpack
from gateway.ups.dataset import Dataset

_BATCH = 500
log = logging.getLogger("gateway.store")


@dataclass
class GlobalSubscription:
    ae: str
    lock: bool
    filter: dict[str, Any] | None  # None: every workitem; else a filter spec (matching.py)


class SubscriptionStore:
    def __init__(self, store: RedisStore):
        self.store = store
        self.redis = store.redis
        self.p = store.p
        self._existing = self.redis.register_script(lua("subscribe_existing.lua"))
        self._remove_all = self.redis.register_script(lua("unsubscribe_all.lua"))
        self._broadcast = self.redis.register_script(lua("broadcast.lua"))

    # ---- global subscriptions ----------------------------------------------------------

    async def globals(self) -> tuple[int, list[GlobalSubscription]]:
        # Version first: a change between the two reads makes the version stale, never newer.
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(f"{self.p}gver")
            pipe.hgetall(f"{self.p}global")
            version, entries = await pipe.execute()
        subs = []
        for ae, blob in entries.items():
            data = unpack(blob)
            subs.append(GlobalSubscription(ae.decode(), data["lock"], data.get("filter")))
        return int(version or 0), subs

    async def set_global(self, ae: str, lock: bool, filter_spec: dict | None) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(f"{self.p}global", ae, pack({"lock": lock, "filter": filter_spec}))
            pipe.incr(f"{self.p}gver")
            pipe.sadd(f"{self.p}subscribers", ae)
            await pipe.execute()

    async def remove_global(self, ae: str) -> bool:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(f"{self.p}global", ae)
            pipe.incr(f"{self.p}gver")
            removed, _ = await pipe.execute()
        return bool(removed)

    async def subscribe_existing(self, ae: str, lock: bool, uids: list[str],
                                 send_reports: bool) -> int:
        count = 0
        for i in range(0, len(uids), _BATCH):
            count += int(await self._existing(args=[
                self.p, ae, "1" if lock else "0", "1" if send_reports else "0",
                self.store.backlog, now_ms(), *uids[i:i + _BATCH]]))
            if i and i % (20 * _BATCH) == 0:  # a large worklist takes a while: show progress
                log.info("subscribing to existing workitems",
                         extra={"ae": ae, "done": i, "of": len(uids)})
        return count

    # ---- per-workitem subscriptions ----------------------------------------------------

    async def unsubscribe(self, uid: str, ae: str) -> bool:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(f"{self.p}subs:{uid}", ae)
            pipe.srem(f"{self.p}aesubs:{ae}", uid)
            removed, _ = await pipe.execute()
        return bool(removed)

    async def unsubscribe_all(self, ae: str) -> int:
        total = 0
        while removed := int(await self._remove_all(args=[self.p, ae, _BATCH])):
            total += removed
        await self.redis.srem(f"{self.p}subscribers", ae)
        return total

    async def subscribers(self) -> list[str]:
        return sorted(ae.decode() for ae in await self.redis.smembers(f"{self.p}subscribers"))

    # ---- events outside a workitem commit -----------------------------------------------

    async def broadcast(self, aes: Iterable[str], event_type: int, uid: str, info: Dataset) -> int:
        aes = list(aes)
        if not aes:
            return 0
        return int(await self._broadcast(args=[self.p, self.store.backlog, now_ms(), event_type,
                                               uid, pack(info), *aes]))

    # ---- WebSocket channel registry ----------------------------------------------------

    async def register_channel(self, ae: str, owner: str, ttl: float) -> None:
        await self.redis.zadd(f"{self.p}chan:{ae}", {owner: time.time() + ttl})

    async def unregister_channel(self, ae: str, owner: str) -> None:
        await self.redis.zrem(f"{self.p}chan:{ae}", owner)

    async def channel_open(self, ae: str) -> bool:
        return bool(await self.redis.zcount(f"{self.p}chan:{ae}", time.time(), "+inf"))
