"""The Modality Worklist SCP on the DIMSE listener, queried by independent clients — pynetdicom
and DCMTK's ``findscu -W`` — for workitems an order system created over UPS-RS."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom.sop_class import ModalityWorklistInformationFind as MWL

from gateway.ups import mwl
from tests import dimse_util as d
from tests.helpers import GatewayProcess, code, element, new_uid, workitem

JSON = {"Content-Type": "application/dicom+json"}
# DCMTK's findscu (the Debian package); a ``findscu`` earlier on PATH may be pynetdicom's.
FINDSCU = next((p for p in ("/usr/bin/findscu", "/usr/local/bin/findscu") if Path(p).exists()),
               None)


def _order(station: str, start: str, **kw) -> dict:
    ds = workitem(station=station, start=start, accession=kw.pop("accession", "ACC1"),
                  study_uid=new_uid(), label="CT", **kw)
    ds["00404026"] = element("SQ", code("CT", "DCM", "Computed Tomography"))
    return ds


async def _create(http, gateway, ds: dict) -> str:
    uid = new_uid()
    async with http.post(f"{gateway.base}/workitems?workitem={uid}", json=ds, headers=JSON) as r:
        assert r.status == 201, await r.text()
    return uid


def _mwl_identifier(station: str = "", date: str = "", **top) -> Dataset:
    ds = Dataset()
    ds.PatientName = ""
    ds.PatientID = ""
    ds.AccessionNumber = ""
    ds.StudyInstanceUID = ""
    for keyword, value in top.items():
        setattr(ds, keyword, value)
    step = Dataset()
    step.ScheduledStationAETitle = station
    step.ScheduledProcedureStepStartDate = date
    step.ScheduledProcedureStepStartTime = ""
    step.Modality = ""
    step.ScheduledProcedureStepID = ""
    step.ScheduledProcedureStepDescription = ""
    ds.ScheduledProcedureStepSequence = [step]
    return ds


async def test_pynetdicom_mwl_find_by_station_and_date(gateway, http):
    station = f"CT{new_uid()[-10:]}"
    first = await _create(http, gateway, _order(station, "20261125083000",
                                                patient_name="Müller^Jörg"))
    second = await _create(http, gateway, _order(station, "20261126090000", patient_id="PID9"))
    await _create(http, gateway, _order(f"MR{station[2:]}", "20261125083000"))

    def query(identifier):
        with d.association(gateway, contexts=(MWL,)) as assoc:
            return d.c_find(assoc, identifier, MWL)

    status, results, _ = await asyncio.to_thread(query, _mwl_identifier(station))
    assert status == 0x0000
    steps = [r.ScheduledProcedureStepSequence[0] for r in results]
    assert [s.ScheduledProcedureStepID for s in steps] == [mwl.step_id(first), mwl.step_id(second)]
    assert {s.ScheduledStationAETitle for s in steps} == {station}
    assert {s.Modality for s in steps} == {"CT"}
    assert str(results[0].PatientName) == "Müller^Jörg"  # as on the UPS side: UTF-8
    assert results[0].SpecificCharacterSet == "ISO_IR 192"
    assert results[0].AccessionNumber == "ACC1"
    assert steps[0].ScheduledProcedureStepStartDate == "20261125"
    assert steps[0].ScheduledProcedureStepStartTime == "083000"

    status, results, _ = await asyncio.to_thread(query, _mwl_identifier(station, "20261126"))
    assert status == 0x0000
    assert [r.PatientID for r in results] == ["PID9"]


@pytest.mark.filterwarnings("ignore::UserWarning")  # an invalid DA on purpose
async def test_a_bad_mwl_key_gets_a_failure_with_a_comment(gateway):
    def query():
        with d.association(gateway, contexts=(MWL,)) as assoc:
            return d.c_find(assoc, _mwl_identifier("CT1", "2026-11-25"), MWL)

    status, results, final = await asyncio.to_thread(query)
    assert status == 0xC000 and results == []
    assert "ScheduledProcedureStepStartDate" in d.comment_of(final)


@pytest.mark.skipif(FINDSCU is None, reason="DCMTK findscu is not installed "
                    "(apt-get install dcmtk; .ci/run installs it)")
async def test_dcmtk_findscu_worklist_query(gateway, http, tmp_path):
    station = f"CT{new_uid()[-10:]}"
    today = await _create(http, gateway, _order(station, "20261127101500"))
    await _create(http, gateway, _order(station, "20261128101500"))

    def findscu(*keys: str) -> list[Dataset]:
        out = tmp_path / f"q{len(list(tmp_path.iterdir()))}"
        out.mkdir()
        args = [FINDSCU, "-W", "-aec", "UPS_GATEWAY", "-aet", "CT_SCANNER", "-X", "-od", str(out),
                "-k", "PatientName", "-k", "PatientID", "-k", "AccessionNumber",
                "-k", "(0040,0100)[0].ScheduledStationAETitle=" + station,
                "-k", "(0040,0100)[0].ScheduledProcedureStepID",
                "-k", "(0040,0100)[0].Modality",
                *[arg for key in keys for arg in ("-k", key)],
                "127.0.0.1", str(gateway.dimse_port)]
        done = subprocess.run(args, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]

    results = await asyncio.to_thread(findscu)
    assert len(results) == 2
    results = await asyncio.to_thread(
        findscu, "(0040,0100)[0].ScheduledProcedureStepStartDate=20261127")
    assert [r.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID for r in results] == [
        mwl.step_id(today)]
    assert results[0].ScheduledProcedureStepSequence[0].Modality == "CT"
    assert results[0].AccessionNumber == "ACC1"
    results = await asyncio.to_thread(
        findscu, "(0040,0100)[0].ScheduledProcedureStepStartDate=20261201-")
    assert results == []


def _accepted(proc, contexts) -> list[str]:
    assoc = d.associate(proc, contexts=contexts)
    try:
        return [cx.abstract_syntax for cx in assoc.accepted_contexts]
    finally:
        if assoc.is_established:
            assoc.release()


def test_mwl_and_mpps_are_switched_by_configuration(gateway, workdir):
    from pynetdicom.sop_class import ModalityPerformedProcedureStep as MPPS
    assert {MWL, MPPS} <= set(_accepted(gateway, (MWL, MPPS)))  # on by default
    proc = GatewayProcess(workdir, extra={"mwl": {"enabled": False},
                                          "mpps": {"enabled": False}}).start()
    try:
        accepted = _accepted(proc, (MWL, MPPS))
    finally:
        proc.stop()
    assert MWL not in accepted and MPPS not in accepted


async def test_mwl_c_cancel_stops_with_fe00(gateway, http):
    station = f"CN{new_uid()[-10:]}"
    total = 200
    await asyncio.gather(*(_create(http, gateway, _order(station, "20261125080000"))
                           for _ in range(total)))

    def find_and_cancel():
        with d.association(gateway, contexts=(MWL,)) as assoc:
            context = assoc._get_valid_context(MWL, "", "scu")
            results, final = [], None
            for status, ds in assoc.send_c_find(_mwl_identifier(station), MWL, msg_id=91):
                if status.Status == 0xFF00:
                    results.append(ds)
                    if len(results) == 1:
                        assoc.send_c_cancel(91, context_id=context.context_id)
                else:
                    final = status
            again = d.c_find(assoc, _mwl_identifier(station), MWL)
            return results, final, again

    results, final, (status, all_results, _) = await asyncio.to_thread(find_and_cancel)
    assert final is not None and final.Status == 0xFE00
    assert 1 <= len(results) < total
    assert status == 0x0000 and len(all_results) == total  # the association is still in step
