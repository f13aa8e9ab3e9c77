"""Subscriber AEs' event queues (bounded Redis streams written by the store's Lua), as the
deliverers of one process read them.

Each transport (``ws``, ``dimse``) keeps its own cursor per AE, and only the transport's current
owner of that AE (a lease) may advance it, so with several gateway processes each event is
delivered once per transport. Events carry a per-AE sequence number ``n``: a jump tells the reader
that the bounded backlog dropped events it never delivered.

The script that queues events also publishes them (``hub``), so a reader usually has its next
events before it would have asked for them: ``QueueReader.offer`` keeps those, and ``take_offered``
hands them out when they follow its cursor without a gap. Only then is the stream not read;
anything else (a gap, a reader that is behind, a missed notification) reads the stream from the
cursor, which remains the one truth.
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass

import redis.asyncio as aioredis

from gateway.store import scripts
from gateway.store.codec import pack_for_lua, unpack
from gateway.store.keys import Keys
from gateway.store.lane import Lane
from gateway.ups.dataset import Dataset

OFFERS_KEPT = 256  # events offered per reader kept while it is busy; beyond, it reads the stream


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


class LeaseLost(Exception):
    """Another reader (a newer WebSocket, another process) now delivers this AE's events."""


class EventQueues:
    """The event queues of one Redis: leases, cursors, batched reads and acknowledgements."""

    def __init__(self, client: aioredis.Redis, keys: Keys, lane: Lane | None = None):
        self.redis = client
        self.keys = keys
        self.lane = lane = lane or Lane(client)
        self._lease = scripts.on_lane(lane, "lease.lua")
        self._release = scripts.on_lane(lane, "release_lease.lua")
        self._cursor = scripts.on_lane(lane, "cursor.lua")

    def reader(self, transport: str, ae: str, lease_ms: int) -> QueueReader:
        return QueueReader(self, transport, ae, Lease(self.keys.lease(transport, ae), lease_ms))

    async def hold(self, lease: Lease, take: bool = False) -> bool:
        """Take or keep ``lease`` (``take``: even from another holder)."""
        return bool(await self._lease(args=[lease.key, lease.owner, lease.ttl_ms,
                                            "1" if take else "0"]))

    async def release(self, lease: Lease) -> None:
        await self._release(args=[lease.key, lease.owner])  # only if still ours, atomically

    async def read(self, readers: list[QueueReader], count: int) -> list[tuple]:
        """The undelivered events of several AEs, with who holds each one's lease, in one round
        trip: MGET of the leases and XREAD of all the queues from their cursors. Reading needs
        no atomicity (the acknowledgement checks the lease again); plain commands rather than a
        script, because a script's redis.call turns every stream entry into Lua values and back
        (≈1.4 ms of Redis for a hundred AEs against ≈0.4 ms: docs/performance.md, scenario 5).
        Returns per reader (lease holder, [(entry id, fields)]) for its ``take``."""
        unknown = [reader for reader in readers if reader.cursor is None]
        if unknown:  # a new reader: where its transport's delivery of the AE stands
            stored = await self.redis.mget([reader.cursor_key for reader in unknown])
            for reader, raw in zip(unknown, stored):
                entry_id, n = raw.decode().split() if raw else ("0-0", 0)
                reader.cursor = (entry_id, int(n))
        # XREAD takes each stream once: two readers of one AE (a takeover) go in separate reads.
        reads: list[dict[bytes, str]] = []
        placement = []
        for reader in readers:
            k = next((k for k, read in enumerate(reads) if reader.queue_key not in read),
                     len(reads))
            if k == len(reads):
                reads.append({})
            reads[k][reader.queue_key] = reader.cursor[0]
            placement.append(k)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.mget([reader.lease.key for reader in readers])
            for read in reads:
                pipe.xread(read, count=count)
            owners, *results = await pipe.execute()
        found = [dict(result) for result in results]  # per read: stream key → its entries
        return [(owner, found[k].get(reader.queue_key, []))
                for reader, owner, k in zip(readers, owners, placement)]

    async def backlog(self, transports: tuple[str, ...] = ("ws", "dimse")) -> list[dict]:
        """Per AE that ever had an event queued (``ups-gateway events backlog``): how many
        events its stream holds, the number of the latest, and per transport how far delivery
        has got and how many wait (only for a transport that has delivered to it or holds its
        lease). Reads only."""
        aes = sorted(ae.decode() for ae in await self.redis.smembers(self.keys.queues()))
        async with self.redis.pipeline(transaction=False) as pipe:
            for ae in aes:
                pipe.xlen(self.keys.queue(ae))
                pipe.get(self.keys.queue_seq(ae))
                pipe.xrange(self.keys.queue(ae), count=1)
                for transport in transports:
                    pipe.get(self.keys.cursor(transport, ae))
                    pipe.exists(self.keys.lease(transport, ae))
            replies = await pipe.execute()
        step = 3 + 2 * len(transports)
        found = []
        for i, ae in enumerate(aes):
            length, seq, oldest, *per_transport = replies[i * step:(i + 1) * step]
            latest = int(seq or 0)
            first_n = int(oldest[0][1][b"n"]) if oldest else latest + 1
            entry = {"ae": ae, "queued": int(length), "latest": latest}
            for k, transport in enumerate(transports):
                cursor, leased = per_transport[2 * k], per_transport[2 * k + 1]
                if cursor is None and not leased:
                    continue
                delivered = int(cursor.decode().split()[1]) if cursor else 0
                entry[transport] = {
                    "delivered": delivered,
                    "pending": max(0, latest - max(delivered, first_n - 1)),
                    "lost": max(0, first_n - 1 - delivered),  # dropped by the bounded backlog
                    "delivering": bool(leased)}
            found.append(entry)
        return found

    async def advance(self, transport: str, advances: list[list]) -> list[bool]:
        """Store the cursors of several AEs on one transport (``QueueReader.advance`` results),
        each only if its reader still holds the lease: one ``cursor.lua`` call."""
        reply = await self._cursor(args=[self.keys.prefix, transport, pack_for_lua(advances)])
        return [bool(ok) for ok in reply]


