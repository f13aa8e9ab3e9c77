"""The DIMSE UPS SCP over real TCP associations (pynetdicom as the SCU) against a gateway process
started as the README starts it: every operation, every status code, and bad input that must
leave the association usable and the worklist unchanged."""

from __future__ import annotations

import json
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO

import pytest
import redis
from pydicom.dataset import Dataset
from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian,
                        ImplicitVRLittleEndian)
from pynetdicom.dimse_primitives import C_FIND, N_CREATE, N_GET
from pynetdicom.sop_class import CTImageStorage

from gateway.dimse.handlers import error_comment
from tests import dimse_util as d
from tests.dimse_util import create, claim, get
from tests.helpers import (GatewayProcess, completion_payload, element, free_port, new_uid,
                           workitem)

CT_STORAGE = str(CTImageStorage)


@pytest.fixture(scope="module")
def assoc(gateway):
    """One association for most tests: it must survive every refusal."""
    a = d.associate(gateway)
    assert a.is_established
    yield a
    assert a.is_established, "a refused request must not end the association"
    assert a.send_c_echo().Status == 0
    a.release()





def rest_json(gateway, method: str, path: str, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{gateway.base}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/dicom+json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, r.read()


def health(gateway) -> dict:
    try:
        with urllib.request.urlopen(f"{gateway.url}/health", timeout=5) as r:
            return json.load(r)
    except urllib.error.HTTPError as exc:
        return json.load(exc)


def expect(status: Dataset, code_: int, *words: str) -> None:
    assert d.status_of(status) == code_, (f"0x{d.status_of(status):04X} "
                                          f"{d.comment_of(status)!r}, expected 0x{code_:04X}")
    if code_ != 0x0000:
        comment = d.comment_of(status)
        assert comment, "a failure or warning carries an Error Comment"
        assert len(comment) <= 64
        for word in words:
            assert word.lower() in comment.lower(), comment


# ---- association, verification, health ----------------------------------------------------------

def test_echo_and_health(gateway, assoc):
    assert assoc.send_c_echo().Status == 0x0000
    assert health(gateway)["components"]["dimse"] == "up"


def test_every_transfer_syntax_works(gateway):
    for syntax in (ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
        with d.association(gateway, syntaxes=[syntax]) as a:
            uid = create(a)
            assert get(a, uid).ProcedureStepState == "SCHEDULED"
            status, results, _ = d.c_find(a, identifier(SOPInstanceUID=uid))
            assert status == 0x0000 and [r.SOPInstanceUID for r in results] == [uid]


def test_unknown_sop_class_is_not_negotiated_and_the_rest_works(gateway):
    with d.association(gateway, contexts=(d.PUSH, CT_STORAGE)) as a:
        rejected = [cx for cx in a.rejected_contexts if cx.abstract_syntax == CT_STORAGE]
        assert rejected, "CT Image Storage must be refused at negotiation"
        uid = create(a)
        status, ds = d.n_get(a, uid, [0x00741000], meta_uid=d.PUSH)
        expect(status, 0x0000)
        assert ds.ProcedureStepState == "SCHEDULED"


# ---- N-CREATE ------------------------------------------------------------------------------------

def test_n_create_with_uid_and_n_get(assoc):
    uid = create(assoc, label="DIMSE-GET")
    ds = get(assoc, uid)
    assert ds.SOPInstanceUID == uid
    assert ds.SOPClassUID == d.PUSH
    assert ds.ProcedureStepState == "SCHEDULED"
    assert ds.WorklistLabel == "DIMSE-GET"
    assert str(ds.PatientName) == "Doe^John"
    assert ds.ScheduledStationNameCodeSequence[0].CodeValue == "STATION1"
    assert "TransactionUID" not in ds
    assert "ScheduledProcedureStepModificationDateTime" in ds


def test_n_get_honours_attribute_identifier_list_and_hides_transaction_uid(assoc):
    uid = create(assoc)
    claim(assoc, uid)
    ds = get(assoc, uid, [0x00741000, 0x00081195, 0x00100020])
    assert set(ds.keys()) == {0x00100020, 0x00741000}
    assert ds.ProcedureStepState == "IN PROGRESS"
    assert "TransactionUID" not in get(assoc, uid)


def test_n_create_without_uid_assigns_one_and_answers_success(assoc):
    req = N_CREATE()
    req.MessageID = 7
    req.AffectedSOPClassUID = d.PUSH
    req.AttributeList = d.encoded(d.dataset(workitem()))
    rsp = d.raw_request(assoc, req, d.PUSH)
    assert rsp.Status == 0x0000
    assigned = str(rsp.AffectedSOPInstanceUID)
    assert assigned.startswith("2.25.")
    # no Attribute List (conformance §9); pynetdicom shows that as None or an empty stream
    assert rsp.AttributeList is None or rsp.AttributeList.getvalue() == b""
    assert get(assoc, assigned).SOPInstanceUID == assigned


def test_n_create_with_modifications_is_b300(assoc):
    ds = workitem()
    del ds["00741202"]  # no Worklist Label: the gateway fills the default
    uid = new_uid()
    status, _ = d.n_create(assoc, ds, uid)
    expect(status, 0xB300, "WorklistLabel")
    assert get(assoc, uid).WorklistLabel == "DEFAULT"


def test_n_create_duplicate_is_0111(assoc):
    uid = create(assoc)
    status, _ = d.n_create(assoc, workitem(label="OTHER"), uid)
    expect(status, 0x0111, "already exists")
    assert get(assoc, uid).WorklistLabel == "AI"


def test_n_create_not_scheduled_is_c309(assoc):
    uid = new_uid()
    status, _ = d.n_create(assoc, workitem(**{"00741000": element("CS", "IN PROGRESS")}), uid)
    expect(status, 0xC309, "SCHEDULED")
    expect(d.n_get(assoc, uid)[0], 0xC307)


def test_n_create_missing_required_attribute_is_0120(assoc):
    ds = workitem()
    del ds["00741204"]  # Procedure Step Label, type 1
    uid = new_uid()
    status, _ = d.n_create(assoc, ds, uid)
    expect(status, 0x0120, "ProcedureStepLabel")
    expect(d.n_get(assoc, uid)[0], 0xC307)


def test_n_create_with_a_transaction_uid_is_refused(assoc):
    uid = new_uid()
    status, _ = d.n_create(assoc, workitem(**{"00081195": element("UI", new_uid())}), uid)
    expect(status, 0x0106, "Transaction")


def test_n_create_wrong_vr_is_0106_and_nothing_is_stored(gateway):
    with d.association(gateway, syntaxes=[ExplicitVRLittleEndian]) as a:
        ds = d.dataset(workitem())
        del ds[0x00100020]
        ds.add_new(0x00100020, "US", 7)  # Patient ID is LO
        uid = new_uid()
        status, _ = a.send_n_create(ds, d.PUSH, uid)
        expect(status, 0x0106, "PatientID", "VR")
        expect(d.n_get(a, uid)[0], 0xC307)


@pytest.mark.filterwarnings("ignore::UserWarning")  # invalid on purpose
def test_n_create_invalid_value_is_0106(assoc):
    uid = new_uid()
    status, _ = d.n_create(assoc, workitem(start="2026-11-25"), uid)
    expect(status, 0x0106, "ScheduledProcedureStepStartDateTime")
    expect(d.n_get(assoc, uid)[0], 0xC307)


def test_n_create_undecodable_dataset_is_refused_and_association_lives(assoc):
    req = N_CREATE()
    req.MessageID = 9
    req.AffectedSOPClassUID = d.PUSH
    uid = new_uid()
    req.AffectedSOPInstanceUID = uid
    # Explicit VR: a sequence of undefined length whose item never ends.
    req.AttributeList = BytesIO(b"\x40\x00\x25\x40SQ\x00\x00\xff\xff\xff\xff"
                                b"\xfe\xff\x00\xe0\xff\xff\xff\xff\x08\x00\x00\x01SH\x04\x00ABCD")
    rsp = d.raw_request(assoc, req, d.PUSH)
    assert rsp.Status == 0x0106
    assert rsp.ErrorComment and "decode" in rsp.ErrorComment
    expect(d.n_get(assoc, uid)[0], 0xC307)
    assert assoc.send_c_echo().Status == 0x0000


@pytest.mark.filterwarnings("ignore::UserWarning")  # invalid on purpose
def test_n_create_invalid_affected_uid_is_0117(assoc):
    req = N_CREATE()
    req.MessageID = 10
    req.AffectedSOPClassUID = d.PUSH
    req.AffectedSOPInstanceUID = "1.2.03"  # leading zero: not a valid UID
    req.AttributeList = d.encoded(d.dataset(workitem()))
    rsp = d.raw_request(assoc, req, d.PUSH)
    assert rsp.Status == 0x0117
    assert "UID" in rsp.ErrorComment


def test_n_create_on_a_pull_only_association_is_unrecognised(gateway):
    with d.association(gateway, contexts=[d.PULL]) as pull_only:
        status, _ = pull_only.send_n_create(d.dataset(workitem()), d.PUSH, new_uid(),
                                            meta_uid=d.PULL)
        expect(status, 0x0211, "N-CREATE", "Pull")


def test_claim_sent_on_the_push_context_of_a_push_and_pull_association_is_accepted(gateway):
    """The message carries the Push UID, so a requestor's stack may well pick the Push context:
    the association offers Pull, so Change State is served (liberal in what we accept)."""
    with d.association(gateway, contexts=[d.PUSH, d.PULL]) as both:
        uid = create(both)
        info = Dataset()
        info.ProcedureStepState = "IN PROGRESS"
        info.TransactionUID = new_uid()
        status, _ = both.send_n_action(info, 1, d.PUSH, uid, meta_uid=d.PUSH)
        expect(status, 0x0000)


# ---- N-GET ---------------------------------------------------------------------------------------

def test_n_get_unknown_instance_is_c307(assoc):
    expect(d.n_get(assoc, new_uid())[0], 0xC307, "No workitem")


def test_n_get_on_push_and_watch_contexts(assoc, gateway):
    uid = create(assoc)
    for context in (d.PUSH, d.WATCH):
        status, ds = d.n_get(assoc, uid, [0x00741000], meta_uid=context)
        expect(status, 0x0000)
        assert ds.ProcedureStepState == "SCHEDULED"
    with d.association(gateway, contexts=[d.QUERY]) as query_only:
        expect(d.n_get(query_only, uid, meta_uid=d.QUERY)[0], 0x0211)


def test_message_with_a_foreign_sop_class_is_0122_and_association_lives(assoc):
    uid = create(assoc)
    req = N_GET()
    req.MessageID = 11
    req.RequestedSOPClassUID = CT_STORAGE  # not a UPS SOP class, on the Pull context
    req.RequestedSOPInstanceUID = uid
    rsp = d.raw_request(assoc, req, d.PULL)
    assert rsp.Status == 0x0122
    assert CT_STORAGE in rsp.ErrorComment
    assert rsp.AffectedSOPClassUID == CT_STORAGE
    assert assoc.send_c_echo().Status == 0x0000
    assert get(assoc, uid, [0x00741000]).ProcedureStepState == "SCHEDULED"


# ---- N-SET ---------------------------------------------------------------------------------------

def test_n_set_scheduled_without_transaction_uid(assoc):
    uid = create(assoc)
    status, _ = d.n_set(assoc, uid, {"00741204": element("LO", "relabelled")})
    expect(status, 0x0000)
    assert get(assoc, uid).ProcedureStepLabel == "relabelled"


def test_n_set_status_codes(assoc):
    uid = create(assoc)
    status, _ = d.n_set(assoc, uid, {"00741204": element("LO", "x")}, tx=new_uid())
    expect(status, 0xC310)  # SCHEDULED carrying a Transaction UID
    tx = claim(assoc, uid)
    expect(d.n_set(assoc, uid, {"00741204": element("LO", "x")})[0], 0xC301, "Transaction")
    expect(d.n_set(assoc, uid, {"00741204": element("LO", "x")}, tx=new_uid())[0], 0xC301)
    expect(d.n_set(assoc, uid, {"00100020": element("LO", "OTHER")}, tx=tx)[0], 0x0106,
           "PatientID")
    expect(d.n_set(assoc, uid, {"00741200": element("CS", "URGENT")}, tx=tx)[0], 0x0106,
           "Priority")
    expect(d.n_set(assoc, uid, completion_payload(), tx=tx)[0], 0x0000)
    ds = get(assoc, uid)
    assert ds.ProcedureStepLabel == "AI analysis"
    assert ds.PatientID == "PID1"
    assert len(ds.UnifiedProcedureStepPerformedProcedureSequence) == 1
    expect(d.change_state(assoc, uid, "COMPLETED", tx)[0], 0x0000)
    expect(d.n_set(assoc, uid, {"00741204": element("LO", "late")}, tx=tx)[0], 0xC300)
    expect(d.n_set(assoc, new_uid(), {"00741204": element("LO", "x")})[0], 0xC307)


def test_n_set_on_push_context_is_accepted_and_on_watch_is_not(assoc, gateway):
    uid = create(assoc)
    expect(d.n_set(assoc, uid, {"00741204": element("LO", "via push")}, meta_uid=d.PUSH)[0],
           0x0000)
    with d.association(gateway, contexts=[d.WATCH]) as watch_only:
        expect(d.n_set(watch_only, uid, {"00741204": element("LO", "via watch")},
                       meta_uid=d.WATCH)[0], 0x0211)
    assert get(assoc, uid).ProcedureStepLabel == "via push"


# ---- N-ACTION type 1: Change UPS State ------------------------------------------------------------

def test_change_state_full_cycle_and_status_codes(assoc):
    uid = create(assoc)
    expect(d.change_state(assoc, uid, "COMPLETED", new_uid())[0], 0xC310)
    expect(d.change_state(assoc, uid, "SCHEDULED", new_uid())[0], 0xC303)
    expect(d.change_state(assoc, uid, "IN PROGRESS", None)[0], 0xC301, "missing")
    tx = claim(assoc, uid)
    assert get(assoc, uid).ProcedureStepState == "IN PROGRESS"
    expect(d.change_state(assoc, uid, "IN PROGRESS", new_uid())[0], 0xC302)
    expect(d.change_state(assoc, uid, "COMPLETED", new_uid())[0], 0xC301, "incorrect")
    expect(d.change_state(assoc, uid, "COMPLETED", tx)[0], 0xC304, "missing")
    expect(d.n_set(assoc, uid, completion_payload(), tx=tx)[0], 0x0000)
    expect(d.change_state(assoc, uid, "COMPLETED", tx)[0], 0x0000)
    ds = get(assoc, uid)
    assert ds.ProcedureStepState == "COMPLETED"
    assert "TransactionUID" not in ds
    expect(d.change_state(assoc, uid, "COMPLETED", tx)[0], 0xB306, "COMPLETED")
    expect(d.change_state(assoc, uid, "CANCELED", tx)[0], 0xC300)
    expect(d.change_state(assoc, new_uid(), "IN PROGRESS", new_uid())[0], 0xC307)


def test_change_state_to_canceled_by_the_performer(assoc):
    uid = create(assoc)
    tx = claim(assoc, uid)
    expect(d.change_state(assoc, uid, "CANCELED", tx)[0], 0x0000)
    ds = get(assoc, uid)
    assert ds.ProcedureStepState == "CANCELED"
    progress = ds.ProcedureStepProgressInformationSequence[0]
    assert progress.ProcedureStepCancellationDateTime
    assert progress.ProcedureStepDiscontinuationReasonCodeSequence[0].CodeValue == "110513"
    expect(d.change_state(assoc, uid, "CANCELED", tx)[0], 0xB304, "CANCELED")


def test_change_state_bad_action_information_is_0115(assoc):
    uid = create(assoc)
    info = Dataset()
    info.TransactionUID = new_uid()  # no Procedure Step State
    expect(assoc.send_n_action(info, 1, d.PUSH, uid, meta_uid=d.PULL)[0], 0x0115)
    info.ProcedureStepState = "DONE"
    expect(assoc.send_n_action(info, 1, d.PUSH, uid, meta_uid=d.PULL)[0], 0x0115,
           "Procedure Step State")
    assert get(assoc, uid).ProcedureStepState == "SCHEDULED"


def test_pull_uid_in_the_message_is_accepted_too(assoc):
    uid = create(assoc)
    info = Dataset()
    info.ProcedureStepState = "IN PROGRESS"
    info.TransactionUID = new_uid()
    expect(assoc.send_n_action(info, 1, d.PULL, uid)[0], 0x0000)


# ---- N-ACTION type 2: Request UPS Cancel ----------------------------------------------------------

def test_request_cancel_scheduled_cancels_it(assoc):
    uid = create(assoc)
    info = Dataset()
    info.ReasonForCancellation = "patient left"
    expect(d.request_cancel(assoc, uid, info)[0], 0x0000)
    ds = get(assoc, uid)
    assert ds.ProcedureStepState == "CANCELED"
    assert ds.ProcedureStepProgressInformationSequence[0].ReasonForCancellation == "patient left"
    expect(d.request_cancel(assoc, uid)[0], 0xB304, "CANCELED")


def test_request_cancel_status_codes(assoc):
    uid = create(assoc)
    tx = claim(assoc, uid)  # performer TEST_SCU: no subscription, no address in peers
    expect(d.request_cancel(assoc, uid, meta_uid=d.WATCH)[0], 0xC312, "performer")
    assert get(assoc, uid).ProcedureStepState == "IN PROGRESS"
    d.n_set(assoc, uid, completion_payload(), tx=tx)
    expect(d.change_state(assoc, uid, "COMPLETED", tx)[0], 0x0000)
    expect(d.request_cancel(assoc, uid)[0], 0xC311, "COMPLETED")
    expect(d.request_cancel(assoc, new_uid())[0], 0xC307)


# ---- N-ACTION 3/4/5 and the action type / SOP class pairing -----------------------------------------

def subscription(ae: str | None = "WATCHER", lock: str | None = "FALSE", **keys) -> Dataset:
    info = Dataset()
    if ae is not None:
        info.ReceivingAE = ae
    if lock is not None:
        info.DeletionLock = lock
    for keyword, value in keys.items():
        setattr(info, keyword, value)
    return info


def test_subscription_actions_parse_their_arguments(assoc):
    uid = create(assoc)
    act = assoc.send_n_action
    expect(act(subscription(ae=None), 3, d.PUSH, uid, meta_uid=d.WATCH)[0], 0x0115,
           "Receiving AE")
    expect(act(subscription(lock="MAYBE"), 3, d.PUSH, uid, meta_uid=d.WATCH)[0], 0x0115,
           "Deletion Lock")
    expect(act(subscription(ae=None), 4, d.PUSH, uid, meta_uid=d.WATCH)[0], 0x0115)
    expect(act(subscription(ae=None), 5, d.PUSH, "1.2.840.10008.5.1.4.34.5",
               meta_uid=d.WATCH)[0], 0x0115)
    bad_filter = subscription(ScheduledProcedureStepStartDateTime="20261231-20260101")
    expect(act(bad_filter, 3, d.PUSH, "1.2.840.10008.5.1.4.34.5.1", meta_uid=d.WATCH)[0],
           0x0115, "range")


def test_subscription_actions_reach_the_core(assoc):
    """Well-formed subscribe/unsubscribe/suspend requests are the core's to decide (the events
    work answers them; until then C315). Never an adapter refusal, never a pynetdicom code."""
    uid = create(assoc)
    core_answers = {0x0000, 0xB301, 0xC307, 0xC308, 0xC314, 0xC315}
    requests = [
        (subscription(lock=None), 3, uid),  # Deletion Lock absent = FALSE
        (subscription(lock="TRUE"), 3, "1.2.840.10008.5.1.4.34.5"),
        (subscription(WorklistLabel="AI", ProcedureStepState="SCHEDULED"), 3,
         "1.2.840.10008.5.1.4.34.5.1"),
        (subscription(lock=None), 5, "1.2.840.10008.5.1.4.34.5"),
        (subscription(lock=None), 4, uid),
    ]
    for info, action, target in requests:
        status, _ = assoc.send_n_action(info, action, d.PUSH, target, meta_uid=d.WATCH)
        assert d.status_of(status) in core_answers, (action, hex(d.status_of(status)),
                                                     d.comment_of(status))


@pytest.mark.parametrize("context, action", [
    (d.PUSH, 1), (d.PUSH, 3), (d.PULL, 2), (d.PULL, 3), (d.WATCH, 1), (d.WATCH, 6),
    (d.WATCH, 0x7FFF), (d.PUSH, 99),
])
def test_action_type_not_offered_on_association_is_0123(assoc, gateway, context, action):
    uid = create(assoc)
    with d.association(gateway, contexts=[context]) as only:
        status, _ = only.send_n_action(subscription(), action, d.PUSH, uid, meta_uid=context)
        expect(status, 0x0123, f"Action Type {action}")
    assert get(assoc, uid).ProcedureStepState == "SCHEDULED"


def test_n_action_on_query_or_event_association_is_unrecognised(assoc, gateway):
    uid = create(assoc)
    with d.association(gateway, contexts=[d.QUERY, d.EVENT]) as only:
        for context in (d.QUERY, d.EVENT):
            status, _ = only.send_n_action(None, 2, d.PUSH, uid, meta_uid=context)
            expect(status, 0x0211)
    assert get(assoc, uid).ProcedureStepState == "SCHEDULED"


def test_request_cancel_on_watch_context(assoc):
    uid = create(assoc)
    expect(d.request_cancel(assoc, uid, meta_uid=d.WATCH)[0], 0x0000)


# ---- C-FIND --------------------------------------------------------------------------------------

def identifier(**keys) -> Dataset:
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def test_c_find_matches_like_rest_and_streams_pending_results(assoc):
    label = f"FIND-{new_uid()[-8:]}"
    uids = [create(assoc, label=label, start=f"2026112{i}080000", patient_name=name,
                   station=station)
            for i, (name, station) in enumerate([("Doe^Jane", "CT1"), ("Roe^Rick", "CT2"),
                                                 ("Doe^John", "CT1")])]
    claim(assoc, uids[2])
    status, results, _ = d.c_find(assoc, identifier(WorklistLabel=label, PatientName="",
                                                    TransactionUID=""))
    assert status == 0x0000
    assert [r.SOPInstanceUID for r in results] == uids  # stable order: start time, then UID
    assert all("TransactionUID" not in r for r in results)
    assert results[0].PatientName == "Doe^Jane"
    assert "ProcedureStepState" not in results[0]  # only what was asked for (+ the UID)

    def found(**keys):
        status, res, _ = d.c_find(assoc, identifier(WorklistLabel=label, **keys))
        assert status == 0x0000
        return [r.SOPInstanceUID for r in res]

    assert found(PatientName="doe*") == [uids[0], uids[2]]  # PN: case-insensitive
    assert found(ProcedureStepState="SCHEDULED") == uids[:2]
    assert found(ScheduledProcedureStepStartDateTime="20261121000000-20261122235959") == uids[1:]
    station = Dataset()
    station.CodeValue = "CT1"
    assert found(ScheduledStationNameCodeSequence=[station]) == [uids[0], uids[2]]
    assert sorted(found(SOPInstanceUID="\\".join(uids[:2]))) == sorted(uids[:2])
    assert found(PatientID="NOBODY") == []


def test_c_find_on_watch_and_query_contexts_and_not_on_push(assoc, gateway):
    uid = create(assoc)
    for model in (d.WATCH, d.QUERY, d.PULL):
        status, results, _ = d.c_find(assoc, identifier(SOPInstanceUID=uid), model)
        assert status == 0x0000 and [r.SOPInstanceUID for r in results] == [uid]
    with d.association(gateway, contexts=[d.PUSH]) as push_only:
        status, results, final = d.c_find(push_only, identifier(SOPInstanceUID=uid), d.PUSH)
    assert status == 0x0211 and not results
    assert "C-FIND" in final.ErrorComment


def test_c_find_with_push_uid_on_pull_context(assoc):
    uid = create(assoc)
    req = C_FIND()
    req.MessageID = 12
    req.AffectedSOPClassUID = d.PUSH
    req.Priority = 2
    req.Identifier = d.encoded(identifier(SOPInstanceUID=uid, ProcedureStepState=""))
    rsp = d.raw_request(assoc, req, d.PULL)
    assert rsp.Status == 0xFF00
    final = assoc.dimse.get_msg(block=True)[1]
    assert final.Status == 0x0000


def test_c_find_identifier_that_does_not_match_the_sop_class_is_a900(assoc):
    status, results, final = d.c_find(assoc, identifier(QueryRetrieveLevel="STUDY",
                                                        PatientID=""))
    assert status == 0xA900 and not results
    assert "QueryRetrieveLevel" in final.ErrorComment
    assert final.ErrorComment == error_comment(final.ErrorComment)


def test_c_find_invalid_value_is_c000_with_comment(assoc):
    status, results, final = d.c_find(
        assoc, identifier(ScheduledProcedureStepStartDateTime="20261231-20260101"))
    assert status == 0xC000 and not results
    assert "range" in final.ErrorComment


@pytest.mark.filterwarnings("ignore::UserWarning")  # invalid on purpose
def test_c_find_never_uses_pynetdicom_codes(assoc):
    bad = [identifier(SOPInstanceUID="not-a-uid"),
           identifier(ScheduledProcedureStepPriority="HIGH\\LOW\\MEDIUM", PatientID="*x*")]
    for ident in bad:
        status, results, final = d.c_find(assoc, ident)
        # conformance §9: an invalid value (a UID that is not one; several values for a key
        # that takes one) → 0xC000 with an Error Comment
        assert status == 0xC000 and not results, hex(status)
        assert final.ErrorComment


def test_c_find_cancel_stops_with_fe00(gateway, assoc):
    label = f"CANCEL-{new_uid()[-8:]}"
    total = 240

    def create_rest(i):
        uid = new_uid()
        status, _ = rest_json(gateway, "POST", f"/workitems?{uid}", workitem(label=label))
        assert status == 201

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create_rest, range(total)))
    context = assoc._get_valid_context(d.PULL, "", "scu")
    results, final = [], None
    for status, ds in assoc.send_c_find(identifier(WorklistLabel=label), d.PULL, msg_id=77):
        if status.Status == 0xFF00:
            results.append(ds)
            if len(results) == 1:
                assoc.send_c_cancel(77, context_id=context.context_id)
        else:
            final = status
    assert final is not None and final.Status == 0xFE00
    assert 1 <= len(results) < total
    # The association is still in step: the next C-FIND sees all of them.
    status, results, _ = d.c_find(assoc, identifier(WorklistLabel=label))
    assert status == 0x0000 and len(results) == total


