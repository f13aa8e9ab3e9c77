"""SCP Status Change events (digest §3.2, decisions.md): RESTARTED when the service comes up,
GOING DOWN when it shuts down gracefully — once per subscribed AE, with Affected SOP Instance UID
= the UPS Global Subscription instance.

With several gateway processes on one Redis the service is the cluster: only the first process to
start announces RESTARTED and only the last to stop announces GOING DOWN. Each live process keeps a
heartbeat entry so the others know it is there, named by its instance identity
(``gateway/instance.py``): a process restarted after a crash finds its previous run's entry,
knows it for its own, and announces RESTARTED at once rather than waiting to see it go stale.

Each run also stamps the identity with a token of its own (``Keys.instance_run``), checked at
every heartbeat: two live processes given the same identity would deliver events twice, so each
that finds another run's token says so in its log and in ``/health``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.store.keys import Keys
from gateway.ups import events as ev
from gateway.ups.ports import SubscriptionStore, WorkitemStore
from gateway.ups.uids import GLOBAL_SUBSCRIPTION

log = logging.getLogger("gateway.events")

HEARTBEAT_SECONDS = 5.0
ALIVE_SECONDS = 15.0


class ServiceStatus:
    def __init__(self, client: aioredis.Redis, keys: Keys, workitems: WorkitemStore,
                 subscriptions: SubscriptionStore, instance: str | None = None):
        self.redis = client
        self.key = keys.processes()
        self.workitems = workitems
        self.subscriptions = subscriptions
        self.id = instance or uuid.uuid4().hex
        self.run_key = keys.instance_run(self.id)
        self.run = uuid.uuid4().hex
        self.shared_identity: str | None = None  # set while another live run uses our identity
        self._others_at_start: dict[str, float] = {}

    async def started(self) -> None:
        """Join the cluster; announce RESTARTED if this process is the first of it (an entry
        of our own identity is our previous run's: it does not count)."""
        await self.redis.set(self.run_key, self.run, px=int(ALIVE_SECONDS * 1000))
        self._others_at_start = await self._others()
        await self._beat()
        if not self._others_at_start:
            await self._announce_restarted()

    async def heartbeat(self) -> None:
        """Keep this process's entry alive until cancelled (a supervised task)."""
        if self._others_at_start:
            others, self._others_at_start = self._others_at_start, {}
            await self._confirm_others(others)
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                await self._check_run()
                await self._beat()
            except RedisError as exc:
                log.warning("heartbeat skipped: redis unavailable", extra={"error": str(exc)})

    async def stopping(self) -> None:
        """Leave the cluster; announce GOING DOWN if this process was the last of it."""
        try:
            await self.redis.zrem(self.key, self.id)
            if await self.redis.get(self.run_key) == self.run.encode():
                await self.redis.delete(self.run_key)
            await self.redis.zremrangebyscore(self.key, "-inf", time.time())
            if int(await self.redis.zcard(self.key)) > 0:
                return
            sent = await self._broadcast(ev.scp_status("GOING DOWN"))
            log.info("SCP status GOING DOWN announced", extra={"recipients": sent})
        except RedisError as exc:
            log.warning("could not announce GOING DOWN", extra={"error": str(exc)})

    async def _check_run(self) -> None:
        """Renew this run's stamp on the identity, noting whether another run had replaced it."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(self.run_key)
            pipe.set(self.run_key, self.run, px=int(ALIVE_SECONDS * 1000))
            previous, _ = await pipe.execute()
        if previous is not None and previous != self.run.encode():
            if self.shared_identity is None:
                log.error("another live gateway process uses this instance identity: events "
                          "may be delivered twice; give each process its own instance_name",
                          extra={"instance": self.id})
            self.shared_identity = (f"instance identity {self.id!r} is in use by another live "
                                    "process")
        else:
            self.shared_identity = None

    async def _beat(self) -> None:
        await self.redis.zadd(self.key, {self.id: time.time() + ALIVE_SECONDS})

    async def _others(self) -> dict[str, float]:
        """The other processes' heartbeat entries (id → expiry) that have not expired."""
        await self.redis.zremrangebyscore(self.key, "-inf", time.time())
        entries = await self.redis.zrange(self.key, 0, -1, withscores=True)
        return {member.decode(): score for member, score in entries
                if member.decode() != self.id}

    async def _confirm_others(self, others: dict[str, float]) -> None:
        """A process killed without stopping leaves its entry until it expires. If none of the
        processes seen at start refreshes its entry within a heartbeat, they are gone and this
        start is a restart of the service: announce RESTARTED after all."""
        await asyncio.sleep(HEARTBEAT_SECONDS + 1.0)
        now = await self._others()
        stale = [member for member, expiry in others.items() if now.get(member, 0) <= expiry]
        if stale:
            await self.redis.zrem(self.key, *stale)
        if not [member for member in now if member not in stale]:
            await self._announce_restarted()

    async def _announce_restarted(self) -> None:
        recipients = await self.subscriptions.subscribers()
        warm = await self.workitems.count() > 0 or bool(recipients)
        list_status = "WARM START" if warm else "COLD START"
        sent = await self._broadcast(ev.scp_status("RESTARTED", list_status), recipients)
        log.info("SCP status RESTARTED announced", extra={"recipients": sent,
                                                          "list_status": list_status})

    async def _broadcast(self, info, recipients: list[str] | None = None) -> int:
        if recipients is None:
            recipients = await self.subscriptions.subscribers()
        return await self.subscriptions.broadcast(recipients, ev.SCP_STATUS_CHANGE,
                                                  GLOBAL_SUBSCRIPTION, info)
