"""UPS-RS over HTTP against a real gateway process: the workflow, every error status with its
Warning header, search paging, and garbage that must never produce a 500 or store anything."""

from __future__ import annotations

import json
import re

import pytest

from tests.helpers import completion_payload, element, new_uid, state_payload, workitem

JSON = {"Content-Type": "application/dicom+json"}
WARNING = re.compile(r"^299 (?P<service>\S+): (?P<text>\S.*)$")


def warning_text(gateway, headers) -> str:
    """The text of a response's Warning header, checking its form ``299 <service>: text``."""
    header = headers.get("Warning")
    assert header, f"no Warning header in {dict(headers)}"
    match = WARNING.match(header)
    assert match, header
    assert match.group("service") == gateway.base
    return match.group("text")


async def create(http, gateway, payload=None, uid=None, expect=201):
    uid = uid or new_uid()
    async with http.post(f"{gateway.base}/workitems?workitem={uid}",
                         data=json.dumps(payload or workitem()), headers=JSON) as r:
        assert r.status == expect, await r.text()
    return uid


async def put_state(http, gateway, uid, state, tx=None):
    async with http.put(f"{gateway.base}/workitems/{uid}/state",
                        data=json.dumps(state_payload(state, tx)), headers=JSON) as r:
        return r.status, await r.text(), r.headers.copy()


async def claim(http, gateway, uid, tx):
    status, text, _ = await put_state(http, gateway, uid, "IN PROGRESS", tx)
    assert status == 200, text


async def update(http, gateway, uid, payload, tx=None):
    url = f"{gateway.base}/workitems/{uid}" + (f"?transaction-uid={tx}" if tx else "")
    async with http.post(url, data=json.dumps(payload), headers=JSON) as r:
        return r.status, await r.text(), r.headers.copy()


async def retrieve(http, gateway, uid):
    async with http.get(f"{gateway.base}/workitems/{uid}") as r:
        assert r.status == 200, await r.text()
        assert r.content_type == "application/dicom+json"
        [ds] = await r.json(content_type=None)
        return ds


def error_status(text: str) -> str:
    return json.loads(text).get("status", "")


async def in_progress(http, gateway, *, completable=True):
    uid, tx = await create(http, gateway), new_uid()
    await claim(http, gateway, uid, tx)
    if completable:
        status, text, _ = await update(http, gateway, uid, completion_payload(), tx)
        assert status == 200, text
    return uid, tx


async def completed(http, gateway):
    uid, tx = await in_progress(http, gateway)
    status, text, _ = await put_state(http, gateway, uid, "COMPLETED", tx)
    assert status == 200, text
    return uid, tx


async def canceled(http, gateway):
    uid = await create(http, gateway)
    async with http.post(f"{gateway.base}/workitems/{uid}/cancelrequest") as r:
        assert r.status == 202, await r.text()
    return uid


# ---- the workflow ----------------------------------------------------------------------

async def test_full_workflow(gateway, http):
    pid = f"WF-{new_uid()[-12:]}"
    uid = await create(http, gateway, workitem(patient_id=pid))
    async with http.get(f"{gateway.base}/workitems",
                        params={"PatientID": pid, "ProcedureStepState": "SCHEDULED"}) as r:
        assert r.status == 200
        [found] = await r.json(content_type=None)
        assert found["00080018"]["Value"] == [uid]
        assert found["00741000"]["Value"] == ["SCHEDULED"]
    tx = new_uid()
    await claim(http, gateway, uid, tx)
    progress = {"00741002": element("SQ", {"00741004": element("DS", 50),
                                           "00741006": element("ST", "half way")})}
    status, text, _ = await update(http, gateway, uid, progress, tx)
    assert status == 200, text
    status, text, _ = await update(http, gateway, uid, completion_payload(), tx)
    assert status == 200, text
    ds = await retrieve(http, gateway, uid)
    assert ds["00741000"]["Value"] == ["IN PROGRESS"]
    assert ds["00741002"]["Value"][0]["00741004"]["Value"] == [50]
    assert "00081195" not in ds
    status, text, headers = await put_state(http, gateway, uid, "COMPLETED", tx)
    assert status == 200, text
    assert "Warning" not in headers
    ds = await retrieve(http, gateway, uid)
    assert ds["00741000"]["Value"] == ["COMPLETED"]
    assert "00081195" not in ds
    async with http.get(f"{gateway.base}/workitems",
                        params={"PatientID": pid, "ProcedureStepState": "COMPLETED"}) as r:
        assert r.status == 200
        assert [d["00080018"]["Value"][0] for d in await r.json(content_type=None)] == [uid]
    async with http.get(f"{gateway.base}/workitems",
                        params={"PatientID": pid, "ProcedureStepState": "SCHEDULED"}) as r:
        assert r.status == 204