# ---- N-EVENT-REPORT from a peer ------------------------------------------------------------------

def test_incoming_n_event_report_is_refused(assoc):
    info = Dataset()
    info.ProcedureStepState = "SCHEDULED"
    info.InputReadinessState = "READY"
    status, _ = assoc.send_n_event_report(info, 1, d.PUSH, new_uid(), meta_uid=d.EVENT)
    expect(status, 0x0211)


# ---- logs ----------------------------------------------------------------------------------------

def test_failures_are_logged_with_uid_ae_and_message_id(gateway, assoc):
    uid = new_uid()
    expect(d.n_get(assoc, uid)[0], 0xC307)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for line in gateway.log_path.read_text().splitlines():
            if uid in line and '"gateway.dimse"' in line:
                entry = json.loads(line)
                assert entry["ae"] == "TEST_SCU" and entry["msg_id"] == 1
                assert entry["status"] == "0xC307" and entry["op"] == "N-GET"
                return
        time.sleep(0.1)
    pytest.fail("no gateway.dimse log line for the refused N-GET")


def test_error_comment_is_a_valid_lo():
    long = "ScheduledStationNameCodeSequence[0] > CodeValue (0008,0100): a code item needs " * 2
    comment = error_comment(long + "ü\\x")
    assert len(comment) <= 64 and comment.endswith("...")
    assert comment.isascii() and "\\" not in comment
    assert error_comment("short") == "short"


