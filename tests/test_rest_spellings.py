"""Every URL and parameter spelling real UPS-RS clients use (decisions.md "Accepting every spelling
real clients use"), against a real gateway process."""

from __future__ import annotations

import json

import pytest
import yarl

from tests.helpers import (GatewayProcess, completion_payload, element, free_port, new_uid,
                           state_payload, workitem)

JSON = {"Content-Type": "application/dicom+json"}
PERFORMER = "PERF_AE"


@pytest.fixture(scope="module")
def peer_gateway(tmp_path_factory):
    """A gateway that knows the address of the DIMSE AE ``PERF_AE``: a cancel request on a
    workitem that AE claimed can be passed on (202), on anybody else's it cannot (409)."""
    proc = GatewayProcess(tmp_path_factory.mktemp("peers"), dimse=False, extra={
        "peers": {PERFORMER: {"host": "127.0.0.1", "port": free_port()}}}).start()
    yield proc
    proc.stop()


def url(text: str) -> yarl.URL:
    return yarl.URL(text, encoded=True)  # keep double slashes and case exactly as written


async def post(http, target, payload, method="POST"):
    body = payload if isinstance(payload, (str, bytes)) or payload is None else json.dumps(payload)
    async with http.request(method, url(target), data=body, headers=JSON) as r:
        return r.status, await r.text(), r.headers.copy()


async def get_state(http, gateway, uid) -> str | None:
    async with http.get(f"{gateway.base}/workitems/{uid}") as r:
        if r.status != 200:
            return None
        [ds] = await r.json(content_type=None)
        return ds["00741000"]["Value"][0]


async def fetch(http, gateway, uid) -> dict:
    async with http.get(f"{gateway.base}/workitems/{uid}") as r:
        assert r.status == 200, await r.text()
        body = await r.json(content_type=None)
        assert isinstance(body, list) and len(body) == 1  # one-element array
        return body[0]


async def create(http, gateway, uid=None) -> str:
    uid = uid or new_uid()
    status, text, _ = await post(http, f"{gateway.base}/workitems?workitem={uid}", workitem())
    assert status == 201, text
    return uid


async def claimed(http, gateway, requester_path="", params="") -> tuple[str, str]:
    uid, tx = await create(http, gateway), new_uid()
    status, text, _ = await post(
        http, f"{gateway.base}/workitems/{uid}/state{requester_path}{params}",
        state_payload("IN PROGRESS", tx), method="PUT")
    assert status == 200, text
    return uid, tx


# ---- create: where the workitem UID comes from -------------------------------------------

@pytest.mark.parametrize("spelling", ["workitem=", "WORKITEM=", "Workitem=", "bare",
                                      "AffectedSOPInstanceUID=", "affectedsopinstanceuid=",
                                      "payload", "workitem+payload", "bare+payload"])
async def test_create_uid_spellings(gateway, http, spelling):
    uid = new_uid()
    payload = workitem()
    if "payload" in spelling:
        payload["00080018"] = element("UI", uid)
    query = ""
    if spelling.startswith("bare"):
        query = f"?{uid}"
    elif spelling != "payload":
        query = f"?{spelling.split('+')[0]}{uid}"
    status, text, headers = await post(http, f"{gateway.base}/workitems{query}", payload)
    assert status == 201, text
    assert headers["Location"] == f"{gateway.base}/workitems/{uid}"
    assert "Warning" not in headers
    assert (await fetch(http, gateway, uid))["00080018"]["Value"] == [uid]


@pytest.mark.parametrize("sources", [("workitem", "payload"), ("workitem", "affected"),
                                     ("bare", "payload"), ("workitem", "bare"),
                                     ("affected", "payload")])
async def test_create_with_disagreeing_uid_sources_is_400(gateway, http, sources):
    a, b = new_uid(), new_uid()
    payload = workitem()
    params = []
    for source, uid in zip(sources, (a, b)):
        if source == "payload":
            payload["00080018"] = element("UI", uid)
        elif source == "workitem":
            params.append(f"workitem={uid}")
        elif source == "affected":
            params.append(f"AffectedSOPInstanceUID={uid}")
        else:
            params.append(uid)
    status, text, _ = await post(http, f"{gateway.base}/workitems?{'&'.join(params)}", payload)
    assert status == 400, text
    assert await get_state(http, gateway, a) is None
    assert await get_state(http, gateway, b) is None