@dataclass
class Lease:
    key: str
    ttl_ms: int
    owner: str = ""

    def __post_init__(self) -> None:
        self.owner = self.owner or uuid.uuid4().hex


class QueueReader:
    """One AE's position in its queue on one transport. ``take``/``advance`` are its parts of
    the batched calls with which a process-wide deliverer reads and acknowledges the queues of
    many AEs at once; ``pending``/``ack`` serve a reader of its own (the DIMSE sender)."""

    def __init__(self, queues: EventQueues, transport: str, ae: str, lease: Lease):
        self.queues = queues
        self.transport = transport
        self.ae = ae
        self.lease = lease
        self.queue_key = queues.keys.queue(ae).encode()
        self.cursor_key = queues.keys.cursor(transport, ae)
        self._owner = lease.owner.encode()
        self.cursor: tuple[str, int] | None = None  # (entry id, n) delivered; None: not read yet
        self._offered: list[QueuedEntry] = []

    # ---- events straight from the notification ------------------------------------------------

    def offer(self, entries: list[QueuedEntry]) -> None:
        """Keep events published for this AE; ``take_offered`` hands them out in order."""
        offered = self._offered
        offered.extend(entries)
        if len(offered) > OFFERS_KEPT:  # a busy reader: it reads the stream when it gets to it
            offered.clear()

    def take_offered(self, count: int) -> list[QueuedEntry] | None:
        """The offered events that follow the cursor without a gap (up to ``count``), or None
        when they do not: then the stream must be read."""
        offered, self._offered = self._offered, []
        if self.cursor is None:
            return None
        delivered = self.cursor[1]
        fresh = [entry for entry in offered if entry.n > delivered]
        if not fresh or fresh[0].n != delivered + 1 or len(fresh) > count:
            return None
        if any(b.n != a.n + 1 for a, b in zip(fresh, fresh[1:])):
            return None
        return fresh

    # ---- events read from the stream ----------------------------------------------------------

    def take(self, reply: tuple) -> tuple[list[QueuedEntry], int]:
        """This AE's part of an ``EventQueues.read`` reply: the entries and how many were lost
        before the first of them. Raises ``LeaseLost`` when another reader owns the AE now."""
        owner, items = reply
        if owner != self._owner:
            raise LeaseLost(self.ae)
        entries = [_entry(i, fields) for i, fields in items]
        lost = entries[0].n - self.cursor[1] - 1 if entries else 0
        return entries, max(0, lost)

    def advance(self, entry: QueuedEntry) -> list:
        """Move past ``entry`` locally; returns this AE's part of ``EventQueues.advance``."""
        self.cursor = (entry.id, entry.n)
        return [self.ae, self.lease.owner, f"{entry.id} {entry.n}"]

    async def pending(self, count: int = 100,
                      from_stream: bool = False) -> tuple[list[QueuedEntry], int]:
        """Up to ``count`` undelivered events, and how many were lost before the first of them
        (offered ones when they follow the cursor, else — or always when ``from_stream``, for
        a caller that must know the queue is empty — read from the stream).

        Raises ``LeaseLost`` when another reader now owns this AE's delivery."""
        offered = self.take_offered(count)
        if offered is not None and not from_stream:
            return offered, 0
        [reply] = await self.queues.read([self], count)
        return self.take(reply)

    async def ack(self, entry: QueuedEntry) -> bool:
        """Mark ``entry`` (and everything before it) delivered; False if we lost the lease."""
        [ok] = await self.queues.advance(self.transport, [self.advance(entry)])
        return ok

    def forget(self) -> None:
        """Re-read the cursor next time (after losing and regaining the lease)."""
        self.cursor = None
        self._offered = []


def _entry(entry_id: bytes, fields: dict) -> QueuedEntry:
    return QueuedEntry(entry_id.decode(), int(fields[b"n"]), int(fields[b"t"]),
                       fields[b"u"].decode(), fields[b"i"], int(fields[b"ts"]))


def published_entries(events: list, entries: list) -> dict[str, list[QueuedEntry]]:
    """A notification's events by AE (its two parts as the prelude's ``notify`` packs them)."""
    made = [(int(t), uid.decode(), info, int(ts)) for t, uid, info, ts in events]
    by_ae: dict[str, list[QueuedEntry]] = {}
    for ae, entry_id, n, index in entries:
        t, uid, info, ts = made[int(index) - 1]
        by_ae.setdefault(ae.decode(), []).append(
            QueuedEntry(entry_id.decode(), int(n), t, uid, info, ts))
    return by_ae
