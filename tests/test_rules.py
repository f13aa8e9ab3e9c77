"""Attribute rules at creation, update and final state (digest §4, decisions.md), and the DICOM
JSON normalisation at the edge. Every refusal must name the offending attribute."""

from __future__ import annotations

import copy
import re

import pytest

from gateway.ups import rules
from gateway.ups import status as st
from gateway.ups.dataset import normalize
from gateway.ups.errors import InvalidDataset, UPSError
from tests.helpers import code, completion_payload, element, new_uid, state_payload, workitem

TX = "1.2.3.4.5"


def ds(**kw) -> dict:
    return normalize(workitem(**kw))


def without(payload: dict, *tags: str) -> dict:
    payload = copy.deepcopy(payload)
    for tag in tags:
        payload.pop(tag, None)
    return payload


async def claimed(service, uid=None) -> str:
    uid = uid or new_uid()
    await service.create(ds(uid=uid))
    await service.change_state(uid, "IN PROGRESS", TX)
    return uid


# ---- creation --------------------------------------------------------------------------

@pytest.mark.parametrize("state", ["IN PROGRESS", "COMPLETED", "CANCELED", None, ""])
async def test_create_requires_state_scheduled(service, state):
    payload = workitem()
    if state is None:
        del payload["00741000"]
    else:
        payload["00741000"] = element("CS", state) if state else element("CS")
    with pytest.raises(UPSError) as caught:
        rules.check_create(normalize(payload))
    assert caught.value.status == st.CREATE_NOT_SCHEDULED
    assert "ProcedureStepState" in caught.value.message
    uid = new_uid()
    with pytest.raises(UPSError) as caught:
        await service.create(normalize(payload), uid)
    assert caught.value.status == st.CREATE_NOT_SCHEDULED
    assert not await service.store.exists(uid)


def test_create_refuses_a_transaction_uid_with_a_value():
    payload = workitem()
    payload["00081195"] = element("UI", "1.2.3")
    with pytest.raises(InvalidDataset) as caught:
        rules.check_create(normalize(payload))
    assert caught.value.status == st.INVALID_ATTRIBUTE_VALUE
    assert "TransactionUID" in caught.value.message


@pytest.mark.parametrize("present", [True, False])
async def test_create_accepts_an_empty_or_absent_transaction_uid_and_never_stores_it(service,
                                                                                     present):
    payload = workitem()
    if not present:
        del payload["00081195"]
    uid = new_uid()
    await service.create(normalize(payload), uid)
    assert "00081195" not in await service.retrieve(uid)
    assert (await service.store.load(uid)).tx is None


TYPE1 = {"00741200": "ScheduledProcedureStepPriority", "00741204": "ProcedureStepLabel",
         "00404005": "ScheduledProcedureStepStartDateTime", "00404041": "InputReadinessState"}


@pytest.mark.parametrize("tag", TYPE1)
def test_create_type1_missing_is_0120_and_empty_is_0121(tag):
    with pytest.raises(InvalidDataset) as missing:
        rules.check_create(normalize(without(workitem(), tag)))
    assert missing.value.status == st.MISSING_ATTRIBUTE
    assert TYPE1[tag] in missing.value.message
    payload = workitem()
    payload[tag] = {"vr": payload[tag]["vr"]}
    with pytest.raises(InvalidDataset) as empty:
        rules.check_create(normalize(payload))
    assert empty.value.status == st.MISSING_ATTRIBUTE_VALUE
    assert TYPE1[tag] in empty.value.message


@pytest.mark.parametrize("tag,name", [("00741002", "ProcedureStepProgressInformationSequence"),
                                      ("00741216", "UnifiedProcedureStepPerformedProcedureSequence")])
