"""events.max_subscriber_aes at its edge, in the core (on the Redis stores and the in-memory
ports alike): up to the limit, AEs subscribe; one more is refused with 0x0213 (REST: 403) and
nothing of it is stored; an AE that already subscribes may always subscribe again; an AE that
unsubscribes from the worklist frees its place."""

from __future__ import annotations

import pytest

from gateway.store.subscriptions import RedisSubscriptionStore
from gateway.store.workitems import RedisWorkitemStore
from gateway.ups import status as st
from gateway.ups.errors import UPSError
from gateway.ups.service import Settings, UPSService
from gateway.ups.uids import GLOBAL_SUBSCRIPTION
from tests.helpers import new_uid, workitem
from tests.memory_store import MemoryStores

LIMIT = 3


@pytest.fixture(params=["redis", "memory"])
def limited(request):
    settings = Settings(max_subscriber_aes=LIMIT)
    if request.param == "memory":
        db = MemoryStores()
        return UPSService(db.workitems, db.subscriptions, settings)
    client, keys = request.getfixturevalue("redis_client"), request.getfixturevalue("keys")
    return UPSService(RedisWorkitemStore(client, keys), RedisSubscriptionStore(client, keys),
                      settings)


async def test_subscriber_aes_up_to_the_limit_then_0213(limited):
    uid = new_uid()
    await limited.create(workitem(), uid)
    for n in range(LIMIT - 1):
        await limited.subscribe(GLOBAL_SUBSCRIPTION, f"AE{n}", False)
    await limited.subscribe(uid, f"AE{LIMIT - 1}", False)  # the last place: a workitem's
    with pytest.raises(UPSError) as refused:
        await limited.subscribe(GLOBAL_SUBSCRIPTION, "ONE_TOO_MANY", False)
    assert refused.value.status == st.RESOURCE_LIMITATION
    assert "events.max_subscriber_aes" in refused.value.message
    assert "ONE_TOO_MANY" not in await limited.watch.subs.subscribers(), "nothing stored"
    with pytest.raises(UPSError):
        await limited.subscribe(uid, "ONE_TOO_MANY", False)

    await limited.subscribe(uid, "AE0", True)  # already a subscriber: always admitted
    await limited.unsubscribe(GLOBAL_SUBSCRIPTION, "AE0")  # leaves the count
    await limited.subscribe(GLOBAL_SUBSCRIPTION, "ONE_TOO_MANY", False)
    assert "ONE_TOO_MANY" in await limited.watch.subs.subscribers()
