"""The Redis store: workitems as msgpack'd DICOM JSON in hashes, committed atomically by Lua.

Layout (``p`` = key prefix, default ``ups:``):
  p wi:{uid}     hash  d=dataset (msgpack, zlib-compressed: ``pack_dataset``), v=version,
                       s=state, tx=Transaction UID, pa=performer AE, ix=index names (msgpack),
                       sc=score, ft=final-state time
  p ix:{name}    zset  secondary indexes (see ``indexes``), score = SPS Start DateTime
  p final        zset  COMPLETED/CANCELED workitems by final-state time (retention purge)
  p gone:{uid}   str   tombstone of a purged workitem (TTL), answers 410
  p subs:{uid}   hash  subscriber AE → "1" with deletion lock / "0" without
  p aesubs:{ae}  set   workitems an AE is subscribed to
  p q:{ae}       stream events queued for a subscriber AE (bounded backlog)

Every change goes through ``commit``: the caller read the workitem at version v and computed the
new content with the pure UPS rules; the Lua script applies it only if the version is still v (the
WATCH/MULTI idea, in one round trip) and otherwise reports a conflict so the caller re-reads and
re-decides. Two concurrent claims therefore cannot both succeed, on any number of processes.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import zlib
from dataclasses import dataclass
from importlib import resources
from typing import AsyncIterator, Callable, Iterable

import msgpack
import orjson
import zstandard
import redis.asyncio as aioredis

from gateway.store.batch import ScriptBatch
from gateway.store.indexes import Plan
from gateway.ups.dataset import Dataset
from gateway.ups.errors import WorkitemGone

log = logging.getLogger("gateway.store")

_SCAN_CHUNK = 500


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def pack_for_lua(obj) -> bytes:
    # Redis's Lua cmsgpack predates the msgpack bin type: nested blobs travel as raw strings.
    return msgpack.packb(obj, use_bin_type=False)


def unpack(blob: bytes):
    return msgpack.unpackb(blob, raw=False)


# A stored dataset is the text of its JSON members, one per line and in tag order
# ('"00100020":{"vr":"LO","Value":["PID1"]}'), compressed with Zstandard (level 1).
# * A search splices the stored lines of the attributes it returns straight into its response
#   (no decoding, no re-encoding), and matching decodes only the members it compares.
# * JSON text never holds a raw line feed (strings escape it), so the lines split safely.
# * zstd shrinks a realistic 40-attribute workitem from ~4.8 KB to ~1.3 KB, as zlib did, at a
#   third of zlib's cost to unpack (every search result pays it) and a quarter of its cost to pack.
# Datasets written by earlier versions (zlib over a msgpack map of tag → element text) are read.
# (docs/performance.md, scenarios 2, 3 and 6.)
RawDataset = list[bytes]  # a stored dataset's members, in tag order
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_codecs = threading.local()  # zstd (de)compressor objects may not be shared between threads


def _zstd() -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
    try:
        return _codecs.pair
    except AttributeError:
        _codecs.pair = (zstandard.ZstdCompressor(level=1), zstandard.ZstdDecompressor())
        return _codecs.pair


def pack_dataset(ds: Dataset) -> bytes:
    return _zstd()[0].compress(
        b"\n".join([_member(tag) + orjson.dumps(elem) for tag, elem in sorted(ds.items())]))


def unpack_raw(blob: bytes) -> RawDataset:
    if blob[:4] == _ZSTD_MAGIC:
        text = _zstd()[1].decompress(blob)
        return text.split(b"\n") if text else []
    legacy = unpack(zlib.decompress(blob))
    return [_member(tag) + text for tag, text in sorted(legacy.items())]


def parse(raw: RawDataset, tags: Iterable[str] | None = None) -> Dataset:
    """Decode a stored dataset (or only ``tags`` of it) into canonical form."""
    return orjson.loads(render(raw)) if tags is None else decoder(tags)(raw)


def decoder(tags: Iterable[str]) -> Callable[[RawDataset], Dataset]:
    """What decodes only ``tags`` of a stored dataset: built once per search, run on every
    candidate (matching looks at a few attributes of each)."""
    wanted = frozenset(tag.encode() for tag in tags)
    return lambda raw: orjson.loads(b"{" + b",".join([m for m in raw if m[1:9] in wanted]) + b"}")


def unpack_dataset(blob: bytes) -> Dataset:
    return parse(unpack_raw(blob))


def projector(returned: frozenset[str] | None, never: frozenset[str]
              ) -> Callable[[RawDataset], RawDataset]:
    """What keeps, of a stored dataset, the members a result returns (``returned``, or all when
    None, never those of ``never``): built once per search, run on every result."""
    if returned is None:
        drop = frozenset(tag.encode() for tag in never)
        return lambda raw: [m for m in raw if m[1:9] not in drop]
    keep = frozenset(tag.encode() for tag in returned - never)
    return lambda raw: [m for m in raw if m[1:9] in keep]


def render(members: RawDataset) -> bytes:
    """A stored (projected) dataset as the text of one JSON object."""
    return b"{" + b",".join(members) + b"}"


@functools.lru_cache(maxsize=8192)
def _member(tag: str) -> bytes:
    """'00100020' → b'"00100020":', the start of a JSON member."""
    return b'"%s":' % tag.encode()


@dataclass
class Record:
    """A stored workitem as read at one version. Its dataset is decoded on first use: most
    refusals (a lost claim race, a wrong Transaction UID) are decided on the state alone."""

    uid: str
    blob: bytes
    version: int
    state: str
    tx: str | None
    performer: str | None

    @functools.cached_property
    def dataset(self) -> Dataset:
        return unpack_dataset(self.blob)


@dataclass
class Change:
    """The new content of a workitem, ready to commit."""

    dataset: Dataset | None  # None: content unchanged (events only)
    state: str = ""
    tx: str | None = None
    performer: str | None = None
    score: float = 0.0
    indexes: tuple[str, ...] = ()
    final_at_ms: int | None = None
    add_subscriptions: tuple[tuple[str, bool], ...] = ()
    global_version: int | None = None
    state_report: Dataset | None = None  # kept beside the dataset for global subscribers


@dataclass
class QueuedEvent:
    """An event to queue for the workitem's subscribers (plus ``extra`` AEs)."""

    type: int
    info: Dataset
    extra: tuple[str, ...] = ()
    needs_recipient: bool = False
    only: tuple[str, ...] = ()  # send to these AEs instead of the subscribers


