"""The core's ports (``gateway.ups.ports``) in memory: the fast unit tier of UPS rules.

It keeps exactly what the Redis store keeps — each workitem's dataset, version, state,
Transaction UID, performer, subscribers and final-state time; global subscriptions with their
version; a queue of events per AE — and applies a commit with the same checks, all or nothing:
version, tombstone, global-subscription version, recipients. The same service tests run on both
(``tests/conftest.py`` parametrises ``service``), so where the two disagree, a test says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import timezone
from typing import AsyncIterator, Iterable

import orjson

from gateway.ups.dataset import Dataset, select
from gateway.ups.dicomtime import UTC
from gateway.ups.errors import WorkitemGone
from gateway.ups.matching import Query, Terms, search_order
from gateway.ups.mwl import step_id
from gateway.ups.ports import (Change, Conflict, GlobalSubscription, MppsRecord, NoRecipient,
                               QueuedEvent, Record, SearchPage)


def _copy(ds: Dataset) -> Dataset:
    return orjson.loads(orjson.dumps(ds))


@dataclass
class _Stored:
    text: bytes  # the dataset as JSON text: every read decodes a fresh copy
    version: int
    state: str
    tx: str | None
    performer: str | None
    order: float
    final_at_ms: int | None
    state_report: Dataset | None
    subscribers: dict[str, bool] = field(default_factory=dict)  # AE → deletion lock


@dataclass
class QueuedForAE:
    type: int
    uid: str
    info: Dataset


class MemoryStores:
    """One in-memory "database": ``workitems`` and ``subscriptions`` share it, as the two Redis
    stores share one Redis."""

    def __init__(self, tz: timezone = UTC):
        self.tz = tz
        self.items: dict[str, _Stored] = {}
        self.tombstones: set[str] = set()
        self.globals: dict[str, tuple[bool, Terms | None]] = {}
        self.globals_version = 0
        self.subscriber_aes: set[str] = set()
        self.queues: dict[str, list[QueuedForAE]] = {}
        self.open_channels: set[str] = set()
        self.mpps: dict[str, MppsRecord] = {}
        self.workitems = MemoryWorkitemStore(self)
        self.subscriptions = MemorySubscriptionStore(self)

    def enqueue(self, ae: str, event_type: int, uid: str, info: Dataset) -> None:
        self.queues.setdefault(ae, []).append(QueuedForAE(event_type, uid, _copy(info)))


class MemoryWorkitemStore:
    def __init__(self, db: MemoryStores):
        self.db = db

    async def load(self, uid: str) -> Record | None:
        stored = self.db.items.get(uid)
        if stored is None:
            if uid in self.db.tombstones:
                raise WorkitemGone(uid)
            return None
        text = stored.text
        return Record(uid, stored.version, stored.state, stored.tx, stored.performer,
                      decode=lambda: orjson.loads(text))

    async def load_recent(self, uid: str) -> Record | None:
        return await self.load(uid)  # memory is the store itself: never stale

    async def exists(self, uid: str) -> bool:
        return uid in self.db.items

    async def commit(self, uid: str, version: int, change: Change,
                     events: Iterable[QueuedEvent] = ()) -> int:
        db = self.db
        stored = db.items.get(uid)
        current = stored.version if stored else 0
        if current != version:
            raise Conflict(uid, current)
        if current == 0 and uid in db.tombstones:
            raise WorkitemGone(uid)
        if change.global_version is not None and change.global_version != db.globals_version:
            raise Conflict(uid, current)
        if change.mpps is not None and self._mpps_version(change.mpps.uid) != change.mpps.version:
            raise Conflict(uid, current)
        subscribers = dict(stored.subscribers) if stored else {}
        subscribers.update(change.add_subscriptions)
        deliveries = []
        for event in events:
            recipients = list(event.only) or list(dict.fromkeys([*subscribers, *event.extra]))
            if event.needs_recipient and not recipients:
                raise NoRecipient(uid)
            deliveries.append((event, recipients))
        # Every check passed: apply it all.
        if change.dataset is not None:
            stored = _Stored(orjson.dumps(change.dataset), current, change.state, change.tx,
                             change.performer, search_order(change.dataset, db.tz),
                             change.final_at_ms if change.final_at_ms is not None
                             else (stored.final_at_ms if stored else None),
                             change.state_report, subscribers)
            db.items[uid] = stored
        stored.subscribers = subscribers
        stored.version = current + 1
        for ae, _ in change.add_subscriptions:
            db.subscriber_aes.add(ae)
        for event, recipients in deliveries:
            for ae in recipients:
                db.enqueue(ae, event.type, uid, event.info)
        if change.mpps is not None:
            self._keep_mpps(change.mpps)
        return stored.version

    # ---- MPPS instances --------------------------------------------------------------------

    def _mpps_version(self, uid: str) -> int:
        kept = self.db.mpps.get(uid)
        return kept.version if kept else 0

    def _keep_mpps(self, record: MppsRecord) -> int:
        kept = MppsRecord(record.uid, record.version + 1, _copy(record.dataset), record.workitem,
                          record.tx, record.note, record.ttl_seconds)
        self.db.mpps[record.uid] = kept
        return kept.version

    async def load_mpps(self, uid: str) -> MppsRecord | None:
        kept = self.db.mpps.get(uid)
        if kept is None:
            return None
        return MppsRecord(uid, kept.version, _copy(kept.dataset), kept.workitem, kept.tx,
                          kept.note)

    async def save_mpps(self, record: MppsRecord) -> int:
        current = self._mpps_version(record.uid)
        if current != record.version:
            raise Conflict(record.uid, current)
        return self._keep_mpps(record)

    async def find_step(self, wanted: str) -> str | None:
        for uid, stored in self.db.items.items():
            if stored.state in ("SCHEDULED", "IN PROGRESS") and step_id(uid) == wanted:
                return uid
        return None

    # ---- search ----------------------------------------------------------------------------

    def _matches(self, query: Query) -> list[tuple[str, Dataset]]:
        found = [(stored.order, uid, orjson.loads(stored.text))
                 for uid, stored in self.db.items.items()]
        return [(uid, ds) for _, uid, ds in sorted(found, key=lambda f: (f[0], f[1]))
                if query.matches(ds)]

    @staticmethod
    def _project(query: Query, ds: Dataset) -> Dataset:
        returned, never = query.projection()
        return select(ds, [k for k in ds if k not in never] if returned is None else returned)

    async def search_page(self, query: Query, offset: int, limit: int) -> SearchPage:
        matches = self._matches(query)
        return SearchPage([orjson.dumps(self._project(query, ds))
                           for _, ds in matches[offset:offset + limit]], len(matches))

    async def search_stream(self, query: Query) -> AsyncIterator[Dataset]:
        for _, ds in self._matches(query):
            yield self._project(query, ds)

    async def matching_uids(self, query: Query) -> AsyncIterator[str]:
        for uid, _ in self._matches(query):
            yield uid

    async def count(self) -> int:
        return len(self.db.items)

    async def purge(self, cutoff_ms: int, tombstone_ttl_s: int) -> list[str]:
        purged = []
        for uid, stored in list(self.db.items.items()):
            if stored.final_at_ms is None or stored.final_at_ms > cutoff_ms:
                continue
            if any(stored.subscribers.values()):  # a deletion lock holds it
                stored.final_at_ms = int(time.time() * 1000)
                continue
            del self.db.items[uid]
            self.db.tombstones.add(uid)
            purged.append(uid)
        return purged


class MemorySubscriptionStore:
    def __init__(self, db: MemoryStores):
        self.db = db

    async def globals(self) -> tuple[int, list[GlobalSubscription]]:
        return self.db.globals_version, [GlobalSubscription(ae, lock, terms) for ae, (lock, terms)
                                         in self.db.globals.items()]

    async def set_global(self, ae: str, lock: bool, terms: Terms | None) -> None:
        self.db.globals[ae] = (lock, terms)
        self.db.globals_version += 1
        self.db.subscriber_aes.add(ae)

    async def remove_global(self, ae: str) -> bool:
        self.db.globals_version += 1
        return self.db.globals.pop(ae, None) is not None

    async def subscribe_existing(self, ae: str, lock: bool, uids: list[str],
                                 send_reports: bool) -> int:
        count = 0
        for uid in uids:
            stored = self.db.items.get(uid)
            if stored is None:
                continue
            stored.subscribers.setdefault(ae, lock)
            if send_reports:
                self.db.enqueue(ae, 1, uid, stored.state_report or {})
            count += 1
        self.db.subscriber_aes.add(ae)
        return count

    async def unsubscribe(self, uid: str, ae: str) -> bool:
        stored = self.db.items.get(uid)
        return stored is not None and stored.subscribers.pop(ae, None) is not None

    async def unsubscribe_all(self, ae: str) -> int:
        removed = sum(stored.subscribers.pop(ae, None) is not None
                      for stored in self.db.items.values())
        self.db.subscriber_aes.discard(ae)
        return removed

    async def subscribers(self) -> list[str]:
        return sorted(self.db.subscriber_aes)

    async def admits(self, ae: str, limit: int) -> bool:
        return ae in self.db.subscriber_aes or len(self.db.subscriber_aes) < limit

    async def broadcast(self, aes: Iterable[str], event_type: int, uid: str,
                        info: Dataset) -> int:
        aes = list(aes)
        for ae in aes:
            self.db.enqueue(ae, event_type, uid, info)
        return len(aes)

    async def channel_open(self, ae: str) -> bool:
        return ae in self.db.open_channels