async def test_cancel_request_on_scheduled_cancels_it(gateway, http):
    uid = await create(http, gateway)
    reason = {"00741238": element("LT", "ordered twice")}
    async with http.post(f"{gateway.base}/workitems/{uid}/cancelrequest",
                         data=json.dumps(reason), headers=JSON) as r:
        assert r.status == 202, await r.text()
        assert "Warning" not in r.headers
    ds = await retrieve(http, gateway, uid)
    assert ds["00741000"]["Value"] == ["CANCELED"]
    [progress] = ds["00741002"]["Value"]
    assert progress["0074100E"]["Value"][0]["00080100"]["Value"] == ["110513"]
    assert progress["0074100E"]["Value"][0]["00080102"]["Value"] == ["DCM"]
    assert progress["00404052"]["Value"][0]
    assert progress["00741238"]["Value"] == ["ordered twice"]


async def test_cancel_request_without_a_body(gateway, http):
    uid = await create(http, gateway)
    async with http.post(f"{gateway.base}/workitems/{uid}/cancelrequest") as r:
        assert r.status == 202, await r.text()
    assert (await retrieve(http, gateway, uid))["00741000"]["Value"] == ["CANCELED"]


async def test_cancel_request_on_in_progress_without_subscribers_is_c312(gateway, http):
    uid, _ = await in_progress(http, gateway)
    async with http.post(f"{gateway.base}/workitems/{uid}/cancelrequest") as r:
        assert r.status == 409
        assert error_status(await r.text()) == "0xC312"
        assert warning_text(gateway, r.headers)
    assert (await retrieve(http, gateway, uid))["00741000"]["Value"] == ["IN PROGRESS"]


async def test_canceled_through_change_state_fills_the_reason_with_a_warning(gateway, http):
    uid, tx = await in_progress(http, gateway, completable=False)
    status, text, headers = await put_state(http, gateway, uid, "CANCELED", tx)
    assert status == 200, text
    assert "Warning" in headers and WARNING.match(headers["Warning"])
    ds = await retrieve(http, gateway, uid)
    assert ds["00741000"]["Value"] == ["CANCELED"]
    assert ds["00741002"]["Value"][0]["0074100E"]["Value"][0]["00080100"]["Value"] == ["110513"]


# ---- error statuses ----------------------------------------------------------------------

async def _post_create(http, gateway, body, headers=JSON, params=""):
    async with http.post(f"{gateway.base}/workitems{params}", data=body, headers=headers) as r:
        return r.status, await r.text(), r.headers.copy()


async def test_malformed_json_is_400(gateway, http):
    uid = new_uid()
    status, text, headers = await _post_create(http, gateway, '{"00741000": {"vr": "CS", ',
                                               params=f"?workitem={uid}")
    assert status == 400
    assert "JSON" in json.loads(text)["error"]
    assert WARNING.match(headers["Warning"])
    async with http.get(f"{gateway.base}/workitems/{uid}") as r:
        assert r.status == 404


