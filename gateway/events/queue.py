"""Reading a subscriber AE's event queue (a bounded Redis stream written by the store's Lua).

Each transport (``ws``, ``dimse``) keeps its own cursor per AE, and only the transport's current
owner of that AE (a lease) may advance it, so with several gateway processes each event is
delivered once per transport. Events carry a per-AE sequence number: a jump tells the reader
that the bounded backlog dropped events it never delivered.
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass

from gateway.store.redis_store import RedisStore, lua, pack_for_lua, unpack
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
    blob: bytes  # the event information, msgpack'd (identical for every AE the event went to)
    ts_ms: int

    @functools.cached_property
    def info(self) -> Dataset:
        return unpack(self.blob) if self.blob else {}

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
        self._release = store.redis.register_script(lua("release_lease.lua"))

    async def hold(self, take: bool = False) -> bool:
        return bool(await self._script(args=[self.key, self.owner, self.ttl_ms, "1" if take else "0"]))

    async def release(self) -> None:
        await self._release(args=[self.key, self.owner])  # only if still ours, atomically


class QueueReader:
    """One AE's position in its queue on one transport. ``take``/``advance`` are its parts of
    the batched calls, with which a process-wide deliverer reads and acknowledges the queues of
    many AEs at once (``read_queues``, ``advance_cursors``); ``pending``/``ack`` serve a reader
    of its own (the DIMSE sender)."""

    def __init__(self, store: RedisStore, transport: str, ae: str, lease: Lease):
        self.store = store
        self.transport = transport
        self.ae = ae
        self.lease = lease
        self.queue_key = f"{store.p}q:{ae}".encode()
        self.cursor_key = f"{store.p}cur:{transport}:{ae}"
        self._owner = lease.owner.encode()
        self._cursor: tuple[str, int] | None = None  # None: not read from Redis yet

    def take(self, reply: tuple) -> tuple[list[QueuedEntry], int]:
        """This AE's part of a ``read_queues`` reply: the entries and how many were lost before
        the first of them. Raises ``LeaseLost`` when another reader now owns the AE."""
        owner, items = reply
        if owner != self._owner:
            raise LeaseLost(self.ae)
        entries = [_entry(i, fields) for i, fields in items]
        lost = entries[0].n - self._cursor[1] - 1 if entries else 0
        return entries, max(0, lost)

    def advance(self, entry: QueuedEntry) -> list:
        """Move past ``entry`` locally; returns this AE's part of ``cursor.lua``'s argument."""
        self._cursor = (entry.id, entry.n)
        return [self.ae, self.lease.owner, f"{entry.id} {entry.n}"]

    async def pending(self, count: int = 100) -> tuple[list[QueuedEntry], int]:
        """Up to ``count`` undelivered events, and how many were lost before the first of them.

        Raises ``LeaseLost`` when another reader now owns this AE's delivery."""
        [reply] = await read_queues(self.store, [self], count)
        return self.take(reply)

    async def ack(self, entry: QueuedEntry) -> bool:
        """Mark ``entry`` (and everything before it) delivered; False if we lost the lease."""
        [ok] = await advance_cursors(self.store, self.transport, [self.advance(entry)])
        return ok

    def forget(self) -> None:
        """Re-read the cursor next time (after losing and regaining the lease)."""
        self._cursor = None


async def read_queues(store: RedisStore, readers: list[QueueReader],
                      count: int) -> list[tuple]:
    """The undelivered events of several AEs, with who holds each one's lease, in one round
    trip: MGET of the leases and XREAD of all the queues from their cursors. Reading needs no
    atomicity (the acknowledgement checks the lease again); plain commands rather than a script,
    because a script's redis.call turns every stream entry into Lua values and back, which cost
    Redis ≈1.4 ms for a hundred AEs against ≈0.4 ms (docs/performance.md, scenario 5).
    Returns per reader (lease holder, [(entry id, fields)]) for its ``take``."""
    unknown = [reader for reader in readers if reader._cursor is None]
    if unknown:  # a new reader: where its transport's delivery of the AE stands
        for reader, raw in zip(unknown, await store.redis.mget(
                [reader.cursor_key for reader in unknown])):
            entry_id, n = raw.decode().split() if raw else ("0-0", 0)
            reader._cursor = (entry_id, int(n))
    # XREAD takes each stream once: two channels for one AE (a takeover) go in separate reads.
    reads: list[dict[bytes, str]] = []
    placement = []
    for reader in readers:
        k = next((k for k, read in enumerate(reads) if reader.queue_key not in read), len(reads))
        if k == len(reads):
            reads.append({})
        reads[k][reader.queue_key] = reader._cursor[0]
        placement.append(k)
    async with store.redis.pipeline(transaction=False) as pipe:
        pipe.mget([reader.lease.key for reader in readers])
        for read in reads:
            pipe.xread(read, count=count)
        owners, *results = await pipe.execute()
    found = [dict(result) for result in results]  # per read: stream key → its new entries
    return [(owner, found[k].get(reader.queue_key, []))
            for reader, owner, k in zip(readers, owners, placement)]


_advance_scripts: dict[int, object] = {}


async def advance_cursors(store: RedisStore, transport: str, advances: list[list]) -> list[bool]:
    """One ``cursor.lua`` call for several AEs (``QueueReader.advance`` results)."""
    script = _advance_scripts.get(id(store.redis))
    if script is None:
        script = _advance_scripts[id(store.redis)] = store.redis.register_script(lua("cursor.lua"))
    reply = await script(args=[store.p, transport, pack_for_lua(advances)])
    return [bool(ok) for ok in reply]


class LeaseLost(Exception):
    """Another reader (a newer WebSocket, another process) now delivers this AE's events."""


def _entry(entry_id: bytes, fields: dict) -> QueuedEntry:
    return QueuedEntry(entry_id.decode(), int(fields[b"n"]), int(fields[b"t"]),
                       fields[b"u"].decode(), fields[b"i"], int(fields[b"ts"]))
