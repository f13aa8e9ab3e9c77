"""Restarts. Workitems survive a gateway restart on the same data_dir: after SIGTERM, and after
the gateway and its embedded Redis are both SIGKILLed (every acknowledged write survives a process
crash: see ``GatewayProcess.crash``). The restarted process is the one that crashed (its instance
identity): its event delivery resumes at once. A Redis that comes back empty is noticed."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp

from tests.event_receiver import (GLOBAL, SCP_STATUS_CHANGE, STATE_REPORT, EventReceiver, Ups,
                                  WsListener, frame_type, unassigned)
from tests.helpers import (GatewayProcess, RedisServer, completion_payload, element, new_uid,
                           state_payload, workitem)

JSON = {"Content-Type": "application/dicom+json"}
FAST_RETRY = {"retry_initial_seconds": 0.2, "retry_max_seconds": 1.0}


async def _create(http, gateway, uid, **kw):
    async with http.post(f"{gateway.base}/workitems?workitem={uid}",
                         data=json.dumps(workitem(**kw)), headers=JSON) as r:
        assert r.status == 201, await r.text()


async def _state(http, gateway, uid, state, tx):
    async with http.put(f"{gateway.base}/workitems/{uid}/state", headers=JSON,
                        data=json.dumps(state_payload(state, tx))) as r:
        return r.status, await r.text()


async def _get(http, gateway, uid):
    async with http.get(f"{gateway.base}/workitems/{uid}") as r:
        if r.status != 200:
            return r.status, None
        [ds] = await r.json(content_type=None)
        return 200, ds


async def _populate(http, gateway):
    """Workitems in every state; returns {uid: state} and the claimed item's Transaction UID."""
    states, tx = {}, new_uid()
    for i in range(5):
        uid = new_uid()
        await _create(http, gateway, uid, patient_id=f"R{i}", start=f"2026112509{i:02d}00")
        states[uid] = "SCHEDULED"
    claimed, done, canceled = list(states)[:3]
    assert (await _state(http, gateway, claimed, "IN PROGRESS", tx))[0] == 200
    async with http.post(f"{gateway.base}/workitems/{claimed}?transaction-uid={tx}",
                         data=json.dumps({"00741204": element("LO", "kept")}), headers=JSON) as r:
        assert r.status == 200
    done_tx = new_uid()
    assert (await _state(http, gateway, done, "IN PROGRESS", done_tx))[0] == 200
    async with http.post(f"{gateway.base}/workitems/{done}?transaction-uid={done_tx}",
                         data=json.dumps(completion_payload()), headers=JSON) as r:
        assert r.status == 200
    assert (await _state(http, gateway, done, "COMPLETED", done_tx))[0] == 200
    async with http.post(f"{gateway.base}/workitems/{canceled}/cancelrequest") as r:
        assert r.status == 202
    states.update({claimed: "IN PROGRESS", done: "COMPLETED", canceled: "CANCELED"})
    return states, claimed, tx


async def _check_survivors(http, gateway, states, claimed, tx):
    for uid, state in states.items():
        status, ds = await _get(http, gateway, uid)
        assert status == 200, uid
        assert ds["00741000"]["Value"] == [state]
        assert "00081195" not in ds
    assert (await _get(http, gateway, claimed))[1]["00741204"]["Value"] == ["kept"]
    # the indexes came back too
    async with http.get(f"{gateway.base}/workitems", params={
            "SOPInstanceUID": ",".join(states), "ProcedureStepState": "SCHEDULED"}) as r:
        assert r.status == 200
        assert len(await r.json(content_type=None)) == 2
    # the claim is intact: another claimant and a wrong Transaction UID are refused ...
    assert (await _state(http, gateway, claimed, "IN PROGRESS", new_uid()))[0] == 409
    async with http.post(f"{gateway.base}/workitems/{claimed}?transaction-uid={new_uid()}",
                         data=json.dumps(completion_payload()), headers=JSON) as r:
        assert r.status == 400
    # ... and the original one still works
    async with http.post(f"{gateway.base}/workitems/{claimed}?transaction-uid={tx}",
                         data=json.dumps(completion_payload()), headers=JSON) as r:
        assert r.status == 200, await r.text()
    assert (await _state(http, gateway, claimed, "COMPLETED", tx))[0] == 200


async def test_restart_after_sigterm_keeps_everything(tmp_path, http):
    first = GatewayProcess(tmp_path / "a", dimse=False).start()
    try:
        states, claimed, tx = await _populate(http, first)
        assert first.stop() == 0
    finally:
        first.kill()
    second = GatewayProcess(tmp_path / "b", data_dir=first.data_dir, dimse=False).start()
    try:
        await _check_survivors(http, second, states, claimed, tx)
    finally:
        assert second.stop() == 0