@pytest.mark.parametrize("tag,elem,name", [
    ("00100020", {"vr": "DA", "Value": ["20260101"]}, "PatientID"),           # wrong VR
    ("0020000D", {"vr": "UI", "Value": ["1.2.abc"]}, "StudyInstanceUID"),     # invalid UID
    ("00100020", {"vr": "LO", "Value": [12345]}, "PatientID"),                # number for LO
    ("00404005", {"vr": "DT", "Value": ["2026-11-25"]}, "ScheduledProcedureStepStartDateTime"),
    ("00741200", {"vr": "CS", "Value": ["URGENT"]}, "ScheduledProcedureStepPriority"),
    ("00081195", {"vr": "UI", "Value": ["1.2.3"]}, "TransactionUID"),
])
async def test_invalid_payloads_are_400_naming_the_attribute(gateway, http, tag, elem, name):
    payload = workitem()
    payload[tag] = elem
    uid = new_uid()
    status, text, headers = await _post_create(http, gateway, json.dumps(payload),
                                               params=f"?workitem={uid}")
    assert status == 400, text
    assert name in json.loads(text)["error"]
    assert name in warning_text(gateway, headers)
    async with http.get(f"{gateway.base}/workitems/{uid}") as r:
        assert r.status == 404


async def test_missing_type1_attribute_is_400(gateway, http):
    payload = workitem()
    del payload["00741204"]
    status, text, _ = await _post_create(http, gateway, json.dumps(payload),
                                         params=f"?workitem={new_uid()}")
    assert status == 400
    body = json.loads(text)
    assert "ProcedureStepLabel" in body["error"] and body["status"] == "0x0120"


async def test_create_not_scheduled_is_400_c309(gateway, http):
    payload = workitem()
    payload["00741000"] = element("CS", "IN PROGRESS")
    status, text, _ = await _post_create(http, gateway, json.dumps(payload),
                                         params=f"?workitem={new_uid()}")
    assert status == 400 and error_status(text) == "0xC309"


async def test_body_over_the_limit_is_413(gateway, http):
    uid = new_uid()
    payload = workitem(**{"00400400": element("LT", "x" * 10000)})
    body = json.dumps([payload] * 160)  # ~1.6 MB > 1 MiB default
    assert 1.4 * 2**20 < len(body) < 1.7 * 2**20
    status, text, headers = await _post_create(http, gateway, body, params=f"?workitem={uid}")
    assert status == 413
    assert WARNING.match(headers["Warning"])

    async def chunks():
        for i in range(0, len(body), 65536):
            yield body[i:i + 65536].encode()
    async with http.post(f"{gateway.base}/workitems?workitem={uid}", data=chunks(),
                         headers=JSON) as r:
        assert r.status == 413
    async with http.get(f"{gateway.base}/workitems/{uid}") as r:
        assert r.status == 404


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", "application/dicom",
                                          "multipart/related; type=\"application/dicom\""])
async def test_wrong_content_type_is_415(gateway, http, content_type):
    uid = new_uid()
    status, text, headers = await _post_create(http, gateway, json.dumps(workitem()),
                                               headers={"Content-Type": content_type},
                                               params=f"?workitem={uid}")
    assert status == 415, text
    assert WARNING.match(headers["Warning"])
    async with http.get(f"{gateway.base}/workitems/{uid}") as r:
        assert r.status == 404


async def test_unknown_workitem_is_404_everywhere(gateway, http):
    uid = new_uid()
    base = f"{gateway.base}/workitems/{uid}"
    requests = [("GET", base, None), ("POST", base, {"00741204": element("LO", "x")}),
                ("PUT", f"{base}/state", state_payload("IN PROGRESS", new_uid())),
                ("POST", f"{base}/cancelrequest", None)]
    for method, url, payload in requests:
        async with http.request(method, url, headers=JSON,
                                data=json.dumps(payload) if payload else None) as r:
            assert r.status == 404, (method, url, await r.text())
            assert error_status(await r.text()) == "0xC307"
            assert warning_text(gateway, r.headers)


async def test_duplicate_create_is_409(gateway, http):
    """Another workitem under an existing UID (the same content again is a repeated create:
    tests/test_repeated_create.py, tests/test_unknown_outcome.py)."""
    uid = await create(http, gateway)
    status, text, headers = await _post_create(http, gateway,
                                               json.dumps(workitem(label="OTHER")),
                                               params=f"?workitem={uid}")
    assert status == 409, text
    assert error_status(text) == "0x0111"
    assert WARNING.match(headers["Warning"])