def test_create_refuses_progress_and_performed_items(tag, name):
    payload = workitem()
    payload[tag] = element("SQ", {"00741006": element("ST", "half way")} if tag == "00741002"
                           else {"00404050": element("DT", "20261125100000")})
    with pytest.raises(InvalidDataset) as caught:
        rules.check_create(normalize(payload))
    assert name in caught.value.message
    payload[tag] = element("SQ")  # present but empty is what the SCU is meant to send
    rules.check_create(normalize(payload))


@pytest.mark.parametrize("tag,value,name", [
    ("00741200", "URGENT", "ScheduledProcedureStepPriority"),
    ("00404041", "SOON", "InputReadinessState"),
])
def test_create_enumerated_values(tag, value, name):
    payload = workitem()
    payload[tag] = element("CS", value)
    with pytest.raises(InvalidDataset) as caught:
        rules.check_create(normalize(payload))
    assert caught.value.status == st.INVALID_ATTRIBUTE_VALUE
    assert name in caught.value.message and value in caught.value.message


@pytest.mark.parametrize("priority", ["HIGH", "MEDIUM", "LOW"])
def test_create_accepts_every_priority(priority):
    rules.check_create(ds(priority=priority))


@pytest.mark.parametrize("item,missing", [
    ({"00080102": element("SH", "DCM"), "00080104": element("LO", "x")}, "CodeValue"),
    ({"00080100": element("SH", "X"), "00080104": element("LO", "x")}, "CodingSchemeDesignator"),
    ({"00080100": element("SH", "X"), "00080102": element("SH", "DCM")}, "CodeMeaning"),
])
def test_create_code_items_need_value_scheme_and_meaning(item, missing):
    payload = workitem()
    payload["00404025"] = element("SQ", item)
    with pytest.raises(InvalidDataset) as caught:
        rules.check_create(normalize(payload))
    assert missing in caught.value.message
    assert "ScheduledStationNameCodeSequence" in caught.value.message


def test_create_code_items_checked_inside_nested_sequences():
    payload = workitem()
    payload["00404034"] = element("SQ", {
        "00404009": element("SQ", {"00080100": element("SH", "P1"),
                                   "00080102": element("SH", "99L")}),
        "00404037": element("PN", {"Alphabetic": "Smith^Ann"}),
    })
    with pytest.raises(InvalidDataset) as caught:
        rules.check_create(normalize(payload))
    message = caught.value.message
    assert "ScheduledHumanPerformersSequence" in message
    assert "HumanPerformerCodeSequence" in message and "CodeMeaning" in message


def test_create_code_item_with_long_code_value_is_fine():
    payload = workitem()
    payload["00404025"] = element("SQ", {"00080119": element("UC", "LONGCODE"),
                                         "00080104": element("LO", "long one")})
    rules.check_create(normalize(payload))


def test_create_referenced_request_items_need_a_study_instance_uid():
    payload = workitem()
    payload["0040A370"] = element("SQ", {"00080050": element("SH", "ACC1")})
    with pytest.raises(InvalidDataset) as caught:
        rules.check_create(normalize(payload))
    assert "ReferencedRequestSequence" in caught.value.message
    assert "StudyInstanceUID" in caught.value.message


TYPE2 = ["ScheduledProcessingParametersSequence", "ScheduledStationNameCodeSequence",
         "ScheduledStationClassCodeSequence", "ScheduledStationGeographicLocationCodeSequence",
         "ScheduledWorkitemCodeSequence", "CommentsOnTheScheduledProcedureStep",
         "InputInformationSequence", "StudyInstanceUID", "PatientName", "PatientID",
         "PatientBirthDate", "PatientSex", "AdmissionID", "IssuerOfAdmissionIDSequence",
         "AdmittingDiagnosesDescription", "AdmittingDiagnosesCodeSequence",
         "ReferencedRequestSequence", "OtherPatientIDsSequence",
         "ProcedureStepProgressInformationSequence",
         "UnifiedProcedureStepPerformedProcedureSequence"]


