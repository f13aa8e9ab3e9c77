"""How datasets are stored: their JSON members, a line each, zstd-compressed; the zlib-compressed
msgpack maps of earlier versions are still read."""

from __future__ import annotations

import zlib

import orjson
import pytest

from gateway.store.codec import pack, pack_dataset, parse, projector, render, unpack_raw
from gateway.ups.dataset import normalize
from gateway.rest.query import search_query
from tests.helpers import workitem


def test_round_trip_and_splice():
    ds = normalize(workitem())
    blob = pack_dataset(ds)
    assert blob[:4] == b"\x28\xb5\x2f\xfd"  # a zstd frame
    raw = unpack_raw(blob)
    assert [m[:11] for m in raw] == [b'"%s":' % tag.encode() for tag in sorted(ds)]
    assert parse(raw) == ds
    assert parse(raw, ["00100020", "00741000"]) == {k: ds[k] for k in ("00100020", "00741000")}
    assert orjson.loads(render(raw)) == ds


def test_datasets_stored_as_zlib_are_still_read():
    ds = normalize(workitem())
    old = zlib.compress(pack({tag: orjson.dumps(elem) for tag, elem in ds.items()}), 1)
    assert parse(unpack_raw(old)) == ds


@pytest.mark.asyncio
async def test_search_reads_what_create_stored(redis_service):
    outcome = await redis_service.create(normalize(workitem(label="CODEC")))
    result = await redis_service.search(search_query([("WorklistLabel", "CODEC")]))
    assert [item["00080018"]["Value"][0] for item in result.items] == [outcome.uid]


def test_projector_keeps_what_a_result_returns():
    ds = normalize(workitem())
    ds["00081195"] = {"vr": "UI", "Value": ["1.2.3"]}
    raw = unpack_raw(pack_dataset(ds))
    everything_but_tx = projector(None, frozenset({"00081195"}))(raw)
    assert parse(everything_but_tx) == {k: v for k, v in ds.items() if k != "00081195"}
    some = projector(frozenset({"00100020", "00081195", "99990010"}), frozenset({"00081195"}))(raw)
    assert parse(some) == {"00100020": ds["00100020"]}


def test_text_with_line_breaks_survives():
    ds = normalize(workitem())
    ds["00400400"] = {"vr": "LT", "Value": ["line one\nline two\r\n"]}
    assert parse(unpack_raw(pack_dataset(ds))) == ds
