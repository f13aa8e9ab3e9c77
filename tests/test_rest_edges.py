"""UPS-RS at its edges (issue 16 "UPS-RS"): search keys the gateway does not match on, the raw
query string (+, escapes that are not UTF-8), limit, the matching parameters, a filtered global
subscription without a filter, a Request Cancellation naming nobody, sequence items that are not
JSON objects. Real HTTP against a running gateway."""

from __future__ import annotations

import pytest

from tests.event_receiver import (CANCEL_REQUESTED, FILTERED, GLOBAL, Ups, WsListener,
                                  frame_value, unassigned)
from tests.helpers import element, new_uid, workitem
from tests.test_rest_api import warning_text

JSON = {"Content-Type": "application/dicom+json"}


def warnings(gateway, response) -> list[str]:
    prefix = f"299 {gateway.base}: "
    return [w.removeprefix(prefix) for w in response.headers.getall("Warning", [])]


async def test_any_dictionary_attribute_is_matched_and_what_cannot_be_is_ignored_with_a_warning(
        gateway, http):
    """Not only the UPS IOD's attributes: any attribute of the data dictionary is a matching key
    (as in C-FIND); what cannot be matched — a private or unknown tag, a binary VR, the
    Transaction UID — is ignored with a Warning, not refused."""
    ups = Ups(http, gateway.base)
    pid = f"IGN-{new_uid()[-10:]}"
    ct = await ups.create(workitem(patient_id=pid, **{"00080060": element("CS", "CT")}))
    await ups.create(workitem(patient_id=pid, **{"00080060": element("CS", "MR")}))
    await ups.create(workitem(patient_id=pid))  # no Modality: does not match a value
    query = f"PatientID={pid}&Modality=CT&00091010=x&7FE00010=AAAA&TransactionUID=1.2.3"
    async with http.get(f"{gateway.base}/workitems?{query}") as r:
        assert r.status == 200, (await r.text())[:300]
        [found] = await r.json()
        [text] = warnings(gateway, r)
    assert found["00080018"]["Value"] == [ct]
    assert found["00080060"]["Value"] == ["CT"]  # a matching key is returned
    assert "00081195" not in found
    assert text == ("The following attributes are not supported as matching keys; they were "
                    "ignored: 00091010, 7FE00010, TransactionUID")
    async with http.get(f"{gateway.base}/workitems?PatientID={pid}&"
                        "InstitutionName=Nowhere") as r:
        assert r.status == 204  # matched (nothing has it), not ignored
    # only a malformed parameter is refused
    async with http.get(f"{gateway.base}/workitems?PatientID={pid}&"
                        "ScheduledProcedureStepStartDateTime=2026-11-25") as r:
        assert r.status == 400


async def test_an_unencoded_plus_in_a_date_time_is_a_plus_and_escapes_must_be_utf8(gateway, http):
    ups = Ups(http, gateway.base)
    pid = f"PLUS-{new_uid()[-10:]}"
    uid = await ups.create(workitem(patient_id=pid, start="20261125100000"))
    # 11:00 at +01:00 is the stored 10:00 (read at the configured +0000)
    async with http.get(f"{gateway.base}/workitems?PatientID={pid}&"
                        "ScheduledProcedureStepStartDateTime=20261125110000+0100") as r:
        assert r.status == 200, warnings(gateway, r)
        assert [ds["00080018"]["Value"][0] for ds in await r.json()] == [uid]
    async with http.get(f"{gateway.base}/workitems?PatientID={pid}&"
                        "ScheduledProcedureStepStartDateTime=20261125110000%2B0100") as r:
        assert r.status == 200  # the encoded form, as before
    async with http.get(f"{gateway.base}/workitems?PatientID={pid}&TimezoneOffsetFromUTC=+0100&"
                        "ScheduledProcedureStepStartDateTime=20261125110000") as r:
        assert r.status == 200, warnings(gateway, r)
        assert [ds["00080018"]["Value"][0] for ds in await r.json()] == [uid]
    # elsewhere + is the space of form encoding (URLSearchParams, requests, aiohttp write it)
    async with http.get(f"{gateway.base}/workitems?PatientID={pid}&"
                        "ProcedureStepState=SCHEDULED&ProcedureStepLabel=AI+analysis") as r:
        assert r.status == 200
        assert [ds["00080018"]["Value"][0] for ds in await r.json()] == [uid]
    for query in ("PatientID=%FF%FE", "PatientName=M%FCller"):  # Latin-1 bytes, not UTF-8
        async with http.get(f"{gateway.base}/workitems?{query}") as r:
            assert r.status == 400
            assert "not valid UTF-8" in warning_text(gateway, r.headers)
    async with http.get(f"{gateway.base}/workitems?PatientName=M%C3%BCller") as r:
        assert r.status in (200, 204)  # UTF-8: fine
    r = await ups.subscribe(FILTERED, "PLUSAE", query="PatientID=%FF", expect=400)
    assert "not valid UTF-8" in warning_text(gateway, r.headers)


