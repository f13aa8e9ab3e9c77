"""How datasets are stored: zstd-compressed element-wise msgpack; zlib from earlier versions read."""

from __future__ import annotations

import zlib

import orjson
import pytest

from gateway.store.redis_store import pack, pack_dataset, parse, to_json, unpack_raw
from gateway.ups.dataset import normalize
from gateway.ups.matching import from_params
from tests.helpers import workitem


def test_round_trip_and_splice():
    ds = normalize(workitem())
    blob = pack_dataset(ds)
    assert blob[:4] == b"\x28\xb5\x2f\xfd"  # a zstd frame
    raw = unpack_raw(blob)
    assert parse(raw) == ds
    assert orjson.loads(to_json([raw])) == [ds]


def test_datasets_stored_as_zlib_are_still_read():
    ds = normalize(workitem())
    old = zlib.compress(pack({tag: orjson.dumps(elem) for tag, elem in ds.items()}), 1)
    assert parse(unpack_raw(old)) == ds


@pytest.mark.asyncio
async def test_search_reads_what_create_stored(service):
    outcome = await service.create(normalize(workitem(label="CODEC")))
    result = await service.search(from_params([("WorklistLabel", "CODEC")]))
    assert [item["00080018"]["Value"][0] for item in result.items] == [outcome.uid]
