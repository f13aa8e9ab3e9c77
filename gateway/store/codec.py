"""The stored byte forms: datasets as compressed JSON member text, everything else as msgpack.

Only the store reads and writes these; the core sees canonical datasets (``Record.dataset``) and
the JSON text of search results.
"""

from __future__ import annotations

import functools
import threading
import zlib
from typing import Callable, Iterable

import msgpack
import orjson
import zstandard

from gateway.ups.dataset import Dataset

# msgpack.packb makes a Packer, and with it a 256 KiB buffer, on every call: with the gateway's
# fixed malloc thresholds (app.py, so that memory returns after bursts) each of those is an
# mmap/munmap pair, ten times the cost of the packing itself. One Packer per thread instead.
_packers = threading.local()


def _packer(bin_type: bool) -> msgpack.Packer:
    try:
        return _packers.pair[bin_type]
    except AttributeError:
        _packers.pair = (msgpack.Packer(use_bin_type=False), msgpack.Packer(use_bin_type=True))
        return _packers.pair[bin_type]


def pack(obj) -> bytes:
    return _packer(True).pack(obj)


def pack_for_lua(obj) -> bytes:
    # Redis's Lua cmsgpack predates the msgpack bin type: nested blobs travel as raw strings.
    return _packer(False).pack(obj)


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


