"""A change may be decided on the record this process remembers (one Redis round trip less), but
only a successful commit may rest on it: two UPS services on one Redis — two gateway processes —
each change what the other remembers, and every answer is the one a fresh read gives."""

from __future__ import annotations

import pytest

from gateway.store.subscriptions import RedisSubscriptionStore
from gateway.store.workitems import RedisWorkitemStore
from gateway.ups import status as st
from gateway.ups.dataset import normalize
from gateway.ups.errors import UPSError
from gateway.ups.service import Settings, UPSService
from tests.helpers import completion_payload, element, new_uid, workitem


@pytest.fixture
def two(redis_client, keys):
    """Two services on the same Redis and keys, each with a store (and memory) of its own."""
    def one():
        return UPSService(RedisWorkitemStore(redis_client, keys),
                          RedisSubscriptionStore(redis_client, keys), Settings())
    return one(), one()


async def _commands(redis_client) -> int:
    return int((await redis_client.info("stats"))["total_commands_processed"])


async def test_a_change_after_a_create_costs_one_round_trip(redis_client, keys):
    service = UPSService(RedisWorkitemStore(redis_client, keys),
                         RedisSubscriptionStore(redis_client, keys), Settings())
    uid = (await service.create(normalize(workitem()))).uid
    before = await _commands(redis_client)
    await service.change_state(uid, "IN PROGRESS", "1.2.3.1")
    # the commit script (its own commands inside count too), and the INFO call itself; no load
    assert await _commands(redis_client) - before < 20
    fresh = UPSService(RedisWorkitemStore(redis_client, keys),
                       RedisSubscriptionStore(redis_client, keys), Settings())
    other = (await fresh.create(normalize(workitem()))).uid
    fresh.store._recent.clear()  # as a process that never saw it
    before = await _commands(redis_client)
    await fresh.change_state(other, "IN PROGRESS", "1.2.3.2")
    loads = await _commands(redis_client) - before
    assert loads >= 2  # HMGET of the load script, then the commit


async def test_a_claim_on_a_stale_record_is_refused_as_a_fresh_read_says(two):
    a, b = two
    uid = (await a.create(normalize(workitem()))).uid  # a remembers it SCHEDULED
    await b.change_state(uid, "IN PROGRESS", "1.2.3.10")
    with pytest.raises(UPSError) as refused:
        await a.change_state(uid, "IN PROGRESS", "1.2.3.11")
    assert refused.value.status == st.ALREADY_IN_PROGRESS
    assert (await a.retrieve(uid))["00741000"]["Value"] == ["IN PROGRESS"]


async def test_a_refusal_a_stale_record_would_give_is_decided_again(two):
    """``a`` remembers the workitem SCHEDULED: an update with a Transaction UID would be refused
    on that (not claimed). ``b`` claimed it with that Transaction UID: the update succeeds."""
    a, b = two
    uid = (await a.create(normalize(workitem()))).uid
    await b.change_state(uid, "IN PROGRESS", "1.2.3.20")
    await a.update(uid, normalize({"00741204": element("LO", "relabelled")}), "1.2.3.20")
    assert (await b.retrieve(uid))["00741204"]["Value"] == ["relabelled"]


async def test_an_answer_that_changes_nothing_is_decided_on_a_fresh_read(two):
    """``a`` remembers it IN PROGRESS; ``b`` completed it. Completing again answers "already
    COMPLETED" (a warning, nothing changed), not a second completion."""
    a, b = two
    uid = (await a.create(normalize(workitem()))).uid
    tx = new_uid()
    await a.change_state(uid, "IN PROGRESS", tx)
    await b.update(uid, normalize(completion_payload()), tx)
    await b.change_state(uid, "COMPLETED", tx)
    # a's memory holds the IN PROGRESS version without the performed procedure information
    outcome = await a.change_state(uid, "COMPLETED", tx)
    assert outcome.status == st.ALREADY_COMPLETED


async def test_a_purged_workitem_is_not_decided_on_from_memory(two, redis_client, keys):
    a, b = two
    uid = (await a.create(normalize(workitem()))).uid
    await redis_client.delete(keys.workitem(uid))  # gone behind a's back (another process)
    await redis_client.set(keys.tombstone(uid), "1")
    with pytest.raises(UPSError) as gone:
        await a.change_state(uid, "IN PROGRESS", "1.2.3.30")
    assert gone.value.reason == "gone"


async def test_memory_is_bounded(redis_client, keys, monkeypatch):
    from gateway.store import workitems
    monkeypatch.setattr(workitems, "RECENT_RECORDS", 5)
    service = UPSService(RedisWorkitemStore(redis_client, keys),
                         RedisSubscriptionStore(redis_client, keys), Settings())
    uids = [(await service.create(normalize(workitem()))).uid for _ in range(8)]
    assert list(service.store._recent) == uids[-5:]
