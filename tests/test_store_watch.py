"""StoreWatch (gateway/events/store_watch.py) on a real Redis: a store that lost its identity,
or carries another one, is noticed once per process, and announced once per cluster."""

from __future__ import annotations

from gateway.events.store_watch import StoreWatch
from gateway.store.codec import unpack
from gateway.ups import events as ev
from gateway.ups.uids import GLOBAL_SUBSCRIPTION


def _watch(redis_client, keys, subscriptions, resets: list) -> StoreWatch:
    async def on_reset() -> None:
        resets.append(True)
    return StoreWatch(redis_client, keys, subscriptions, ["PEER1", "PEER2"], on_reset)


async def _announcements(redis_client, keys, ae: str) -> list[dict]:
    entries = await redis_client.xrange(keys.queue(ae))
    return [unpack(fields[b"i"]) for _, fields in entries
            if int(fields[b"t"]) == ev.SCP_STATUS_CHANGE and fields[b"u"].decode() ==
            GLOBAL_SUBSCRIPTION]


async def test_an_unchanged_store_is_left_alone(redis_client, keys, subscriptions):
    resets: list = []
    watch = _watch(redis_client, keys, subscriptions, resets)
    await watch.started()
    assert await redis_client.get(keys.store_identity()) == watch.identity.encode()
    assert not await watch.check()
    assert resets == [] and "resets" not in watch.report()


async def test_a_store_come_back_empty_is_announced_once_to_the_peers(redis_client, keys,
                                                                       subscriptions):
    resets_a: list = []
    resets_b: list = []
    a = _watch(redis_client, keys, subscriptions, resets_a)
    b = _watch(redis_client, keys, subscriptions, resets_b)  # another process, same Redis
    await a.started()
    await b.started()
    assert a.identity == b.identity
    old = a.identity
    await redis_client.delete(keys.store_identity())  # (what an empty Redis looks like)
    await subscriptions.set_global("WATCHER", False, None)  # subscribed again meanwhile
    assert await a.check() and await b.check()
    assert a.identity == b.identity != old  # both adopt the one new identity
    assert resets_a == [True] and resets_b == [True]  # each process closes its channels
    for peer in ("PEER1", "PEER2", "WATCHER"):
        [info] = await _announcements(redis_client, keys, peer)  # but one announcement
        assert info == ev.scp_status("RESTARTED", "COLD START")
    assert not await a.check()  # noticed once
    report = a.report()
    assert report["identity"] == a.identity
    assert report["resets"][0]["previous"] == old and report["resets"][0]["store"] == a.identity
    assert "subscribe again" in report["detail"]


async def test_a_replaced_store_with_another_identity_is_noticed(redis_client, keys,
                                                                 subscriptions):
    resets: list = []
    watch = _watch(redis_client, keys, subscriptions, resets)
    await watch.started()
    await redis_client.set(keys.store_identity(), "another-redis")
    assert await watch.check()
    assert watch.identity == "another-redis" and resets == [True]
    assert len(await _announcements(redis_client, keys, "PEER1")) == 1
