"""C-FIND identifiers as real modalities send them (issue 16, conformance §9 C-FIND): any valid
attribute is a return key, the response carries what was asked for, sequence keys return the
matching items with the requested attributes, and an all-empty sequence item is universal.
Real associations (pynetdicom) against the session's gateway process."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from tests import dimse_util as d
from tests.dimse_util import create
from tests.helpers import code, element, new_uid


@pytest.fixture(scope="module")
def assoc(gateway):
    a = d.associate(gateway)
    assert a.is_established
    yield a
    assert a.is_established
    a.release()



def ds(**keys) -> Dataset:
    out = Dataset()
    for keyword, value in keys.items():
        setattr(out, keyword, value)
    return out


def find(assoc, identifier: Dataset) -> list[Dataset]:
    status, results, final = d.c_find(assoc, identifier)
    assert status == 0x0000, (hex(status), final.get("ErrorComment"))
    return results


def test_valid_attributes_outside_the_ups_iod_are_return_keys(assoc):
    uid = create(assoc, **{"00101030": element("DS", 72.5),
                           "00080080": element("LO", "General Hospital")})
    results = find(assoc, ds(SOPInstanceUID=uid, PatientWeight="", PatientSize="",
                             PatientAge="", Allergies="", ReferringPhysicianName="",
                             InstitutionName="", OutputDestinationSequence=[],
                             ProcedureStepLabel=""))
    assert len(results) == 1
    found = results[0]
    assert float(found.PatientWeight) == 72.5
    assert found.InstitutionName == "General Hospital"
    for keyword in ("PatientSize", "PatientAge", "Allergies", "ReferringPhysicianName",
                    "OutputDestinationSequence"):
        assert keyword in found and not found[keyword].value, keyword  # asked for: empty
    assert found.ProcedureStepLabel == "AI analysis"


def test_the_response_carries_the_requested_keys_not_the_whole_workitem(assoc):
    uid = create(assoc)
    found = find(assoc, ds(SOPInstanceUID=uid, PatientName=""))[0]
    assert found.PatientName == "Doe^John"
    # not requested: not returned (SOP Class and Instance UID identify the workitem: always)
    assert set(found.dir()) == {"PatientName", "SOPClassUID", "SOPInstanceUID"}


def test_a_value_on_a_non_ups_attribute_is_matched(assoc):
    label = f"W-{new_uid()[-8:]}"
    heavy = create(assoc, label=label, **{"00101030": element("DS", 90)})
    create(assoc, label=label, **{"00101030": element("DS", 60)})
    create(assoc, label=label)
    results = find(assoc, ds(WorklistLabel=label, PatientWeight="90"))
    assert [r.SOPInstanceUID for r in results] == [heavy]


def test_sequence_keys_return_matching_items_with_the_requested_attributes(assoc):
    stations = element("SQ", code("CT1", meaning="Scanner one"), code("CT2", meaning="Scanner two"))
    uid = create(assoc, **{"00404025": stations})
    item = ds(CodeValue="CT2", CodeMeaning="")
    found = find(assoc, ds(SOPInstanceUID=uid, ScheduledStationNameCodeSequence=[item]))
    assert len(found) == 1
    seq = found[0].ScheduledStationNameCodeSequence
    assert len(seq) == 1
    assert seq[0].CodeValue == "CT2" and seq[0].CodeMeaning == "Scanner two"
    assert "CodingSchemeDesignator" not in seq[0]
    # A template of empty keys returns every item, reduced to those keys.
    found = find(assoc, ds(SOPInstanceUID=uid,
                           ScheduledStationNameCodeSequence=[ds(CodeValue="")]))[0]
    assert [i.CodeValue for i in found.ScheduledStationNameCodeSequence] == ["CT1", "CT2"]
    assert all(set(i.dir()) == {"CodeValue"} for i in found.ScheduledStationNameCodeSequence)
    # A zero-length sequence key or an empty item returns the whole stored sequence.
    for template in ([], [Dataset()]):
        found = find(assoc, ds(SOPInstanceUID=uid, ScheduledStationNameCodeSequence=template))[0]
        assert [i.CodingSchemeDesignator for i in found.ScheduledStationNameCodeSequence] == \
            ["99LOCAL", "99LOCAL"]


def test_a_sequence_template_of_empty_keys_keeps_workitems_with_empty_or_absent_sequences(assoc):
    label = f"E-{new_uid()[-8:]}"
    with_performer = create(assoc, label=label, **{"00404034": element("SQ", {
        "00404009": element("SQ", code("RAD1", meaning="Radiographer")),
        "00404037": element("PN", {"Alphabetic": "Smith^Ann"})})})
    without = create(assoc, label=label)  # no performers; Input Information empty (type 2)
    template = ds(HumanPerformerCodeSequence=[ds(CodeValue="")], HumanPerformerName="")
    results = find(assoc, ds(WorklistLabel=label, ScheduledHumanPerformersSequence=[template],
                             InputInformationSequence=[ds(ReferencedSOPInstanceUID="")]))
    assert sorted(r.SOPInstanceUID for r in results) == sorted([with_performer, without])
    by_uid = {r.SOPInstanceUID: r for r in results}
    performer = by_uid[with_performer].ScheduledHumanPerformersSequence[0]
    assert performer.HumanPerformerName == "Smith^Ann"
    assert performer.HumanPerformerCodeSequence[0].CodeValue == "RAD1"
    assert "CodeMeaning" not in performer.HumanPerformerCodeSequence[0]
    assert not by_uid[without].ScheduledHumanPerformersSequence  # absent: returned empty
    assert not by_uid[without].InputInformationSequence


def test_a_private_attribute_is_returned_empty_and_not_matched(assoc):
    uid = create(assoc)
    identifier = ds(SOPInstanceUID=uid)
    identifier.add_new(0x00091010, "LO", "anything")
    found = find(assoc, identifier)
    assert len(found) == 1 and not found[0][0x00091010].value


def test_query_retrieve_level_still_says_the_identifier_is_for_another_model(assoc):
    status, results, final = d.c_find(assoc, ds(QueryRetrieveLevel="STUDY", PatientID=""))
    assert status == 0xA900 and not results
    assert "QueryRetrieveLevel" in final.ErrorComment


def test_a_workitems_own_timezone_offset_comes_with_its_date_times(assoc):
    uid = create(assoc, start="20261125100000", **{"00080201": element("SH", "+0200")})
    # 10:00 at +0200 is 08:00 UTC: the query (UTC) finds it there, and the response says how
    # its DT values are to be read.
    found = find(assoc, ds(SOPInstanceUID=uid,
                           ScheduledProcedureStepStartDateTime="20261125080000"))
    assert len(found) == 1
    assert found[0].ScheduledProcedureStepStartDateTime == "20261125100000"
    assert found[0].TimezoneOffsetFromUTC == "+0200"
    assert not find(assoc, ds(SOPInstanceUID=uid,
                              ScheduledProcedureStepStartDateTime="20261125100000"))