async def test_claim_of_a_claimed_item_is_409_c302(gateway, http):
    uid, tx = await in_progress(http, gateway)
    status, text, headers = await put_state(http, gateway, uid, "IN PROGRESS", new_uid())
    assert status == 409 and error_status(text) == "0xC302"
    assert WARNING.match(headers["Warning"])
    # the first claimant still owns it
    status, text, _ = await update(http, gateway, uid, {"00741204": element("LO", "x")}, tx)
    assert status == 200, text


async def test_claim_without_transaction_uid_is_400_missing(gateway, http):
    uid = await create(http, gateway)
    status, text, headers = await put_state(http, gateway, uid, "IN PROGRESS")
    assert status == 400 and error_status(text) == "0xC301"
    assert warning_text(gateway, headers) == "The Transaction UID is missing."
    assert (await retrieve(http, gateway, uid))["00741000"]["Value"] == ["SCHEDULED"]


async def test_wrong_transaction_uid_on_update_and_complete_is_400_incorrect(gateway, http):
    uid, tx = await in_progress(http, gateway)
    status, text, headers = await update(http, gateway, uid, {"00741204": element("LO", "x")},
                                         new_uid())
    assert status == 400 and error_status(text) == "0xC301"
    assert warning_text(gateway, headers) == \
        "The target URI did not reference a claimed Workitem. The Transaction UID is incorrect."
    status, text, headers = await put_state(http, gateway, uid, "COMPLETED", new_uid())
    assert status == 400 and error_status(text) == "0xC301"
    assert warning_text(gateway, headers) == "The Transaction UID is incorrect."
    status, text, headers = await update(http, gateway, uid, {"00741204": element("LO", "x")})
    assert status == 400
    assert warning_text(gateway, headers) == \
        "The target URI did not reference a claimed Workitem. The Transaction UID is missing."
    ds = await retrieve(http, gateway, uid)
    assert ds["00741000"]["Value"] == ["IN PROGRESS"]
    assert ds["00741204"]["Value"] == ["AI analysis"]


async def test_update_of_a_completed_or_canceled_workitem_is_400_c300(gateway, http):
    """PS3.18 §11.6.2: an Update of a COMPLETED or CANCELED workitem fails with 400, and the
    Warning is Update's own text."""
    uid, tx = await completed(http, gateway)
    status, text, headers = await update(http, gateway, uid, {"00741204": element("LO", "x")},
                                         tx)
    assert status == 400 and error_status(text) == "0xC300"
    assert warning_text(gateway, headers).startswith(
        "The submitted request is inconsistent with the current state of the Workitem.")
    status, text, _ = await update(http, gateway, uid, {"00741204": element("LO", "x")})
    assert status == 400 and error_status(text) == "0xC300"
    uid = await canceled(http, gateway)
    status, text, headers = await update(http, gateway, uid, {"00741204": element("LO", "x")})
    assert status == 400 and error_status(text) == "0xC300"
    assert "CANCELED" in warning_text(gateway, headers)


async def test_update_of_a_scheduled_workitem_with_a_transaction_uid_is_409_c310(gateway, http):
    uid = await create(http, gateway)
    status, text, headers = await update(http, gateway, uid, {"00741204": element("LO", "x")},
                                         new_uid())
    assert status == 409 and error_status(text) == "0xC310"
    assert warning_text(gateway, headers).startswith(
        "The submitted request is inconsistent with the current state of the Workitem.")
    status, text, _ = await update(http, gateway, uid, {"00741204": element("LO", "x")})
    assert status == 200, text
    assert (await retrieve(http, gateway, uid))["00741204"]["Value"] == ["x"]


