"""Event delivery when things go wrong (issue 4 "Reliability"): a DIMSE receiver that is down, a
WebSocket client that goes away, a gateway that is killed, a backlog that overflows.

Every test runs its own gateway process (small retry back-off so redelivery is quick) and real
subscribers: a pynetdicom receiver listed in ``peers`` and aiohttp WebSocket clients.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

from tests.event_receiver import (GLOBAL, MESSAGE_ID, PROGRESS_REPORT, SCP_STATUS_CHANGE,
                                  STATE_REPORT, EventReceiver, Ups, WsListener, frame_type,
                                  frame_uid, frame_value, unassigned)
from tests.helpers import GatewayProcess

FAST_RETRY = {"retry_initial_seconds": 0.2, "retry_max_seconds": 1.0}
RETRY = "N-EVENT-REPORT failed; will retry"


def seconds_between(earlier: str, later: str) -> float:
    """Seconds between two log timestamps (``2026-11-25T10:00:00.123Z``)."""
    parse = lambda ts: datetime.fromisoformat(ts.replace("Z", "+00:00"))  # noqa: E731
    return (parse(later) - parse(earlier)).total_seconds()


async def make_events(ups: Ups, workitems: int, progress_steps: int) -> dict[str, list[tuple]]:
    """Create ``workitems`` workitems, claim each and report progress ``progress_steps`` times,
    interleaving the workitems. Returns, per workitem, the events a global subscriber should
    receive in order: (type, state or progress)."""
    expected: dict[str, list[tuple]] = {}
    txs = {}
    for _ in range(workitems):
        uid = await ups.create(unassigned())
        expected[uid] = [(STATE_REPORT, "SCHEDULED")]
    for uid in expected:
        txs[uid] = await ups.claim(uid)
        expected[uid].append((STATE_REPORT, "IN PROGRESS"))
    for step in range(1, progress_steps + 1):
        for uid in expected:
            await ups.progress(uid, txs[uid], step * 10)
            expected[uid].append((PROGRESS_REPORT, step * 10))
    return expected


def summary(event_type: int, dataset) -> tuple:
    if event_type == PROGRESS_REPORT:
        return (event_type, int(float(dataset.ProcedureStepProgressInformationSequence[0]
                                      .ProcedureStepProgress)))
    return (event_type, dataset.ProcedureStepState)


def frame_summary(frame: dict) -> tuple:
    if frame_type(frame) == PROGRESS_REPORT:
        return (PROGRESS_REPORT, int(float(frame["00741002"]["Value"][0]["00741004"]["Value"][0])))
    return (frame_type(frame), frame_value(frame, "00741000"))


def total(expected: dict) -> int:
    return sum(len(v) for v in expected.values())


# ---- DIMSE receiver down ------------------------------------------------------------------

async def test_receiver_down_during_50_events_gets_all_in_order(tmp_path, http):
    with EventReceiver("RECEIVER") as rcv:
        proc = GatewayProcess(tmp_path, extra={"peers": {"RECEIVER": rcv.peer()},
                                               "events": FAST_RETRY}).start()
        try:
            ups = Ups(http, proc.base)
            await ups.subscribe(GLOBAL, "RECEIVER")
            warmup = await ups.create(unassigned())  # an association exists and is reused
            await rcv.wait(1, uid=warmup)
            rcv.stop()
            expected = await make_events(ups, workitems=10, progress_steps=3)
            assert total(expected) == 50
            # the sender retries against the closed port until its back-off has reached the
            # cap (retry_max_seconds) and stayed there once
            await proc.wait_for_log(RETRY, count=2, ae="RECEIVER", retry_in_s=1.0)
            assert rcv.received(uid=list(expected)) == []
            associations = rcv.associations
            rcv.start()  # same port
            await rcv.wait(50, uid=list(expected))
            await ups.drain(rcv, "RECEIVER")
            reports = rcv.received(uid=list(expected))
            assert len(reports) == 50, "duplicates or missing"
            for uid, events in expected.items():
                got = [summary(r.event_type, r.dataset) for r in reports if r.uid == uid]
                assert got == events, uid
            # retry back-off doubles from retry_initial_seconds up to retry_max_seconds; once
            # the receiver is back, the 50 reports (and the marker) go out on one association
            delays = [r["retry_in_s"] for r in proc.records(RETRY, ae="RECEIVER")]
            assert delays[:5] == [0.2, 0.4, 0.8, 1.0, 1.0] and max(delays) == 1.0, delays
            assert rcv.associations - associations == 1
        finally:
            proc.stop()


async def test_receiver_refusing_then_accepting_does_not_lose_events(tmp_path, http):
    """A receiver that answers with a failure status got the report: it is not resent (a
    refusal is the receiver's decision), and later events still flow."""
    with EventReceiver("RECEIVER", status=0xC000) as rcv:
        proc = GatewayProcess(tmp_path, extra={"peers": {"RECEIVER": rcv.peer()},
                                               "events": FAST_RETRY}).start()
        try:
            ups = Ups(http, proc.base)
            await ups.subscribe(GLOBAL, "RECEIVER")
            first = await ups.create(unassigned())
            await rcv.wait(1, uid=first)
            rcv.status = 0x0000
            second = await ups.create(unassigned())
            await rcv.wait(1, uid=second)
            assert len(rcv.received(uid=first)) == 1
        finally:
            proc.stop()


# ---- WebSocket client away -------------------------------------------------------------------

async def test_websocket_reconnect_gets_exactly_the_missed_20_in_order(tmp_path, http):
    proc = GatewayProcess(tmp_path, extra={"events": FAST_RETRY}).start()
    try:
        ups = Ups(http, proc.base)
        await ups.subscribe(GLOBAL, "WATCHER")
        listener = await WsListener.open(http, ups.ws_url("WATCHER"))
        before = await ups.create(unassigned())
        [seen] = await listener.wait(1, uid=before)
        await listener.close()

        expected = await make_events(ups, workitems=4, progress_steps=3)
        assert total(expected) == 20

        listener = await WsListener.open(http, ups.ws_url("WATCHER"))
        try:
            frames = await listener.wait(20)
            marker = await ups.drain(listener, "WATCHER")
            missed = [f for f in listener.frames if frame_uid(f) != marker]
            assert len(missed) == 20, [frame_summary(f) for f in missed]
            assert frame_uid(seen) not in {frame_uid(f) for f in listener.frames}
            for uid, events in expected.items():
                assert [frame_summary(f) for f in frames if frame_uid(f) == uid] == events
            ids = [frame_value(f, MESSAGE_ID) for f in frames]
            first_id = frame_value(seen, MESSAGE_ID)
            assert ids == list(range(first_id + 1, first_id + 21))  # in order, none twice
        finally:
            await listener.close()
    finally:
        proc.stop()


async def test_websocket_abrupt_disconnect_then_reconnect(tmp_path, http):
    """The client vanishes without a close handshake; events after that are kept for it."""
    proc = GatewayProcess(tmp_path).start()
    try:
        ups = Ups(http, proc.base)
        await ups.subscribe(GLOBAL, "WATCHER")
        listener = await WsListener.open(http, ups.ws_url("WATCHER"))
        first = await ups.create(unassigned())
        await listener.wait(1, uid=first)
        listener.ws._response.connection.transport.abort()  # TCP reset, no close frame
        await asyncio.gather(listener._task, return_exceptions=True)
        await proc.wait_for_log("event channel closed", ae="WATCHER")  # the server noticed
        later = [await ups.create(unassigned()) for _ in range(5)]
        listener = await WsListener.open(http, ups.ws_url("WATCHER"))
        try:
            frames = await listener.wait(5)
            assert [frame_uid(f) for f in frames] == later
            marker = await ups.drain(listener, "WATCHER")
            assert [frame_uid(f) for f in listener.frames if frame_uid(f) != marker] == later
        finally:
            await listener.close()
    finally:
        proc.stop()


async def test_a_channel_on_another_process_takes_the_ae_over(tmp_path, http):
    """Several channels of one AE in one process all receive its events
    (tests/test_event_channels.py); a channel for the AE opened on another gateway process of
    the same Redis takes the AE's delivery over: the first process's channel is closed as
    replaced (4000) and each event goes to one process's channels only."""
    first = GatewayProcess(tmp_path / "first").start()
    second = None
    try:
        second = GatewayProcess(tmp_path / "second", redis_url=first.redis_url).start()
        ups = Ups(http, first.base)
        await ups.subscribe(GLOBAL, "WATCHER")
        old = await WsListener.open(http, ups.ws_url("WATCHER"))
        new = await WsListener.open(http, Ups(http, second.base).ws_url("WATCHER"))
        try:
            uids = [await ups.create(unassigned()) for _ in range(3)]
            frames = await new.wait(3, uid=uids)
            assert [frame_uid(f) for f in frames] == uids
            # each event went to one connection only
            assert old.received(uid=uids) == []
            await first.wait_for_log("event channel closed", ae="WATCHER", code=4000)
        finally:
            await old.close()
            await new.close()
    finally:
        if second is not None:
            second.stop()
        first.stop()


# ---- gateway killed ----------------------------------------------------------------------

async def test_sigkill_keeps_subscriptions_and_undelivered_events(tmp_path, http):
    with EventReceiver("RECEIVER") as rcv:
        proc = GatewayProcess(tmp_path, extra={"peers": {"RECEIVER": rcv.peer()},
                                               "events": FAST_RETRY}).start()
        try:
            ups = Ups(http, proc.base)
            await ups.subscribe(GLOBAL, "RECEIVER")
            await ups.subscribe(GLOBAL, "WATCHER")
            listener = await WsListener.open(http, ups.ws_url("WATCHER"))
            first = await ups.create(unassigned())
            await rcv.wait(1, uid=first)
            await listener.wait(1, uid=first)
            await listener.close()
            rcv.stop()
            expected = await make_events(ups, workitems=3, progress_steps=1)
            proc.crash()  # gateway and redis-server SIGKILLed: no GOING DOWN, no flush
            proc.start()
            rcv.start()
            reports = await rcv.wait(total(expected), uid=list(expected))
            for uid, events in expected.items():
                assert [summary(r.event_type, r.dataset) for r in reports if r.uid == uid] == events
            listener = await WsListener.open(http, ups.ws_url("WATCHER"))
            try:
                frames = await listener.wait(total(expected), uid=list(expected))
                for uid, events in expected.items():
                    assert [frame_summary(f) for f in frames if frame_uid(f) == uid] == events
                # the subscriptions survived: new workitems still reach both subscribers
                later = await ups.create(unassigned())
                await rcv.wait(1, uid=later)
                await listener.wait(1, uid=later)
                # the events queued before the kill were each delivered once (a repeat would
                # have come before ``later``: per-AE order)
                assert len(rcv.received(uid=list(expected))) == total(expected)
                assert len(listener.received(uid=list(expected))) == total(expected)
            finally:
                await listener.close()
        finally:
            proc.stop()


async def test_sigkill_restart_announces_restarted_warm_start(tmp_path, http):
    """After a crash there was no GOING DOWN; subscribers learn of the restart from RESTARTED."""
    with EventReceiver("RECEIVER") as rcv:
        proc = GatewayProcess(tmp_path, extra={"peers": {"RECEIVER": rcv.peer()},
                                               "events": FAST_RETRY}).start()
        try:
            ups = Ups(http, proc.base)
            await ups.subscribe(GLOBAL, "RECEIVER")
            proc.crash()
            runs = len(proc.records("gateway started"))
            proc.start()
            [restarted] = await rcv.wait(1, event_type=SCP_STATUS_CHANGE)
            assert restarted.dataset.SCPStatus == "RESTARTED"
            assert restarted.dataset.SubscriptionListStatus == "WARM START"
            # The killed process's heartbeat entry is still there, under the same instance
            # identity (the same data_dir and ports): the new process knows it for its own and
            # announces during its start (tests/test_restart.py shows it without any clock).
            # Timed on the gateway's own log clock, so the delivery to the receiver does not
            # count.
            started = proc.records("gateway started")[runs]["ts"]
            [_, announced] = proc.records("SCP status RESTARTED announced")  # one per run
            assert seconds_between(started, announced["ts"]) < 10
        finally:
            proc.stop()


async def test_surviving_process_delivers_what_a_killed_one_left(tmp_path, http):
    """Two processes deliver to the same peer through one lease; one is SIGKILLed while the
    receiver is down. The survivor takes over (at the latest when the lease expires) and the
    receiver gets every queued event exactly once."""
    with EventReceiver("RECEIVER") as rcv:
        store = GatewayProcess(tmp_path / "store").start()  # the Redis both share
        extra = {"peers": {"RECEIVER": rcv.peer()}, "events": FAST_RETRY}
        b = c = None
        try:
            # c starts first, so its sender takes the peer's delivery lease
            c = GatewayProcess(tmp_path / "c", redis_url=store.redis_url, extra=extra).start()
            b = GatewayProcess(tmp_path / "b", redis_url=store.redis_url, extra=extra).start()
            ups = Ups(http, store.base)
            await ups.subscribe(GLOBAL, "RECEIVER")
            first = await ups.create(unassigned())
            await rcv.wait(1, uid=first)
            rcv.stop()
            expected = await make_events(ups, workitems=3, progress_steps=2)
            c.kill()  # c has no Redis of its own (it uses store's)
            rcv.start()
            back = time.monotonic()
            await rcv.wait(total(expected), uid=list(expected))
            print(f"takeover after SIGKILL: all {total(expected)} delivered "
                  f"{time.monotonic() - back:.2f}s after the receiver came back")
            await ups.drain(rcv, "RECEIVER")  # a repeat would have come before the marker
            reports = rcv.received(uid=list(expected))
            assert len(reports) == total(expected)
            for uid, events in expected.items():
                assert [summary(r.event_type, r.dataset) for r in reports if r.uid == uid] == events
        finally:
            for proc in (c, b):
                if proc:
                    proc.stop()
            store.stop()


# ---- backlog overflow ----------------------------------------------------------------------

async def test_backlog_overflow_is_announced_before_the_remaining_events(tmp_path, http):
    proc = GatewayProcess(tmp_path, extra={"events": {"backlog": 10}}).start()
    try:
        ups = Ups(http, proc.base)
        await ups.subscribe(GLOBAL, "WATCHER")
        listener = await WsListener.open(http, ups.ws_url("WATCHER"))
        first = await ups.create(unassigned())
        [seen] = await listener.wait(1, uid=first)
        await listener.close()

        uids = [await ups.create(unassigned()) for _ in range(50)]

        listener = await WsListener.open(http, ups.ws_url("WATCHER"))
        try:
            # the newest event is always kept, and arrives last (per-AE order)
            await listener.wait(1, uid=uids[-1])
            frames = listener.frames
            notice, rest = frames[0], frames[1:]
            assert frame_type(notice) == SCP_STATUS_CHANGE
            assert frame_value(notice, "00741246") == "COLD START"
            # Redis trims streams approximately (whole macro nodes): at least the backlog is
            # kept, and the bound is what decides, not the 50 events
            assert 10 <= len(rest) < 50, len(rest)
            # what is left is the newest events, in order, without gaps
            assert [frame_uid(f) for f in rest] == uids[-len(rest):]
            assert all(frame_type(f) == STATE_REPORT for f in rest)
        finally:
            await listener.close()
    finally:
        proc.stop()
