"""Rendered search results are kept per stored dataset and projection (gateway.store.results):
a repeated search reuses them, a changed workitem is never answered from an old rendering, and
the memory budget holds."""

from __future__ import annotations

from gateway.store.codec import pack_dataset, projector
from gateway.store.results import RenderedResults
from gateway.ups.dataset import normalize
from gateway.rest.query import search_query
from gateway.store.workitems import RedisWorkitemStore
from gateway.ups.service import Settings, UPSService
from tests.helpers import new_uid, workitem


async def _scheduled(service, label: str, count: int) -> list[str]:
    uids = []
    for i in range(count):
        outcome = await service.create(normalize(workitem(label=label,
                                                          start=f"202611251{i:02d}000")))
        uids.append(outcome.uid)
    return uids


def _uids(result) -> list[str]:
    return [item["00080018"]["Value"][0] for item in result.items]


async def test_a_repeated_search_reuses_the_rendered_results(redis_service):
    uids = await _scheduled(redis_service, "CACHE1", 3)
    query = search_query([("WorklistLabel", "CACHE1")])
    first = await redis_service.search(query)
    kept = len(redis_service.store.results)
    again = await redis_service.search(search_query([("WorklistLabel", "CACHE1")]))
    assert _uids(first) == _uids(again) == uids
    assert len(redis_service.store.results) == kept >= 3
    assert all(a is b for a, b in zip(first.rendered, again.rendered))  # the same text objects


async def test_a_changed_workitem_is_rendered_anew(redis_service):
    [uid] = await _scheduled(redis_service, "CACHE2", 1)
    query = [("WorklistLabel", "CACHE2"), ("includefield", "ProcedureStepLabel")]
    before = (await redis_service.search(search_query(query))).items[0]
    await redis_service.update(uid, normalize({"00741204": {"vr": "LO", "Value": ["Relabelled"]}}))
    after = (await redis_service.search(search_query(query))).items[0]
    assert before["00741204"]["Value"] == ["AI analysis"]
    assert after["00741204"]["Value"] == ["Relabelled"]


async def test_each_projection_is_rendered_on_its_own(redis_service):
    [uid] = await _scheduled(redis_service, "CACHE3", 1)
    default = (await redis_service.search(search_query([("WorklistLabel", "CACHE3")]))).items[0]
    everything = (await redis_service.search(search_query([("WorklistLabel", "CACHE3"),
                                                    ("includefield", "all")]))).items[0]
    assert set(default) < set(everything)
    assert everything == await redis_service.retrieve(uid)


async def test_no_budget_keeps_nothing_and_answers_the_same(redis_client, keys, subscriptions):
    store = RedisWorkitemStore(redis_client, keys, search_cache_bytes=0)
    service = UPSService(store, subscriptions, Settings())
    uids = await _scheduled(service, "CACHE4", 2)
    result = await service.search(search_query([("WorklistLabel", "CACHE4")]))
    assert _uids(result) == uids and len(service.store.results) == 0


def test_the_budget_drops_the_oldest_entries_first():
    blobs = [pack_dataset(normalize(workitem(new_uid()))) for _ in range(40)]
    project = projector(None, frozenset())
    one = len(RenderedResults(10**9).render(blobs[0], "all", project)) + len(blobs[0]) + 200
    results = RenderedResults(max_bytes=one * 10)  # about ten entries (UIDs differ in length)
    texts = [results.render(blob, "all", project) for blob in blobs]
    assert 8 <= len(results) <= 12 and results.size <= results.max_bytes
    assert results.render(blobs[-1], "all", project) is texts[-1]      # newest kept
    assert results.render(blobs[0], "all", project) is not texts[0]    # oldest dropped …
    assert results.render(blobs[0], "all", project) == texts[0]        # … and rendered again
    assert 8 <= len(results) <= 12 and results.size <= results.max_bytes