# ---- configuration: allowlist, association limit, timeouts, Redis down ------------------------------

@pytest.fixture(scope="module")
def strict_gateway(tmp_path_factory):
    proc = GatewayProcess(tmp_path_factory.mktemp("strict"), extra={
        "dimse": {"allowed_calling_aes": ["TEST_SCU", "GOOD_SCU"], "max_associations": 2,
                  "request_timeout": 1.0},
        # A DIMSE subscriber with an address (nobody listens there: events just wait).
        "peers": {"WATCHER": {"host": "127.0.0.1", "port": free_port()}}}).start()
    yield proc
    proc.kill()


async def test_calling_ae_allowlist(strict_gateway):
    bad = d.associate(strict_gateway, ae_title="BAD_SCU")
    assert not bad.is_established
    if bad.is_rejected:  # (pynetdicom 3.0.4 on a busy machine may abort its side after the RJ)
        assert bad.acceptor.primitive.result_source == 1  # service-user
        assert bad.acceptor.primitive.diagnostic == 3  # calling AE title not recognised
    await strict_gateway.wait_for_log("association rejected: calling AE title not recognised",
                                      ae="BAD_SCU")
    with d.association(strict_gateway, ae_title="GOOD_SCU") as a:
        assert a.send_c_echo().Status == 0