async def test_update_of_a_patient_attribute_is_400_naming_it(gateway, http):
    uid, tx = await in_progress(http, gateway)
    status, text, headers = await update(
        http, gateway, uid, {"00100010": element("PN", {"Alphabetic": "X^Y"})}, tx)
    assert status == 400 and error_status(text) == "0x0106"
    assert "PatientName" in warning_text(gateway, headers)


async def test_scheduled_to_completed_is_409_c310(gateway, http):
    uid = await create(http, gateway)
    for state in ("COMPLETED", "CANCELED"):
        status, text, headers = await put_state(http, gateway, uid, state, new_uid())
        assert status == 409 and error_status(text) == "0xC310"
        assert warning_text(gateway, headers)
    assert (await retrieve(http, gateway, uid))["00741000"]["Value"] == ["SCHEDULED"]


async def test_change_to_scheduled_is_409_c303(gateway, http):
    scheduled = await create(http, gateway)
    claimed, tx = await in_progress(http, gateway)
    for uid in (scheduled, claimed):
        status, text, headers = await put_state(http, gateway, uid, "SCHEDULED", tx)
        assert status == 409 and error_status(text) == "0xC303"
        assert warning_text(gateway, headers)


async def test_complete_without_final_state_attributes_is_409_c304(gateway, http):
    uid, tx = await in_progress(http, gateway, completable=False)
    status, text, headers = await put_state(http, gateway, uid, "COMPLETED", tx)
    assert status == 409 and error_status(text) == "0xC304"
    assert "UnifiedProcedureStepPerformedProcedureSequence" in warning_text(gateway, headers)
    assert (await retrieve(http, gateway, uid))["00741000"]["Value"] == ["IN PROGRESS"]


async def test_already_completed_is_200_with_warning_b306(gateway, http):
    uid, tx = await completed(http, gateway)
    status, text, headers = await put_state(http, gateway, uid, "COMPLETED", tx)
    assert status == 200, text
    assert warning_text(gateway, headers) == \
        "The UPS is already in the requested state of COMPLETED."
    status, text, _ = await put_state(http, gateway, uid, "CANCELED", tx)
    assert status == 409 and error_status(text) == "0xC300"
    status, text, _ = await put_state(http, gateway, uid, "IN PROGRESS", new_uid())
    assert status == 409 and error_status(text) == "0xC300"


async def test_already_canceled_is_200_with_warning_b304(gateway, http):
    uid = await canceled(http, gateway)
    status, text, headers = await put_state(http, gateway, uid, "CANCELED", new_uid())
    assert status == 200, text
    assert warning_text(gateway, headers) == \
        "The UPS is already in the requested state of CANCELED."
    status, text, _ = await put_state(http, gateway, uid, "COMPLETED", new_uid())
    assert status == 409 and error_status(text) == "0xC300"


async def test_cancel_request_on_canceled_is_202_with_warning(gateway, http):
    uid = await canceled(http, gateway)
    async with http.post(f"{gateway.base}/workitems/{uid}/cancelrequest") as r:
        assert r.status == 202
        assert warning_text(gateway, r.headers) == "The UPS is already in the requested state of CANCELED."


async def test_cancel_request_on_completed_is_409_c311(gateway, http):
    uid, _ = await completed(http, gateway)
    async with http.post(f"{gateway.base}/workitems/{uid}/cancelrequest") as r:
        assert r.status == 409
        assert error_status(await r.text()) == "0xC311"
        assert warning_text(gateway, r.headers)
    assert (await retrieve(http, gateway, uid))["00741000"]["Value"] == ["COMPLETED"]


async def test_state_change_without_a_state_is_400(gateway, http):
    uid = await create(http, gateway)
    async with http.put(f"{gateway.base}/workitems/{uid}/state", headers=JSON,
                        data=json.dumps({"00081195": element("UI", new_uid())})) as r:
        assert r.status == 400
        assert "ProcedureStepState" in warning_text(gateway, r.headers)


async def test_wrong_method_is_405(gateway, http):
    uid = await create(http, gateway)
    async with http.delete(f"{gateway.base}/workitems/{uid}") as r:
        assert r.status == 405
        assert "GET" in r.headers.get("Allow", "")


