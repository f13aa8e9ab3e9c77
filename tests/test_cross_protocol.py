"""One worklist, two protocols: what UPS-RS does is at once visible and binding over DIMSE, and
the other way round, against a gateway process started as the README starts it."""

from __future__ import annotations

import asyncio
import threading

from pydicom.dataset import Dataset

from gateway.dimse import convert
from tests import dimse_util as d
from tests.helpers import completion_payload, element, new_uid, state_payload, workitem

JSON = {"Content-Type": "application/dicom+json"}


def _identifier(**keys) -> Dataset:
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


async def _rest_create(http, gateway, uid: str, **kw) -> None:
    async with http.post(f"{gateway.base}/workitems?{uid}", json=workitem(**kw),
                         headers=JSON) as r:
        assert r.status == 201, await r.text()


async def _rest_get(http, gateway, uid: str) -> dict:
    async with http.get(f"{gateway.base}/workitems/{uid}") as r:
        assert r.status == 200, await r.text()
        [ds] = await r.json()
        return ds


async def test_created_via_rest_is_found_by_c_find_and_n_get(gateway, http):
    label = f"X-REST-{new_uid()[-8:]}"
    uid = new_uid()
    await _rest_create(http, gateway, uid, label=label, patient_name="Müller^Jörg")
    rest = await _rest_get(http, gateway, uid)

    def over_dimse():
        with d.association(gateway) as a:
            status, results, _ = d.c_find(a, _identifier(WorklistLabel=label, PatientName=""))
            got_status, got = d.n_get(a, uid)
            return status, results, got_status, got

    status, results, got_status, got = await asyncio.to_thread(over_dimse)
    assert status == 0x0000 and [r.SOPInstanceUID for r in results] == [uid]
    assert str(results[0].PatientName) == "Müller^Jörg"  # sent as UTF-8 (ISO_IR 192)
    assert d.status_of(got_status) == 0x0000
    # N-GET returns the very workitem REST returns, attribute for attribute.
    assert convert.to_canonical(got) == {k: v for k, v in rest.items() if k != "00080005"} | (
        {"00080005": element("CS", "ISO_IR 192")})


async def test_created_via_n_create_is_retrieved_and_searched_via_rest(gateway, http):
    label = f"X-DIMSE-{new_uid()[-8:]}"
    uid = new_uid()

    def create():
        with d.association(gateway) as a:
            status, _ = d.n_create(a, workitem(label=label, accession="ACC-9"), uid)
            return d.status_of(status)

    assert await asyncio.to_thread(create) == 0x0000
    ds = await _rest_get(http, gateway, uid)
    assert ds["00741202"]["Value"] == [label]
    assert ds["00080016"]["Value"] == [d.PUSH]
    assert ds["0040A370"]["Value"][0]["00080050"]["Value"] == ["ACC-9"]
    assert "00081195" not in ds
    async with http.get(f"{gateway.base}/workitems",
                        params={"WorklistLabel": label,
                                "ReferencedRequestSequence.AccessionNumber": "ACC-9"}) as r:
        assert r.status == 200
        [found] = await r.json()
        assert found["00080018"]["Value"] == [uid]


