"""A create repeated with the same UID and the same content (a client retrying after no answer,
or after "outcome unknown") is answered as done, with a warning, and changes nothing; anything
else about an existing UID is still a duplicate. On the Redis stores and on the in-memory
ports (the ``service`` fixture)."""

from __future__ import annotations

import pytest

from gateway.ups import status as st
from gateway.ups.dataset import normalize
from gateway.ups.errors import UPSError
from tests.helpers import element, new_uid, workitem


async def test_identical_repeat_is_success_and_changes_nothing(service):
    uid = new_uid()
    first = await service.create(normalize(workitem(uid)), uid)
    assert not first.repeated
    before = await service.retrieve(uid)
    again = await service.create(normalize(workitem(uid)), uid)
    assert again.repeated and again.uid == uid
    assert "already existed with this content" in again.message
    assert await service.retrieve(uid) == before  # not even the modification time moved


async def test_repeat_without_the_payload_uid_but_same_uid_in_the_request(service):
    uid = new_uid()
    await service.create(normalize(workitem()), uid)  # UID from the request only
    assert (await service.create(normalize(workitem()), uid)).repeated


async def test_repeat_of_a_create_that_got_the_default_worklist_label(service):
    uid = new_uid()
    ds = workitem(uid)
    ds.pop("00741202")  # the gateway fills ups.default_worklist_label
    first = await service.create(normalize(dict(ds)), uid)
    assert first.status == st.CREATED_WITH_MODIFICATIONS
    assert (await service.create(normalize(dict(ds)), uid)).repeated


@pytest.mark.parametrize("change", [
    {"00741204": element("LO", "another label")},
    {"00100020": element("LO", "OTHER-PID")},
])
async def test_different_content_is_still_a_duplicate(service, change):
    uid = new_uid()
    await service.create(normalize(workitem(uid)), uid)
    with pytest.raises(UPSError) as refused:
        await service.create(normalize({**workitem(uid), **change}), uid)
    assert refused.value.status == st.DUPLICATE_INSTANCE


async def test_a_workitem_changed_since_is_not_a_repeat(service):
    uid, tx = new_uid(), new_uid()
    await service.create(normalize(workitem(uid)), uid)
    await service.change_state(uid, "IN PROGRESS", tx)
    with pytest.raises(UPSError) as refused:
        await service.create(normalize(workitem(uid)), uid)
    assert refused.value.status == st.DUPLICATE_INSTANCE
