"""The worklist's figures for the metrics, read from Redis in one script call (``stats.lua``):
workitems by state and Worklist Label, and state transitions. The same for every gateway
process of the worklist. (Event backlogs: ``events.queue.EventQueues.backlog``.)"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from gateway.store import codec, scripts
from gateway.store.keys import Keys
from gateway.ups.uids import STATES

_SEED_SCAN = 500


@dataclass
class WorklistFigures:
    workitems: dict[tuple[str, str], int]  # (state, label) → count
    transitions: dict[tuple[str, str], int]  # (from, to) → count


class WorklistStats:
    def __init__(self, client: aioredis.Redis, keys: Keys):
        self.redis = client
        self.keys = keys
        self._read = scripts.script(client, "stats.lua")

    async def read(self) -> WorklistFigures:
        rows, transitions = await self._read(
            args=[self.keys.prefix, codec.pack_for_lua(list(STATES))])
        workitems = {}
        for label, *counts in rows:
            for state, count in zip(STATES, counts):
                workitems[(state, label.decode())] = int(count)
        moves = {}
        for name, count in zip(transitions[::2], transitions[1::2]):
            source, _, target = name.decode().partition(">")
            moves[(source, target)] = int(count)
        return WorklistFigures(workitems, moves)

    async def seed_labels(self) -> None:
        """Workitems stored before the gateway kept the label set: find their labels once
        (from the label indexes; harmless to repeat, and only done while the set is empty)."""
        if await self.redis.exists(self.keys.labels()):
            return
        pattern = self.keys.index("wl:*")
        cut = len(self.keys.index("wl:"))
        async for key in self.redis.scan_iter(match=pattern, count=_SEED_SCAN):
            await self.redis.sadd(self.keys.labels(), key.decode()[cut:])
