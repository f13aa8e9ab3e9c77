"""Concurrent requests on two gateway processes sharing one Redis: a workitem is claimed exactly
once, and created exactly once."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.helpers import GatewayProcess, completion_payload, element, new_uid, state_payload, workitem

JSON = {"Content-Type": "application/dicom+json"}
WORKITEMS = 30
CLAIMANTS = 20


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    first = GatewayProcess(tmp_path_factory.mktemp("race-a")).start()
    try:
        second = GatewayProcess(tmp_path_factory.mktemp("race-b"),
                                redis_url=first.redis_url).start()
    except Exception:
        first.stop()
        raise
    yield first, second
    second.stop()
    first.stop()


async def _create(http, gateway, uid, payload=None, with_headers=False):
    async with http.post(f"{gateway.base}/workitems?workitem={uid}",
                         data=json.dumps(payload or workitem()), headers=JSON) as r:
        if with_headers:
            return r.status, await r.text(), r.headers.get("Warning", "")
        return r.status, await r.text()


async def _claim(http, gateway, uid, tx):
    async with http.put(f"{gateway.base}/workitems/{uid}/state", headers=JSON,
                        data=json.dumps(state_payload("IN PROGRESS", tx))) as r:
        return r.status, await r.text(), tx


async def test_both_processes_see_the_same_worklist(pair, http):
    first, second = pair
    uid = new_uid()
    assert (await _create(http, first, uid))[0] == 201
    async with http.get(f"{second.base}/workitems/{uid}") as r:
        assert r.status == 200


async def test_concurrent_claims_have_exactly_one_winner(pair, http):
    first, second = pair
    uids = [new_uid() for _ in range(WORKITEMS)]
    for i, uid in enumerate(uids):
        status, text = await _create(http, pair[i % 2], uid)
        assert status == 201, text
    winners = {}
    for uid in uids:
        txs = [new_uid() for _ in range(CLAIMANTS)]
        results = await asyncio.gather(*[
            _claim(http, pair[i % 2], uid, tx) for i, tx in enumerate(txs)])
        won = [r for r in results if r[0] == 200]
        lost = [r for r in results if r[0] != 200]
        assert len(won) == 1, [(r[0], r[1][:100]) for r in results]
        for status, text, _ in lost:
            assert status == 409, text
            assert json.loads(text)["status"] == "0xC302", text
        winners[uid] = (won[0][2], lost[0][2])
    for i, uid in enumerate(uids):
        winner_tx, loser_tx = winners[uid]
        gateway = pair[(i + 1) % 2]
        # a loser's Transaction UID does not open the workitem ...
        async with http.post(f"{gateway.base}/workitems/{uid}?transaction-uid={loser_tx}",
                             data=json.dumps(completion_payload()), headers=JSON) as r:
            assert r.status == 400, await r.text()
            assert json.loads(await r.text())["status"] == "0xC301"
        # ... the winner's does, on either process
        async with http.post(f"{gateway.base}/workitems/{uid}?transaction-uid={winner_tx}",
                             data=json.dumps(completion_payload()), headers=JSON) as r:
            assert r.status == 200, await r.text()
    # and completes it
    uid = uids[0]
    async with http.put(f"{second.base}/workitems/{uid}/state", headers=JSON,
                        data=json.dumps(state_payload("COMPLETED", winners[uid][0]))) as r:
        assert r.status == 200, await r.text()
    async with http.get(f"{first.base}/workitems/{uid}") as r:
        [ds] = await r.json(content_type=None)
        assert ds["00741000"]["Value"] == ["COMPLETED"]
    async with http.get(f"{first.base}/workitems", params={
            "SOPInstanceUID": ",".join(uids), "ProcedureStepState": "IN PROGRESS"}) as r:
        assert r.status == 200
        assert len(await r.json(content_type=None)) == WORKITEMS - 1


async def test_concurrent_creates_of_one_uid_have_exactly_one_winner(pair, http):
    for _ in range(10):
        uid = new_uid()
        results = await asyncio.gather(_create(http, pair[0], uid, workitem(label="A")),
                                       _create(http, pair[1], uid, workitem(label="B")))
        statuses = sorted(status for status, _ in results)
        assert statuses == [201, 409], results
        loser = next(text for status, text in results if status == 409)
        assert json.loads(loser)["status"] == "0x0111"


async def test_concurrent_identical_creates_converge_one_creates(pair, http):
    """The same create sent to both processes at once (a client's retry racing its first try):
    both succeed, one made the workitem, the other says it was already there."""
    for _ in range(10):
        uid = new_uid()
        results = await asyncio.gather(_create(http, pair[0], uid, with_headers=True),
                                       _create(http, pair[1], uid, with_headers=True))
        assert [status for status, _, _ in results] == [201, 201], results
        warnings = sorted("already existed" in warning for _, _, warning in results)
        assert warnings == [False, True], results


async def test_concurrent_updates_are_all_applied_or_refused_cleanly(pair, http):
    """Interleaved updates from both processes on one claimed workitem: every one answers 200
    and the stored result is one of the values sent (no lost write corrupts the dataset)."""
    uid, tx = new_uid(), new_uid()
    assert (await _create(http, pair[0], uid))[0] == 201
    assert (await _claim(http, pair[1], uid, tx))[0] == 200

    async def label(i):
        async with http.post(f"{pair[i % 2].base}/workitems/{uid}?transaction-uid={tx}",
                             data=json.dumps({"00741204": element("LO", f"label {i}"),
                                              "00400400": element("LT", f"comment {i}")}),
                             headers=JSON) as r:
            return r.status
    statuses = await asyncio.gather(*[label(i) for i in range(20)])
    assert statuses == [200] * 20
    async with http.get(f"{pair[0].base}/workitems/{uid}") as r:
        [ds] = await r.json(content_type=None)
    value = ds["00741204"]["Value"][0]
    assert value in {f"label {i}" for i in range(20)}
    # both attributes of one update travel together
    assert ds["00400400"]["Value"] == [value.replace("label", "comment")]