async def test_create_fills_absent_type2_attributes_empty(service):
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    minimal = {k: v for k, v in workitem().items()
               if k in ("00741000", "00741200", "00741204", "00404005", "00404041")}
    uid = new_uid()
    await service.create(normalize(minimal), uid)
    stored = await service.retrieve(uid)
    for keyword in TYPE2:
        tag = f"{tag_for_keyword(keyword):08X}"
        assert tag in stored, keyword
        assert not stored[tag].get("Value"), keyword
        assert stored[tag]["vr"] == dictionary_VR(tag), keyword
    # what the SCP maintains itself
    assert stored["00080016"]["Value"] == ["1.2.840.10008.5.1.4.34.6.1"]
    assert stored["00080018"]["Value"] == [uid]
    assert stored["00741202"]["Value"] == ["DEFAULT"]  # default Worklist Label
    assert re.fullmatch(r"\d{14}\.\d{6}[+-]\d{4}", stored["00404010"]["Value"][0])


async def test_create_with_modifications_reports_them(service):
    payload = without(workitem(), "00741202")  # no Worklist Label
    outcome = await service.create(normalize(payload), new_uid())
    assert outcome.status == st.CREATED_WITH_MODIFICATIONS
    assert "WorklistLabel" in outcome.message
    exact = await service.create(ds(), new_uid())
    assert exact.status == st.SUCCESS and not exact.modifications


async def test_create_payload_uid_disagreeing_with_the_request_uid(service):
    a, b = new_uid(), new_uid()
    with pytest.raises(InvalidDataset) as caught:
        await service.create(ds(uid=a), b)
    assert "SOPInstanceUID" in caught.value.message
    assert not await service.store.exists(a) and not await service.store.exists(b)


# ---- update ----------------------------------------------------------------------------

NOT_SETTABLE = {
    "SOPClassUID": element("UI", "1.2.840.10008.5.1.4.34.6.3"),
    "SOPInstanceUID": element("UI", "1.2.3.4"),
    "ProcedureStepState": element("CS", "COMPLETED"),
    "PatientName": element("PN", {"Alphabetic": "Other^Name"}),
    "PatientID": element("LO", "PID-OTHER"),
    "IssuerOfPatientID": element("LO", "HOSP"),
    "IssuerOfPatientIDQualifiersSequence": element("SQ", {"00400032": element("UT", "x")}),
    "OtherPatientIDsSequence": element("SQ", {"00100020": element("LO", "P2")}),
    "PatientBirthDate": element("DA", "19700101"),
    "PatientSex": element("CS", "F"),
    "AdmissionID": element("LO", "ADM1"),
    "IssuerOfAdmissionIDSequence": element("SQ", {"00400031": element("UT", "x")}),
    "AdmittingDiagnosesDescription": element("LO", "flu"),
    "AdmittingDiagnosesCodeSequence": element("SQ", code("J10")),
    "ReferencedRequestSequence": element("SQ", {"0020000D": element("UI", "1.2.3"),
                                                "00080050": element("SH", "A1")}),
    "ReplacedProcedureStepSequence": element("SQ", {"00081150": element("UI", "1.2.3"),
                                                    "00081155": element("UI", "1.2.4")}),
}


def _tag(keyword: str) -> str:
    from pydicom.datadict import tag_for_keyword
    return f"{tag_for_keyword(keyword):08X}"


@pytest.mark.parametrize("keyword", NOT_SETTABLE)
def test_update_refuses_attributes_that_may_not_be_set(keyword):
    with pytest.raises(InvalidDataset) as caught:
        rules.check_update(normalize({_tag(keyword): NOT_SETTABLE[keyword]}))
    assert caught.value.status == st.INVALID_ATTRIBUTE_VALUE
    assert keyword in caught.value.message


