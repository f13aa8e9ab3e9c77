"""The IHE AI Workflow (AIW-I) pull scenario end to end, with mixed protocols (issue 4).

  watcher     subscribes to the worklist over UPS-RS and listens on the WebSocket channel
  requester   creates workitems over UPS-RS
  performer   a DIMSE AE (listed in ``peers``, with a real N-EVENT-REPORT receiver): queries with
              C-FIND, claims with N-ACTION, reports progress with N-SET, completes with N-SET +
              N-ACTION
  requester 2 asks over UPS-RS to cancel another workitem the performer has claimed; the
              performer hears of it by N-EVENT-REPORT and cancels it over DIMSE

The watcher must see every state change of both workitems, in order.
"""

from __future__ import annotations

import asyncio
import time

from pydicom import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import UnifiedProcedureStepPull, UnifiedProcedureStepPush

from gateway.testing_peers import NODELAY_HANDLER, guard_responses
from tests.event_receiver import (ASSIGNED, CANCEL_REQUESTED, GLOBAL, PROGRESS_REPORT,
                                  STATE_REPORT, EventReceiver, Ups, WsListener, frame_type,
                                  frame_value)
from tests.helpers import GatewayProcess, completion_payload, element, new_uid, workitem

PUSH = UnifiedProcedureStepPush


class Performer:
    """The performing system's DIMSE side: one association on the UPS Pull context."""

    def __init__(self, gateway: GatewayProcess, ae_title: str = "PERFORMER"):
        self.ae = AE(ae_title=ae_title)
        self.ae.add_requested_context(UnifiedProcedureStepPull)
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = 15
        self.gateway = gateway
        self.assoc = None

    def __enter__(self) -> "Performer":
        self.assoc = self.ae.associate("127.0.0.1", self.gateway.dimse_port,
                                       ae_title="UPS_GATEWAY", evt_handlers=[NODELAY_HANDLER])
        assert self.assoc.is_established, "the gateway refused the performer's association"
        guard_responses(self.assoc)
        return self

    def __exit__(self, *exc) -> None:
        if self.assoc.is_established:
            self.assoc.release()

    def find_scheduled(self, label: str) -> list[Dataset]:
        identifier = Dataset()
        identifier.SOPInstanceUID = ""
        identifier.ProcedureStepState = "SCHEDULED"
        identifier.WorklistLabel = label
        identifier.InputReadinessState = ""
        identifier.ScheduledProcedureStepStartDateTime = ""
        identifier.ProcedureStepLabel = ""
        found, final = [], None
        for status, ds in self.assoc.send_c_find(identifier, UnifiedProcedureStepPull):
            assert status is not None and "Status" in status, "no C-FIND response"
            if status.Status in (0xFF00, 0xFF01):
                found.append(ds)
            else:
                final = int(status.Status)
        assert final == 0x0000, hex(final or 0)
        return found

    def change_state(self, uid: str, state: str, tx: str) -> int:
        info = Dataset()
        info.ProcedureStepState = state
        info.TransactionUID = tx
        status, _ = self.assoc.send_n_action(info, 1, PUSH, uid)
        assert status is not None and "Status" in status, "no N-ACTION response"
        return int(status.Status)

    def n_set(self, uid: str, tx: str, json_mods: dict) -> int:
        mods = Dataset.from_json(json_mods)
        mods.TransactionUID = tx
        status, _ = self.assoc.send_n_set(mods, PUSH, uid)
        assert status is not None and "Status" in status, "no N-SET response"
        return int(status.Status)


def progress(percent: int, text: str) -> dict:
    return {"00741002": element("SQ", {"00741004": element("DS", percent),
                                       "00741006": element("ST", text)})}


async def test_aiw_pull_workflow_with_mixed_protocols(tmp_path, http):
    with EventReceiver("PERFORMER") as performer_events:
        gw = GatewayProcess(tmp_path, extra={
            "peers": {"PERFORMER": performer_events.peer()},
            "events": {"retry_initial_seconds": 0.2, "retry_max_seconds": 1.0}}).start()
        try:
            await _scenario(gw, http, performer_events)
        finally:
            gw.stop()


