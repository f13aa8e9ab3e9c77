"""The committing process hands its own notifications to its deliverers at once
(``EventHub.published_here``) and passes over Redis's echo of them: each notification reaches the
listeners once, whichever copy comes first, and a notification from another process still comes
through pub/sub."""

from __future__ import annotations

import asyncio

import pytest

from gateway.events.hub import EventHub
from gateway.store.keys import Keys
from gateway.ups.dataset import normalize
from gateway.ups.service import Settings, UPSService
from gateway.ups.uids import GLOBAL_SUBSCRIPTION

from tests.helpers import workitem

pytestmark = pytest.mark.asyncio


async def heard_until(calls: list, count: int, seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        while len(calls) < count:
            await asyncio.sleep(0.01)


@pytest.fixture
async def hub(redis_client, keys):
    hub = EventHub(redis_client, keys)
    task = asyncio.create_task(hub.run())
    await asyncio.wait_for(hub.ready.wait(), 5)
    yield hub
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_commit_hands_its_events_to_the_hub_before_the_echo_and_once(
        hub, store, subscriptions, redis_client, keys):
    calls = []
    hub.listen(lambda by_ae: calls.append(by_ae))
    handed = []
    store.on_published = lambda data: (handed.append(data), hub.published_here(data))
    service = UPSService(store, subscriptions, Settings())
    await service.subscribe(GLOBAL_SUBSCRIPTION, "HUBWATCHER", False)

    first = await service.create(normalize(workitem()))
    # Handed over synchronously inside the commit: the listeners have it when create returns.
    assert len(handed) == 1 and len(calls) == 1
    assert {e.uid for e in calls[0]["HUBWATCHER"]} == {first.uid}
    # Another process's commit (a store without the hand-over) is heard through pub/sub. Its
    # notification follows the echo of the first on the channel: had the echo been delivered
    # again, it would be the second call.
    other = UPSService(type(store)(redis_client, keys), subscriptions, Settings())
    second = await other.create(normalize(workitem()))
    await heard_until(calls, 2)
    assert {e.uid for e in calls[1]["HUBWATCHER"]} == {second.uid}