@pytest.mark.parametrize("keyword", NOT_SETTABLE)
async def test_update_refusal_through_service_changes_nothing(service, keyword):
    uid = await claimed(service)
    before = await service.retrieve(uid)
    mods = {_tag(keyword): NOT_SETTABLE[keyword], "00741204": element("LO", "new label")}
    with pytest.raises(InvalidDataset) as caught:
        await service.update(uid, normalize(mods), TX)
    assert caught.value.status == st.INVALID_ATTRIBUTE_VALUE
    assert keyword in caught.value.message
    assert await service.retrieve(uid) == before


SET_TYPE1 = {"00741200": "ScheduledProcedureStepPriority", "00741204": "ProcedureStepLabel",
             "00741202": "WorklistLabel", "00404005": "ScheduledProcedureStepStartDateTime",
             "00404041": "InputReadinessState"}


@pytest.mark.parametrize("tag", SET_TYPE1)
async def test_update_may_not_empty_a_type1_attribute(service, tag):
    uid = await claimed(service)
    vr = workitem()[tag]["vr"]
    with pytest.raises(InvalidDataset) as caught:
        await service.update(uid, normalize({tag: {"vr": vr}}), TX)
    assert caught.value.status == st.MISSING_ATTRIBUTE_VALUE
    assert SET_TYPE1[tag] in caught.value.message
    assert (await service.retrieve(uid))[tag]["Value"]


async def test_update_checks_enumerations_and_code_items(service):
    uid = await claimed(service)
    with pytest.raises(InvalidDataset) as enum:
        await service.update(uid, normalize({"00741200": element("CS", "ASAP")}), TX)
    assert "ScheduledProcedureStepPriority" in enum.value.message
    bad_code = {"00741216": element("SQ", {"00404028": element("SQ", {
        "00080100": element("SH", "S1"), "00080102": element("SH", "99L")})})}
    with pytest.raises(InvalidDataset) as code_error:
        await service.update(uid, normalize(bad_code), TX)
    assert "PerformedStationNameCodeSequence" in code_error.value.message
    assert "CodeMeaning" in code_error.value.message


async def test_update_contact_uri_item_needs_contact_uri(service):
    uid = await claimed(service)
    mods = {"00741002": element("SQ", {"00741008": element("SQ", {
        "0074100C": element("LO", "Dr Who")})})}
    with pytest.raises(InvalidDataset) as caught:
        await service.update(uid, normalize(mods), TX)
    assert "ContactURI" in caught.value.message


async def test_update_applies_settable_attributes_and_bumps_modification_time(service):
    uid = await claimed(service)
    before = await service.retrieve(uid)
    await service.update(uid, normalize({"00741204": element("LO", "new label"),
                                         "00741200": element("CS", "HIGH")}), TX)
    after = await service.retrieve(uid)
    assert after["00741204"]["Value"] == ["new label"]
    assert after["00741200"]["Value"] == ["HIGH"]
    assert after["00404010"]["Value"][0] > before["00404010"]["Value"][0]


# ---- final state -----------------------------------------------------------------------

PERFORMED = {"00404028": "PerformedStationNameCodeSequence",
             "00404019": "PerformedWorkitemCodeSequence",
             "00404050": "PerformedProcedureStepStartDateTime",
             "00404051": "PerformedProcedureStepEndDateTime",
             "00404033": "OutputInformationSequence"}


def test_completed_requires_a_performed_procedure_item():
    unmet = rules.unmet_for_completed(ds())
    assert any("UnifiedProcedureStepPerformedProcedureSequence" in u for u in unmet)


@pytest.mark.parametrize("tag", PERFORMED)
async def test_completed_requires_each_performed_attribute(service, tag):
    uid = await claimed(service)
    payload = completion_payload()
    del payload["00741216"]["Value"][0][tag]
    await service.update(uid, normalize(payload), TX)
    with pytest.raises(UPSError) as caught:
        await service.change_state(uid, "COMPLETED", TX)
    assert caught.value.status == st.FINAL_STATE_REQUIREMENTS_NOT_MET
    assert PERFORMED[tag] in caught.value.message
    assert (await service.retrieve(uid))["00741000"]["Value"] == ["IN PROGRESS"]