# ---- retrieve and create without a UID -----------------------------------------------

async def test_retrieve_never_returns_the_transaction_uid(gateway, http):
    uid, tx = await in_progress(http, gateway)
    async with http.get(f"{gateway.base}/workitems/{uid}") as r:
        text = await r.text()
        assert r.status == 200
        assert "00081195" not in text and tx not in text
        body = json.loads(text)
        assert isinstance(body, list) and len(body) == 1
    async with http.get(f"{gateway.base}/workitems",
                        params={"SOPInstanceUID": uid, "includefield": "all"}) as r:
        text = await r.text()
        assert r.status == 200
        assert "00081195" not in text and tx not in text


async def test_create_without_a_uid_assigns_one(gateway, http):
    async with http.post(f"{gateway.base}/workitems", data=json.dumps(workitem()),
                         headers=JSON) as r:
        assert r.status == 201, await r.text()
        location = r.headers["Location"]
        assert warning_text(gateway, r.headers) == "The Workitem was created with modifications."
    match = re.fullmatch(re.escape(gateway.base) + r"/workitems/(2\.25\.\d+)", location)
    assert match, location
    async with http.get(location) as r:
        assert r.status == 200
        [ds] = await r.json(content_type=None)
        assert ds["00080018"]["Value"] == [match.group(1)]


async def test_create_returns_location_and_no_warning_when_unchanged(gateway, http):
    uid = new_uid()
    async with http.post(f"{gateway.base}/workitems?workitem={uid}",
                         data=json.dumps(workitem()), headers=JSON) as r:
        assert r.status == 201
        assert r.headers["Location"] == f"{gateway.base}/workitems/{uid}"
        assert "Warning" not in r.headers


async def test_create_without_worklist_label_warns(gateway, http):
    payload = workitem()
    del payload["00741202"]
    uid = new_uid()
    async with http.post(f"{gateway.base}/workitems?workitem={uid}", data=json.dumps(payload),
                         headers=JSON) as r:
        assert r.status == 201
        assert warning_text(gateway, r.headers) == "The Workitem was created with modifications."
    assert (await retrieve(http, gateway, uid))["00741202"]["Value"] == ["DEFAULT"]


# ---- search ----------------------------------------------------------------------------

async def test_search_with_no_match_is_204(gateway, http):
    async with http.get(f"{gateway.base}/workitems",
                        params={"PatientID": f"NOBODY-{new_uid()}"}) as r:
        assert r.status == 204
        assert await r.read() == b""


async def test_search_paging_warns_about_the_remaining_results(gateway, http):
    label = f"PG{new_uid()[-10:]}"
    uids = []
    for i in range(5):
        uids.append(await create(http, gateway, workitem(label=label,
                                                         start=f"2026112510{i:02d}00")))
    seen = []
    for offset, count, remaining in ((0, 2, 3), (2, 2, 1), (4, 1, 0)):
        async with http.get(f"{gateway.base}/workitems", params={
                "WorklistLabel": label, "offset": str(offset), "limit": "2"}) as r:
            assert r.status == 200
            items = await r.json(content_type=None)
            assert len(items) == count
            seen += [d["00080018"]["Value"][0] for d in items]
            if remaining:
                assert warning_text(gateway, r.headers) == \
                    f"There are {remaining} additional results that can be requested"
            else:
                assert "Warning" not in r.headers
    assert seen == uids  # start times ascend in creation order
    async with http.get(f"{gateway.base}/workitems",
                        params={"WorklistLabel": label, "offset": "5"}) as r:
        assert r.status == 204


@pytest.mark.parametrize("params,word", [
    ({"limit": "-1"}, "limit"),
    ({"fuzzymatching": "maybe"}, "fuzzymatching"),
    ({"limit": "0"}, "limit"),
    ({"ScheduledProcedureStepStartDateTime": "2026-11-25"}, "ScheduledProcedureStepStartDateTime"),
    ({"includefield": "NoSuchAttribute"}, "NoSuchAttribute"),
])
async def test_bad_search_is_400_naming_it(gateway, http, params, word):
    async with http.get(f"{gateway.base}/workitems", params=params) as r:
        assert r.status == 400, (await r.text())[:500]
        assert word in warning_text(gateway, r.headers)