async def test_limit_zero_is_refused_and_a_capped_limit_is_warned_of(gateway, http):
    async with http.get(f"{gateway.base}/workitems?limit=0") as r:
        assert r.status == 400
        assert "limit" in warning_text(gateway, r.headers)
    ups = Ups(http, gateway.base)
    pid = f"LIM-{new_uid()[-10:]}"
    await ups.create(workitem(patient_id=pid))
    async with http.get(f"{gateway.base}/workitems?PatientID={pid}&limit=5000") as r:
        assert r.status == 200
        assert warnings(gateway, r) == ["limit 5000 exceeds the largest page of 1000 results; "
                                        "1000 are returned per page"]


async def test_matching_parameters_warn_where_unsupported(gateway, http):
    ups = Ups(http, gateway.base)
    pid = f"MVM-{new_uid()[-10:]}"
    await ups.create(workitem(patient_id=pid, patient_name="Müller^Jürgen"))
    async with http.get(f"{gateway.base}/workitems?PatientID={pid}&multiplevaluematching=true"
                        "&emptyvaluematching=true&fuzzymatching=true") as r:
        assert r.status == 200
        assert warnings(gateway, r) == [
            "The multiplevaluematching parameter is not supported. Multiple Value Matching has "
            "not been performed.",
            "The emptyvaluematching parameter is not supported. Empty Value Matching has not "
            "been performed."]  # fuzzy matching is supported (person names): no warning
    async with http.get(f"{gateway.base}/workitems?PatientID={pid}&multiplevaluematching=false"
                        "&fuzzymatching=true&PatientName=muller") as r:
        assert r.status == 200 and warnings(gateway, r) == []
    async with http.get(f"{gateway.base}/workitems?multiplevaluematching=yes") as r:
        assert r.status == 400


async def test_a_filtered_global_subscription_needs_a_filter(gateway, http):
    ups = Ups(http, gateway.base)
    r = await ups.subscribe(FILTERED, "NOFILTER", expect=400)
    assert "needs a filter" in warning_text(gateway, r.headers)
    r = await ups.subscribe(FILTERED, "NOFILTER", query="filter=", expect=400)
    await ups.subscribe(FILTERED, "NOFILTER", query="WorklistLabel=AI")
    await ups.unsubscribe(GLOBAL, "NOFILTER")


async def test_a_cancel_request_naming_nobody_carries_the_default_requesting_ae(gateway, http):
    ups = Ups(http, gateway.base)
    ae = f"CR{new_uid()[-8:]}"
    uid = await ups.create(unassigned())
    await ups.subscribe(uid, ae)
    listener = await WsListener.open(http, ups.ws_url(ae))
    try:
        await ups.claim(uid)
        await ups.cancel_request(uid)  # no /{requester}, no ?requester=
        [frame] = await listener.wait(1, uid=uid, event_type=CANCEL_REQUESTED)
        assert frame_value(frame, "00741236") == "UPSRS_CLIENT"  # rest.default_requester
        await ups.cancel_request(uid, "DESK1")
        [_, named] = await listener.wait(2, uid=uid, event_type=CANCEL_REQUESTED)
        assert frame_value(named, "00741236") == "DESK1"
    finally:
        await listener.close()
    r = await ups.cancel_request(uid, "A" * 17, expect=400)
    assert "requester" in warning_text(gateway, r.headers)


@pytest.mark.parametrize("item", [[], "x", None, 7, ["nested"]])
async def test_a_sequence_item_that_is_not_an_object_is_400(gateway, http, item):
    ds = workitem()
    ds["00404025"] = {"vr": "SQ", "Value": [item]}
    uid = new_uid()
    async with http.post(f"{gateway.base}/workitems?{uid}", json=ds, headers=JSON) as r:
        assert r.status == 400
        assert "a sequence item must be a JSON object" in warning_text(gateway, r.headers)
    async with http.get(f"{gateway.base}/workitems/{uid}") as r:
        assert r.status == 404  # nothing stored
    ds["00404025"] = {"vr": "SQ", "Value": [{}]}  # an empty item is an object: fine
    async with http.post(f"{gateway.base}/workitems?{new_uid()}", json=ds, headers=JSON) as r:
        assert r.status == 201, warning_text(gateway, r.headers)
