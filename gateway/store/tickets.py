"""Single-use WebSocket tickets in Redis: any gateway process sharing the Redis accepts a ticket,
exactly once (GETDEL), until its TTL runs out (SET NX EX). Only the ticket's SHA-256 is a key,
so a dump of Redis holds no usable ticket."""

from __future__ import annotations

import hashlib

import orjson
import redis.asyncio as aioredis

from gateway.store.keys import Keys


class RedisTickets:
    def __init__(self, client: aioredis.Redis, keys: Keys):
        self.redis = client
        self.keys = keys

    def _key(self, ticket: str) -> str:
        return self.keys.ticket(hashlib.sha256(ticket.encode()).hexdigest())

    async def put(self, ticket: str, grant: dict, ttl_seconds: int) -> bool:
        """Store ``grant`` under a new ticket; False if the ticket exists already."""
        return bool(await self.redis.set(self._key(ticket), orjson.dumps(grant),
                                         nx=True, ex=ttl_seconds))

    async def take(self, ticket: str) -> dict | None:
        """The ticket's grant, removing it: a second take, or one after the TTL, gets None."""
        raw = await self.redis.getdel(self._key(ticket))
        return orjson.loads(raw) if raw is not None else None