def test_max_associations(strict_gateway):
    with d.association(strict_gateway) as a1, d.association(strict_gateway) as a2:
        third = d.associate(strict_gateway)
        d.assert_rejected(third, strict_gateway, (2, 3, 2), "local limit exceeded", "TEST_SCU")
        assert a1.send_c_echo().Status == 0 and a2.send_c_echo().Status == 0
    deadline = time.monotonic() + 5  # released associations free their slots
    while True:
        again = d.associate(strict_gateway)
        if again.is_established or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert again.is_established
    assert again.send_c_echo().Status == 0
    again.release()


def test_subscribe_unsubscribe_suspend_over_dimse(strict_gateway):
    with d.association(strict_gateway) as a:
        uid = create(a)
        act = a.send_n_action
        expect(act(subscription(lock="TRUE"), 3, d.PUSH, uid, meta_uid=d.WATCH)[0], 0x0000)
        expect(act(subscription(ae="NOBODY"), 3, d.PUSH, uid, meta_uid=d.WATCH)[0], 0xC308,
               "NOBODY")
        # the filtered UID without matching keys would be a subscription to everything
        expect(act(subscription(), 3, d.PUSH, "1.2.840.10008.5.1.4.34.5.1",
                   meta_uid=d.WATCH)[0], 0x0115, "needs a filter")
        filtered = subscription(WorklistLabel="AI", ProcedureStepState="SCHEDULED")
        expect(act(filtered, 3, d.PUSH, "1.2.840.10008.5.1.4.34.5.1", meta_uid=d.WATCH)[0],
               0x0000)
        expect(act(subscription(lock=None), 5, d.PUSH, "1.2.840.10008.5.1.4.34.5.1",
                   meta_uid=d.WATCH)[0], 0x0000)
        expect(act(subscription(lock=None), 5, d.PUSH, uid, meta_uid=d.WATCH)[0], 0xC314)
        expect(act(subscription(lock=None), 4, d.PUSH, uid, meta_uid=d.WATCH)[0], 0x0000)
        expect(act(subscription(lock=None), 4, d.PUSH, "1.2.840.10008.5.1.4.34.5.1",
                   meta_uid=d.WATCH)[0], 0x0000)


