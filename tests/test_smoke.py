"""The README walk-through, end to end over HTTP against a real gateway process."""

from tests.helpers import completion_payload, new_uid, state_payload, workitem

JSON = {"Content-Type": "application/dicom+json"}


async def test_create_search_claim_complete(gateway, http):
    uid = new_uid()
    async with http.post(f"{gateway.base}/workitems?{uid}", json=workitem(), headers=JSON) as r:
        assert r.status == 201, await r.text()
        assert r.headers["Location"].endswith(f"/workitems/{uid}")
    async with http.get(f"{gateway.base}/workitems", params={"SOPInstanceUID": uid}) as r:
        assert r.status == 200
        [found] = await r.json()
        assert found["00080018"]["Value"] == [uid]
    tx = new_uid()
    async with http.put(f"{gateway.base}/workitems/{uid}/state",
                        json=state_payload("IN PROGRESS", tx), headers=JSON) as r:
        assert r.status == 200, await r.text()
    async with http.post(f"{gateway.base}/workitems/{uid}?transaction-uid={tx}",
                         json=completion_payload(), headers=JSON) as r:
        assert r.status == 200, await r.text()
    async with http.put(f"{gateway.base}/workitems/{uid}/state",
                        json=state_payload("COMPLETED", tx), headers=JSON) as r:
        assert r.status == 200, await r.text()
    async with http.get(f"{gateway.base}/workitems/{uid}") as r:
        [ds] = await r.json()
        assert ds["00741000"]["Value"] == ["COMPLETED"]
        assert "00081195" not in ds