async def test_restart_after_sigkill_keeps_every_acknowledged_write(tmp_path, http):
    first = GatewayProcess(tmp_path / "a", dimse=False).start()
    try:
        states, claimed, tx = await _populate(http, first)
        first.crash()  # the gateway and its redis-server, right after the last answer
    finally:
        first.kill()
    second = GatewayProcess(tmp_path / "b", data_dir=first.data_dir, dimse=False).start()
    try:
        await _check_survivors(http, second, states, claimed, tx)
        # and it keeps working: new workitems are stored beside the old ones
        uid = new_uid()
        await _create(http, second, uid)
        assert (await _get(http, second, uid))[0] == 200
    finally:
        second.stop()


async def test_two_gateways_cannot_share_one_data_dir(tmp_path, http):
    first = GatewayProcess(tmp_path / "a", dimse=False).start()
    try:
        second = GatewayProcess(tmp_path / "b", data_dir=first.data_dir, dimse=False)
        try:
            second.start(timeout=30)
        except RuntimeError as exc:
            assert "data_dir" in str(exc)
        else:
            second.stop()
            raise AssertionError("a second gateway started on a data_dir in use")
        # the first one is unharmed
        uid = new_uid()
        await _create(http, first, uid)
    finally:
        first.stop()


# ---- the restarted process is the one that crashed ----------------------------------------

def _outlast_the_test(client) -> None:
    """While the crashed process is frozen: make its delivery leases and its heartbeat entry
    last ten minutes, far beyond any wait of the test. A restart that waited for them to expire,
    or for the entry to go stale, would deliver nothing and announce nothing in time."""
    for key in client.scan_iter("ups:own:*"):
        client.pexpire(key, 600_000)
    for member, _ in client.zrange("ups:procs", 0, -1, withscores=True):
        client.zadd("ups:procs", {member: time.time() + 600})


async def test_sigkill_restart_resumes_delivery_at_once_and_announces_restarted(tmp_path, http):
    """After SIGKILL the restarted process on the same data_dir recognises its own identity:
    it takes its DIMSE delivery lease and its heartbeat entry over instead of waiting for them
    to expire, announces RESTARTED during its start, and a graceful stop soon after still
    announces GOING DOWN (the old entry is its own, not a live peer's)."""
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
            identity = proc.records("gateway started")[0]["instance"]

            proc.crash(while_frozen=_outlast_the_test)
            runs = len(proc.records("gateway started"))
            proc.start()
            assert proc.records("gateway started")[runs]["instance"] == identity
            # RESTARTED was queued during the start, before /health said 200 ...
            announced = proc.records("SCP status RESTARTED announced")
            assert len(announced) == 2, announced  # one per run
            log = [r.get("msg") for r in proc.records()]
            started_at = [i for i, msg in enumerate(log) if msg == "gateway started"][runs]
            announced_at = [i for i, msg in enumerate(log)
                            if msg == "SCP status RESTARTED announced"][1]
            assert announced_at < started_at
            # ... so it comes before anything created after the start, and both transports
            # deliver with the dead process's leases still in Redis
            async with aiohttp.ClientSession() as fresh:  # (the pooled connections died)
                ups = Ups(fresh, proc.base)
                later = await ups.create(unassigned())
                reports = await rcv.wait(2, uid=[GLOBAL, later])
                assert [r.event_type for r in reports] == [SCP_STATUS_CHANGE, STATE_REPORT]
                assert reports[0].dataset.SCPStatus == "RESTARTED"
                assert reports[0].dataset.SubscriptionListStatus == "WARM START"
                listener = await WsListener.open(fresh, ups.ws_url("WATCHER"))
                try:
                    frames = await listener.wait(2, uid=[GLOBAL, later])
                    assert [frame_type(f) for f in frames] == [SCP_STATUS_CHANGE, STATE_REPORT]
                finally:
                    await listener.close()

            assert proc.stop() == 0
            statuses = await rcv.wait(2, event_type=SCP_STATUS_CHANGE)
            assert [r.dataset.SCPStatus for r in statuses] == ["RESTARTED", "GOING DOWN"]
        finally:
            proc.stop()


# ---- a Redis that comes back empty ---------------------------------------------------------