async def test_search_ignores_unknown_parameters(gateway, http):
    pid = f"UNK-{new_uid()[-10:]}"
    uid = await create(http, gateway, workitem(patient_id=pid))
    async with http.get(f"{gateway.base}/workitems",
                        params={"PatientID": pid, "NoSuchKeyword": "1", "foo": "bar"}) as r:
        assert r.status == 200
        assert [d["00080018"]["Value"][0] for d in await r.json(content_type=None)] == [uid]


# ---- garbage never gives a 500 and is never stored ------------------------------------

def _garbage(uid: str) -> list[tuple[str, str, str | bytes]]:
    """(method, path suffix, body) requests with broken payloads, all naming ``uid``."""
    good = workitem(uid)

    def poisoned(tag, elem):
        payload = dict(good)
        payload[tag] = elem
        return json.dumps(payload)

    def nested_sq(depth):
        return ('{"00404025": {"vr": "SQ", "Value": [' * depth + "{}" + "]}}" * depth)

    create = f"?workitem={uid}"
    bodies = [
        json.dumps([good, good]),                        # two datasets
        json.dumps([]),
        json.dumps("a string"),
        json.dumps(12345),
        json.dumps(None),
        json.dumps(True),
        json.dumps([[[good]]]),
        json.dumps({"garbage": {"more": [1, {"x": None}]}}),
        json.dumps({uid: good}),
        poisoned("00100010", {"vr": "PN", "Value": [[["Doe"]]]}),
        poisoned("00100010", {"vr": "PN", "Value": [{"Alphabetic": {"x": 1}}]}),
        poisoned("00100010", {"vr": "PN", "Value": ["\ud800"]}),
        poisoned("00100020", {"vr": "LO", "Value": [{"a": 1}]}),
        poisoned("00100020", {"vr": "LO", "Value": None}),
        poisoned("00100020", None),
        poisoned("00100020", []),
        poisoned("00404025", {"vr": "SQ", "Value": ["not an item"]}),
        poisoned("00404025", {"vr": "SQ", "Value": [[{}]]}),
        poisoned("00200013", {"vr": "IS", "Value": [10 ** 400]}),
        poisoned("001021C0", {"vr": "US", "Value": [10 ** 30]}),
        poisoned("001021C0", {"vr": "US", "Value": [-(10 ** 30)]}),
        poisoned("00741004", {"vr": "DS", "Value": ["1e999"]}),
        poisoned("00201041", {"vr": "DS", "Value": [1e308 * 10]}),  # Infinity
        poisoned("00189087", {"vr": "FD", "Value": [float("nan")]}),
        poisoned("00404005", {"vr": "DT", "Value": ["99999999999999"]}),
        poisoned("00404005", {"vr": "DT", "Value": [20261125100000]}),
        poisoned("00420011", {"vr": "OB", "InlineBinary": "!!!"}),
        poisoned("00420011", {"vr": "OB", "BulkDataURI": "http://evil/bulk"}),
        poisoned("00100020", {"vr": "LO", "Value": ["x" * 70000]}),
        poisoned("0008A", {"vr": "LO", "Value": ["x"]}),
        poisoned("00741000", {"vr": "CS", "Value": ["IN PROGRESS"]}),
        '{"00741000": {"vr": "CS", "Value": [NaN]}}',
        '[' * 50000 + ']' * 50000,
        nested_sq(400),
        nested_sq(40),
        b"\xff\xfe\x00garbage",
        "{" + '"00100020": {"vr": "LO", "Value": ["x"]},' * 3 + "}",
    ]
    requests = [("POST", f"/workitems{create}", body) for body in bodies]
    requests += [("POST", f"/workitems?workitem={uid}&AffectedSOPInstanceUID={new_uid()}",
                  json.dumps(good)),
                 ("POST", f"/workitems?workitem=not-a-uid&{uid}", json.dumps(workitem())),
                 ("POST", f"/workitems?workitem={uid}", json.dumps(workitem(new_uid())))]
    return requests


