"""WebSocket fan-out in rounds (gateway/events/fanout.py): the batched queue scripts on a real
Redis, frames encoded once per event, and many WebSocket subscribers of one gateway process
served together — each AE still gets every event once, in order, with its own Message IDs, and a
client with a long backlog is served on the side without holding up the others."""

from __future__ import annotations

import asyncio

import orjson
import pytest
import redis.asyncio as aioredis

from gateway.events import hub as event_hub
from gateway.events.frames import FrameEncoder
from gateway.events.queue import EventQueues, LeaseLost, QueuedEntry, QueueReader
from gateway.store import scripts
from gateway.store.codec import pack
from gateway.store.keys import Keys
from gateway.store.workitems import now_ms
from gateway.ups import events as ev
from tests.event_receiver import (GLOBAL, MESSAGE_ID, PROGRESS_REPORT, STATE_REPORT, Ups,
                                  WsListener, frame_type, frame_uid, frame_value, unassigned)
from tests.helpers import GatewayProcess


# ---- frames -------------------------------------------------------------------------------

def expected_frame(entry: QueuedEntry, info: dict) -> dict:
    """A frame as PS3.18 §8.10 and decisions.md lay it out: the N-EVENT-REPORT command fields
    (Affected SOP Class = UPS Push, the AE's Message ID, the workitem, the event type), then the
    event information."""
    return {"00000002": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.34.6.1"]},
            "00000110": {"vr": "US", "Value": [(entry.n - 1) % 0xFFFF + 1]},
            "00001000": {"vr": "UI", "Value": [entry.uid]},
            "00001002": {"vr": "US", "Value": [entry.type]}, **info}


def test_frames_carry_the_command_fields_then_the_event_information():
    state = ev.state_report({"00741000": {"vr": "CS", "Value": ["SCHEDULED"]}}, "IN PROGRESS")
    progress = ev.progress_report({})
    encoder = FrameEncoder()
    # the same event queued for three AEs (their own sequence numbers), then other events;
    # 0xFFFF + 1 wraps to Message ID 1
    entries = [(QueuedEntry("1-0", n, ev.STATE_REPORT, "1.2.3", pack(state), 0), state)
               for n in (1, 7, 0x10000)]
    entries += [(QueuedEntry("2-0", 8, ev.PROGRESS_REPORT, "1.2.3", pack(progress), 0), progress),
                (QueuedEntry("3-0", 9, ev.CANCEL_REQUESTED, "1.2.4", b"", 0), {})]
    for entry, info in entries:
        frame = orjson.loads(encoder.encode(entry))
        assert frame == expected_frame(entry, info)
        assert list(frame) == list(expected_frame(entry, info))  # command fields first
    assert orjson.loads(encoder.encode(entries[2][0]))[MESSAGE_ID]["Value"] == [1]


# ---- batched reads and acknowledgements (real Redis) -------------------------------------------

async def _broadcast(redis_client, keys, uid: str, info: bytes, *aes: str) -> None:
    broadcast = scripts.script(redis_client, "broadcast.lua")
    await broadcast(args=[keys.prefix, 1000, now_ms(), ev.STATE_REPORT, uid, info, *aes])


async def test_one_read_serves_several_aes_each_checked_against_its_own_lease(redis_client,
                                                                             keys):
    queues = EventQueues(redis_client, keys)
    aes = ["A1", "A2", "A3"]
    await _broadcast(redis_client, keys, "1.2.3",
                     pack({"00741000": {"vr": "CS", "Value": ["SCHEDULED"]}}), *aes)
    await _broadcast(redis_client, keys, "1.2.4", b"", "A1")
    readers = {}
    for ae in aes:
        readers[ae] = queues.reader("ws", ae, 10000)
        assert await queues.hold(readers[ae].lease, take=True)
    newer = queues.reader("ws", "A3", 10000)
    assert await queues.hold(newer.lease, take=True)  # another connection took A3 over

    batch = [*readers.values(), newer]  # two readers of A3's queue in one call
    replies = await queues.read(batch, 100)
    first, lost = readers["A1"].take(replies[0])
    assert ([(e.uid, e.n) for e in first], lost) == ([("1.2.3", 1), ("1.2.4", 2)], 0)
    second, _ = readers["A2"].take(replies[1])
    assert [(e.uid, e.n, e.info) for e in second] == [
        ("1.2.3", 1, {"00741000": {"vr": "CS", "Value": ["SCHEDULED"]}})]
    with pytest.raises(LeaseLost):
        readers["A3"].take(replies[2])
    assert [e.uid for e in newer.take(replies[3])[0]] == ["1.2.3"]

    # acknowledging A1 up to its first event only: the next read (a fresh reader, i.e. the
    # stored cursor) starts after it; A3's cursor is refused
    assert await queues.advance("ws", [readers["A1"].advance(first[0]),
                                       readers["A2"].advance(second[0]),
                                       ["A3", readers["A3"].lease.owner, "9-0 9"]]) \
        == [True, True, False]
    again = QueueReader(queues, "ws", "A1", readers["A1"].lease)
    [reply] = await queues.read([again], 100)
    assert [e.uid for e in again.take(reply)[0]] == ["1.2.4"]