async def _scenario(gw: GatewayProcess, http, performer_events: EventReceiver) -> None:
    ups = Ups(http, gw.base)
    label = "AIW-" + new_uid()[-8:]

    # Watcher: worklist subscription with deletion lock (it wants to see final results), then
    # the notification channel.
    await ups.subscribe(GLOBAL, "WATCHER", lock=True)
    watcher = await WsListener.open(http, ups.ws_url("WATCHER"))
    try:
        # Requester: two AI tasks for the same station.
        task_a = await ups.create(workitem(label=label, station="AI-ENGINE",
                                           start="20261125100000"))
        task_b = await ups.create(workitem(label=label, station="AI-ENGINE",
                                           start="20261125100500"))
        await watcher.wait(2, uid=task_a)
        await watcher.wait(2, uid=task_b)

        with Performer(gw) as performer:
            # Query the worklist and claim both (C-FIND, N-ACTION Change UPS State).
            found = await asyncio.to_thread(performer.find_scheduled, label)
            assert [ds.SOPInstanceUID for ds in found] == [task_a, task_b]
            assert all(ds.InputReadinessState == "READY" for ds in found)
            assert all("TransactionUID" not in ds for ds in found)
            tx_a, tx_b = new_uid(), new_uid()
            started = time.monotonic()
            assert await asyncio.to_thread(performer.change_state, task_a, "IN PROGRESS",
                                           tx_a) == 0x0000
            await watcher.wait(3, uid=task_a)
            claim_latency = time.monotonic() - started
            assert await asyncio.to_thread(performer.change_state, task_b, "IN PROGRESS",
                                           tx_b) == 0x0000
            # A second performer loses the race for task A.
            assert await asyncio.to_thread(performer.change_state, task_a, "IN PROGRESS",
                                           new_uid()) == 0xC302

            # Work on task A: progress (N-SET), final attributes (N-SET), COMPLETED (N-ACTION).
            assert await asyncio.to_thread(performer.n_set, task_a, tx_a,
                                           progress(50, "inference running")) == 0x0000
            assert await asyncio.to_thread(performer.n_set, task_a, tx_a,
                                           completion_payload()) == 0x0000
            assert await asyncio.to_thread(performer.change_state, task_a, "COMPLETED",
                                           tx_a) == 0x0000

            # Requester 2 changes its mind about task B (UPS-RS): the performer is told.
            await ups.cancel_request(task_b, "REQUESTER2", reason="prior study found",
                                     contact="mailto:requester2@example.org")
            [requested] = await performer_events.wait(1, uid=task_b)
            assert requested.event_type == CANCEL_REQUESTED
            assert requested.dataset.RequestingAE == "REQUESTER2"
            assert requested.dataset.ReasonForCancellation == "prior study found"
            assert requested.dataset.ContactURI == "mailto:requester2@example.org"
            # …and cancels it (N-ACTION CANCELED).
            assert await asyncio.to_thread(performer.change_state, task_b, "CANCELED",
                                           tx_b) == 0x0000

        # The watcher saw every step of both workitems, in order.
        frames_a = await watcher.wait(5, uid=task_a)
        frames_b = await watcher.wait(5, uid=task_b)
        kinds_a = [(frame_type(f), frame_value(f, "00741000")) for f in frames_a]
        kinds_b = [(frame_type(f), frame_value(f, "00741000")) for f in frames_b]
        assert kinds_a == [(STATE_REPORT, "SCHEDULED"), (ASSIGNED, None),
                           (STATE_REPORT, "IN PROGRESS"), (PROGRESS_REPORT, None),
                           (STATE_REPORT, "COMPLETED")], kinds_a
        assert kinds_b == [(STATE_REPORT, "SCHEDULED"), (ASSIGNED, None),
                           (STATE_REPORT, "IN PROGRESS"), (CANCEL_REQUESTED, None),
                           (STATE_REPORT, "CANCELED")], kinds_b
        progress_item = frames_a[3]["00741002"]["Value"][0]
        assert progress_item["00741006"]["Value"] == ["inference running"]
        assert frames_b[3]["00741236"]["Value"] == ["REQUESTER2"]
        await ups.drain(watcher, "WATCHER")
        assert len(watcher.received(uid=[task_a, task_b])) == 10  # nothing more

        # The performer was subscribed to nothing: it heard only the cancel request.
        marker = await ups.drain(performer_events, "PERFORMER")
        assert [r.event_type for r in performer_events.reports if r.uid != marker] == \
            [CANCEL_REQUESTED]

        # The watcher holds a deletion lock: the final results stay retrievable.
        done = await ups.retrieve(task_a)
        assert done["00741000"]["Value"] == ["COMPLETED"]
        assert "00081195" not in done
        # The claim's State Report came with the change's notification: without one, a
        # channel's queue is read only every 5 s (the fan-out's fallback poll).
        assert claim_latency < 4.5, claim_latency
    finally:
        await watcher.close()
