"""MPPS driving UPS workitems (gateway/ups/mpps.py), on the Redis stores and the in-memory ports:
linking, the claim made for an MPPS, completion and discontinuation mapped into the workitem,
and MPPS instances kept whatever they refer to."""

from __future__ import annotations

import pytest

from gateway.ups import mpps as m
from gateway.ups import mwl
from gateway.ups import status as st
from gateway.ups.dataset import normalize
from gateway.ups.errors import UPSError
from tests.helpers import code, element, new_uid, workitem


def _scheduled(study: str, accession: str, **kw) -> dict:
    ds = workitem(station="CT01", accession=accession, study_uid=study, **kw)
    ds["00404026"] = element("SQ", code("CT", "DCM"))
    return ds


def mpps_create(*, step_id: str = "", study: str = "", accession: str = "") -> dict:
    step = {"00400009": element("SH", *([step_id] if step_id else [])),
            "0020000D": element("UI", *([study] if study else [])),
            "00080050": element("SH", *([accession] if accession else []))}
    return normalize({
        "00400270": element("SQ", step),
        "00100010": element("PN", {"Alphabetic": "Doe^John"}),
        "00100020": element("LO", "PID1"),
        "00400241": element("AE", "CT01"),
        "00400242": element("SH", "CT room 1"),
        "00400244": element("DA", "20261125"),
        "00400245": element("TM", "101500"),
        "00400252": element("CS", "IN PROGRESS"),
        "00400253": element("SH", "PPS-1"),
        "00080060": element("CS", "CT"),
        "00400250": element("DA"), "00400251": element("TM"),
    })


def mpps_completed(study: str) -> dict:
    return normalize({
        "00400252": element("CS", "COMPLETED"),
        "00400250": element("DA", "20261125"),
        "00400251": element("TM", "103000"),
        "00081070": element("PN", {"Alphabetic": "Tech^Tom"}),
        "00400340": element("SQ", {
            "0020000E": element("UI", "1.2.3.4.5"),
            "00080054": element("AE", "PACS"),
            "00081140": element("SQ", {"00081150": element("UI", "1.2.840.10008.5.1.4.1.1.2"),
                                       "00081155": element("UI", "1.2.3.4.5.6")}),
        }),
    })


@pytest.fixture
def mpps(service):
    worklist = mwl.ModalityWorklist(service.store.search_stream, mwl.Settings())
    return m.MppsService(service.store, worklist)


async def _scheduled_uid(service, **kw) -> tuple[str, str]:
    uid, study = new_uid(), new_uid()
    await service.create(normalize(_scheduled(study, kw.pop("accession", "ACC1"), **kw)), uid)
    return uid, study


async def test_in_progress_claims_and_completed_completes_with_the_performed_information(
        service, mpps):
    uid, study = await _scheduled_uid(service)
    created = await mpps.create(mpps_create(step_id=mwl.step_id(uid)), requester="CT01")
    assert created.workitem == uid and created.uid_assigned
    record = await service.store.load(uid)
    assert (record.state, record.performer) == ("IN PROGRESS", "CT01")
    stored = await service.store.load_mpps(created.uid)
    assert stored.tx == record.tx and stored.tx  # the claim's Transaction UID, kept for it
    claimed = await service.retrieve(uid)
    assert list(claimed) == sorted(claimed)  # stored in canonical form

    await mpps.update(created.uid, mpps_completed(study), requester="CT01")
    ds = await service.retrieve(uid)
    assert ds["00741000"]["Value"] == ["COMPLETED"]
    [performed] = ds["00741216"]["Value"]
    assert performed["00404028"]["Value"][0]["00080100"]["Value"] == ["CT01"]
    assert performed["00404029"]["Value"][0]["00080100"]["Value"] == ["CT"]
    assert performed["00404050"]["Value"] == ["20261125101500"]
    assert performed["00404051"]["Value"] == ["20261125103000"]
    assert performed["00404035"]["Value"][0]["00404037"]["Value"] == [{"Alphabetic": "Tech^Tom"}]
    [output] = performed["00404033"]["Value"]
    assert output["0020000E"]["Value"] == ["1.2.3.4.5"]
    assert output["0020000D"]["Value"] == [study]
    assert output["00081199"]["Value"][0]["00081155"]["Value"] == ["1.2.3.4.5.6"]
    kept = await mpps.retrieve(created.uid)
    assert kept[m.LINKED_WORKITEM]["Value"] == [uid]
    assert "completed" in kept[m.LINK_NOTE]["Value"][0]
    with pytest.raises(UPSError) as refused:
        await mpps.update(created.uid, normalize({"00400252": element("CS", "DISCONTINUED")}))
    assert refused.value.status == st.PROCESSING_FAILURE


async def test_linked_by_study_and_accession_of_exactly_one(service, mpps):
    accession = f"A{new_uid()[-12:]}"
    uid, study = await _scheduled_uid(service, accession=accession)
    created = await mpps.create(mpps_create(study=study, accession=accession))
    assert created.workitem == uid
    assert (await service.store.load(uid)).state == "IN PROGRESS"