async def test_completed_accepts_an_empty_output_information_sequence(service):
    uid = await claimed(service)
    payload = completion_payload()
    assert payload["00741216"]["Value"][0]["00404033"] == {"vr": "SQ"}
    await service.update(uid, normalize(payload), TX)
    assert (await service.change_state(uid, "COMPLETED", TX)).status == st.SUCCESS


async def test_canceled_by_change_state_fills_cancellation_time_and_reason(service):
    uid = await claimed(service)
    outcome = await service.change_state(uid, "CANCELED", TX)
    assert outcome.status == st.SUCCESS
    joined = " ".join(outcome.modifications)
    assert "ProcedureStepCancellationDateTime" in joined
    assert "ProcedureStepDiscontinuationReasonCodeSequence" in joined
    stored = await service.retrieve(uid)
    assert stored["00741000"]["Value"] == ["CANCELED"]
    [progress] = stored["00741002"]["Value"]
    assert re.fullmatch(r"\d{14}\.\d{6}[+-]\d{4}", progress["00404052"]["Value"][0])
    [reason] = progress["0074100E"]["Value"]
    assert reason["00080100"]["Value"] == ["110513"]
    assert reason["00080102"]["Value"] == ["DCM"]
    assert reason["00080104"]["Value"] == ["Discontinued for unspecified reason"]
    assert not rules.unmet_for_canceled(stored)


async def test_canceled_keeps_a_reason_the_performer_gave(service):
    uid = await claimed(service)
    given = {"00741002": element("SQ", {
        "0074100E": element("SQ", code("110514", "DCM", "Incorrect worklist entry selected")),
        "00741238": element("LT", "wrong patient")})}
    await service.update(uid, normalize(given), TX)
    outcome = await service.change_state(uid, "CANCELED", TX)
    assert "ProcedureStepDiscontinuationReasonCodeSequence" not in " ".join(outcome.modifications)
    [progress] = (await service.retrieve(uid))["00741002"]["Value"]
    assert progress["0074100E"]["Value"][0]["00080100"]["Value"] == ["110514"]
    assert progress["00741238"]["Value"] == ["wrong patient"]
    assert "00404052" in progress


async def test_request_cancel_on_scheduled_copies_reason_and_contact(service):
    uid = new_uid()
    await service.create(ds(uid=uid))
    request = normalize({"00741238": element("LT", "patient left"),
                         "0074100A": element("UR", "tel:+1-555-0100"),
                         "0074100C": element("LO", "Ward 3")})
    outcome = await service.request_cancel(uid, request, requester="RIS")
    assert outcome.status == st.SUCCESS
    stored = await service.retrieve(uid)
    assert stored["00741000"]["Value"] == ["CANCELED"]
    [progress] = stored["00741002"]["Value"]
    assert progress["00741238"]["Value"] == ["patient left"]
    [contact] = progress["00741008"]["Value"]
    assert contact["0074100A"]["Value"] == ["tel:+1-555-0100"]
    assert contact["0074100C"]["Value"] == ["Ward 3"]
    assert progress["0074100E"]["Value"][0]["00080100"]["Value"] == ["110513"]
    assert "00404052" in progress


# ---- normalisation at the edge -----------------------------------------------------------

def _message(obj) -> str:
    with pytest.raises(InvalidDataset) as caught:
        normalize(obj)
    return caught.value.message


def test_normalize_refuses_a_wrong_vr_for_a_known_tag():
    message = _message({"00100020": {"vr": "DA", "Value": ["20260101"]}})
    assert "PatientID" in message and "LO" in message


def test_normalize_refuses_an_unknown_vr():
    assert "PatientID" in _message({"00100020": {"vr": "XX", "Value": ["a"]}})
    assert "PatientID" in _message({"00100020": {"Value": ["a"]}})


@pytest.mark.parametrize("uid", ["1.2.03", "1.2.abc", "1..2", ".1.2", "1.2.", "1." + "2" * 70,
                                 "1.2 "])
