"""The PS3.18 Modality Worklist (ch. 14) and MPPS (ch. 15) services over HTTP, checked against
the DIMSE answers for the same data, on a gateway process."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET

from pydicom.dataset import Dataset
from pynetdicom.sop_class import ModalityPerformedProcedureStep as MPPS
from pynetdicom.sop_class import ModalityWorklistInformationFind as MWL

from gateway.dimse import convert
from gateway.ups import mwl
from tests import dimse_util as d
from tests.helpers import code, element, new_uid, workitem

JSON = {"Content-Type": "application/dicom+json"}
STATION_KEY = "ScheduledProcedureStepSequence.ScheduledStationAETitle"
DATE_KEY = "ScheduledProcedureStepSequence.ScheduledProcedureStepStartDate"


async def _order(http, gateway, station: str, start: str, **kw) -> str:
    uid = new_uid()
    ds = workitem(station=station, start=start, accession="ACC-R", study_uid=new_uid(), **kw)
    ds["00404026"] = element("SQ", code("MR", "DCM", "Magnetic Resonance"))
    async with http.post(f"{gateway.base}/workitems?workitem={uid}", json=ds, headers=JSON) as r:
        assert r.status == 201, await r.text()
    return uid


def _base(gateway) -> str:
    return f"{gateway.base}/modality-scheduled-procedure-steps"


async def test_rest_worklist_search_answers_what_dimse_answers(gateway, http):
    station = f"MR{new_uid()[-10:]}"
    first = await _order(http, gateway, station, "20261125080000", patient_name="Ñuñez^Ana")
    await _order(http, gateway, station, "20261126080000")
    async with http.get(_base(gateway), params={STATION_KEY: station}) as r:
        assert r.status == 200, await r.text()
        rest = await r.json()
    assert len(rest) == 2
    assert rest[0]["00400100"]["Value"][0]["00400009"]["Value"] == [mwl.step_id(first)]

    # The same query over DIMSE, asking for every attribute the REST answer holds.
    identifier = Dataset.from_json({tag: {"vr": elem["vr"]} for tag, elem in rest[0].items()
                                    if tag not in ("00080005", "00400100")})
    step = Dataset.from_json({tag: {"vr": elem["vr"]}
                              for tag, elem in rest[0]["00400100"]["Value"][0].items()})
    step.ScheduledStationAETitle = station
    identifier.ScheduledProcedureStepSequence = [step]

    def over_dimse():
        with d.association(gateway, contexts=(MWL,)) as assoc:
            return d.c_find(assoc, identifier, MWL)

    status, results, _ = await asyncio.to_thread(over_dimse)
    assert status == 0x0000
    dimse = [convert.to_canonical(ds) for ds in results]
    without_charset = [{k: v for k, v in ds.items() if k != "00080005"} for ds in dimse]
    assert without_charset == [{k: v for k, v in ds.items() if k != "00080005"} for ds in rest]

    async with http.get(_base(gateway), params={STATION_KEY: station,
                                                DATE_KEY: "20261126-20261126"}) as r:
        assert r.status == 200
        assert len(await r.json()) == 1
    async with http.get(_base(gateway), params={STATION_KEY: station, "limit": "1"}) as r:
        assert r.status == 200 and len(await r.json()) == 1
        assert "1 additional results" in r.headers["Warning"]
    async with http.get(_base(gateway), params={STATION_KEY: "NO-SUCH-STATION"}) as r:
        assert r.status == 204
    async with http.get(_base(gateway), params={DATE_KEY: "2026-11-26"}) as r:
        assert r.status == 400 and "ScheduledProcedureStepStartDate" in r.headers["Warning"]


async def test_rest_worklist_search_in_xml(gateway, http):
    station = f"MR{new_uid()[-10:]}"
    uid = await _order(http, gateway, station, "20261125080000", patient_name="Roe^Rick")
    headers = {"Accept": 'multipart/related; type="application/dicom+xml"'}
    async with http.get(_base(gateway), params={STATION_KEY: station}, headers=headers) as r:
        assert r.status == 200, await r.text()
        assert r.content_type == "multipart/related"
        body = await r.read()
    boundary = r.headers["Content-Type"].split("boundary=")[1]
    parts = [p for p in body.split(b"--" + boundary.encode()) if b"<NativeDicomModel" in p]
    assert len(parts) == 1
    root = ET.fromstring(parts[0][parts[0].index(b"<?xml"):].strip())
    name = root.find("DicomAttribute[@keyword='PatientName']/PersonName/Alphabetic")
    assert name.find("FamilyName").text == "Roe" and name.find("GivenName").text == "Rick"
    step_id = root.find("DicomAttribute[@tag='00400100']/Item/"
                        "DicomAttribute[@keyword='ScheduledProcedureStepID']/Value")
    assert step_id.text == mwl.step_id(uid)
    async with http.get(_base(gateway), headers={"Accept": "text/html"}) as r:
        assert r.status == 406


def _mpps_create(step_id: str) -> dict:
    return {"00400270": element("SQ", {"00400009": element("SH", step_id)}),
            "00400241": element("AE", "MR01"),
            "00400244": element("DA", "20261125"), "00400245": element("TM", "080500"),
            "00400252": element("CS", "IN PROGRESS"), "00400253": element("SH", "PPS-R"),
            "00080060": element("CS", "MR")}


async def test_rest_mpps_create_update_retrieve_drive_the_workitem(gateway, http):
    workitem_uid = await _order(http, gateway, "MR01", "20261125080000")
    uid = new_uid()
    url = f"{gateway.base}/modality-performed-procedure-steps/{uid}"
    async with http.post(url, json=_mpps_create(mwl.step_id(workitem_uid)), headers=JSON) as r:
        assert r.status == 201, await r.text()
        assert r.headers["Location"].endswith(uid)
    async with http.get(f"{gateway.base}/workitems/{workitem_uid}") as r:
        assert (await r.json())[0]["00741000"]["Value"] == ["IN PROGRESS"]
    async with http.post(url, json=_mpps_create("X"), headers=JSON) as r:
        assert r.status == 409
    completed = {"00400252": element("CS", "COMPLETED"), "00400250": element("DA", "20261125"),
                 "00400251": element("TM", "082000")}
    async with http.post(f"{url}?update", json=completed, headers=JSON) as r:
        assert r.status == 200, await r.text()
    async with http.get(f"{gateway.base}/workitems/{workitem_uid}") as r:
        done = (await r.json())[0]
    assert done["00741000"]["Value"] == ["COMPLETED"]
    assert done["00741216"]["Value"][0]["00404051"]["Value"] == ["20261125082000"]
    async with http.post(f"{url}?update", json=completed, headers=JSON) as r:
        assert r.status == 409 and "no longer" in r.headers["Warning"]
    async with http.post(f"{gateway.base}/modality-performed-procedure-steps/{new_uid()}?update",
                         json=completed, headers=JSON) as r:
        assert r.status == 404

    async with http.get(url) as r:
        assert r.status == 200
        [rest] = await r.json()
    assert rest["00411001"]["Value"] == [workitem_uid]
    async with http.get(url, params={"includefield": "PerformedProcedureStepStatus"}) as r:
        assert set((await r.json())[0]) == {"00400252"}
    async with http.get(url, headers={"Accept": "application/dicom+xml"}) as r:
        assert r.status == 200 and r.content_type == "application/dicom+xml"
        root = ET.fromstring(await r.read())
    status = root.find("DicomAttribute[@keyword='PerformedProcedureStepStatus']/Value")
    assert status.text == "COMPLETED"

    def over_dimse():
        with d.association(gateway, contexts=(MPPS,)) as assoc:
            return assoc.send_n_get([], MPPS, uid)

    status, got = await asyncio.to_thread(over_dimse)
    assert d.status_of(status) == 0x0000
    assert convert.to_canonical(got) == rest  # the same instance either way