# ---- update: where the Transaction UID comes from --------------------------------------

TX_SPELLINGS = ["transaction-uid=", "Transaction-uid=", "TRANSACTION-UID=", "Transaction-UID=",
                "transaction=", "Transaction=", "TRANSACTION=", "bare", "payload"]


def _update_target(gateway, uid, tx, spelling, payload):
    payload = dict(payload)
    if spelling == "payload":
        payload["00081195"] = element("UI", tx)
        return f"{gateway.base}/workitems/{uid}", payload
    if spelling == "bare":
        return f"{gateway.base}/workitems/{uid}?{tx}", payload
    return f"{gateway.base}/workitems/{uid}?{spelling}{tx}", payload


@pytest.mark.parametrize("spelling", TX_SPELLINGS)
async def test_update_transaction_uid_spellings(gateway, http, spelling):
    uid, tx = await claimed(http, gateway)
    target, payload = _update_target(gateway, uid, tx, spelling,
                                     {"00741204": element("LO", f"via {spelling}")})
    status, text, _ = await post(http, target, payload)
    assert status == 200, text
    ds = await fetch(http, gateway, uid)
    assert ds["00741204"]["Value"] == [f"via {spelling}"]
    assert "00081195" not in ds
    # the same spelling with somebody else's Transaction UID is refused
    target, payload = _update_target(gateway, uid, new_uid(), spelling,
                                     {"00741204": element("LO", "intruder")})
    status, text, _ = await post(http, target, payload)
    assert status == 400, text
    assert json.loads(text)["status"] == "0xC301"
    assert (await fetch(http, gateway, uid))["00741204"]["Value"] == [f"via {spelling}"]


async def test_update_with_disagreeing_transaction_uids_is_400(gateway, http):
    uid, tx = await claimed(http, gateway)
    payload = {"00741204": element("LO", "x"), "00081195": element("UI", new_uid())}
    status, text, _ = await post(http, f"{gateway.base}/workitems/{uid}?transaction-uid={tx}",
                                 payload)
    assert status == 400, text
    status, text, _ = await post(
        http, f"{gateway.base}/workitems/{uid}?transaction-uid={tx}&transaction={new_uid()}",
        {"00741204": element("LO", "x")})
    assert status == 400, text
    assert (await fetch(http, gateway, uid))["00741204"]["Value"] == ["AI analysis"]


async def test_put_on_a_workitem_is_an_update(gateway, http):
    uid, tx = await claimed(http, gateway)
    status, text, _ = await post(http, f"{gateway.base}/workitems/{uid}?transaction-uid={tx}",
                                 completion_payload(), method="PUT")
    assert status == 200, text
    status, text, _ = await post(http, f"{gateway.base}/workitems/{uid}/state",
                                 state_payload("COMPLETED", tx), method="PUT")
    assert status == 200, text
    assert await get_state(http, gateway, uid) == "COMPLETED"


async def test_post_on_state_is_accepted_too(gateway, http):
    uid = await create(http, gateway)
    status, text, _ = await post(http, f"{gateway.base}/workitems/{uid}/state",
                                 state_payload("IN PROGRESS", new_uid()))
    assert status == 200, text
    assert await get_state(http, gateway, uid) == "IN PROGRESS"


# ---- the requester AE ------------------------------------------------------------------