class Conflict(Exception):
    """The workitem changed since it was read: re-read and decide again."""

    def __init__(self, uid: str, current_version: int):
        super().__init__(uid)
        self.current_version = current_version


class NoRecipient(Exception):
    """An event that must reach someone has no subscriber to go to."""


class RedisStore:
    def __init__(self, client: aioredis.Redis, prefix: str = "ups:", backlog: int = 1000):
        self.redis = client
        self.p = prefix
        self.backlog = backlog
        self._commit = ScriptBatch(client.register_script(lua("commit.lua")))
        self._purge = client.register_script(lua("purge.lua"))
        self._page = ScriptBatch(client.register_script(lua("page.lua")))
        self._load = ScriptBatch(client.register_script(lua("load.lua")))
        self._datasets = client.register_script(lua("datasets.lua"))

    def key(self, uid: str) -> str:
        return f"{self.p}wi:{uid}"

    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    # ---- single workitems --------------------------------------------------------------

    async def load(self, uid: str) -> Record | None:
        """The workitem, None if unknown; raises WorkitemGone for a purged one."""
        reply = await self._load(keys=[self.key(uid), f"{self.p}gone:{uid}"], args=[])
        if reply[0] is None:
            if reply[1]:
                raise WorkitemGone(uid)
            return None
        blob, version, state, tx, performer = reply
        return Record(uid, blob, int(version), state.decode(),
                      tx.decode() if tx else None, performer.decode() if performer else None)

    async def exists(self, uid: str) -> bool:
        return bool(await self.redis.exists(self.key(uid)))

    async def commit(self, uid: str, version: int, change: Change,
                     events: Iterable[QueuedEvent] = ()) -> int:
        """Apply ``change`` if the workitem is still at ``version``; returns the new version."""
        blob = pack_dataset(change.dataset) if change.dataset is not None else b""
        result = await self._commit(keys=[self.key(uid)], args=[
            self.p, uid, version, blob, change.state, change.tx or "", change.performer or "",
            repr(change.score), pack_for_lua(list(change.indexes)),
            "" if change.final_at_ms is None else change.final_at_ms,
            "" if change.global_version is None else change.global_version,
            pack_for_lua([[ae, "1" if lock else "0"] for ae, lock in change.add_subscriptions]),
            pack_for_lua([[e.type, pack(e.info), list(e.extra), e.needs_recipient, list(e.only)]
                          for e in events]),
            self.backlog, now_ms(), pack(change.state_report) if change.state_report else b""])
        code = int(result[0])
        if code == 1:
            return int(result[1])
        if code == 2:
            raise WorkitemGone(uid)
        if code == 3:
            raise NoRecipient(uid)
        raise Conflict(uid, int(result[1]))

    # ---- search ------------------------------------------------------------------------

    async def page(self, plan: Plan, offset: int, limit: int) -> tuple[int, list[bytes]]:
        """An exact single-index plan's number of matches and the stored datasets (as stored:
        ``unpack_raw`` reads one) of one page, in search order."""
        low, high = _bounds(plan)
        reply = await self._page(keys=[self._index(plan.indexes[0])],
                                 args=[f"{self.p}wi:", low, high, offset, limit])
        return int(reply[0]), reply[1:]

    async def candidates(self, plan: Plan) -> AsyncIterator[list[str]]:
        """All UIDs of a plan in search order, in chunks."""
        low, high = _bounds(plan)
        if len(plan.indexes) == 1:
            start = 0
            while True:
                chunk = await self.redis.zrangebyscore(self._index(plan.indexes[0]), low, high,
                                                       start=start, num=_SCAN_CHUNK)
                if chunk:
                    yield [u.decode() for u in chunk]
                if len(chunk) < _SCAN_CHUNK:
                    return
                start += _SCAN_CHUNK
        merged: dict[bytes, float] = {}
        for name in plan.indexes:
            for uid, score in await self.redis.zrangebyscore(self._index(name), low, high,
                                                             withscores=True):
                merged[uid] = score
        ordered = sorted(merged.items(), key=lambda pair: (pair[1], pair[0]))
        for i in range(0, len(ordered), _SCAN_CHUNK):
            yield [uid.decode() for uid, _ in ordered[i:i + _SCAN_CHUNK]]

    async def raw_datasets(self, uids: list[str]) -> list[tuple[str, RawDataset]]:
        """The stored datasets of ``uids`` (skipping any deleted meanwhile), in the given order,
        still element-wise encoded (``parse`` decodes them)."""
        if not uids:
            return []
        blobs = await self._datasets(keys=[self.key(uid) for uid in uids])
        return [(uid, unpack_raw(blob)) for uid, blob in zip(uids, blobs) if blob is not None]

    def _index(self, name: str) -> str:
        return f"{self.p}ix:{name}"

    # ---- housekeeping ------------------------------------------------------------------

    async def purge(self, cutoff_ms: int, tombstone_ttl_s: int, batch: int = 200) -> list[str]:
        result = await self._purge(args=[self.p, cutoff_ms, batch, max(1, tombstone_ttl_s),
                                          now_ms()])
        return [u.decode() for u in result]

    async def count_all(self) -> int:
        return int(await self.redis.zcard(self._index("all")))


def _bounds(plan: Plan) -> tuple[str, str]:
    low = "-inf" if plan.low is None else repr(plan.low)
    high = "+inf" if plan.high is None else f"({plan.high!r}"
    return low, high


def now_ms() -> int:
    return int(time.time() * 1000)


def lua(name: str) -> str:
    """A Lua script with the shared prelude (``enqueue``) prepended."""
    files = resources.files("gateway.store")
    return files.joinpath("prelude.lua").read_text() + files.joinpath(name).read_text()