def test_normalize_refuses_an_invalid_uid(uid):
    message = _message({"0020000D": {"vr": "UI", "Value": [uid]}})
    assert "StudyInstanceUID" in message


@pytest.mark.parametrize("tag,vr,value,name", [
    ("00100030", "DA", "2026-11-25", "PatientBirthDate"),
    ("00100030", "DA", "261125", "PatientBirthDate"),
    ("00100030", "DA", "20261340", "PatientBirthDate"),
    ("00100030", "DA", "20260230", "PatientBirthDate"),
    ("00404005", "DT", "20261125T100000", "ScheduledProcedureStepStartDateTime"),
    ("00404005", "DT", "2026112510000", "ScheduledProcedureStepStartDateTime"),
    ("00404005", "DT", "20261125250000", "ScheduledProcedureStepStartDateTime"),
    ("00404005", "DT", "20261325100000", "ScheduledProcedureStepStartDateTime"),
    ("00404005", "DT", "20261125100000+25", "ScheduledProcedureStepStartDateTime"),
])
def test_normalize_refuses_bad_dates(tag, vr, value, name):
    assert name in _message({tag: {"vr": vr, "Value": [value]}})


@pytest.mark.parametrize("value", ["2026", "202611", "20261125", "2026112510", "20261125100000",
                                   "20261125100000.123456", "20261125100000+0100",
                                   "20261125100000.5-0500", "99991231", "9999",
                                   "20161231235960"])
def test_normalize_accepts_dt_of_every_precision(value):
    assert normalize({"00404005": {"vr": "DT", "Value": [value]}})["00404005"]["Value"] == [value]


@pytest.mark.parametrize("vr,raw,number", [("IS", "42", 42), ("IS", " -7 ", -7), ("IS", 42, 42),
                                           ("DS", "1.5", 1.5), ("DS", " 2 ", 2), ("DS", 2.25, 2.25),
                                           ("DS", "1e2", 100.0)])
def test_normalize_turns_is_ds_strings_into_numbers(vr, raw, number):
    tag = "00200013" if vr == "IS" else "00741004"
    value = normalize({tag: {"vr": vr, "Value": [raw]}})[tag]["Value"][0]
    assert value == number and isinstance(value, (int, float)) and not isinstance(value, bool)


@pytest.mark.parametrize("vr,raw", [("IS", "4.5"), ("IS", "abc"), ("IS", 4.5), ("DS", "1,5"),
                                    ("DS", "x"), ("IS", True), ("DS", [1])])
def test_normalize_refuses_bad_numeric_strings(vr, raw):
    tag, name = ("00200013", "InstanceNumber") if vr == "IS" else ("00741004", "ProcedureStepProgress")
    assert name in _message({tag: {"vr": vr, "Value": [raw]}})


@pytest.mark.parametrize("tag,vr,value,name", [
    ("00200013", "IS", 2**31, "InstanceNumber"),          # IS is a 32-bit signed integer
    ("00200013", "IS", "99999999999999999999", "InstanceNumber"),
    ("00200013", "IS", 10**400, "InstanceNumber"),
    ("00741004", "DS", float("inf"), "ProcedureStepProgress"),
    ("00741004", "DS", float("nan"), "ProcedureStepProgress"),
    ("00741004", "DS", "1e999", "ProcedureStepProgress"),
    ("001021C0", "US", 70000, "PregnancyStatus"),
    ("001021C0", "US", -1, "PregnancyStatus"),
    ("001021C0", "US", 10**400, "PregnancyStatus"),
    ("00189087", "FD", float("inf"), "DiffusionBValue"),
])
def test_normalize_refuses_numbers_out_of_range(tag, vr, value, name):
    assert name in _message({tag: {"vr": vr, "Value": [value]}})