@pytest.mark.parametrize("path,params,told", [
    (f"/{PERFORMER}", "", True),
    ("", f"?requester={PERFORMER}", True),
    ("", "", False),
    ("/SOMEBODY_ELSE", "", False),
])
async def test_claiming_requester_becomes_the_performer(peer_gateway, http, path, params, told):
    """The claiming AE is remembered as the performer: a cancel request on the workitem can be
    passed on to it only when the gateway knows that AE's address (it is in ``peers``)."""
    uid, tx = await claimed(http, peer_gateway, path, params)
    status, text, _ = await post(http, f"{peer_gateway.base}/workitems/{uid}/cancelrequest", None)
    assert status == (202 if told else 409), text
    if not told:
        assert json.loads(text)["status"] == "0xC312"
    assert await get_state(http, peer_gateway, uid) == "IN PROGRESS"


@pytest.mark.parametrize("suffix", ["/cancelrequest/RIS_AE", "/cancelrequest?requester=RIS_AE",
                                    "/CANCELREQUEST", "/cancelrequest/"])
async def test_cancel_request_spellings(gateway, http, suffix):
    uid = await create(http, gateway)
    status, text, _ = await post(http, f"{gateway.base}/workitems/{uid}{suffix}", None)
    assert status == 202, text
    assert await get_state(http, gateway, uid) == "CANCELED"


@pytest.mark.parametrize("suffix", ["/state/AI_PERFORMER", "/state?requester=AI_PERFORMER",
                                    "/STATE", "/State/AI_PERFORMER/", "/state/"])
async def test_state_spellings(gateway, http, suffix):
    uid = await create(http, gateway)
    status, text, _ = await post(http, f"{gateway.base}/workitems/{uid}{suffix}",
                                 state_payload("IN PROGRESS", new_uid()), method="PUT")
    assert status == 200, text
    assert await get_state(http, gateway, uid) == "IN PROGRESS"


# ---- payload forms -----------------------------------------------------------------------

async def test_payloads_as_bare_objects_or_one_element_arrays(gateway, http):
    array_uid, object_uid = new_uid(), new_uid()
    status, text, _ = await post(http, f"{gateway.base}/workitems?{array_uid}", [workitem()])
    assert status == 201, text
    status, text, _ = await post(http, f"{gateway.base}/workitems?{object_uid}", workitem())
    assert status == 201, text
    tx = new_uid()
    status, text, _ = await post(http, f"{gateway.base}/workitems/{array_uid}/state",
                                 [state_payload("IN PROGRESS", tx)], method="PUT")
    assert status == 200, text
    status, text, _ = await post(http, f"{gateway.base}/workitems/{array_uid}?transaction-uid={tx}",
                                 [completion_payload()])
    assert status == 200, text
    status, text, _ = await post(http, f"{gateway.base}/workitems/{array_uid}/state",
                                 [state_payload("COMPLETED", tx)], method="PUT")
    assert status == 200, text
    status, text, _ = await post(http, f"{gateway.base}/workitems/{object_uid}/cancelrequest",
                                 [{"00741238": element("LT", "array form")}])
    assert status == 202, text
    assert await get_state(http, gateway, array_uid) == "COMPLETED"
    ds = await fetch(http, gateway, object_uid)
    assert ds["00741002"]["Value"][0]["00741238"]["Value"] == ["array form"]


@pytest.mark.parametrize("is_value,ds_value", [(7, 50), ("7", "50"), (" 7", "50.0"),
                                               (7.0, 50.0)])
async def test_is_and_ds_as_numbers_or_strings(gateway, http, is_value, ds_value):
    uid = new_uid()
    payload = workitem(**{"00200013": {"vr": "IS", "Value": [is_value]}})
    status, text, _ = await post(http, f"{gateway.base}/workitems?{uid}", payload)
    assert status == 201, text
    tx = new_uid()
    status, text, _ = await post(http, f"{gateway.base}/workitems/{uid}/state",
                                 state_payload("IN PROGRESS", tx), method="PUT")
    assert status == 200, text
    progress = {"00741002": element("SQ", {"00741004": {"vr": "DS", "Value": [ds_value]}})}
    status, text, _ = await post(http, f"{gateway.base}/workitems/{uid}?transaction-uid={tx}",
                                 progress)
    assert status == 200, text
    ds = await fetch(http, gateway, uid)
    assert ds["00200013"]["Value"] == [7]
    assert ds["00741002"]["Value"][0]["00741004"]["Value"] == [50]