async def test_garbage_never_gives_500_and_is_never_stored(gateway, http):
    uids = [new_uid() for _ in range(2)]
    statuses = []
    for uid in uids:
        for method, suffix, body in _garbage(uid):
            async with http.request(method, f"{gateway.base}{suffix}", data=body,
                                    headers=JSON) as r:
                text = await r.text()
                statuses.append((r.status, suffix, str(body)[:80], text[:200]))
                assert WARNING.match(r.headers.get("Warning", "")), text
    # conformance §2–§5: an invalid payload, disagreeing UID sources, a state other than
    # SCHEDULED (C309) → 400, each of them
    bad = [s for s in statuses if s[0] != 400]
    assert not bad, bad
    async with http.get(f"{gateway.base}/workitems",
                        params={"SOPInstanceUID": ",".join(uids)}) as r:
        assert r.status == 204, await r.text()
    for uid in uids:
        async with http.get(f"{gateway.base}/workitems/{uid}") as r:
            assert r.status == 404


async def test_garbage_on_the_other_transactions_never_gives_500(gateway, http):
    uid, tx = await in_progress(http, gateway)
    before = await retrieve(http, gateway, uid)
    bodies = [json.dumps([1, 2]), json.dumps("x"), json.dumps(10 ** 400), "[" * 20000,
              json.dumps({"00741000": {"vr": "CS", "Value": [["IN PROGRESS"]]}}),
              json.dumps({"00741000": {"vr": "CS", "Value": [5]}}),
              json.dumps({"00741000": {"vr": "CS", "Value": ["COMPLETED"]},
                          "00081195": {"vr": "UI", "Value": [10 ** 60]}}),
              json.dumps({"00741000": {"vr": "CS", "Value": ["NONSENSE"]},
                          "00081195": {"vr": "UI", "Value": [tx]}}),
              json.dumps({"00741002": {"vr": "SQ", "Value": [{"00741004": {
                  "vr": "DS", "Value": [1e308 * 10]}}]}}),
              b"\x00\x01\x02"]
    targets = [("PUT", f"/workitems/{uid}/state"), ("POST", f"/workitems/{uid}?transaction-uid={tx}"),
               ("PUT", f"/workitems/{uid}?transaction-uid={tx}"),
               ("POST", f"/workitems/{uid}/cancelrequest"),
               ("POST", f"/workitems/{uid}?transaction-uid=garbage"),
               ("GET", "/workitems?ScheduledProcedureStepStartDateTime=" + "9" * 5000),
               ("GET", "/workitems?PatientName=%ED%A0%80&fuzzymatching=true"),
               ("GET", "/workitems?limit=" + "9" * 400),
               ("GET", "/workitems/" + "1." * 3000 + "1"),
               ("GET", "/workitems/%ff%fe%fd")]
    # Every body above is an invalid payload for these transactions (400), except one: for
    # Request Cancellation the state-and-UID body is a well-formed dataset whose attributes it
    # does not take, and nobody can be told of the request → C312 / 409 (conformance §5).
    well_formed_for_cancel = bodies[7]
    bad = []
    for method, suffix in targets:
        for body in bodies if method != "GET" else [None]:
            want = 409 if suffix.endswith("/cancelrequest") and body == well_formed_for_cancel \
                else 400
            async with http.request(method, f"{gateway.base}{suffix}", data=body,
                                    headers=JSON) as r:
                if method != "GET" and r.status != want or method == "GET" and not (
                        400 <= r.status < 500 or r.status in (200, 204)):
                    bad.append((r.status, method, suffix[:60], str(body)[:60],
                                (await r.text())[:200]))
    assert not bad, bad
    after = await retrieve(http, gateway, uid)
    assert after["00741000"]["Value"] == ["IN PROGRESS"]
    assert {k: v for k, v in after.items() if k != "00404010"} == \
        {k: v for k, v in before.items() if k != "00404010"}