def test_normalize_refuses_a_number_for_a_string_vr():
    assert "PatientID" in _message({"00100020": {"vr": "LO", "Value": [123]}})
    assert "ScheduledProcedureStepStartDateTime" in _message(
        {"00404005": {"vr": "DT", "Value": [20261125100000]}})


def test_normalize_accepts_a_bare_string_person_name():
    out = normalize({"00100010": {"vr": "PN", "Value": ["Doe^John"]}})
    assert out["00100010"]["Value"] == [{"Alphabetic": "Doe^John"}]
    assert "PatientName" in _message({"00100010": {"vr": "PN", "Value": [{"Alphabetic": 5}]}})
    assert "PatientName" in _message({"00100010": {"vr": "PN", "Value": [{"Nick": "x"}]}})


def test_normalize_refuses_bulk_data_uri():
    message = _message({"00420011": {"vr": "OB", "BulkDataURI": "http://x/bulk/1"}})
    assert "EncapsulatedDocument" in message and "BulkDataURI" in message


def test_normalize_accepts_inline_binary_and_refuses_bad_base64():
    assert normalize({"00420011": {"vr": "OB", "InlineBinary": "AAEC"}})["00420011"] == {
        "vr": "OB", "InlineBinary": "AAEC"}
    assert "EncapsulatedDocument" in _message({"00420011": {"vr": "OB", "InlineBinary": "@@@"}})
    assert "PatientID" in _message({"00100020": {"vr": "LO", "InlineBinary": "AAEC"}})


def test_normalize_upper_cases_keys_everywhere():
    out = normalize({"0040a370": {"vr": "SQ", "Value": [
        {"0020000d": {"vr": "UI", "Value": ["1.2.3"]}, "00080050": {"vr": "SH", "Value": ["A"]}}]},
        "0074100e": {"vr": "SQ"}})
    assert set(out) == {"0040A370", "0074100E"}
    assert set(out["0040A370"]["Value"][0]) == {"0020000D", "00080050"}


def test_normalize_names_the_path_inside_sequences():
    message = _message({"00404025": {"vr": "SQ", "Value": [
        {"00080100": {"vr": "SH", "Value": [5]}}]}})
    assert re.search(r"ScheduledStationNameCodeSequence \(0040,4025\)\[0\] > CodeValue", message)


@pytest.mark.parametrize("obj", [
    {"PatientID": {"vr": "LO", "Value": ["x"]}},       # keyword instead of tag
    {"0010002": {"vr": "LO", "Value": ["x"]}},          # 7 digits
    {"00100020": {"vr": "LO", "Value": "x"}},           # Value not an array
    {"00100020": "x"},                                  # element not an object
    {"00100020": {"vr": "LO", "Value": ["x"], "Extra": 1}},
    {"00100020": {"vr": "LO", "Value": ["a\\b"]}},      # backslash inside a value
    {"00100020": {"vr": "LO", "Value": ["x" * 65]}},    # longer than LO allows
    {"00100040": {"vr": "CS", "Value": ["female"]}},    # CS is upper case
    {"00000900": {"vr": "US", "Value": [0]}},           # command element
])
def test_normalize_refuses_malformed_elements(obj):
    _message(obj)


def test_normalize_drops_group_lengths_and_sorts_keys():
    out = normalize({"00100020": {"vr": "LO", "Value": ["x"]},
                     "00100000": {"vr": "UL", "Value": [12]},
                     "00080018": {"vr": "UI", "Value": ["1.2"]}})
    assert list(out) == ["00080018", "00100020"]


async def test_state_payload_helper_is_valid():
    assert normalize(state_payload("IN PROGRESS", TX))["00081195"]["Value"] == [TX]


