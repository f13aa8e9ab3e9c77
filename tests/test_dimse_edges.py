"""DIMSE at the edges real clients reach (issue 16, conformance §4 and §9): N-SET of echoed
values, N-GET of absent attributes, command elements inside datasets, the requester's transfer
syntax preference, type 1 attributes inside sequence items. Real associations (pynetdicom)
against the session's gateway process."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian,
                         ImplicitVRLittleEndian)

from tests import dimse_util as d
from tests.dimse_util import create, claim, get
from tests.helpers import code, element, new_uid, workitem


@pytest.fixture(scope="module")
def assoc(gateway):
    a = d.associate(gateway)
    assert a.is_established
    yield a
    assert a.is_established, "a refused request must not end the association"
    a.release()





def expect(status: Dataset, code_: int, *words: str) -> None:
    assert d.status_of(status) == code_, (f"0x{d.status_of(status):04X} "
                                          f"{d.comment_of(status)!r}, expected 0x{code_:04X}")
    for word in words:
        assert word in d.comment_of(status), d.comment_of(status)


# ---- N-SET: echoed values ------------------------------------------------------------------

def test_n_set_of_the_whole_n_get_result_with_one_change_is_accepted(assoc):
    uid = create(assoc)
    tx = claim(assoc, uid)
    echoed = get(assoc, uid)  # SOP Class/Instance UID, state, patient … all "not allowed"
    echoed.ProcedureStepLabel = "Relabelled"
    echoed.TransactionUID = tx
    status, _ = assoc.send_n_set(echoed, d.PUSH, uid, meta_uid=d.PULL)
    expect(status, 0x0000)
    after = get(assoc, uid)
    assert after.ProcedureStepLabel == "Relabelled"
    assert after.ScheduledProcedureStepModificationDateTime != \
        echoed.ScheduledProcedureStepModificationDateTime  # still the SCP's to maintain


@pytest.mark.parametrize("keyword,value", [("PatientID", "OTHER"),
                                           ("ProcedureStepState", "COMPLETED"),
                                           ("PatientName", "Other^Name")])
def test_n_set_of_a_changed_not_allowed_value_is_still_refused(assoc, keyword, value):
    uid = create(assoc)
    tx = claim(assoc, uid)
    mods = Dataset()
    setattr(mods, keyword, value)
    mods.TransactionUID = tx
    status, _ = assoc.send_n_set(mods, d.PUSH, uid, meta_uid=d.PULL)
    expect(status, 0x0106, keyword)
    # and the same value as stored is accepted
    same = Dataset()
    setattr(same, keyword, get(assoc, uid, [mods[keyword].tag])[keyword].value)
    same.TransactionUID = tx
    status, _ = assoc.send_n_set(same, d.PUSH, uid, meta_uid=d.PULL)
    expect(status, 0x0000)


# ---- N-GET: absent attributes --------------------------------------------------------------

def test_n_get_returns_absent_attributes_empty(assoc):
    uid = create(assoc)
    ds = get(assoc, uid, [0x00100020, 0x00101030, 0x00404034, 0x00081195, 0x00404011])
    assert ds.PatientID == "PID1"
    assert "PatientWeight" in ds and ds.PatientWeight in (None, "")
    assert "ScheduledHumanPerformersSequence" in ds and not ds.ScheduledHumanPerformersSequence
    assert "ExpectedCompletionDateTime" in ds and not ds.ExpectedCompletionDateTime
    assert "TransactionUID" not in ds  # never, not even empty


# ---- command elements inside datasets ------------------------------------------------------

@pytest.mark.parametrize("charset", [None, ["ISO 2022 IR 6", "ISO 2022 IR 87"]])
def test_command_elements_in_an_n_create_or_n_set_dataset_are_refused(assoc, charset):
    """Both decoders: the binary reader (plain) and pydicom (ISO 2022)."""
    ds = d.dataset({k: v for k, v in workitem().items() if k != "00080018"})
    if charset:
        ds.SpecificCharacterSet = charset
    ds.add_new(0x00000902, "LO", "smuggled")
    uid = new_uid()
    status, _ = assoc.send_n_create(ds, d.PUSH, uid)
    expect(status, 0x0106, "command")
    status, _ = d.n_get(assoc, uid)
    expect(status, 0xC307)  # nothing stored
    uid = create(assoc)
    mods = Dataset()
    if charset:
        mods.SpecificCharacterSet = charset
    mods.ProcedureStepLabel = "changed"
    mods.add_new(0x00001000, "UI", "1.2.3")
    status, _ = assoc.send_n_set(mods, d.PUSH, uid, meta_uid=d.PULL)
    expect(status, 0x0106, "command")
    assert get(assoc, uid).ProcedureStepLabel == "AI analysis"


# ---- transfer syntax: the requester's preference -------------------------------------------

@pytest.mark.parametrize("proposed", [
    [ImplicitVRLittleEndian, ExplicitVRLittleEndian],
    [ExplicitVRLittleEndian, ImplicitVRLittleEndian],
    [DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRLittleEndian],
    ["1.2.840.10008.1.2.4.50", ImplicitVRLittleEndian, ExplicitVRLittleEndian],  # JPEG: skipped
])
def test_the_first_supported_transfer_syntax_the_requester_proposes_is_taken(gateway, proposed):
    with d.association(gateway, contexts=[d.PUSH, d.PULL], syntaxes=proposed) as a:
        taken = {str(cx.abstract_syntax): str(cx.transfer_syntax[0])
                 for cx in a.accepted_contexts}
        expected = next(s for s in map(str, proposed) if s != "1.2.840.10008.1.2.4.50")
        assert taken[d.PUSH] == taken[d.PULL] == expected
        uid = create(a)
        assert get(a, uid).ProcedureStepState == "SCHEDULED"


# ---- type 1 attributes inside sequence items -----------------------------------------------

def _create_with(assoc, extra: dict):
    return d.n_create(assoc, workitem(**extra), new_uid())[0]


def test_n_create_validates_type_1_attributes_in_sequence_items(assoc):
    performer_without_code = {"00404034": element("SQ", {
        "00404037": element("PN", {"Alphabetic": "Smith^Ann"})})}
    expect(_create_with(assoc, performer_without_code), 0x0120, "HumanPerformerCodeSequence")
    input_without_type = {"00404021": element("SQ", {
        "00081199": element("SQ", {"00081150": element("UI", "1.2.840.10008.5.1.4.1.1.2"),
                                   "00081155": element("UI", "1.2.3.4.5")})})}
    expect(_create_with(assoc, input_without_type), 0x0120, "TypeOfInstances")
    reference_without_instance = {"00404021": element("SQ", {
        "0040E020": element("CS", "DICOM"), "0020000D": element("UI", "1.2.3"),
        "0020000E": element("UI", "1.2.3.4"),
        "00081199": element("SQ", {"00081150": element("UI", "1.2.840.10008.5.1.4.1.1.2")})})}
    expect(_create_with(assoc, reference_without_instance), 0x0120, "ReferencedSOPInstanceUID")
    text_parameter_without_text = {"00741210": element("SQ", {
        "0040A040": element("CS", "TEXT"),
        "0040A043": element("SQ", code("ALGO", meaning="Algorithm"))})}
    expect(_create_with(assoc, text_parameter_without_text), 0x0120, "TextValue")
    empty_concept_name = {"00741210": element("SQ", {
        "0040A040": element("CS", "TEXT"), "0040A043": element("SQ"),
        "0040A160": element("UT", "v1")})}
    expect(_create_with(assoc, empty_concept_name), 0x0121, "ConceptNameCodeSequence")
    valid = {"00404034": element("SQ", {"00404009": element("SQ", code("RAD1", meaning="R"))}),
             "00741210": element("SQ", {"0040A040": element("CS", "TEXT"),
                                        "0040A043": element("SQ", code("ALGO", meaning="A")),
                                        "0040A160": element("UT", "v1")})}
    expect(_create_with(assoc, valid), 0x0000)


def test_n_set_validates_items_and_cannot_empty_3_1_attributes(assoc):
    uid = create(assoc, **{"00400400": element("LT", "first comment")})
    tx = claim(assoc, uid)

    def n_set(mods: dict):
        return d.n_set(assoc, uid, mods, tx)[0]

    bad_output = {"00741216": element("SQ", {"00404033": element("SQ", {
        "0040E020": element("CS", "DICOM")})})}
    expect(n_set(bad_output), 0x0120, "ReferencedSOPSequence")
    empty_description = {"00741002": element("SQ", {"00741006": element("ST")})}
    expect(n_set(empty_description), 0x0121, "ProcedureStepProgressDescription")
    empty_end = {"00741216": element("SQ", {"00404051": element("DT")})}
    expect(n_set(empty_end), 0x0121, "PerformedProcedureStepEndDateTime")
    expect(n_set({"00400400": element("LT")}), 0x0121, "CommentsOnTheScheduledProcedureStep")
    expect(n_set({"00404018": element("SQ")}), 0x0121, "ScheduledWorkitemCodeSequence")
    expect(n_set({"00741002": element("SQ", {"00741006": element("ST", "half way")})}), 0x0000)
    assert get(assoc, uid).CommentsOnTheScheduledProcedureStep == "first comment"