async def test_pn_as_a_bare_string(gateway, http):
    uid = new_uid()
    payload = workitem(**{"00100010": {"vr": "PN", "Value": ["Bare^String"]}})
    status, text, _ = await post(http, f"{gateway.base}/workitems?{uid}", payload)
    assert status == 201, text
    assert (await fetch(http, gateway, uid))["00100010"]["Value"] == [{"Alphabetic": "Bare^String"}]


# ---- URL spellings -------------------------------------------------------------------------

def _prefixes(gateway) -> dict[str, str]:
    return {
        "canonical": f"{gateway.base}/workitems",
        "trailing slash": f"{gateway.base}/workitems/",
        "double slash": f"{gateway.url}//dicom-web//workitems/",
        "upper case": f"{gateway.base}/WORKITEMS",
        "mixed case": f"{gateway.url}/DICOM-WEB/WorkItems",
        "root level": f"{gateway.url}/workitems",
        "dcm4chee": f"{gateway.url}/dcm4chee-arc/aets/UPS_GATEWAY/rs/workitems",
    }


@pytest.mark.parametrize("spelling", ["canonical", "trailing slash", "double slash", "upper case",
                                      "mixed case", "root level", "dcm4chee"])
async def test_url_spellings_for_every_transaction(gateway, http, spelling):
    root = _prefixes(gateway)[spelling]
    root_no_slash = root.rstrip("/")
    uid, tx = new_uid(), new_uid()
    status, text, _ = await post(http, f"{root}?workitem={uid}", workitem())
    assert status == 201, text
    for target in (f"{root_no_slash}/{uid}", f"{root_no_slash}//{uid}/"):
        async with http.get(url(target)) as r:
            assert r.status == 200, (target, await r.text())
            body = await r.json(content_type=None)
            assert isinstance(body, list) and len(body) == 1
            assert body[0]["00080018"]["Value"] == [uid]
    async with http.get(url(f"{root}?SOPInstanceUID={uid}")) as r:
        assert r.status == 200, await r.text()
        body = await r.json(content_type=None)
        assert isinstance(body, list) and [d["00080018"]["Value"][0] for d in body] == [uid]
    status, text, _ = await post(http, f"{root_no_slash}/{uid}/state/",
                                 state_payload("IN PROGRESS", tx), method="PUT")
    assert status == 200, text
    status, text, _ = await post(http, f"{root_no_slash}/{uid}/?transaction-uid={tx}",
                                 completion_payload())
    assert status == 200, text
    status, text, _ = await post(http, f"{root_no_slash}/{uid}/state",
                                 state_payload("COMPLETED", tx), method="PUT")
    assert status == 200, text
    assert await get_state(http, gateway, uid) == "COMPLETED"


async def test_a_resource_outside_the_worklist_is_404(gateway, http):
    for target in (f"{gateway.url}/other/workitems", f"{gateway.base}/studies",
                   f"{gateway.base}/workitems/1.2.3/nonsense"):
        async with http.get(url(target)) as r:
            assert r.status == 404, target


async def test_search_returns_an_array_even_for_one_result(gateway, http):
    uid = await create(http, gateway)
    async with http.get(f"{gateway.base}/workitems", params={"SOPInstanceUID": uid}) as r:
        assert r.status == 200
        assert r.content_type == "application/dicom+json"
        body = await r.json(content_type=None)
        assert isinstance(body, list) and len(body) == 1


async def test_accept_header_variants(gateway, http):
    uid = await create(http, gateway)
    for accept in ("application/dicom+json", "application/json", "*/*",
                   "multipart/related; type=\"application/dicom+json\""):
        async with http.get(f"{gateway.base}/workitems/{uid}", headers={"Accept": accept}) as r:
            assert r.status == 200, accept
    async with http.get(f"{gateway.base}/workitems/{uid}",
                        headers={"Accept": "image/jpeg"}) as r:
        assert r.status == 406  # (XML is offered too: tests/test_rest_xml.py)
