"""The README walk-through, end to end over HTTP against a real gateway process."""

import pytest

from tests.helpers import GatewayProcess, completion_payload, new_uid, state_payload, workitem

JSON = {"Content-Type": "application/dicom+json"}


async def test_create_search_claim_complete(gateway, http):
    await walk_through(gateway, http)


@pytest.fixture
def stock_loop_gateway(tmp_path):
    """The same gateway on the standard library's event loop instead of uvloop."""
    proc = GatewayProcess(tmp_path, extra={"event_loop": "asyncio"}, dimse=False).start()
    yield proc
    proc.stop()


async def test_walk_through_on_the_standard_event_loop(stock_loop_gateway, http):
    await walk_through(stock_loop_gateway, http)


async def walk_through(gateway, http):
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