async def test_redis_back_empty_is_noticed_told_and_reported(tmp_path, http):
    """Redis restarted without persistence: every subscription is gone. The gateway notices
    (the store's identity is missing), logs an error, closes the WebSocket channels with the
    "subscribe again" close code, announces RESTARTED / COLD START to its DIMSE peers and says
    so in /health; a client that subscribes again gets events again."""
    with RedisServer(tmp_path / "redis") as server, EventReceiver("RECEIVER") as rcv:
        proc = GatewayProcess(tmp_path, redis_url=server.url,
                              extra={"peers": {"RECEIVER": rcv.peer()},
                                     "events": FAST_RETRY}).start()
        try:
            ups = Ups(http, proc.base)
            await ups.subscribe(GLOBAL, "RECEIVER")
            await ups.subscribe(GLOBAL, "WATCHER")
            listener = await WsListener.open(http, ups.ws_url("WATCHER"))
            first = await ups.create(unassigned())
            await rcv.wait(1, uid=first)
            await listener.wait(1, uid=first)
            async with http.get(f"{proc.url}/health") as r:
                assert "resets" not in (await r.json())["store"]

            server.restart_empty()

            await proc.wait_for_log("event channels closed: subscribe again", channels=1)
            for _ in range(600):  # the close handshake, then the reader ends
                if listener.closed:
                    break
                await asyncio.sleep(0.05)
            assert listener.close_code == 4100
            [restarted] = await rcv.wait(1, event_type=SCP_STATUS_CHANGE)
            assert restarted.uid == GLOBAL
            assert restarted.dataset.SCPStatus == "RESTARTED"
            assert restarted.dataset.SubscriptionListStatus == "COLD START"
            assert restarted.dataset.UnifiedProcedureStepListStatus == "COLD START"
            [error] = proc.records(level="ERROR")
            assert error["msg"].startswith("Redis came back without the gateway's data")
            async with aiohttp.ClientSession() as fresh:
                async with fresh.get(f"{proc.url}/health") as r:
                    assert r.status == 200  # the gateway works; what was lost is reported
                    store = (await r.json())["store"]
                assert len(store["resets"]) == 1 and "subscribe again" in store["detail"]
                assert store["resets"][0]["store"] == store["identity"]
                # subscribing again brings the events back, on both transports
                ups = Ups(fresh, proc.base)
                await ups.subscribe(GLOBAL, "RECEIVER")
                await ups.subscribe(GLOBAL, "WATCHER")
                listener = await WsListener.open(fresh, ups.ws_url("WATCHER"))
                try:
                    later = await ups.create(unassigned())
                    await rcv.wait(1, uid=later)
                    await listener.wait(1, uid=later)
                    await ups.drain(rcv, "RECEIVER")
                    assert len(rcv.received(event_type=SCP_STATUS_CHANGE)) == 1  # told once
                finally:
                    await listener.close()
        finally:
            proc.stop()


async def test_redis_back_empty_under_two_processes_is_announced_once(tmp_path, http):
    """Both processes notice and close their own channels; one of them tells the peer."""
    with RedisServer(tmp_path / "redis") as server, EventReceiver("RECEIVER") as rcv:
        extra = {"peers": {"RECEIVER": rcv.peer()}, "events": FAST_RETRY}
        procs = [GatewayProcess(tmp_path / name, redis_url=server.url, extra=extra).start()
                 for name in ("a", "b")]
        try:
            listeners = []
            for proc, ae in zip(procs, ("WATCH_A", "WATCH_B")):
                ups = Ups(http, proc.base)
                await ups.subscribe(GLOBAL, ae)
                listeners.append(await WsListener.open(http, ups.ws_url(ae)))
            server.restart_empty()
            for proc in procs:
                await proc.wait_for_log("event channels closed: subscribe again", channels=1)
            for listener in listeners:
                for _ in range(600):
                    if listener.closed:
                        break
                    await asyncio.sleep(0.05)
                assert listener.close_code == 4100
            await rcv.wait(1, event_type=SCP_STATUS_CHANGE)
            # a marker through the peer's queue: a second announcement would have come first
            async with aiohttp.ClientSession() as fresh:
                ups = Ups(fresh, procs[0].base)
                await ups.subscribe(GLOBAL, "RECEIVER")
                await ups.drain(rcv, "RECEIVER")
            [restarted] = rcv.received(event_type=SCP_STATUS_CHANGE)
            assert restarted.dataset.SubscriptionListStatus == "COLD START"
            announced = [r for proc in procs for r in proc.records(
                "SCP status RESTARTED announced", list_status="COLD START") if r["recipients"]]
            assert len(announced) == 1
        finally:
            for proc in procs:
                proc.stop()


async def test_redis_emptied_while_the_gateway_was_down_is_noticed_at_start(tmp_path, http):
    """The gateway keeps the store identity it last saw in data_dir: started again on a Redis
    that lost everything meanwhile, it says so at once and tells its DIMSE peers."""
    with RedisServer(tmp_path / "redis") as server, EventReceiver("RECEIVER") as rcv:
        proc = GatewayProcess(tmp_path, redis_url=server.url,
                              extra={"peers": {"RECEIVER": rcv.peer()}, "events": FAST_RETRY})
        proc.start()
        try:
            await Ups(http, proc.base).subscribe(GLOBAL, "RECEIVER")
            assert proc.stop() == 0  # GOING DOWN to the subscriber
            server.restart_empty()
            proc.start()
            statuses = await rcv.wait(2, event_type=SCP_STATUS_CHANGE)
            assert [r.dataset.SCPStatus for r in statuses] == ["GOING DOWN", "RESTARTED"]
            assert statuses[1].dataset.SubscriptionListStatus == "COLD START"
            [error] = proc.records(level="ERROR")
            assert error["msg"].startswith("Redis came back without the gateway's data")
            async with aiohttp.ClientSession() as fresh:
                async with fresh.get(f"{proc.url}/health") as r:
                    assert r.status == 200
                    assert len((await r.json())["store"]["resets"]) == 1
        finally:
            proc.stop()