def test_slow_store_times_out_with_0110_and_association_lives(strict_gateway):
    with d.association(strict_gateway) as a:
        uid = create(a)
        client = redis.Redis.from_url(strict_gateway.redis_url)
        try:
            paused = time.monotonic()
            client.execute_command("CLIENT", "PAUSE", 4000, "ALL")
            expect(d.n_get(a, uid)[0], 0x0110, "did not answer")  # request_timeout: 1 s
            status, results, final = d.c_find(a, identifier(SOPInstanceUID=uid))
            assert status == 0xC000 and "did not answer" in final.ErrorComment
            assert time.monotonic() - paused < 3.9, "the answers must not wait for Redis"
        finally:
            time.sleep(max(0.0, 4.1 - (time.monotonic() - paused)))
            client.close()
        assert get(a, uid).SOPInstanceUID == uid


def test_redis_down_is_0110_and_the_process_stays_up(strict_gateway):
    """Last test on this gateway: it shuts its Redis down."""
    with d.association(strict_gateway) as a:
        uid = create(a)
        client = redis.Redis.from_url(strict_gateway.redis_url)
        try:
            client.shutdown(nosave=True)
        except redis.ConnectionError:
            pass
        time.sleep(0.3)
        for _ in range(2):
            status, _ = d.n_get(a, uid)
            assert d.status_of(status) == 0x0110
            comment = d.comment_of(status)
            assert "unavailable" in comment or "did not answer" in comment
        expect(d.n_create(a, workitem(), new_uid())[0], 0x0110)
        assert a.send_c_echo().Status == 0
    assert strict_gateway.proc.poll() is None
    assert health(strict_gateway)["components"]["dimse"] == "up"


