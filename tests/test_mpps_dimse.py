"""The MPPS SCP over DIMSE (pynetdicom as the modality): what Annex F asks of the SCP when the MPPS
refers to nothing known, to a workitem claimed over UPS, or is discontinued; and its refusals."""

from __future__ import annotations

import asyncio

from pydicom.dataset import Dataset
from pynetdicom.sop_class import ModalityPerformedProcedureStep as MPPS

from gateway.ups import mwl
from tests import dimse_util as d
from tests.helpers import code, element, new_uid, workitem

JSON = {"Content-Type": "application/dicom+json"}
LINKED, NOTE = 0x00411001, 0x00411002


def _in_progress(step_id: str = "", study: str = "", accession: str = "") -> Dataset:
    ds = Dataset()
    step = Dataset()
    step.ScheduledProcedureStepID = step_id
    step.StudyInstanceUID = study
    step.AccessionNumber = accession
    ds.ScheduledStepAttributesSequence = [step]
    ds.PatientName, ds.PatientID = "Doe^John", "PID1"
    ds.PerformedStationAETitle = "CT01"
    ds.PerformedProcedureStepStartDate, ds.PerformedProcedureStepStartTime = "20261125", "1000"
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.PerformedProcedureStepID = "PPS-7"
    ds.Modality = "CT"
    return ds


def _status(value: str, **more) -> Dataset:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = value
    for keyword, v in more.items():
        setattr(ds, keyword, v)
    return ds


async def _create(http, gateway) -> str:
    uid = new_uid()
    ds = workitem(station="CT01", accession="ACC1", study_uid=new_uid())
    async with http.post(f"{gateway.base}/workitems?workitem={uid}", json=ds, headers=JSON) as r:
        assert r.status == 201, await r.text()
    return uid


async def _state(http, gateway, uid: str) -> dict:
    async with http.get(f"{gateway.base}/workitems/{uid}") as r:
        assert r.status == 200
        return (await r.json())[0]


def _run(gateway, *calls):
    """Send ``calls`` (functions of the association) on one MPPS association."""
    with d.association(gateway, contexts=(MPPS,), ae_title="CT01") as assoc:
        return [call(assoc) for call in calls]


async def test_an_mpps_for_nothing_known_is_accepted_kept_and_completed(gateway):
    uid = new_uid()
    created, completed, (got, kept) = await asyncio.to_thread(
        _run, gateway,
        lambda a: a.send_n_create(_in_progress("NO-SUCH-STEP"), MPPS, uid)[0],
        lambda a: a.send_n_set(_status("COMPLETED"), MPPS, uid)[0],
        lambda a: a.send_n_get([0x00400252, LINKED, NOTE], MPPS, uid))
    assert d.status_of(created) == d.status_of(completed) == d.status_of(got) == 0x0000
    assert kept.PerformedProcedureStepStatus == "COMPLETED"
    assert kept[LINKED].value in (None, "")
    assert "no open workitem" in str(kept[NOTE].value)


async def test_a_workitem_claimed_over_ups_is_not_taken_over(gateway, http):
    workitem_uid = await _create(http, gateway)
    tx = new_uid()
    async with http.put(f"{gateway.base}/workitems/{workitem_uid}/state/AI",
                        json={"00081195": element("UI", tx),
                              "00741000": element("CS", "IN PROGRESS")}, headers=JSON) as r:
        assert r.status == 200
    uid = new_uid()
    created, (got, kept) = await asyncio.to_thread(
        _run, gateway,
        lambda a: a.send_n_create(_in_progress(mwl.step_id(workitem_uid)), MPPS, uid)[0],
        lambda a: a.send_n_get([], MPPS, uid))
    assert d.status_of(created) == 0x0000  # the modality did perform: kept
    assert kept[LINKED].value == workitem_uid
    assert "not taken over" in str(kept[NOTE].value)
    # The UPS performer still holds it: its Transaction UID still works.
    async with http.post(f"{gateway.base}/workitems/{workitem_uid}?transaction-uid={tx}",
                         json={"00741002": element("SQ", {"00741004": element("DS", 10)})},
                         headers=JSON) as r:
        assert r.status == 200, await r.text()


async def test_discontinued_cancels_the_workitem_with_the_reason(gateway, http):
    workitem_uid = await _create(http, gateway)
    reason = Dataset.from_json(code("110514", "DCM", "Incorrect worklist entry selected"))
    uid = new_uid()
    created, discontinued = await asyncio.to_thread(
        _run, gateway,
        lambda a: a.send_n_create(_in_progress(mwl.step_id(workitem_uid)), MPPS, uid)[0],
        lambda a: a.send_n_set(_status(
            "DISCONTINUED",
            PerformedProcedureStepDiscontinuationReasonCodeSequence=[reason]), MPPS, uid)[0])
    assert d.status_of(created) == d.status_of(discontinued) == 0x0000
    ds = await _state(http, gateway, workitem_uid)
    assert ds["00741000"]["Value"] == ["CANCELED"]
    reason_codes = ds["00741002"]["Value"][0]["0074100E"]["Value"]
    assert reason_codes[0]["00080100"]["Value"] == ["110514"]


async def test_refusals_carry_a_status_and_a_comment(gateway):
    uid = new_uid()
    wrong, created, duplicate, done, again, unknown = await asyncio.to_thread(
        _run, gateway,
        lambda a: a.send_n_create(_status("COMPLETED"), MPPS, new_uid())[0],
        lambda a: a.send_n_create(_in_progress(), MPPS, uid)[0],
        lambda a: a.send_n_create(_in_progress(), MPPS, uid)[0],
        lambda a: a.send_n_set(_status("COMPLETED"), MPPS, uid)[0],
        lambda a: a.send_n_set(_status("IN PROGRESS"), MPPS, uid)[0],
        lambda a: a.send_n_set(_status("COMPLETED"), MPPS, new_uid())[0])
    assert d.status_of(wrong) == 0x0106 and "IN PROGRESS" in d.comment_of(wrong)
    assert d.status_of(created) == 0x0000
    assert d.status_of(duplicate) == 0x0111
    assert d.status_of(done) == 0x0000
    assert d.status_of(again) == 0x0110 and "no longer" in d.comment_of(again)
    assert d.status_of(unknown) == 0x0112
