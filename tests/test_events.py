"""Subscriptions and events end to end (issue 4; digest §3, §6.7–6.10, §7; decisions.md).

Real gateway processes, a real pynetdicom N-EVENT-REPORT receiver listed in ``peers`` and real
WebSocket clients. Most tests share one gateway (module scope) and tell their events apart by
workitem UID and subscriber AE title; tests that restart the gateway or need special settings
start their own.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
from pydicom import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (UnifiedProcedureStepPull, UnifiedProcedureStepPush,
                                  UnifiedProcedureStepWatch)

from gateway.testing_peers import NODELAY_HANDLER, guard_responses
from tests.event_receiver import (AFFECTED_INSTANCE, AFFECTED_SOP_CLASS, ASSIGNED,
                                  CANCEL_REQUESTED, EVENT_TYPE, FILTERED, GLOBAL, MESSAGE_ID,
                                  PROGRESS_REPORT, SCP_STATUS_CHANGE, STATE_REPORT, EventReceiver,
                                  Ups, WsListener, frame_type, frame_uid, frame_value, unassigned)
from tests.helpers import PUSH, GatewayProcess, code, element, new_uid, workitem

FAST_RETRY = {"retry_initial_seconds": 0.2, "retry_max_seconds": 1.0}
_names = itertools.count(1)


def ae_name(prefix: str = "WS") -> str:
    """A subscriber AE title no other test uses."""
    return f"{prefix}{next(_names)}"



def states(reports) -> list[str]:
    return [r.dataset.ProcedureStepState for r in reports]


# ---- fixtures ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def receiver():
    with EventReceiver("RECEIVER") as r:
        yield r


@pytest.fixture(scope="module")
def gw(tmp_path_factory, receiver):
    proc = GatewayProcess(tmp_path_factory.mktemp("events"), extra={
        "peers": {"RECEIVER": receiver.peer()}, "events": FAST_RETRY}).start()
    yield proc
    proc.stop()


@pytest.fixture
async def ups(gw, http, receiver):
    yield Ups(http, gw.base)
    # Whatever a test subscribed RECEIVER to ends with it (unsubscribing the worklist removes
    # every subscription of the AE), so later tests only hear about their own workitems.
    await Ups(http, gw.base).unsubscribe(GLOBAL, "RECEIVER", expect=None)


# ---- REST change → N-EVENT-REPORT, every event type ------------------------------------------

async def test_instance_subscription_initial_report_goes_to_that_ae_only(ups, receiver, http):
    uid = await ups.create(unassigned())
    other = ae_name()
    await ups.subscribe(uid, other)
    listener = await WsListener.open(http, ups.ws_url(other))
    try:
        [initial] = await listener.wait(1, uid=uid)
        assert frame_type(initial) == STATE_REPORT
        assert frame_value(initial, "00741000") == "SCHEDULED"
        r = await ups.subscribe(uid, "RECEIVER")
        assert r.headers["Content-Location"] == ups.ws_url("RECEIVER")
        assert r.headers["Location"] == ups.ws_url("RECEIVER")
        [report] = await receiver.wait(1, uid=uid)
        assert (report.event_type, report.uid) == (STATE_REPORT, uid)
        assert report.sop_class == PUSH
        assert report.calling_ae == "UPS_GATEWAY"
        assert report.dataset.ProcedureStepState == "SCHEDULED"
        assert report.dataset.InputReadinessState == "READY"
        # The other subscriber of the same workitem hears nothing of RECEIVER's subscription.
        await ups.drain(listener, other)
        assert listener.received(uid=uid) == [initial]
    finally:
        await listener.close()


async def test_claim_updates_and_complete_reach_the_dimse_receiver(ups, receiver):
    uid = await ups.create(unassigned())
    await ups.subscribe(uid, "RECEIVER")
    await receiver.wait(1, uid=uid)
    tx = await ups.claim(uid)
    await ups.update(uid, {"00404041": element("CS", "INCOMPLETE")}, tx)  # Input Readiness
    await ups.progress(uid, tx, 40, "segmenting")  # Progress Information
    await ups.update(uid, {"00404025": element("SQ", code("STATION2"))}, tx)  # assignment
    await ups.update(uid, {"00741204": element("LO", "renamed")}, tx)  # none of those: no event
    await ups.complete(uid, tx)
    reports = await receiver.wait(6, uid=uid)
    assert [r.event_type for r in reports] == [STATE_REPORT, STATE_REPORT, STATE_REPORT,
                                              PROGRESS_REPORT, ASSIGNED, STATE_REPORT]
    initial, claimed, readiness, progress, assigned, completed = reports
    assert claimed.dataset.ProcedureStepState == "IN PROGRESS"
    assert claimed.dataset.InputReadinessState == "READY"
    assert readiness.dataset.ProcedureStepState == "IN PROGRESS"
    assert readiness.dataset.InputReadinessState == "INCOMPLETE"
    [item] = progress.dataset.ProcedureStepProgressInformationSequence
    assert float(item.ProcedureStepProgress) == 40
    assert item.ProcedureStepProgressDescription == "segmenting"
    assert assigned.dataset.ScheduledStationNameCodeSequence[0].CodeValue == "STATION2"
    assert completed.dataset.ProcedureStepState == "COMPLETED"
    assert "TransactionUID" not in completed.dataset
    assert all(r.sop_class == PUSH for r in reports)
    await ups.drain(receiver, "RECEIVER")
    assert len(receiver.received(uid=uid)) == 6  # nothing more, nothing twice


async def test_create_reports_state_and_assignment_to_global_subscribers(ups, receiver):
    await ups.subscribe(GLOBAL, "RECEIVER")
    assigned_uid = await ups.create(workitem(station="CT-AI-1"))
    plain_uid = await ups.create(unassigned())
    first, second = await receiver.wait(2, uid=assigned_uid)
    assert (first.event_type, second.event_type) == (STATE_REPORT, ASSIGNED)
    assert first.dataset.ProcedureStepState == "SCHEDULED"
    assert first.dataset.InputReadinessState == "READY"
    assert second.dataset.ScheduledStationNameCodeSequence[0].CodeValue == "CT-AI-1"
    [only] = await receiver.wait(1, uid=plain_uid)
    assert only.event_type == STATE_REPORT
    await ups.drain(receiver, "RECEIVER")
    assert len(receiver.received(uid=[assigned_uid, plain_uid])) == 3


async def test_assignment_of_human_performer_raises_ups_assigned(ups, receiver):
    uid = await ups.create(unassigned())
    await ups.subscribe(uid, "RECEIVER")
    await receiver.wait(1, uid=uid)
    performer = {"00404009": element("SQ", code("RAD1", "99LOCAL", "Dr Who")),
                 "00404036": element("LO", "Radiology")}
    await ups.update(uid, {"00404034": element("SQ", performer)})  # SCHEDULED: no tx
    [_, assigned] = await receiver.wait(2, uid=uid)
    assert assigned.event_type == ASSIGNED
    assert assigned.dataset.HumanPerformerCodeSequence[0].CodeValue == "RAD1"
    assert assigned.dataset.HumanPerformerOrganization == "Radiology"


async def test_performer_cancels_through_change_state(ups, receiver):
    uid = await ups.create(unassigned())
    await ups.subscribe(uid, "RECEIVER")
    tx = await ups.claim(uid)
    await ups.set_state(uid, "CANCELED", tx)
    reports = await receiver.wait(3, uid=uid)
    assert states(reports) == ["SCHEDULED", "IN PROGRESS", "CANCELED"]
    canceled = reports[-1].dataset
    assert canceled.ProcedureStepDiscontinuationReasonCodeSequence[0].CodeValue == "110513"


async def test_cancel_request_on_scheduled_gives_two_state_reports(ups, receiver):
    uid = await ups.create(unassigned())
    await ups.subscribe(uid, "RECEIVER")
    await ups.cancel_request(uid, "REQUESTER", reason="patient left")
    reports = await receiver.wait(3, uid=uid)
    assert [r.event_type for r in reports] == [STATE_REPORT] * 3
    assert states(reports) == ["SCHEDULED", "IN PROGRESS", "CANCELED"]
    assert reports[-1].dataset.ReasonForCancellation == "patient left"
    assert (await ups.retrieve(uid))["00741000"]["Value"] == ["CANCELED"]
    await ups.drain(receiver, "RECEIVER")
    assert len(receiver.received(uid=uid)) == 3


async def test_cancel_request_on_in_progress_tells_subscribers(ups, receiver):
    uid = await ups.create(unassigned())
    await ups.subscribe(uid, "RECEIVER")
    await ups.claim(uid, requester="SOMEONE")
    await ups.cancel_request(uid, "REQUESTER", reason="wrong patient",
                             contact="mailto:desk@example.org")
    reports = await receiver.wait(3, uid=uid)
    requested = reports[-1]
    assert requested.event_type == CANCEL_REQUESTED
    assert requested.dataset.RequestingAE == "REQUESTER"
    assert requested.dataset.ReasonForCancellation == "wrong patient"
    assert requested.dataset.ContactURI == "mailto:desk@example.org"
    assert requested.dataset.ContactDisplayName == "Requester desk"
    # No state change: the performer decides.
    assert (await ups.retrieve(uid))["00741000"]["Value"] == ["IN PROGRESS"]


async def test_cancel_request_reaches_an_unsubscribed_performer_in_peers(ups, receiver):
    uid = await ups.create(unassigned())
    await ups.claim(uid, requester="RECEIVER")  # the performer: a peer with an address
    await ups.cancel_request(uid, "REQUESTER")
    [requested] = await receiver.wait(1, uid=uid)
    assert requested.event_type == CANCEL_REQUESTED
    assert requested.dataset.RequestingAE == "REQUESTER"
    assert "ReasonForCancellation" not in requested.dataset


async def test_cancel_request_nobody_can_be_told_is_409(ups, receiver):
    uid = await ups.create(unassigned())
    await ups.claim(uid, requester="NOWHERE")  # not in peers, no WebSocket, not subscribed
    r = await ups.cancel_request(uid, "REQUESTER", expect=409)
    assert "performer" in r.headers.get("Warning", "").lower()
    await ups.drain(receiver, "RECEIVER")
    assert receiver.received(uid) == []


# ---- SCP Status Change ----------------------------------------------------------------------

async def test_event_associations_offer_the_configured_maximum_pdu(tmp_path, http):
    """The gateway receives no larger P-DATA on its event associations than on its listener:
    its A-ASSOCIATE-RQ carries dimse.max_pdu as its Maximum Length Received."""
    with EventReceiver("PDURCV") as rcv:
        proc = GatewayProcess(tmp_path, extra={"peers": {"PDURCV": rcv.peer()},
                                               "dimse": {"max_pdu": 65536},
                                               "events": FAST_RETRY}).start()
        try:
            ups = Ups(http, proc.base)
            await ups.subscribe(GLOBAL, "PDURCV")
            uid = await ups.create(unassigned())
            await rcv.wait(1, uid=uid)
            assert rcv.requestor_max_pdus == [65536]
        finally:
            proc.stop()


async def test_scp_status_going_down_and_restarted_warm_start(tmp_path, http):
    with EventReceiver("STATUSRCV") as status_rcv:
        proc = GatewayProcess(tmp_path, extra={"peers": {"STATUSRCV": status_rcv.peer()},
                                               "events": FAST_RETRY}).start()
        try:
            ups = Ups(http, proc.base)
            ws_ae = ae_name()
            await ups.subscribe(GLOBAL, "STATUSRCV")
            await ups.subscribe(GLOBAL, ws_ae)
            listener = await WsListener.open(http, ups.ws_url(ws_ae))
            uid = await ups.create(unassigned())
            await status_rcv.wait(1, uid=uid)
            await listener.wait(1, uid=uid)

            # SIGTERM: graceful. Stopped from a thread, so that this test's WebSocket client
            # keeps reading meanwhile and confirms (pongs) the GOING DOWN frame as any live
            # client does: a frame it had not confirmed would come again on its next channel.
            assert await asyncio.to_thread(proc.stop) == 0
            [down] = await status_rcv.wait(1, event_type=SCP_STATUS_CHANGE)
            assert down.uid == GLOBAL
            assert down.dataset.SCPStatus == "GOING DOWN"
            [frame] = await listener.wait(1, event_type=SCP_STATUS_CHANGE)
            assert frame_value(frame, "00741242") == "GOING DOWN"
            assert frame_uid(frame) == GLOBAL
            await listener.close()

            proc.start()
            up = (await status_rcv.wait(2, event_type=SCP_STATUS_CHANGE))[1]
            assert up.uid == GLOBAL
            assert up.dataset.SCPStatus == "RESTARTED"
            assert up.dataset.SubscriptionListStatus == "WARM START"
            assert up.dataset.UnifiedProcedureStepListStatus == "WARM START"
            listener = await WsListener.open(http, ups.ws_url(ws_ae))
            [frame] = await listener.wait(1, event_type=SCP_STATUS_CHANGE)
            assert frame_value(frame, "00741242") == "RESTARTED"
            assert frame_value(frame, "00741244") == "WARM START"
            # The subscriptions survived: a new workitem still reaches both subscribers.
            later = await ups.create(unassigned())
            await status_rcv.wait(1, uid=later)
            await listener.wait(1, uid=later)
            await listener.close()
        finally:
            proc.stop()


async def test_scp_status_restarted_cold_start_on_an_empty_store(tmp_path, http):
    """An empty store announces COLD START (to nobody: there are no subscribers yet); a peer
    that never subscribed is not sent SCP Status Changes."""
    with EventReceiver("COLDRCV") as rcv:
        proc = GatewayProcess(tmp_path, extra={"peers": {"COLDRCV": rcv.peer()}}).start()
        try:
            announced = await proc.wait_for_log("SCP status RESTARTED announced")
            assert announced["list_status"] == "COLD START"
            assert announced["recipients"] == 0  # COLDRCV is not a subscriber: not queued
        finally:
            proc.stop()
        assert rcv.received(event_type=SCP_STATUS_CHANGE) == []


# ---- DIMSE change → WebSocket frame ---------------------------------------------------------

def dimse_association(port: int, sop_class, calling: str):
    ae = AE(ae_title=calling)
    ae.add_requested_context(sop_class)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 15
    assoc = ae.associate("127.0.0.1", port, ae_title="UPS_GATEWAY", evt_handlers=[NODELAY_HANDLER])
    assert assoc.is_established, "association with the gateway refused"
    guard_responses(assoc)
    return assoc


def dimse_watch_action(port: int, uid: str, action: int, receiving_ae: str,
                       lock: str | None = None) -> int:
    """N-ACTION 3/4/5 (subscribe, unsubscribe, suspend) on the UPS Watch context."""
    assoc = dimse_association(port, UnifiedProcedureStepWatch, "WATCHSCU")
    try:
        info = Dataset()
        info.ReceivingAE = receiving_ae
        if lock is not None:
            info.DeletionLock = lock
        status, _ = assoc.send_n_action(info, action, UnifiedProcedureStepPush, uid)
        assert status is not None and "Status" in status, "no N-ACTION response"
        return int(status.Status)
    finally:
        assoc.release()


def dimse_change_state(port: int, uid: str, state: str, tx: str, calling: str = "PERFORMER"):
    assoc = dimse_association(port, UnifiedProcedureStepPull, calling)
    try:
        action = Dataset()
        action.ProcedureStepState = state
        action.TransactionUID = tx
        status, _ = assoc.send_n_action(action, 1, UnifiedProcedureStepPush, uid)
        return int(status.Status) if status and "Status" in status else None
    finally:
        assoc.release()


async def test_dimse_claim_reaches_a_websocket_subscriber(ups, gw, http):
    uid = await ups.create(unassigned())
    ae = ae_name()
    await ups.subscribe(uid, ae)
    listener = await WsListener.open(http, ups.ws_url(ae))
    try:
        await listener.wait(1, uid=uid)
        status = await asyncio.to_thread(dimse_change_state, gw.dimse_port, uid, "IN PROGRESS",
                                         new_uid())
        assert status == 0x0000
        started = time.monotonic()
        frames = await listener.wait(2, uid=uid)
        latency = time.monotonic() - started
        frame = frames[1]
        assert frame_value(frame, AFFECTED_SOP_CLASS) == PUSH
        assert isinstance(frame_value(frame, MESSAGE_ID), int)
        assert frame_value(frame, AFFECTED_INSTANCE) == uid
        assert frame_value(frame, EVENT_TYPE) == STATE_REPORT
        assert frame_value(frame, "00741000") == "IN PROGRESS"
        # It came with the change's notification: without one, a channel's queue is read only
        # every 5 s (the fan-out's fallback poll).
        assert latency < 4.5, latency
    finally:
        await listener.close()


async def test_dimse_subscription_hears_rest_changes(ups, gw, receiver):
    """Subscribe RECEIVER over DIMSE (N-ACTION 3 on Watch), change over UPS-RS, hear it by
    N-EVENT-REPORT; then unsubscribe (4), and subscribe/suspend the worklist (3, 5)."""
    port = gw.dimse_port
    uid = await ups.create(unassigned())
    assert await asyncio.to_thread(dimse_watch_action, port, uid, 3, "RECEIVER", "FALSE") == 0
    [initial] = await receiver.wait(1, uid=uid)
    assert initial.dataset.ProcedureStepState == "SCHEDULED"
    tx = await ups.claim(uid)
    [_, claimed] = await receiver.wait(2, uid=uid)
    assert claimed.dataset.ProcedureStepState == "IN PROGRESS"
    assert await asyncio.to_thread(dimse_watch_action, port, uid, 4, "RECEIVER") == 0
    await ups.progress(uid, tx, 30)
    await ups.drain(receiver, "RECEIVER")
    assert len(receiver.received(uid=uid)) == 2  # not the progress after unsubscribing

    assert await asyncio.to_thread(dimse_watch_action, port, GLOBAL, 3, "RECEIVER", "FALSE") == 0
    created = await ups.create(unassigned())
    [report] = await receiver.wait(1, uid=created)
    assert report.event_type == STATE_REPORT
    assert await asyncio.to_thread(dimse_watch_action, port, GLOBAL, 5, "RECEIVER") == 0
    unseen = await ups.create(unassigned())
    await ups.claim(created)  # still subscribed to the workitem it got while global
    await receiver.wait(2, uid=created)  # queued after unseen's creation: unseen's would be here
    assert receiver.received(uid=unseen) == []


# ---- WebSocket channel ---------------------------------------------------------------------

async def test_websocket_frames_carry_command_fields_and_increasing_message_ids(ups, http):
    ae = ae_name()
    await ups.subscribe(GLOBAL, ae)
    listener = await WsListener.open(http, ups.ws_url(ae))
    try:
        uid = await ups.create(workitem())
        tx = await ups.claim(uid)
        await ups.progress(uid, tx, 10)
        frames = await listener.wait(4, uid=uid)
        assert [frame_type(f) for f in frames] == [STATE_REPORT, ASSIGNED, STATE_REPORT,
                                                   PROGRESS_REPORT]
        for frame in frames:
            assert frame["00000002"] == {"vr": "UI", "Value": [PUSH]}
            assert frame["00000110"]["vr"] == "US"
            assert frame["00001000"] == {"vr": "UI", "Value": [uid]}
            assert frame["00001002"]["vr"] == "US"
        ids = [frame_value(f, MESSAGE_ID) for f in frames]
        assert ids == sorted(set(ids))
        assert frames[0]["00741000"] == {"vr": "CS", "Value": ["SCHEDULED"]}
        assert frames[0]["00404041"] == {"vr": "CS", "Value": ["READY"]}
    finally:
        await listener.close()


@pytest.mark.parametrize("path", ["/subscribers/{ae}", "/workitems/{uid}/subscribers/{ae}"])
async def test_websocket_channel_alternative_urls(ups, gw, http, path):
    ae = ae_name()
    uid = await ups.create(unassigned())
    await ups.subscribe(uid, ae)
    listener = await WsListener.open(http, "ws" + gw.base[4:] + path.format(ae=ae, uid=uid))
    try:
        [frame] = await listener.wait(1, uid=uid)
        assert frame_type(frame) == STATE_REPORT
    finally:
        await listener.close()


async def test_channel_url_without_upgrade_is_400(gw, http):
    async with http.get(f"{gw.base}/ws/subscribers/NOBODY") as r:
        assert r.status == 400


# ---- global, filtered, suspend, unsubscribe ---------------------------------------------------

async def test_global_subscription_with_lock_reports_every_existing_workitem(ups, http):
    existing = [await ups.create(unassigned()) for _ in range(3)]
    ae = ae_name()
    listener = await WsListener.open(http, ups.ws_url(ae))
    try:
        await ups.subscribe(GLOBAL, ae, lock=True)
        frames = await listener.wait(3, uid=existing)
        assert sorted(frame_uid(f) for f in frames) == sorted(existing)
        assert {frame_type(f) for f in frames} == {STATE_REPORT}
        # New workitems are covered too.
        new = await ups.create(workitem())
        first, second = await listener.wait(2, uid=new)
        assert (frame_type(first), frame_type(second)) == (STATE_REPORT, ASSIGNED)
        # …and the existing ones now report their changes.
        await ups.claim(existing[0])
        [_, claimed] = await listener.wait(2, uid=existing[0])
        assert frame_value(claimed, "00741000") == "IN PROGRESS"
    finally:
        await listener.close()


async def test_global_subscription_without_lock_sends_no_initial_reports(ups, http):
    existing = await ups.create(unassigned())
    ae = ae_name()
    listener = await WsListener.open(http, ups.ws_url(ae))
    try:
        await ups.subscribe(GLOBAL, ae)
        marker = await ups.drain(listener, ae)
        assert listener.received(uid=existing) == []
        assert listener.frames == listener.received(uid=marker)
        # but the existing workitem is subscribed: its changes are reported
        await ups.claim(existing)
        [frame] = await listener.wait(1, uid=existing)
        assert frame_value(frame, "00741000") == "IN PROGRESS"
        new = await ups.create(unassigned())
        [frame] = await listener.wait(1, uid=new)
        assert frame_value(frame, "00741000") == "SCHEDULED"
    finally:
        await listener.close()


@pytest.mark.parametrize("spelling", ["filter=WorklistLabel={label}",
                                      "WorklistLabel={label}",
                                      "filter=00741202={label}"])
async def test_filtered_global_subscription(ups, http, spelling):
    label = ae_name("LBL")
    match_before = await ups.create(unassigned(label=label))
    other_before = await ups.create(unassigned(label="OTHER"))
    ae = ae_name()
    listener = await WsListener.open(http, ups.ws_url(ae))
    try:
        await ups.subscribe(FILTERED, ae, lock=True, query=spelling.format(label=label))
        [initial] = await listener.wait(1)
        assert frame_uid(initial) == match_before  # with lock: the matching existing one only
        match_new = await ups.create(unassigned(label=label))
        other_new = await ups.create(unassigned(label="OTHER"))
        [created] = await listener.wait(1, uid=match_new)
        assert frame_value(created, "00741000") == "SCHEDULED"
        await ups.claim(other_before)
        await ups.claim(other_new)
        await ups.claim(match_before)
        await listener.wait(2, uid=match_before)
        assert listener.received(uid=[other_before, other_new]) == []
        assert {frame_uid(f) for f in listener.frames} == {match_before, match_new}
    finally:
        await listener.close()


async def test_filtered_keys_need_the_filtered_uid(ups):
    r = await ups.subscribe(GLOBAL, ae_name(), query="filter=WorklistLabel=AI", expect=400)
    assert r.headers.get("Warning")
    assert (await r.json())["status"] == "0xC314"  # Refused: not appropriate for this UID


async def test_filtered_subscription_with_unknown_key_is_400(ups):
    r = await ups.subscribe(FILTERED, ae_name(), query="filter=NoSuchKeyword=1", expect=400)
    assert r.headers.get("Warning")


async def test_suspend_stops_only_auto_subscription_of_new_workitems(ups, http):
    ae = ae_name()
    listener = await WsListener.open(http, ups.ws_url(ae))
    try:
        await ups.subscribe(GLOBAL, ae)
        before = await ups.create(unassigned())
        await listener.wait(1, uid=before)
        await ups.suspend(ae)
        after = await ups.create(unassigned())
        await ups.claim(after)
        await ups.claim(before)  # still subscribed
        [_, claimed] = await listener.wait(2, uid=before)
        assert frame_value(claimed, "00741000") == "IN PROGRESS"
        assert listener.received(uid=after) == []
        # Suspending again: there is no global subscription any more.
        r = await ups.suspend(ae, expect=404)
        assert r.headers.get("Warning")
    finally:
        await listener.close()


async def test_suspend_of_a_workitem_subscription_is_refused(ups):
    uid = await ups.create(unassigned())
    ae = ae_name()
    await ups.subscribe(uid, ae)
    r = await ups.suspend(ae, uid=uid, expect=400)
    assert (await r.json())["status"] == "0xC314"  # conformance §7: well-known UID only


async def test_unsubscribe_instance(ups, http):
    ae = ae_name()
    uid = await ups.create(unassigned())
    await ups.subscribe(uid, ae)
    listener = await WsListener.open(http, ups.ws_url(ae))
    try:
        await listener.wait(1, uid=uid)
        await ups.unsubscribe(uid, ae)
        r = await ups.unsubscribe(uid, ae, expect=404)
        assert "not found" in r.headers.get("Warning", "").lower()
        tx = await ups.claim(uid)
        await ups.progress(uid, tx, 5)
        await ups.drain(listener, ae)
        assert len(listener.received(uid=uid)) == 1  # the initial State Report only
    finally:
        await listener.close()


async def test_unsubscribe_unknown_workitem_is_404(ups):
    r = await ups.unsubscribe(new_uid(), ae_name(), expect=404)
    assert r.headers.get("Warning")


async def test_unsubscribe_global_removes_global_and_every_instance_subscription(ups, http):
    ae = ae_name()
    single = await ups.create(unassigned())
    await ups.subscribe(single, ae)
    await ups.subscribe(GLOBAL, ae)
    auto = await ups.create(unassigned())
    listener = await WsListener.open(http, ups.ws_url(ae))
    try:
        await listener.wait(1, uid=single)
        await listener.wait(1, uid=auto)
        await ups.unsubscribe(GLOBAL, ae)
        new = await ups.create(unassigned())
        await ups.claim(single)
        await ups.claim(auto)
        await ups.drain(listener, ae)
        assert len(listener.received(uid=[single, auto])) == 2, \
            [frame_uid(f) for f in listener.frames]
        assert listener.received(uid=new) == []
        # Nothing left to unsubscribe.
        await ups.unsubscribe(single, ae, expect=404)
        await ups.unsubscribe(GLOBAL, ae, expect=404)
    finally:
        await listener.close()


async def test_subscribe_unknown_workitem_is_404(ups):
    await ups.subscribe(new_uid(), ae_name(), expect=404)


async def test_subscribe_with_bad_deletionlock_is_400(ups):
    uid = await ups.create(unassigned())
    await ups.subscribe(uid, ae_name(), query="deletionlock=maybe", expect=400)


# ---- deletion lock and purge ----------------------------------------------------------------

async def test_deletion_lock_keeps_final_workitems_until_unsubscribed(tmp_path, http):
    retention_s = 2.88
    proc = GatewayProcess(tmp_path, extra={"ups": {"retention_hours": retention_s / 3600,
                                                   "purge_interval_seconds": 0.5}}).start()
    try:
        ups = Ups(http, proc.base)
        locked, unlocked, canceled = [await ups.create(unassigned()) for _ in range(3)]
        await ups.subscribe(locked, "LOCKER", lock=True)
        await ups.subscribe(unlocked, "WATCHER")  # no lock: does not hold it
        global_locked = ae_name("GL")
        tx = await ups.claim(locked)
        await ups.complete(locked, tx)
        tx = await ups.claim(unlocked)
        await ups.complete(unlocked, tx)
        await ups.cancel_request(canceled)
        completed_at = time.monotonic()

        async def wait_gone(uid: str, timeout: float) -> float:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                status = await ups.status_of(uid)
                if status == 410:
                    return time.monotonic()
                assert status == 200, status
                await asyncio.sleep(0.1)
            raise AssertionError(f"{uid} still there after {timeout}s")

        gone_at = await wait_gone(unlocked, retention_s + 5)
        assert gone_at - completed_at >= retention_s - 0.3
        await wait_gone(canceled, 2)
        await asyncio.sleep(1.0)  # two more purge passes
        assert await ups.status_of(locked) == 200

        await ups.unsubscribe(locked, "LOCKER")
        unlocked_at = time.monotonic()
        purged_at = await wait_gone(locked, 2 * retention_s + 5)
        # re-checked at most one retention period after the last look
        assert purged_at - unlocked_at < retention_s + 2

        # A global subscription with lock holds new workitems too, until it is removed.
        await ups.subscribe(GLOBAL, global_locked, lock=True)
        held = await ups.create(unassigned())
        tx = await ups.claim(held)
        await ups.complete(held, tx)
        await asyncio.sleep(retention_s + 1.0)
        assert await ups.status_of(held) == 200
        await ups.unsubscribe(GLOBAL, global_locked)
        await wait_gone(held, 2 * retention_s + 5)
    finally:
        proc.stop()


# ---- two gateway processes on one Redis ------------------------------------------------------

async def test_two_processes_share_events_and_send_each_report_once(tmp_path, http):
    with EventReceiver("SHARED") as rcv:
        extra = {"peers": {"SHARED": rcv.peer()}, "events": FAST_RETRY}
        a = GatewayProcess(tmp_path / "a", extra=extra).start()
        b = None
        try:
            b = GatewayProcess(tmp_path / "b", redis_url=a.redis_url, extra=extra).start()
            via_a, via_b = Ups(http, a.base), Ups(http, b.base)
            ws_ae = ae_name()
            await via_a.subscribe(GLOBAL, "SHARED")
            await via_b.subscribe(GLOBAL, ws_ae)
            listener = await WsListener.open(http, via_b.ws_url(ws_ae))  # held by process B
            try:
                uids = []
                for i in range(4):
                    api = via_a if i % 2 == 0 else via_b
                    uid = await api.create(unassigned())
                    tx = await via_a.claim(uid)
                    await via_b.progress(uid, tx, 50)
                    await via_a.complete(uid, tx)
                    uids.append(uid)
                frames = await listener.wait(16, uid=uids)
                await rcv.wait(16, uid=uids)
                await via_a.drain(rcv, "SHARED")  # any duplicate would be here by now
                await via_b.drain(listener, ws_ae)
                reports = rcv.received(uid=uids)
                assert len(reports) == 16, [(r.event_type, r.uid[-6:]) for r in reports]
                assert len(listener.received(uid=uids)) == 16
                for uid in uids:
                    expected = [STATE_REPORT, STATE_REPORT, PROGRESS_REPORT, STATE_REPORT]
                    assert [r.event_type for r in reports if r.uid == uid] == expected
                    assert [frame_type(f) for f in frames if frame_uid(f) == uid] == expected
            finally:
                await listener.close()
        finally:
            if b:
                b.stop()
            a.stop()