async def test_claimed_via_dimse_binds_rest_to_its_transaction_uid(gateway, http):
    uid = new_uid()
    await _rest_create(http, gateway, uid)
    tx = new_uid()

    def claim():
        with d.association(gateway, ae_title="DIMSE_PERFORMER") as a:
            return d.status_of(d.change_state(a, uid, "IN PROGRESS", tx)[0])

    assert await asyncio.to_thread(claim) == 0x0000
    assert (await _rest_get(http, gateway, uid))["00741000"]["Value"] == ["IN PROGRESS"]
    async with http.post(f"{gateway.base}/workitems/{uid}?transaction-uid={new_uid()}",
                         json={"00741204": element("LO", "stolen")}, headers=JSON) as r:
        assert r.status == 400, await r.text()
    async with http.put(f"{gateway.base}/workitems/{uid}/state",
                        json=state_payload("IN PROGRESS", new_uid()), headers=JSON) as r:
        assert r.status == 409
    async with http.post(f"{gateway.base}/workitems/{uid}?transaction-uid={tx}",
                         json=completion_payload(), headers=JSON) as r:
        assert r.status == 200, await r.text()
    async with http.put(f"{gateway.base}/workitems/{uid}/state",
                        json=state_payload("COMPLETED", tx), headers=JSON) as r:
        assert r.status == 200, await r.text()

    def final_state():
        with d.association(gateway) as a:
            status, ds = d.n_get(a, uid, [0x00741000, 0x00081195])
            return d.status_of(status), ds

    status, ds = await asyncio.to_thread(final_state)
    assert status == 0x0000 and ds.ProcedureStepState == "COMPLETED"
    assert "TransactionUID" not in ds


async def test_claimed_via_rest_refuses_dimse_without_its_transaction_uid(gateway, http):
    uid = new_uid()
    await _rest_create(http, gateway, uid)
    tx = new_uid()
    async with http.put(f"{gateway.base}/workitems/{uid}/state",
                        json=state_payload("IN PROGRESS", tx), headers=JSON) as r:
        assert r.status == 200

    def over_dimse():
        with d.association(gateway) as a:
            wrong = d.status_of(d.n_set(a, uid, {"00741204": element("LO", "x")},
                                        tx=new_uid())[0])
            right = d.status_of(d.n_set(a, uid, completion_payload(), tx=tx)[0])
            done = d.status_of(d.change_state(a, uid, "COMPLETED", tx)[0])
            return wrong, right, done

    assert await asyncio.to_thread(over_dimse) == (0xC301, 0x0000, 0x0000)
    assert (await _rest_get(http, gateway, uid))["00741000"]["Value"] == ["COMPLETED"]


async def test_mixed_race_of_rest_and_dimse_claimers_has_exactly_one_winner(gateway, http):
    for _ in range(3):
        uid = new_uid()
        await _rest_create(http, gateway, uid)
        associations = await asyncio.gather(*(
            asyncio.to_thread(d.associate, gateway, d.ALL_UPS, f"CLAIMER{i}")
            for i in range(10)))
        assert all(a.is_established for a in associations)
        go = threading.Event()
        winners: dict[str, str] = {}

        def dimse_claim(assoc, tx):
            go.wait(10)
            status = d.status_of(d.change_state(assoc, uid, "IN PROGRESS", tx)[0])
            # the winner's answer, or the one the state machine names for a loser
            assert status in (0x0000, 0xC302), hex(status)  # C302: already IN PROGRESS
            if status == 0x0000:
                winners[f"dimse {tx}"] = tx
            return status

        async def rest_claim(tx):
            await asyncio.to_thread(go.wait, 10)
            async with http.put(f"{gateway.base}/workitems/{uid}/state",
                                json=state_payload("IN PROGRESS", tx), headers=JSON) as r:
                assert r.status in (200, 409), await r.text()
                if r.status == 200:
                    winners[f"rest {tx}"] = tx
                else:  # 409 carries the one DIMSE status for a loser
                    assert (await r.json())["status"] == "0xC302", await r.text()
                return r.status

        try:
            tasks = [asyncio.to_thread(dimse_claim, a, new_uid()) for a in associations]
            tasks += [rest_claim(new_uid()) for _ in range(10)]
            gathered = asyncio.gather(*tasks)
            await asyncio.sleep(0.05)
            go.set()
            statuses = await gathered
        finally:
            for a in associations:
                await asyncio.to_thread(a.release)
        assert len(winners) == 1, (winners, statuses)
        assert sum(s in (0x0000, 200) for s in statuses) == 1
        [tx] = winners.values()
        async with http.post(f"{gateway.base}/workitems/{uid}?transaction-uid={tx}",
                             json=completion_payload(), headers=JSON) as r:
            assert r.status == 200, await r.text()
