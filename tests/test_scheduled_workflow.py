"""Modalities on the UPS worklist: MPPS over DIMSE driving the workitems, and the IHE Scheduled
Workflow end to end, with real clients against a gateway process.

  order system  creates the UPS workitem over UPS-RS and watches the worklist on the WebSocket
                channel; when the acquisition is COMPLETED it orders the AI follow-up
  modality      (pynetdicom) queries the Modality Worklist, performs with MPPS N-CREATE
                (IN PROGRESS) and N-SET (COMPLETED)
  AI performer  a DIMSE peer with a filtered worklist subscription (N-ACTION Subscribe): told of
                the follow-up by N-EVENT-REPORT, it claims it (N-ACTION Change State)
"""

from __future__ import annotations

import asyncio

from pydicom.dataset import Dataset
from pynetdicom.sop_class import ModalityPerformedProcedureStep as MPPS
from pynetdicom.sop_class import ModalityWorklistInformationFind as MWL

from gateway.ups import mwl
from tests import dimse_util as d
from tests.event_receiver import (FILTERED, GLOBAL, STATE_REPORT, EventReceiver, Ups,
                                  WsListener, frame_value)
from tests.helpers import GatewayProcess, code, element, new_uid, workitem

CT_STATION = "CT_ROOM1"


def _order(accession: str, study: str) -> dict:
    ds = workitem(station=CT_STATION, label="CT", start="20261125090000",
                  accession=accession, study_uid=study, patient_id="PID-SWF")
    ds["00404026"] = element("SQ", code("CT", "DCM", "Computed Tomography"))
    return ds


def _worklist_query() -> Dataset:
    ds = Dataset()
    ds.PatientName = ds.PatientID = ds.AccessionNumber = ds.StudyInstanceUID = ""
    step = Dataset()
    step.ScheduledStationAETitle = CT_STATION
    step.ScheduledProcedureStepStartDate = "20261125"
    step.ScheduledProcedureStepID = step.Modality = ""
    ds.ScheduledProcedureStepSequence = [step]
    return ds


def _in_progress(entry: Dataset) -> Dataset:
    ds = Dataset()
    step = Dataset()
    step.StudyInstanceUID = entry.StudyInstanceUID
    step.AccessionNumber = entry.AccessionNumber
    step.ScheduledProcedureStepID = entry.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID
    ds.ScheduledStepAttributesSequence = [step]
    ds.PatientName, ds.PatientID = entry.PatientName, entry.PatientID
    ds.PerformedStationAETitle = CT_STATION
    ds.PerformedProcedureStepStartDate, ds.PerformedProcedureStepStartTime = "20261125", "090500"
    ds.PerformedProcedureStepEndDate = ds.PerformedProcedureStepEndTime = ""
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.PerformedProcedureStepID = "PPS-1"
    ds.Modality = "CT"
    return ds


def _completed(series_uid: str) -> Dataset:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = "COMPLETED"
    ds.PerformedProcedureStepEndDate, ds.PerformedProcedureStepEndTime = "20261125", "091500"
    image = Dataset()
    image.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    image.ReferencedSOPInstanceUID = new_uid()
    series = Dataset()
    series.SeriesInstanceUID = series_uid
    series.RetrieveAETitle = "PACS"
    series.ReferencedImageSequence = [image]
    ds.PerformedSeriesSequence = [series]
    return ds


def _subscribe(gw, ae: str, label: str | None = None) -> int:
    """N-ACTION Subscribe: to the worklist, or (``label``) to its workitems with that label."""
    info = Dataset()
    info.ReceivingAE = ae
    info.DeletionLock = "FALSE"
    if label:
        info.WorklistLabel = label
    with d.association(gw, contexts=(d.WATCH,), ae_title=ae) as assoc:
        status, _ = assoc.send_n_action(info, 3, d.PUSH, FILTERED if label else GLOBAL,
                                        meta_uid=d.WATCH)
    return d.status_of(status)


def _modality(gw):
    """The modality's association: Modality Worklist and MPPS."""
    return d.association(gw, contexts=(MWL, MPPS), ae_title=CT_STATION)