async def test_discontinued_cancels_with_the_reason(service, mpps):
    uid, _ = await _scheduled_uid(service)
    created = await mpps.create(mpps_create(step_id=mwl.step_id(uid)))
    reason = code("110514", "DCM", "Incorrect worklist entry selected")
    await mpps.update(created.uid, normalize({
        "00400252": element("CS", "DISCONTINUED"),
        "00400281": element("SQ", reason)}))
    ds = await service.retrieve(uid)
    assert ds["00741000"]["Value"] == ["CANCELED"]
    progress = ds["00741002"]["Value"][0]
    assert progress["0074100E"]["Value"][0]["00080100"]["Value"] == ["110514"]


async def test_an_mpps_referring_to_nothing_known_is_kept(service, mpps):
    created = await mpps.create(mpps_create(step_id="NOSUCHSTEP"))
    assert created.workitem is None
    kept = await mpps.retrieve(created.uid)
    assert kept["00400253"]["Value"] == ["PPS-1"]
    assert kept[m.LINKED_WORKITEM] == {"vr": "UI"}
    await mpps.update(created.uid, mpps_completed(new_uid()))
    assert (await mpps.retrieve(created.uid))["00400252"]["Value"] == ["COMPLETED"]


async def test_a_workitem_claimed_over_ups_is_not_taken_over(service, mpps):
    uid, study = await _scheduled_uid(service)
    tx = new_uid()
    await service.change_state(uid, "IN PROGRESS", tx, requester="AI")
    created = await mpps.create(mpps_create(step_id=mwl.step_id(uid)), requester="CT01")
    record = await service.store.load(uid)
    assert (record.state, record.tx, record.performer) == ("IN PROGRESS", tx, "AI")
    kept = await mpps.retrieve(created.uid)
    assert "not taken over" in kept[m.LINK_NOTE]["Value"][0]
    await mpps.update(created.uid, mpps_completed(study))
    assert (await service.store.load(uid)).state == "IN PROGRESS"  # still the UPS performer's


async def test_refusals(service, mpps):
    with pytest.raises(UPSError) as bad:
        await mpps.create(normalize({**mpps_create(), "00400252": element("CS", "COMPLETED")}))
    assert bad.value.status == st.INVALID_ATTRIBUTE_VALUE
    uid = new_uid()
    await mpps.create(mpps_create(), uid)
    with pytest.raises(UPSError) as duplicate:
        await mpps.create(mpps_create(), uid)
    assert duplicate.value.status == st.DUPLICATE_INSTANCE
    with pytest.raises(UPSError) as unknown:
        await mpps.update(new_uid(), mpps_completed(new_uid()))
    assert unknown.value.status == st.NO_SUCH_INSTANCE
    with pytest.raises(UPSError) as disagreeing:  # never silently overwritten
        await mpps.create({**mpps_create(), "00080018": element("UI", new_uid())}, new_uid())
    assert disagreeing.value.status == st.INVALID_ATTRIBUTE_VALUE


async def test_an_unlinked_mpps_links_at_a_later_n_set(service, mpps):
    accession, study = f"A{new_uid()[-12:]}", new_uid()
    created = await mpps.create(mpps_create(study=study, accession=accession))
    assert created.workitem is None
    uid = new_uid()  # the order arrives after the modality started
    await service.create(normalize(_scheduled(study, accession)), uid)
    updated = await mpps.update(created.uid, mpps_completed(study), requester="CT01")
    assert updated.workitem == uid
    record = await service.store.load(uid)
    assert (record.state, record.performer) == ("COMPLETED", "CT01")
    kept = await mpps.retrieve(created.uid)
    assert kept[m.LINKED_WORKITEM]["Value"] == [uid]


async def test_mpps_instances_expire_open_ones_later_than_final_ones(store, redis_client, keys):
    worklist = mwl.ModalityWorklist(store.search_stream, mwl.Settings())
    service = m.MppsService(store, worklist, m.Settings(retention_seconds=3600,
                                                        open_retention_seconds=7200))
    created = await service.create(mpps_create(step_id="NOTHING"))
    assert 3600 < await redis_client.ttl(keys.mpps(created.uid)) <= 7200
    await service.update(created.uid, mpps_completed(new_uid()))
    assert 0 < await redis_client.ttl(keys.mpps(created.uid)) <= 3600


async def test_concurrent_mpps_for_one_workitem_claim_it_once(service, mpps):
    import asyncio

    uid, _ = await _scheduled_uid(service)
    outcomes = await asyncio.gather(*(mpps.create(mpps_create(step_id=mwl.step_id(uid)),
                                                  requester=f"CT{k}") for k in range(8)))
    claimed = [o for o in outcomes if o.note.startswith("claimed")]
    assert len(claimed) == 1
    assert all("not taken over" in o.note for o in outcomes if o not in claimed)
    record = await service.store.load(uid)
    assert record.tx == (await service.store.load_mpps(claimed[0].uid)).tx
