"""SCP Status Change events (digest §3.2, decisions.md): RESTARTED when the service comes up,
GOING DOWN when it shuts down gracefully — once per subscribed AE, with Affected SOP Instance UID
= the UPS Global Subscription instance.

With several gateway processes on one Redis the service is the cluster: only the first process to
start announces RESTARTED and only the last to stop announces GOING DOWN. Each live process keeps a
heartbeat entry so the others know it is there.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from redis.exceptions import RedisError

from gateway.ups import events as ev
from gateway.ups.uids import GLOBAL_SUBSCRIPTION

log = logging.getLogger("gateway.events")

_HEARTBEAT_S = 5.0
_ALIVE_S = 15.0


class ServiceStatus:
    def __init__(self, gateway):
        self.gateway = gateway
        self.redis = gateway.store.redis
        self.key = f"{gateway.store.p}procs"
        self.id = uuid.uuid4().hex
        self._task: asyncio.Task | None = None

    async def _alive_count(self) -> int:
        now = time.time()
        await self.redis.zremrangebyscore(self.key, "-inf", now)
        return int(await self.redis.zcard(self.key))

    async def _others(self) -> dict[str, float]:
        """The other processes' heartbeat entries (id → expiry) that have not expired."""
        await self.redis.zremrangebyscore(self.key, "-inf", time.time())
        entries = await self.redis.zrange(self.key, 0, -1, withscores=True)
        return {member.decode(): score for member, score in entries
                if member.decode() != self.id}

    async def started(self) -> None:
        others = await self._others()
        await self.redis.zadd(self.key, {self.id: time.time() + _ALIVE_S})
        self._task = asyncio.create_task(self._heartbeat(others), name="heartbeat")
        if not others:
            await self._announce_restarted()

    async def _announce_restarted(self) -> None:
        store = self.gateway.store
        subs = self.gateway.service.watch.subs
        recipients = await subs.subscribers()
        warm = await store.count_all() > 0 or bool(recipients)
        list_status = "WARM START" if warm else "COLD START"
        sent = await subs.broadcast(recipients, ev.SCP_STATUS_CHANGE, GLOBAL_SUBSCRIPTION,
                                    ev.scp_status("RESTARTED", list_status))
        log.info("SCP status RESTARTED announced", extra={"recipients": sent,
                                                          "list_status": list_status})

    async def _confirm_others(self, others: dict[str, float]) -> None:
        """A process killed without stopping leaves its entry until it expires. If none of the
        processes seen at start refreshes its entry within a heartbeat, they are gone and this
        start is a restart of the service: announce RESTARTED after all."""
        await asyncio.sleep(_HEARTBEAT_S + 1.0)
        now = await self._others()
        stale = [member for member, expiry in others.items() if now.get(member, 0) <= expiry]
        if stale:
            await self.redis.zrem(self.key, *stale)
        if not [member for member in now if member not in stale]:
            await self._announce_restarted()

    async def stopping(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            await self.redis.zrem(self.key, self.id)
            if await self._alive_count() > 0:
                return
            subs = self.gateway.service.watch.subs
            sent = await subs.broadcast(await subs.subscribers(), ev.SCP_STATUS_CHANGE,
                                        GLOBAL_SUBSCRIPTION, ev.scp_status("GOING DOWN"))
            log.info("SCP status GOING DOWN announced", extra={"recipients": sent})
        except RedisError as exc:
            log.warning("could not announce GOING DOWN", extra={"error": str(exc)})

    async def _heartbeat(self, others: dict[str, float]) -> None:
        if others:
            try:
                await self._confirm_others(others)
            except RedisError as exc:
                log.warning("could not check for a restart", extra={"error": str(exc)})
        while True:
            await asyncio.sleep(_HEARTBEAT_S)
            try:
                await self.redis.zadd(self.key, {self.id: time.time() + _ALIVE_S})
            except RedisError:
                pass
