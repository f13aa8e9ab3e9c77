"""The Modality Worklist projection (gateway/ups/mwl.py): the mapping from a SCHEDULED UPS workitem
to an MWL entry, the rules that select workitems, and Annex K matching — on the Redis stores and
on the in-memory ports."""

from __future__ import annotations

import pytest

from gateway.ups import mwl
from gateway.ups.dataset import normalize
from gateway.ups.errors import InvalidQuery
from tests.helpers import code, element, new_uid, workitem

SPS = mwl.ScheduledProcedureStepSequence


def ct_workitem(uid=None, *, station="CT01", classes=("CT",), start="20261125103000", **kw):
    ds = workitem(uid, station=station, start=start, accession="ACC-7", study_uid=new_uid(),
                  **kw)
    ds["00404026"] = element("SQ", *(code(c, "DCM") for c in classes))
    ds["00404027"] = element("SQ", code("ROOM3", "99LOCAL", "Radiology room 3"))
    ds["00404034"] = element("SQ", {"00404009": element("SQ", code("TECH01", "99LOCAL", "Tech Tina")),
                                    "00404037": element("PN", {"Alphabetic": "Tech^Tina"})})
    ds["0040A370"]["Value"][0].update({
        "00401001": element("SH", "RP-1"),
        "00321060": element("LO", "CT head"),
        "00402016": element("LO", "PLACER-9"),
    })
    return ds


def test_projection_follows_the_mapping_table():
    uid = new_uid()
    ds = normalize(ct_workitem(uid))
    ds["00080018"] = element("UI", uid)
    entry = mwl.project(ds, "OT")
    step = entry[SPS]["Value"][0]
    assert entry["00100020"]["Value"] == ["PID1"]
    assert entry["00100010"]["Value"] == [{"Alphabetic": "Doe^John"}]
    request = ds["0040A370"]["Value"][0]
    assert entry["0020000D"] == request["0020000D"]
    assert entry["00080050"]["Value"] == ["ACC-7"]
    assert entry["00401001"]["Value"] == ["RP-1"]
    assert entry["00321060"]["Value"] == ["CT head"]
    assert entry["00402016"]["Value"] == ["PLACER-9"]
    assert step[mwl.ScheduledStationAETitle]["Value"] == ["CT01"]
    assert step[mwl.Modality]["Value"] == ["CT"]
    assert step[mwl.ScheduledProcedureStepStartDate]["Value"] == ["20261125"]
    assert step[mwl.ScheduledProcedureStepStartTime]["Value"] == ["103000"]
    assert step[mwl.ScheduledProcedureStepDescription]["Value"] == ["AI analysis"]
    assert step[mwl.ScheduledProcedureStepLocation]["Value"] == ["ROOM3"]
    assert step[mwl.ScheduledPerformingPhysicianName]["Value"] == [{"Alphabetic": "Tech^Tina"}]
    assert step[mwl.ScheduledProcedureStepID]["Value"] == [mwl.step_id(uid)]
    assert step[mwl.ScheduledProcedureStepStatus]["Value"] == ["SCHEDULED"]
    assert step[mwl.ScheduledProtocolCodeSequence] == ds["00404018"]
    assert len(mwl.step_id(uid)) == 16 and mwl.step_id(uid) != mwl.step_id(new_uid())


def test_modality_is_the_first_class_code_that_is_a_modality_else_the_default():
    ds = normalize(ct_workitem(classes=("SCANNER", "MR", "CT")))
    assert mwl.project(ds, "OT")[SPS]["Value"][0][mwl.Modality]["Value"] == ["MR"]
    ds = normalize(ct_workitem(classes=("SCANNER",)))
    assert mwl.project(ds, "XC")[SPS]["Value"][0][mwl.Modality]["Value"] == ["XC"]


def test_the_conformance_statement_publishes_the_table():
    from pathlib import Path
    text = (Path(__file__).parents[1] / "docs" / "conformance.md").read_text()
    assert mwl.mapping_table() in text


def test_shape_returns_the_requested_keys_and_whole_items_for_an_empty_item():
    ds = normalize(ct_workitem())
    entry = mwl.project(ds)
    shaped = mwl.shape(entry, {"00100010": element("PN"), "00101030": element("DS"),
                               SPS: element("SQ", {mwl.Modality: element("CS")})})
    assert set(shaped) == {"00100010", "00101030", SPS}
    assert shaped["00101030"] == {"vr": "DS"}
    assert shaped[SPS]["Value"] == [{mwl.Modality: element("CS", "CT")}]
    whole = mwl.shape(entry, {SPS: element("SQ")})
    assert whole[SPS] == entry[SPS]


