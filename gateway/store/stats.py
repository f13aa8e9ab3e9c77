"""The worklist's figures for the metrics, read from Redis in one script call (``stats.lua``):
workitems by state and Worklist Label, state transitions, and per subscriber AE the events
queued and not yet delivered. The same for every gateway process of the worklist."""

from __future__ import annotations

from dataclasses import dataclass, field

import redis.asyncio as aioredis

from gateway.store import codec, scripts
from gateway.store.keys import Keys
from gateway.ups.uids import STATES

_SEED_SCAN = 500


@dataclass
class QueueFigures:
    ae: str
    queued: int  # events ever queued for the AE (its sequence number)
    length: int  # events kept in its stream (the backlog bound applies)
    delivered: dict[str, int] = field(default_factory=dict)  # transport → last delivered n

    def backlog(self, transport: str) -> int:
        """Events the AE has not received on ``transport`` (no cursor yet: all kept ones)."""
        return max(0, min(self.length, self.queued - self.delivered.get(transport, 0)))


@dataclass
class WorklistFigures:
    workitems: dict[tuple[str, str], int]  # (state, label) → count
    transitions: dict[tuple[str, str], int]  # (from, to) → count
    queues: list[QueueFigures]


class WorklistStats:
    def __init__(self, client: aioredis.Redis, keys: Keys):
        self.redis = client
        self.keys = keys
        self._read = scripts.script(client, "stats.lua")

    async def read(self) -> WorklistFigures:
        rows, transitions, queues = await self._read(
            args=[self.keys.prefix, codec.pack_for_lua(list(STATES))])
        workitems = {}
        for label, *counts in rows:
            for state, count in zip(STATES, counts):
                workitems[(state, label.decode())] = int(count)
        moves = {}
        for name, count in zip(transitions[::2], transitions[1::2]):
            source, _, target = name.decode().partition(">")
            moves[(source, target)] = int(count)
        figures = []
        for ae, queued, length, ws, dimse in queues:
            delivered = {t: int(n) for t, n in (("ws", ws), ("dimse", dimse)) if int(n) >= 0}
            figures.append(QueueFigures(ae.decode(), int(queued), int(length), delivered))
        return WorklistFigures(workitems, moves, figures)

    async def seed_labels(self) -> None:
        """Workitems stored before the gateway kept the label set: find their labels once
        (from the label indexes; harmless to repeat, and only done while the set is empty)."""
        if await self.redis.exists(self.keys.labels()):
            return
        pattern = self.keys.index("wl:*")
        cut = len(self.keys.index("wl:"))
        async for key in self.redis.scan_iter(match=pattern, count=_SEED_SCAN):
            await self.redis.sadd(self.keys.labels(), key.decode()[cut:])
