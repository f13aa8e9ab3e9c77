"""The lane (gateway/store/lane.py): commands made in the same turn of the event loop go to
Redis in one write on one connection; every caller gets its own answer, errors stay with their
caller, a lost script cache is reloaded, a broken connection fails the waiting calls and the
next call works again, and concurrent commits still decide one at a time."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import RedisError, ResponseError

from gateway.store.lane import Lane
from gateway.ups.dataset import normalize
from gateway.rest.query import search_query
from tests.helpers import new_uid, workitem

ECHO = """
if ARGV[1] == 'bad' then return redis.error_reply('refused ' .. KEYS[1]) end
redis.call('INCR', 'batch-test-runs:' .. KEYS[1])
return {KEYS[1], ARGV[1]}
"""


async def test_each_caller_gets_its_own_answer_and_each_call_runs_once(redis_client):
    echo = Lane(redis_client).script(ECHO)  # not loaded yet: NOSCRIPT first
    answers = await asyncio.gather(*(echo(keys=[f"k{i % 5}"], args=[str(i)]) for i in range(50)))
    assert answers == [[f"k{i % 5}".encode(), str(i).encode()] for i in range(50)]
    runs = [int(await redis_client.getdel(f"batch-test-runs:k{i}")) for i in range(5)]
    assert runs == [10] * 5


async def test_an_error_stays_with_its_caller(redis_client):
    echo = Lane(redis_client).script(ECHO)
    answers = await asyncio.gather(echo(keys=["a"], args=["1"]), echo(keys=["b"], args=["bad"]),
                                   echo(keys=["c"], args=["3"]), return_exceptions=True)
    assert answers[0] == [b"a", b"1"] and answers[2] == [b"c", b"3"]
    assert isinstance(answers[1], ResponseError) and "refused b" in str(answers[1])


@pytest.mark.parametrize("calls", [1, 8])
async def test_a_lost_script_cache_is_reloaded(redis_client, calls):
    echo = Lane(redis_client).script(ECHO)
    await echo(keys=["x"], args=["0"])
    await redis_client.script_flush()
    answers = await asyncio.gather(*(echo(keys=["x"], args=[str(i)]) for i in range(calls)))
    assert answers == [[b"x", str(i).encode()] for i in range(calls)]


async def test_concurrent_claims_in_one_turn_have_one_winner(service):
    uid = (await service.create(normalize(workitem(new_uid(), label="BATCH")))).uid
    outcomes = await asyncio.gather(*(service.change_state(uid, "IN PROGRESS", new_uid())
                                      for _ in range(20)), return_exceptions=True)
    winners = [o for o in outcomes if not isinstance(o, Exception)]
    assert len(winners) == 1
    assert all(getattr(o, "status", None) == 0xC302 for o in outcomes if o not in winners)


async def test_concurrent_creates_and_searches_in_one_turn(service):
    uids = [new_uid() for _ in range(30)]
    await asyncio.gather(*(service.create(normalize(workitem(uid, label="BATCH2")))
                           for uid in uids))
    pages = await asyncio.gather(*(service.search(search_query([("WorklistLabel", "BATCH2"),
                                                               ("limit", "10"),
                                                               ("offset", str(k * 10))]))
                                   for k in range(3)))
    found = [item["00080018"]["Value"][0] for page in pages for item in page.items]
    assert sorted(found) == sorted(uids) and all(page.total == 30 for page in pages)


async def test_one_write_carries_the_commands_of_a_loop_turn(redis_client):
    """Fifty calls in one turn: Redis sees one client connection for all of them, and their
    replies come back to the right callers although they share it."""
    lane = Lane(redis_client)
    await lane.call("PING")
    before = int((await redis_client.info("stats"))["total_connections_received"])
    answers = await asyncio.gather(*(lane.call("ECHO", f"m{i}") for i in range(50)))
    assert answers == [f"m{i}".encode() for i in range(50)]
    after = int((await redis_client.info("stats"))["total_connections_received"])
    assert after == before  # no new connection: the lane's own one
    await lane.close()


async def test_a_broken_connection_fails_the_waiting_calls_and_the_next_call_reconnects(
        redis_client):
    lane = Lane(redis_client)
    assert await lane.call("PING") == b"PONG"
    name = f"lane-test-{id(lane)}".encode()
    await lane.call("CLIENT", "SETNAME", name)
    clients = await redis_client.client_list()
    [mine] = [c for c in clients if c.get("name") == name.decode()]
    blocked = asyncio.ensure_future(lane.call("BLPOP", f"lane-test-empty-{id(lane)}", 0))
    await asyncio.sleep(0.1)
    await redis_client.client_kill_filter(_id=mine["id"])
    with pytest.raises(RedisError):
        await asyncio.wait_for(blocked, 5)
    assert await lane.call("PING") == b"PONG"  # a new connection
    await lane.close()


async def test_a_cancelled_caller_does_not_shift_the_replies(redis_client):
    lane = Lane(redis_client)
    slow = asyncio.ensure_future(lane.call("BLPOP", f"lane-cancel-{id(lane)}", 0.3))
    after = asyncio.ensure_future(lane.call("ECHO", "after"))
    await asyncio.sleep(0.05)
    slow.cancel()
    assert await after == b"after"  # its own reply, not the dropped BLPOP's
    assert await lane.call("ECHO", "next") == b"next"
    await lane.close()


async def test_commands_called_together_share_one_connection_in_order(redis_client):
    """``call_together``: MULTI … EXEC and the WAIT after it go out together, on one connection
    (a WAIT counts only its own connection's writes), and their replies come back in order."""
    lane = Lane(redis_client)
    key = f"together:{new_uid()}"
    replies = await lane.call_together(("MULTI",), ("INCR", key), ("INCR", key), ("EXEC",),
                                       ("CLIENT", "ID"), ("WAIT", 0, 10))
    assert replies[:3] == [b"OK", b"QUEUED", b"QUEUED"]
    assert replies[3] == [1, 2] and replies[5] == 0
    assert replies[4] == await lane.call("CLIENT", "ID")  # the lane's one connection
    with pytest.raises(ResponseError):  # an error reply is raised, after every reply came
        await lane.call_together(("INCR", key), ("HGET", key, "f"), ("INCR", key))
    assert int(await redis_client.get(key)) == 4
    await lane.close()