def test_create_accepts_a_proper_replaced_procedure_step_sequence():
    """Its items use the SOP Instance Reference macro: Referenced SOP Class/Instance UID."""
    payload = workitem()
    payload["00741224"] = element("SQ", {"00081150": element("UI", "1.2.840.10008.5.1.4.34.6.1"),
                                         "00081155": element("UI", "1.2.3.4")})
    rules.check_create(normalize(payload))
    payload["00741224"] = element("SQ", {"00081150": element("UI", "1.2.840.10008.5.1.4.34.6.1")})
    with pytest.raises(InvalidDataset) as caught:
        rules.check_create(normalize(payload))
    assert "ReplacedProcedureStepSequence" in caught.value.message
    assert "ReferencedSOPInstanceUID" in caught.value.message


async def test_request_cancel_on_scheduled_uses_the_reason_code_of_the_request(service):
    uid = new_uid()
    await service.create(ds(uid=uid))
    request = normalize({"0074100E": element("SQ", code("110514", "DCM",
                                                        "Incorrect worklist entry selected"))})
    await service.request_cancel(uid, request)
    [progress] = (await service.retrieve(uid))["00741002"]["Value"]
    [reason] = progress["0074100E"]["Value"]
    assert reason["00080100"]["Value"] == ["110514"]
    assert "00404052" in progress


# ---- issue 16: echoed values, items' type 1 attributes, no character set kept ----------------

async def test_an_update_echoing_the_stored_workitem_changes_only_what_differs(service):
    uid = await claimed(service)
    stored = await service.retrieve(uid)
    echoed = copy.deepcopy(stored)
    echoed["00741204"] = element("LO", "Echoed and relabelled")
    await service.update(uid, echoed, TX)
    after = await service.retrieve(uid)
    assert after["00741204"] == element("LO", "Echoed and relabelled")
    assert after["00404010"] != stored["00404010"]  # the SCP's own stamp, not the echo
    changed = {"00100020": element("LO", "SOMEONE-ELSE")}
    with pytest.raises(InvalidDataset):
        await service.update(uid, changed, TX)


def test_same_element_treats_empty_and_absent_alike():
    assert rules.same_element(element("LO"), None)
    assert not rules.same_element(element("LO", "x"), None)
    stored = element("SQ", {"00080100": element("SH", "A"), "00080104": element("LO")})
    assert rules.same_element(element("SQ", {"00080100": element("SH", "A")}), stored)
    assert not rules.same_element(element("SQ", {"00080100": element("SH", "B")}), stored)


@pytest.mark.parametrize("seq,item,word", [
    ("00404034", {"00404037": element("PN", {"Alphabetic": "A^B"})}, "HumanPerformerCode"),
    ("00404021", {"0040E020": element("CS", "DICOM"), "00081199": element("SQ", {
        "00081150": element("UI", "1.2.3"), "00081155": element("UI", "1.2.4")})},
     "StudyInstanceUID"),
    ("00741210", {"0040A040": element("CS", "NUMERIC"),
                  "0040A043": element("SQ", code("N", meaning="n")),
                  "0040A30A": element("DS", 3)}, "MeasurementUnitsCodeSequence"),
    ("00741210", {"0040A040": element("CS", "BLOB"),
                  "0040A043": element("SQ", code("N", meaning="n"))}, "ValueType"),
])
def test_type_1_attributes_of_items_are_checked_at_creation(seq, item, word):
    with pytest.raises(InvalidDataset) as caught:
        rules.check_create(normalize(workitem(**{seq: element("SQ", item)})))
    assert word in caught.value.message


async def test_no_specific_character_set_is_stored(service):
    uid = new_uid()
    payload = ds(uid=uid)
    payload["00080005"] = element("CS", "ISO_IR 100")
    payload["00404034"] = element("SQ", {"00080005": element("CS", "ISO_IR 192"),
                                         "00404009": element("SQ", code("P", meaning="p"))})
    await service.create(normalize(payload))
    stored = await service.retrieve(uid)
    assert "00080005" not in stored and "00080005" not in stored["00404034"]["Value"][0]
    await service.update(uid, {"00080005": element("CS", "ISO_IR 144"),
                               "00741204": element("LO", "Метка")})
    assert "00080005" not in await service.retrieve(uid)
