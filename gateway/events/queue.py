"""Reading a subscriber AE's event queue (a bounded Redis stream written by the store's Lua).

Each transport (``ws``, ``dimse``) keeps its own cursor per AE, and only the transport's current
owner of that AE (a lease) may advance it, so with several gateway processes each event is
delivered once per transport. Events carry a per-AE sequence number: a jump tells the reader
that the bounded backlog dropped events it never delivered.
"""

from __future__ import annotations

import asyncio
import uuid

from redis.exceptions import NoScriptError
from dataclasses import dataclass

from gateway.store.redis_store import RedisStore, lua, unpack
from gateway.ups.dataset import Dataset, element
from gateway.ups.uids import UPS_PUSH

# Command fields of an event report frame (PS3.18 §8.10, decisions.md).
_SOP_CLASS, _MESSAGE_ID, _INSTANCE, _EVENT_TYPE = "00000002", "00000110", "00001000", "00001002"


@dataclass
class QueuedEntry:
    id: str
    n: int
    type: int
    uid: str
    info: Dataset
    ts_ms: int

    @property
    def message_id(self) -> int:
        return (self.n - 1) % 0xFFFF + 1  # US, never 0

    def frame(self) -> Dataset:
        """The event as one DICOM JSON object with the N-EVENT-REPORT command fields."""
        frame = {_SOP_CLASS: element("UI", UPS_PUSH), _MESSAGE_ID: element("US", self.message_id),
                 _INSTANCE: element("UI", self.uid), _EVENT_TYPE: element("US", self.type)}
        frame.update(self.info)
        return frame


class Lease:
    """Who delivers an AE's events on one transport, across all gateway processes."""

    def __init__(self, store: RedisStore, transport: str, ae: str, ttl_ms: int = 10000):
        self.redis = store.redis
        self.key = f"{store.p}own:{transport}:{ae}"
        self.owner = uuid.uuid4().hex
        self.ttl_ms = ttl_ms
        self._script = store.redis.register_script(lua("lease.lua"))

    async def hold(self, take: bool = False) -> bool:
        return bool(await self._script(args=[self.key, self.owner, self.ttl_ms, "1" if take else "0"]))

    async def release(self) -> None:
        if await self.redis.get(self.key) == self.owner.encode():
            await self.redis.delete(self.key)


class ScriptBatcher:
    """Runs the script calls that many deliverers make in the same event-loop turn as one
    pipelined round trip. A change with a hundred subscribers wakes a hundred channels at once;
    one round trip instead of a hundred saves most of the client-side cost of the fan-out."""

    def __init__(self, redis):
        self.redis = redis
        self._pending: list = []
        self._loaded: set[str] = set()

    def call(self, script, keys: list, args: list) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((script, keys, args, future))
        if len(self._pending) == 1:
            asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self._flush()))
        return future

    async def _flush(self) -> None:
        batch, self._pending = self._pending, []
        try:
            for _ in range(2):  # a Redis restart forgets scripts (NOSCRIPT): load, run again
                for script in {script for script, *_ in batch}:
                    if script.sha not in self._loaded:
                        await self.redis.script_load(script.script)
                        self._loaded.add(script.sha)
                async with self.redis.pipeline(transaction=False) as pipe:
                    for script, keys, args, _ in batch:
                        pipe.evalsha(script.sha, len(keys), *keys, *args)
                    results = await pipe.execute(raise_on_error=False)
                if not any(isinstance(r, NoScriptError) for r in results):
                    break
                self._loaded.clear()
        except Exception as exc:  # the connection failed: every caller gets the error
            results = [exc] * len(batch)
        for (_, _, _, future), result in zip(batch, results):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)


_batchers: dict[int, ScriptBatcher] = {}


def batcher_for(redis) -> ScriptBatcher:
    return _batchers.setdefault(id(redis), ScriptBatcher(redis))


class QueueReader:
    def __init__(self, store: RedisStore, transport: str, ae: str, lease: Lease):
        self.store = store
        self.redis = store.redis
        self.p = store.p
        self.transport = transport
        self.ae = ae
        self.lease = lease
        self._cursor: tuple[str, int] | None = None
        self._advance = store.redis.register_script(lua("cursor.lua"))
        self._read = store.redis.register_script(lua("read_queue.lua"))
        self._batch = batcher_for(store.redis)

    async def cursor(self) -> tuple[str, int]:
        if self._cursor is None:
            raw = await self.redis.get(f"{self.p}cur:{self.transport}:{self.ae}")
            if raw:
                entry_id, n = raw.decode().split()
                self._cursor = (entry_id, int(n))
            else:
                self._cursor = ("0-0", 0)
        return self._cursor

    async def pending(self, count: int = 100) -> tuple[list[QueuedEntry], int]:
        """Up to ``count`` undelivered events, and how many were lost before the first of them.

        Raises ``LeaseLost`` when another reader now owns this AE's delivery."""
        entry_id, n = await self.cursor()
        reply = await self._batch.call(self._read, [self.lease.key, f"{self.p}q:{self.ae}"],
                                       [self.lease.owner, entry_id, count])
        if not int(reply[0]):
            raise LeaseLost(self.ae)
        entries = [_entry(i, _fields(fields)) for i, fields in reply[1]]
        lost = entries[0].n - n - 1 if entries else 0
        return entries, max(0, lost)

    async def ack(self, entry: QueuedEntry) -> bool:
        """Mark ``entry`` (and everything before it) delivered; False if we lost the lease."""
        self._cursor = (entry.id, entry.n)
        return bool(await self._batch.call(self._advance, [], [
            self.p, self.transport, self.ae, self.lease.owner, f"{entry.id} {entry.n}"]))

    def forget(self) -> None:
        """Re-read the cursor next time (after losing and regaining the lease)."""
        self._cursor = None


class LeaseLost(Exception):
    """Another reader (a newer WebSocket, another process) now delivers this AE's events."""


def _fields(raw) -> dict:
    """Stream entry fields as a dict (Lua hands them over as a flat list)."""
    if isinstance(raw, dict):
        return raw
    return dict(zip(raw[::2], raw[1::2]))


def _entry(entry_id: bytes, fields: dict) -> QueuedEntry:
    return QueuedEntry(entry_id.decode(), int(fields[b"n"]), int(fields[b"t"]),
                       fields[b"u"].decode(), unpack(fields[b"i"]) if fields[b"i"] else {},
                       int(fields[b"ts"]))