async def test_the_notification_carries_the_queued_events(redis_client, keys):
    """What a script queues it also publishes: the same entries (ids, sequence numbers, event
    information) a reader would get from the streams, so deliverers need not read them."""
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(keys.notify())
    info = pack({"00741000": {"vr": "CS", "Value": ["SCHEDULED"]}})
    await _broadcast(redis_client, keys, "1.2.5", info, "N1", "N2")
    message = None
    while message is None:
        message = await pubsub.get_message(timeout=10)
    await pubsub.aclose()
    published = event_hub._decode(message["data"])
    assert set(published) == {"N1", "N2"}
    queues = EventQueues(redis_client, keys)
    for ae, entries in published.items():
        reader = queues.reader("ws", ae, 10000)
        await queues.hold(reader.lease, take=True)
        [reply] = await queues.read([reader], 100)
        stored, _ = reader.take(reply)
        assert [(e.id, e.n, e.type, e.uid, e.blob, e.ts_ms) for e in entries] == \
            [(e.id, e.n, e.type, e.uid, e.blob, e.ts_ms) for e in stored]


def test_offered_events_are_taken_only_when_they_follow_the_cursor():
    queues = EventQueues(aioredis.Redis(), Keys("offer-test:"))  # never connects: no I/O here
    reader = queues.reader("ws", "AE", 1000)

    def entry(n: int) -> QueuedEntry:
        return QueuedEntry(f"{n}-0", n, ev.STATE_REPORT, "1.2.3", b"", 0)

    reader.offer([entry(1)])
    assert reader.take_offered(10) is None  # the cursor is not known yet: read the stream
    reader.cursor = ("4-0", 4)
    reader.offer([entry(3), entry(4), entry(5), entry(6)])  # already delivered ones drop out
    assert [e.n for e in reader.take_offered(10)] == [5, 6]
    assert reader.take_offered(10) is None  # taken: nothing left
    reader.cursor = ("6-0", 6)
    reader.offer([entry(8)])  # 7 was not offered (a missed notification): read the stream
    assert reader.take_offered(10) is None
    reader.offer([entry(7), entry(8), entry(9)])
    assert reader.take_offered(2) is None  # more than the batch: read the stream


# ---- a gateway with many WebSocket subscribers --------------------------------------------------

async def test_every_websocket_of_many_gets_every_event_in_order(tmp_path, http):
    proc = GatewayProcess(tmp_path).start()
    listeners: list[WsListener] = []
    try:
        ups = Ups(http, proc.base)
        aes = [f"FAN{k:02d}" for k in range(40)]
        for ae in aes:
            await ups.subscribe(GLOBAL, ae)
        listeners = [await WsListener.open(http, ups.ws_url(ae)) for ae in aes]
        expected = []
        for _ in range(3):
            uid = await ups.create(unassigned())
            tx = await ups.claim(uid)
            await ups.progress(uid, tx, 50)
            expected += [(uid, STATE_REPORT), (uid, STATE_REPORT), (uid, PROGRESS_REPORT)]
        for listener in listeners:
            frames = await listener.wait(len(expected))
            assert [(frame_uid(f), frame_type(f)) for f in frames] == expected
            ids = [frame_value(f, MESSAGE_ID) for f in frames]
            assert ids == list(range(ids[0], ids[0] + len(expected)))
        # Nothing twice: a marker event queued now for every AE (each holds a global
        # subscription) reaches each after anything queued before it (per-AE order).
        marker = await ups.create(unassigned())
        await asyncio.gather(*(listener.wait(1, uid=marker) for listener in listeners))
        for listener in listeners:
            assert len(listener.frames) == len(expected) + 1
    finally:
        for listener in listeners:
            await listener.close()
        proc.stop()


async def test_a_long_backlog_is_sent_aside_while_others_keep_receiving(tmp_path, http):
    """A client that reconnects to 150 missed events of ≈1 KB each (more than a socket buffer's
    high-water mark at once) is served by a task of its own; a live subscriber still gets new
    events meanwhile, and the returning client gets the whole backlog, in order, once."""
    proc = GatewayProcess(tmp_path, extra={"events": {"backlog": 2000}}).start()
    live = back = None
    try:
        ups = Ups(http, proc.base)
        await ups.subscribe(GLOBAL, "BACK")
        await ups.subscribe(GLOBAL, "LIVE")
        back = await WsListener.open(http, ups.ws_url("BACK"))
        first = await ups.create(unassigned())
        [seen] = await back.wait(1, uid=first)
        await back.close_confirmed(proc, "BACK")

        uid = await ups.create(unassigned())
        tx = await ups.claim(uid)
        text = "x" * 1000
        for step in range(148):
            await ups.progress(uid, tx, step / 2, text=f"{step:04d}{text}")

        live = await WsListener.open(http, ups.ws_url("LIVE"))
        back = await WsListener.open(http, ups.ws_url("BACK"))
        later = await ups.create(unassigned())
        assert len(await live.wait(1, uid=later)) == 1
        frames = await back.wait(151)
        marker = await ups.drain(back, "BACK")
        assert len([f for f in back.frames if frame_uid(f) != marker]) == 151
        assert [frame_uid(f) for f in frames] == [uid] * 150 + [later]
        progress = [f["00741002"]["Value"][0]["00741006"]["Value"][0][:4] for f in frames[2:150]]
        assert progress == [f"{step:04d}" for step in range(148)]
        ids = [frame_value(f, MESSAGE_ID) for f in frames]
        first_id = frame_value(seen, MESSAGE_ID)
        assert ids == list(range(first_id + 1, first_id + 152))
        assert "event channel sends outside the rounds" in proc.log()
    finally:
        for listener in (live, back):
            if listener is not None:
                await listener.close()
        proc.stop()