# ---- the pydicom <-> canonical conversion at the edge (no gateway needed) ------------------------

def test_convert_fixes_pydicom_quirks():
    from gateway.dimse import convert

    ds = Dataset()
    ds.add_new(0x00000000, "UL", 4)  # a command group length: never part of a workitem
    ds.add_new(0x00100000, "UL", 10)  # a group length
    ds.PatientName = "=山田^太郎"  # Ideographic group only
    ds.AdmittingDiagnosesDescription = ["a", "", "b"]
    ds.ScheduledStationNameCodeSequence = []
    item = Dataset()
    item.CodeValue = "X"
    item.InputReadinessState = ""
    ds.ScheduledWorkitemCodeSequence = [item]
    canonical = convert.identifier_to_canonical(ds)
    assert canonical == {
        "00100010": {"vr": "PN", "Value": [{"Ideographic": "山田^太郎"}]},
        "00081080": {"vr": "LO", "Value": ["a", None, "b"]},
        "00404025": {"vr": "SQ"},
        "00404018": {"vr": "SQ", "Value": [{"00080100": {"vr": "SH", "Value": ["X"]},
                                            "00404041": {"vr": "CS"}}]},
    }
    assert list(convert.to_canonical(ds)) == sorted(canonical)  # normalize: sorted keys


def test_convert_outbound_utf8_and_ds():
    from gateway.dimse import convert
    from pynetdicom.dsutils import decode, encode

    canonical = {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Müller^Jörg"}]},
                 "00741002": {"vr": "SQ", "Value": [
                     {"00741004": {"vr": "DS", "Value": [33.333333333333336]}}]},
                 "00741200": {"vr": "CS", "Value": ["HIGH"]}}
    out = convert.from_canonical(canonical)
    assert out.SpecificCharacterSet == "ISO_IR 192"
    progress = out.ProcedureStepProgressInformationSequence[0].ProcedureStepProgress
    assert len(str(progress)) <= 16
    back = decode(BytesIO(encode(out, False, True)), False, True)
    assert str(back.PatientName) == "Müller^Jörg"
    ascii_only = convert.from_canonical({"00741200": {"vr": "CS", "Value": ["HIGH"]}})
    assert "SpecificCharacterSet" not in ascii_only
