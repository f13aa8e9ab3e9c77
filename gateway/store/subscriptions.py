"""The core's subscription store (``gateway.ups.ports.SubscriptionStore``) on Redis: global (and
filtered global) subscriptions, per-workitem subscribers, events outside a workitem commit, and
whether an AE has an open event channel somewhere (``keys`` has the layout)."""

from __future__ import annotations

import logging
import time
from typing import Iterable

import redis.asyncio as aioredis

from gateway.store import codec, scripts
from gateway.store.keys import Keys
from gateway.store.lane import Lane
from gateway.store.replication import Replication
from gateway.store.workitems import now_ms
from gateway.ups.dataset import Dataset
from gateway.ups.matching import Terms, legacy_terms
from gateway.ups.ports import GlobalSubscription

_BATCH = 500
log = logging.getLogger("gateway.store")


class RedisSubscriptionStore:
    def __init__(self, client: aioredis.Redis, keys: Keys, *, backlog: int = 1000,
                 replication: Replication = Replication()):
        self.redis = client
        # Subscription changes that must be replicated go on a connection of their own: while
        # their WAIT waits, Redis holds that connection's later commands (``_transact``).
        self.replicated_lane = Lane(client)
        self.replication = replication
        self.keys = keys
        self.backlog = backlog
        self._existing = scripts.script(client, "subscribe_existing.lua")
        self._remove_all = scripts.script(client, "unsubscribe_all.lua")
        self._broadcast = scripts.script(client, "broadcast.lua")

    # ---- global subscriptions ----------------------------------------------------------------

    async def globals(self) -> tuple[int, list[GlobalSubscription]]:
        # Version first: a change between the two reads makes the version stale, never newer.
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(self.keys.globals_version())
            pipe.hgetall(self.keys.globals())
            version, entries = await pipe.execute()
        subs = []
        for ae, blob in entries.items():
            data = codec.unpack(blob)
            terms = data.get("filter")
            if isinstance(terms, dict):  # written by an earlier version
                terms = legacy_terms(terms)
            subs.append(GlobalSubscription(ae.decode(), data["lock"], terms))
        return int(version or 0), subs

    async def set_global(self, ae: str, lock: bool, terms: Terms | None) -> None:
        await self._transact(f"The subscription of {ae}", [
            ("HSET", self.keys.globals(), ae, codec.pack({"lock": lock, "filter": terms})),
            ("INCR", self.keys.globals_version()),
            ("SADD", self.keys.subscribers(), ae)])

    async def remove_global(self, ae: str) -> bool:
        removed, _ = await self._transact(f"The removal of {ae}'s worklist subscription", [
            ("HDEL", self.keys.globals(), ae), ("INCR", self.keys.globals_version())])
        return bool(removed)

    async def subscribe_existing(self, ae: str, lock: bool, uids: list[str],
                                 send_reports: bool) -> int:
        count = 0
        for i in range(0, len(uids), _BATCH):
            count += int(await self._existing(args=[
                self.keys.prefix, ae, "1" if lock else "0", "1" if send_reports else "0",
                self.backlog, now_ms(), *uids[i:i + _BATCH]]))
            if i and i % (20 * _BATCH) == 0:  # a large worklist takes a while: show progress
                log.info("subscribing to existing workitems",
                         extra={"ae": ae, "done": i, "of": len(uids)})
        return count

    async def close(self) -> None:
        await self.replicated_lane.close()

    async def _transact(self, what: str, commands: list[tuple]) -> list:
        """Run ``commands`` as one MULTI/EXEC transaction; their replies. When changes must be
        replicated (``replication``), a WAIT follows the EXEC on the same connection (a WAIT
        inside the transaction would not wait) and the replies come once the replicas have it."""
        if not self.replication.replicas:
            async with self.redis.pipeline(transaction=True) as pipe:
                for command in commands:
                    pipe.execute_command(*command)
                return await pipe.execute()
        replies = await self.replicated_lane.call_together(
            ("MULTI",), *commands, ("EXEC",),
            ("WAIT", self.replication.replicas, self.replication.timeout_ms))
        self.replication.check(int(replies[-1]), what)
        return replies[-2]

    # ---- per-workitem subscriptions ----------------------------------------------------------

    async def unsubscribe(self, uid: str, ae: str) -> bool:
        removed, _ = await self._transact(f"The removal of {ae}'s subscription to {uid}", [
            ("HDEL", self.keys.subscribers_of(uid), ae),
            ("SREM", self.keys.subscriptions_of(ae), uid)])
        return bool(removed)

    async def unsubscribe_all(self, ae: str) -> int:
        total = 0
        while removed := int(await self._remove_all(args=[self.keys.prefix, ae, _BATCH])):
            total += removed
        await self.redis.srem(self.keys.subscribers(), ae)
        return total

    async def subscribers(self) -> list[str]:
        return sorted(ae.decode() for ae in await self.redis.smembers(self.keys.subscribers()))

    async def admits(self, ae: str, limit: int) -> bool:
        # Checked before the subscription is written: subscribes racing in other processes may
        # pass the limit by as many as they are.
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.sismember(self.keys.subscribers(), ae)
            pipe.scard(self.keys.subscribers())
            member, count = await pipe.execute()
        return bool(member) or count < limit

    async def overview(self) -> list[dict]:
        """Every subscriber AE (for ``ups-gateway subscriptions list``): its worklist
        subscription (none, global or filtered, with its deletion lock and filter), how many
        workitems it is subscribed to, and whether an event channel of it is open. Reads only."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.smembers(self.keys.subscribers())
            pipe.hgetall(self.keys.globals())
            members, entries = await pipe.execute()
        worklist = {ae.decode(): codec.unpack(blob) for ae, blob in entries.items()}
        aes = sorted({ae.decode() for ae in members} | set(worklist))
        now = time.time()
        async with self.redis.pipeline(transaction=False) as pipe:
            for ae in aes:
                pipe.scard(self.keys.subscriptions_of(ae))
                pipe.zcount(self.keys.channels(ae), now, "+inf")
            counts = await pipe.execute()
        found = []
        for i, ae in enumerate(aes):
            sub = worklist.get(ae)
            terms = sub.get("filter") if sub else None
            if isinstance(terms, dict):  # written by an earlier version
                terms = legacy_terms(terms)
            found.append({
                "ae": ae,
                "worklist": None if sub is None else ("filtered" if terms else "global"),
                "deletion_lock": None if sub is None else bool(sub["lock"]),
                "filter": terms or None,
                "workitems": int(counts[2 * i]),
                "channel_open": bool(counts[2 * i + 1])})
        return found

    # ---- events outside a workitem commit ----------------------------------------------------

    async def broadcast(self, aes: Iterable[str], event_type: int, uid: str, info: Dataset) -> int:
        aes = list(aes)
        if not aes:
            return 0
        return int(await self._broadcast(args=[self.keys.prefix, self.backlog, now_ms(),
                                               event_type, uid, codec.pack(info), *aes]))

    # ---- event channels ----------------------------------------------------------------------

    async def channel_open(self, ae: str) -> bool:
        return bool(await self.redis.zcount(self.keys.channels(ae), time.time(), "+inf"))