async def _create(service, ds):
    uid = new_uid()
    await service.create(normalize(ds), uid)
    return uid


async def _find(worklist, identifier):
    return [entry async for entry in worklist.find(worklist.from_identifier(identifier))]


def _step_key(**keys):
    keys.setdefault(mwl.ScheduledProcedureStepID, ("SH", None))
    return {SPS: element("SQ", {tag: element(vr, *([value] if value else []))
                                for tag, (vr, value) in keys.items()})}


async def test_station_modality_date_and_patient_matching(service):
    worklist = mwl.ModalityWorklist(service.store.search_stream, mwl.Settings())
    ct = await _create(service, ct_workitem(station="CT01", start="20261125103000"))
    mr = await _create(service, ct_workitem(station="MR01", classes=("MR",),
                                            start="20261126090000", patient_id="PID2"))
    claimed = await _create(service, ct_workitem(station="CT01"))
    await service.change_state(claimed, "IN PROGRESS", new_uid())

    def uids(entries):
        return {e[SPS]["Value"][0][mwl.ScheduledProcedureStepID]["Value"][0] for e in entries}

    by_station = await _find(worklist, _step_key(**{mwl.ScheduledStationAETitle: ("AE", "CT01")}))
    assert uids(by_station) == {mwl.step_id(ct)}  # only SCHEDULED workitems
    by_modality = await _find(worklist, _step_key(**{mwl.Modality: ("CS", "MR")}))
    assert uids(by_modality) == {mwl.step_id(mr)}
    by_date = await _find(worklist, _step_key(
        **{mwl.ScheduledProcedureStepStartDate: ("DA", "20261126-")}))
    assert uids(by_date) == {mwl.step_id(mr)}
    by_day = await _find(worklist, _step_key(
        **{mwl.ScheduledProcedureStepStartDate: ("DA", "20261125")}))
    assert uids(by_day) == {mwl.step_id(ct)}
    by_time = await _find(worklist, _step_key(
        **{mwl.ScheduledProcedureStepStartTime: ("TM", "080000-100000")}))
    assert uids(by_time) == {mwl.step_id(mr)}
    by_patient = await _find(worklist, {"00100020": element("LO", "PID2"),
                                        "00100010": element("PN"), SPS: element("SQ")})
    assert uids(by_patient) == {mwl.step_id(mr)}
    by_name = await _find(worklist, {"00100010": element("PN", {"Alphabetic": "doe*"}),
                                     SPS: element("SQ")})
    assert uids(by_name) == {mwl.step_id(ct), mwl.step_id(mr)}
    by_accession = await _find(worklist, {"00080050": element("SH", "ACC-7"),
                                          "00100020": element("LO", "PID1"),
                                          SPS: element("SQ")})
    assert uids(by_accession) == {mwl.step_id(ct)}
    assert await _find(worklist, _step_key(**{mwl.ScheduledStationAETitle: ("AE", "NONE")})) == []
    # A binary key is a return key only (dcmjs-dimse sends Pregnancy Status 0 for "return it").
    with_zero = await _find(worklist, {"001021C0": element("US", 0),
                                       **_step_key(**{mwl.ScheduledStationAETitle: ("AE", "CT01")})})
    assert uids(with_zero) == {mwl.step_id(ct)}


async def test_rules_select_the_workitems_for_modalities(service):
    worklist = mwl.ModalityWorklist(service.store.search_stream, mwl.Settings(
        rules=[{"WorklistLabel": "CT"}, {"ScheduledStationClassCodeSequence.CodeValue": "MR"}]))
    labelled = await _create(service, ct_workitem(label="CT", classes=("SCANNER",)))
    classed = await _create(service, ct_workitem(label="AI", classes=("MR",)))
    await _create(service, ct_workitem(label="AI", classes=("SCANNER",)))
    found = await _find(worklist, {SPS: element("SQ")})
    assert {e[SPS]["Value"][0][mwl.ScheduledProcedureStepID]["Value"][0] for e in found} == {
        mwl.step_id(labelled), mwl.step_id(classed)}


def test_a_bad_rule_or_query_is_refused():
    with pytest.raises(KeyError):
        mwl.compile_rules([{"NoSuchKeyword": "x"}])
    worklist = mwl.ModalityWorklist(None, mwl.Settings())
    with pytest.raises(InvalidQuery):
        worklist.from_identifier(_step_key(**{mwl.ScheduledProcedureStepStartDate:
                                              ("DA", "2026-11-25")}))