async def test_ihe_scheduled_workflow_end_to_end(tmp_path, http):
    with EventReceiver("AI_PERFORMER") as ai_events, EventReceiver("WATCHER") as watcher:
        gw = GatewayProcess(tmp_path, extra={
            "peers": {"AI_PERFORMER": ai_events.peer(), "WATCHER": watcher.peer()},
            "events": {"retry_initial_seconds": 0.2, "retry_max_seconds": 1.0}}).start()
        try:
            await _scenario(gw, http, ai_events, watcher)
        finally:
            gw.stop()


async def _scenario(gw, http, ai_events: EventReceiver, watcher: EventReceiver) -> None:
    ups = Ups(http, gw.base)
    ai_label = "AI-" + new_uid()[-8:]
    await ups.subscribe(GLOBAL, "ORDERS")
    orders = await WsListener.open(http, ups.ws_url("ORDERS"))
    try:
        assert await asyncio.to_thread(_subscribe, gw, "AI_PERFORMER", ai_label) == 0
        assert await asyncio.to_thread(_subscribe, gw, "WATCHER") == 0  # a UPS DIMSE watcher
        # Order system: the acquisition is scheduled over UPS-RS.
        accession, study = "ACC-SWF", new_uid()
        acquisition = await ups.create(_order(accession, study))
        await orders.wait(1, uid=acquisition, event_type=STATE_REPORT)

        # Modality: worklist query, then MPPS IN PROGRESS … COMPLETED.
        series_uid, mpps_uid = new_uid(), new_uid()

        def perform_start():
            with _modality(gw) as assoc:
                status, entries, _ = d.c_find(assoc, _worklist_query(), MWL)
                assert status == 0 and len(entries) == 1
                created, _ = assoc.send_n_create(_in_progress(entries[0]), MPPS, mpps_uid)
                return entries[0], created

        entry, created = await asyncio.to_thread(perform_start)
        assert entry.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID == \
            mwl.step_id(acquisition)
        assert d.status_of(created) == 0x0000
        frames = await orders.wait(2, uid=acquisition, event_type=STATE_REPORT)
        assert frame_value(frames[1], "00741000") == "IN PROGRESS"

        def perform_end():
            with _modality(gw) as assoc:
                status, _ = assoc.send_n_set(_completed(series_uid), MPPS, mpps_uid)
                got, kept = assoc.send_n_get([], MPPS, mpps_uid)
                return status, got, kept

        status, got, kept = await asyncio.to_thread(perform_end)
        assert d.status_of(status) == 0x0000 and d.status_of(got) == 0x0000
        assert kept.PerformedProcedureStepStatus == "COMPLETED"
        assert kept[0x00411001].value == acquisition  # linked, visible on retrieve
        frames = await orders.wait(3, uid=acquisition, event_type=STATE_REPORT)
        assert frame_value(frames[2], "00741000") == "COMPLETED"
        # The DIMSE watcher saw the same flow, by N-EVENT-REPORT.
        reports = await watcher.wait(3, uid=acquisition, event_type=STATE_REPORT)
        assert [r.value("ProcedureStepState") for r in reports] == [
            "SCHEDULED", "IN PROGRESS", "COMPLETED"]
        async with http.get(f"{gw.base}/workitems/{acquisition}") as r:
            assert r.status == 200
            [done] = await r.json()
        output = done["00741216"]["Value"][0]["00404033"]["Value"][0]
        assert output["0020000E"]["Value"] == [series_uid]

        # Order system: the AI follow-up, fed by the acquisition's output.
        follow_up = workitem(label=ai_label, station="AI-ENGINE", start="20261125091600",
                             accession=accession, study_uid=study)
        follow_up["00404021"] = element("SQ", output)
        task = await ups.create(follow_up)

        # AI performer: told over UPS events, claims it.
        await ai_events.wait(1, uid=task, event_type=STATE_REPORT)

        def claim():
            with d.association(gw, contexts=(d.PULL,), ae_title="AI_PERFORMER") as assoc:
                return d.status_of(d.change_state(assoc, task, "IN PROGRESS", new_uid())[0])

        assert await asyncio.to_thread(claim) == 0x0000
        frames = await orders.wait(2, uid=task, event_type=STATE_REPORT)
        assert frame_value(frames[1], "00741000") == "IN PROGRESS"
    finally:
        await orders.close()
