"""The core's workitem store (``gateway.ups.ports.WorkitemStore``) on Redis.

Every change goes through ``commit``: the service read the workitem at version v and decided the
new content with the pure UPS rules; ``commit.lua`` applies it only if the version is still v (the
WATCH/MULTI idea, in one round trip) — rewriting the secondary indexes, adding subscriptions and
queueing the events in the same atomic step — and otherwise reports a conflict, so the service
reads and decides again. Two concurrent claims therefore cannot both succeed, on any number of
gateway processes.

The store remembers the last few thousand workitems it read or wrote (``load_recent``), so that
a change to a workitem this process has just created or changed — a claim after a create, an
update after a claim — costs one round trip, not two: the commit's version check tells whether
the remembered record was still current (``gateway.ups.attempt``).

Searches are planned here (``indexes``): an exact single-index plan is answered in one script
call (count and page), its results rendered from the stored bytes and kept (``results``); any
other plan walks its candidates in search order and matches each against the query, decoding only
the attributes the query compares.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from datetime import timezone
from typing import AsyncIterator, Callable, Iterable

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.exceptions import NoScriptError

from gateway.store import codec, indexes, scripts
from gateway.store.keys import Keys
from gateway.store.lane import Lane, NotSent
from gateway.store.replication import Replication
from gateway.store.results import RenderedResults
from gateway.ups import tags as t
from gateway.ups.dataset import Dataset, first
from gateway.ups.dicomtime import UTC
from gateway.ups.errors import OutcomeUnknown, WorkitemGone
from gateway.ups.matching import Query, search_order
from gateway.ups.ports import (Change, Conflict, MppsRecord, NoRecipient, QueuedEvent, Record,
                               SearchPage)

_SCAN_CHUNK = 500  # candidate UIDs read per round trip
_PURGE_BATCH = 200
RECENT_RECORDS = 4096  # workitems remembered as last read or written (≈1.5 KB each)


class RedisWorkitemStore:
    def __init__(self, client: aioredis.Redis, keys: Keys, *, lane: Lane | None = None,
                 backlog: int = 1000, timezone_: timezone = UTC,
                 search_cache_bytes: int = 32 * 2**20,
                 replication: Replication = Replication()):
        self.redis = client
        self.replication = replication
        lane = lane or Lane(client)
        self.keys = keys
        self.backlog = backlog  # events kept per subscriber AE (the queues' bound)
        self.tz = timezone_  # how DT values without an offset are read (scores)
        self.results = RenderedResults(search_cache_bytes)
        # uid → (version, stored dataset, state, tx, performer), oldest first: ``load_recent``
        self._recent: OrderedDict[str, tuple[int, bytes, str, str | None, str | None]] = \
            OrderedDict()
        self._commit = scripts.on_lane(lane, "commit.lua")
        self._load = scripts.on_lane(lane, "load.lua")
        self._page = scripts.on_lane(lane, "page.lua")
        self._datasets = scripts.on_lane(lane, "datasets.lua")
        self._purge = scripts.script(client, "purge.lua")
        self._save_mpps = scripts.script(client, "mpps.lua")
        # Set by the composition root: given each notification this process's commits publish,
        # as soon as the commit returns (the event hub: no wait for Redis's echo).
        self.on_published: Callable[[bytes], None] | None = None

    # ---- single workitems --------------------------------------------------------------------

    async def load(self, uid: str) -> Record | None:
        reply = await self._load(keys=[self.keys.workitem(uid), self.keys.tombstone(uid)],
                                 args=[])
        if reply[0] is None:
            if reply[1]:
                raise WorkitemGone(uid)
            return None
        blob, version, state, tx, performer = reply
        return self._remember(uid, int(version), blob, state.decode(),
                              tx.decode() if tx else None,
                              performer.decode() if performer else None)

    async def load_recent(self, uid: str) -> Record | None:
        remembered = self._recent.get(uid)
        if remembered is None:
            return await self.load(uid)
        version, blob, state, tx, performer = remembered
        return Record(uid, version, state, tx, performer,
                      decode=lambda: codec.unpack_dataset(blob), recent=True)

    def _remember(self, uid: str, version: int, blob: bytes, state: str, tx: str | None,
                  performer: str | None) -> Record:
        recent = self._recent
        recent[uid] = (version, blob, state, tx, performer)
        recent.move_to_end(uid)
        if len(recent) > RECENT_RECORDS:
            recent.popitem(last=False)
        return Record(uid, version, state, tx, performer,
                      decode=lambda: codec.unpack_dataset(blob))

    async def exists(self, uid: str) -> bool:
        return bool(await self.redis.exists(self.keys.workitem(uid)))

    async def commit(self, uid: str, version: int, change: Change,
                     events: Iterable[QueuedEvent] = ()) -> int:
        ds = change.dataset
        if ds is None:
            blob, score, index_names = b"", 0.0, []
        else:
            blob, score, index_names = (codec.pack_dataset(ds), search_order(ds, self.tz),
                                        indexes.index_names(ds))
        keys = [self.keys.workitem(uid)]
        args = [
            self.keys.prefix, uid, version, blob, change.state, change.tx or "",
            change.performer or "", repr(score), codec.pack_for_lua(index_names),
            "" if change.final_at_ms is None else change.final_at_ms,
            "" if change.global_version is None else change.global_version,
            codec.pack_for_lua([[ae, "1" if lock else "0"] for ae, lock in
                                change.add_subscriptions]),
            codec.pack_for_lua([[e.type, codec.pack(e.info), list(e.extra), e.needs_recipient,
                                 list(e.only)] for e in events]),
            self.backlog, now_ms(),
            codec.pack(change.state_report) if change.state_report else b"",
            *_mpps_args(change.mpps, with_uid=True),
            "" if ds is None else first(ds, t.WorklistLabel, "")]
        acked = 0
        try:
            if self.replication.replicas:
                result, acked = await self._replicated(self._commit.sha, self._commit.source,
                                                       keys, args)
            else:
                result = await self._commit(keys=keys, args=args)
        except NotSent:
            raise  # not applied: the store is unavailable, try again
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise OutcomeUnknown(uid, f"the connection to the store broke: {exc}") from None
        code = int(result[0])
        if code == 1 and acked < self.replication.replicas:
            self._recent.pop(uid, None)
            self.replication.check(acked, f"The change of workitem {uid}")
        if code == 1:
            version = int(result[1])
            if result[2] and self.on_published is not None:
                self.on_published(result[2])
            if ds is not None:
                self._remember(uid, version, blob, change.state, change.tx, change.performer)
            elif uid in self._recent:  # events only: the content is as remembered
                self._recent[uid] = (version, *self._recent[uid][1:])
            return version
        self._recent.pop(uid, None)  # whatever we remembered is not what is stored
        if code == 2:
            raise WorkitemGone(uid)
        if code == 3:
            raise NoRecipient(uid)
        raise Conflict(uid, int(result[1]))

    # ---- MPPS instances ------------------------------------------------------------------------

    async def load_mpps(self, uid: str) -> MppsRecord | None:
        blob, version, workitem, tx, note = await self.redis.hmget(
            self.keys.mpps(uid), "d", "v", "w", "tx", "n")
        if blob is None:
            return None
        return MppsRecord(uid, int(version), codec.unpack_dataset(blob),
                          workitem.decode() if workitem else None, tx.decode() if tx else None,
                          (note or b"").decode())

    async def save_mpps(self, record: MppsRecord) -> int:
        keys, args = [self.keys.mpps(record.uid)], _mpps_args(record, with_uid=False)
        if self.replication.replicas:  # acknowledged as a workitem change is (min_replicas_ack)
            result, acked = await self._replicated(self._save_mpps.sha, self._save_mpps.script,
                                                   keys, args)
            if int(result[0]) == 1:
                self.replication.check(acked, f"The MPPS instance {record.uid}")
        else:
            result = await self._save_mpps(keys=keys, args=args)
        if int(result[0]) != 1:
            raise Conflict(record.uid, int(result[1]))
        return int(result[1])

    async def find_step(self, step_id: str) -> str | None:
        found = await self.redis.zrange(self.keys.index(indexes.step_index(step_id)), 0, 0)
        return found[0].decode() if found else None

    async def _replicated(self, sha: str, source: str, keys: list, args: list
                          ) -> tuple[list, int]:
        """A script call (the commit, an MPPS save) and ``WAIT replicas timeout`` written
        together on one pooled connection (a WAIT counts only its own connection's writes: sent
        after the reply it could go out on a new connection, to a promoted replica, and confirm
        nothing). Not on the lane: while a WAIT waits, Redis holds that connection's later
        commands, and the lane carries every load, search page and acknowledgement of the
        process. The script's reply and how many replicas have it."""
        replication = self.replication
        for attempt in (1, 2):
            async with self.redis.pipeline(transaction=False) as pipe:
                try:  # a connected connection first: failing here, nothing was sent
                    pipe.connection = await self.redis.connection_pool.get_connection()
                except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                    raise NotSent(f"not sent to Redis: {exc}") from exc
                pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)
                pipe.execute_command("WAIT", replication.replicas, replication.timeout_ms)
                try:
                    result, acked = await pipe.execute()
                except NoScriptError:  # a restarted Redis, SCRIPT FLUSH, a promoted replica
                    if attempt == 2:
                        raise
                    await self.redis.script_load(source)
                    continue
            return result, int(acked)
        raise AssertionError("unreachable")  # pragma: no cover

    # ---- search --------------------------------------------------------------------------------

    async def search_page(self, query: Query, offset: int, limit: int) -> SearchPage:
        plan = indexes.plan(query)
        projection = query.projection()
        project = codec.projector(*projection)
        if plan.exact and len(plan.indexes) == 1:
            low, high = _bounds(plan)
            reply = await self._page(keys=[self.keys.index(plan.indexes[0])],
                                     args=[self.keys.prefix, low, high, offset, limit])
            render = self.results.render
            return SearchPage([render(blob, projection, project) for blob in reply[1:]],
                              int(reply[0]))
        page: list[bytes] = []
        total = 0
        async for _, raw in self._matches(query, plan):
            if offset <= total < offset + limit:
                page.append(codec.render(project(raw)))
            total += 1
        return SearchPage(page, total)

    async def search_stream(self, query: Query) -> AsyncIterator[Dataset]:
        project = codec.projector(*query.projection())
        async for _, raw in self._matches(query, indexes.plan(query)):
            yield codec.parse(project(raw))

    async def matching_uids(self, query: Query) -> AsyncIterator[str]:
        plan = indexes.plan(query)
        if plan.exact:
            async for chunk in self._candidates(plan):  # the index alone decides
                for uid in chunk:
                    yield uid
            return
        async for uid, _ in self._matches(query, plan):
            yield uid

    async def _matches(self, query: Query, plan: indexes.Plan
                       ) -> AsyncIterator[tuple[str, codec.RawDataset]]:
        matched_part = codec.decoder(query.compared())  # decode only what matching reads
        uid_key = query.keys.get(t.SOPInstanceUID)
        if uid_key is not None and uid_key.kind == "uids":
            # An explicit UID list is short: sort its matches into search order here.
            found = await self._raw_datasets(sorted(uid_key.uids))
            keyed = [(search_order(codec.parse(raw, (t.ScheduledProcedureStepStartDateTime,
                                                     t.TimezoneOffsetFromUTC)),
                                   self.tz), uid, raw) for uid, raw in found]
            for _, uid, raw in sorted(keyed, key=lambda k: (k[0], k[1])):
                if query.matches(matched_part(raw)):
                    yield uid, raw
            return
        async for chunk in self._candidates(plan):
            for uid, raw in await self._raw_datasets(chunk):
                if query.matches(matched_part(raw)):
                    yield uid, raw

    async def _candidates(self, plan: indexes.Plan) -> AsyncIterator[list[str]]:
        """All UIDs of a plan in search order, in chunks."""
        low, high = _bounds(plan)
        if len(plan.indexes) == 1:
            start = 0
            while True:
                chunk = await self.redis.zrangebyscore(self.keys.index(plan.indexes[0]), low,
                                                       high, start=start, num=_SCAN_CHUNK)
                if chunk:
                    yield [u.decode() for u in chunk]
                if len(chunk) < _SCAN_CHUNK:
                    return
                start += _SCAN_CHUNK
        merged: dict[bytes, float] = {}
        for name in plan.indexes:
            for uid, score in await self.redis.zrangebyscore(self.keys.index(name), low, high,
                                                             withscores=True):
                merged[uid] = score
        ordered = sorted(merged.items(), key=lambda pair: (pair[1], pair[0]))
        for i in range(0, len(ordered), _SCAN_CHUNK):
            yield [uid.decode() for uid, _ in ordered[i:i + _SCAN_CHUNK]]

    async def _raw_datasets(self, uids: list[str]) -> list[tuple[str, codec.RawDataset]]:
        """The stored datasets of ``uids`` (skipping any deleted meanwhile), in that order."""
        if not uids:
            return []
        blobs = await self._datasets(keys=[self.keys.workitem(uid) for uid in uids])
        return [(uid, codec.unpack_raw(blob)) for uid, blob in zip(uids, blobs)
                if blob is not None]

    # ---- housekeeping --------------------------------------------------------------------------

    async def count(self) -> int:
        return int(await self.redis.zcard(self.keys.index("all")))

    async def purge(self, cutoff_ms: int, tombstone_ttl_s: int) -> list[str]:
        result = await self._purge(args=[self.keys.prefix, cutoff_ms, _PURGE_BATCH,
                                          max(1, tombstone_ttl_s), now_ms()])
        purged = [u.decode() for u in result]
        for uid in purged:
            self._recent.pop(uid, None)
        return purged


def _mpps_args(record: MppsRecord | None, *, with_uid: bool) -> list:
    """An MPPS instance to write as script arguments (commit.lua 17-23, mpps.lua 1-6)."""
    if record is None:
        return ["", "", "", "", "", "", ""] if with_uid else []
    args = [record.version, codec.pack_dataset(record.dataset), record.workitem or "",
            record.tx or "", record.note,
            "" if record.ttl_seconds is None else max(1, int(record.ttl_seconds))]
    return [record.uid, *args] if with_uid else args


def _bounds(plan: indexes.Plan) -> tuple[str, str]:
    low = "-inf" if plan.low is None else repr(plan.low)
    high = "+inf" if plan.high is None else f"({plan.high!r}"
    return low, high


def now_ms() -> int:
    return int(time.time() * 1000)
