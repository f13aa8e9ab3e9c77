"""The UPS state machine, cell by cell (decisions.md "State machine (order of checks)").

One table drives both the pure functions of ``gateway.ups.statemachine`` and the UPS service on a
real Redis, where the stored state and Transaction UID are checked after every request.
"""

from __future__ import annotations

import pytest

from gateway.ups import statemachine as sm
from gateway.ups import status as st
from gateway.ups.dataset import normalize
from gateway.ups.errors import UPSError
from gateway.ups.service import Settings, UPSService
from tests.helpers import completion_payload, new_uid, workitem

S, P, C, X = "SCHEDULED", "IN PROGRESS", "COMPLETED", "CANCELED"
TX, OTHER = "1.2.3.100", "1.2.3.200"  # the recorded Transaction UID and somebody else's


def ok(status=st.SUCCESS, result=None):
    return ("ok", status, result)


def err(status, reason=None):
    return ("err", status, reason)


# (operation, current state, arguments, expected). ``None`` current state = no such workitem.
# change_state args: (requested state, tx sent); the stored Transaction UID is TX when IN PROGRESS.
# check_update args: (tx sent,). request_cancel args: ().
TABLE = [
    # 1. unknown instance → C307, whatever is asked
    ("change_state", None, (P, TX), err(st.NO_SUCH_UPS)),
    ("change_state", None, (C, TX), err(st.NO_SUCH_UPS)),
    ("change_state", None, (X, TX), err(st.NO_SUCH_UPS)),
    ("change_state", None, (S, None), err(st.NO_SUCH_UPS)),
    ("check_update", None, (None,), err(st.NO_SUCH_UPS)),
    ("check_update", None, (TX,), err(st.NO_SUCH_UPS)),
    ("request_cancel", None, (), err(st.NO_SUCH_UPS)),
    # 2. → IN PROGRESS
    ("change_state", S, (P, TX), ok(st.SUCCESS, P)),
    ("change_state", P, (P, TX), err(st.ALREADY_IN_PROGRESS)),
    ("change_state", P, (P, OTHER), err(st.ALREADY_IN_PROGRESS)),
    ("change_state", C, (P, TX), err(st.MAY_NO_LONGER_BE_UPDATED)),
    ("change_state", X, (P, TX), err(st.MAY_NO_LONGER_BE_UPDATED)),
    ("change_state", S, (P, None), err(st.WRONG_TRANSACTION_UID, "missing")),
    ("change_state", S, (P, ""), err(st.WRONG_TRANSACTION_UID, "missing")),
    ("change_state", P, (P, None), err(st.WRONG_TRANSACTION_UID, "missing")),
    # 3. → COMPLETED
    ("change_state", S, (C, TX), err(st.NOT_IN_PROGRESS)),
    ("change_state", S, (C, None), err(st.NOT_IN_PROGRESS)),
    ("change_state", C, (C, TX), ok(st.ALREADY_COMPLETED, None)),
    ("change_state", C, (C, OTHER), ok(st.ALREADY_COMPLETED, None)),
    ("change_state", C, (C, None), ok(st.ALREADY_COMPLETED, None)),
    ("change_state", X, (C, TX), err(st.MAY_NO_LONGER_BE_UPDATED)),
    ("change_state", P, (C, None), err(st.WRONG_TRANSACTION_UID, "missing")),
    ("change_state", P, (C, OTHER), err(st.WRONG_TRANSACTION_UID, "incorrect")),
    ("change_state", P, (C, TX), ok(st.SUCCESS, C)),
    # 3. → CANCELED
    ("change_state", S, (X, TX), err(st.NOT_IN_PROGRESS)),
    ("change_state", S, (X, None), err(st.NOT_IN_PROGRESS)),
    ("change_state", X, (X, TX), ok(st.ALREADY_CANCELED, None)),
    ("change_state", X, (X, OTHER), ok(st.ALREADY_CANCELED, None)),
    ("change_state", C, (X, TX), err(st.MAY_NO_LONGER_BE_UPDATED)),
    ("change_state", P, (X, None), err(st.WRONG_TRANSACTION_UID, "missing")),
    ("change_state", P, (X, OTHER), err(st.WRONG_TRANSACTION_UID, "incorrect")),
    ("change_state", P, (X, TX), ok(st.SUCCESS, X)),
    # 4. → SCHEDULED
    ("change_state", S, (S, None), err(st.ONLY_CREATE_SCHEDULES)),
    ("change_state", S, (S, TX), err(st.ONLY_CREATE_SCHEDULES)),
    ("change_state", P, (S, TX), err(st.ONLY_CREATE_SCHEDULES)),
    ("change_state", C, (S, TX), err(st.ONLY_CREATE_SCHEDULES)),
    ("change_state", X, (S, TX), err(st.ONLY_CREATE_SCHEDULES)),
    # a state that does not exist
    ("change_state", S, ("DONE", TX), err(st.INVALID_ARGUMENT_VALUE)),
    ("change_state", P, (None, TX), err(st.INVALID_ARGUMENT_VALUE)),
    # 5. N-SET / Update
    ("check_update", S, (None,), ok()),
    ("check_update", S, (TX,), err(st.NOT_IN_PROGRESS)),
    ("check_update", P, (TX,), ok()),
    ("check_update", P, (None,), err(st.WRONG_TRANSACTION_UID, "missing")),
    ("check_update", P, (OTHER,), err(st.WRONG_TRANSACTION_UID, "incorrect")),
    ("check_update", C, (None,), err(st.MAY_NO_LONGER_BE_UPDATED)),
    ("check_update", C, (TX,), err(st.MAY_NO_LONGER_BE_UPDATED)),
    ("check_update", X, (None,), err(st.MAY_NO_LONGER_BE_UPDATED)),
    ("check_update", X, (TX,), err(st.MAY_NO_LONGER_BE_UPDATED)),
    # Request Cancellation
    ("request_cancel", S, (), ok(st.SUCCESS, "cancel")),
    ("request_cancel", P, (), ok(st.SUCCESS, "notify")),
    ("request_cancel", C, (), err(st.CANCEL_ALREADY_COMPLETED)),
    ("request_cancel", X, (), ok(st.ALREADY_CANCELED, "none")),
]


def _cell_id(cell) -> str:
    op, current, args, (kind, status, _) = cell
    return f"{op}-{current}-{'-'.join(map(str, args))}->{kind}{status:04X}".replace(" ", "_")


def _call_pure(op, current, args):
    stored_tx = TX if current == P else None
    if op == "change_state":
        requested, tx = args
        return sm.change_state(current, requested, tx, stored_tx)
    if op == "check_update":
        (tx,) = args
        return sm.check_update(current, tx, stored_tx)
    return sm.request_cancel(current)


@pytest.mark.parametrize("cell", TABLE, ids=[_cell_id(c) for c in TABLE])
def test_transition_table(cell):
    op, current, args, (kind, status, expected) = cell
    if kind == "err":
        with pytest.raises(UPSError) as caught:
            _call_pure(op, current, args)
        assert caught.value.status == status, caught.value.message
        if expected:
            assert caught.value.reason == expected
        assert caught.value.message
        return
    result = _call_pure(op, current, args)
    if op == "change_state":
        assert (result.status, result.new_state) == (status, expected)
        if status != st.SUCCESS:  # B304 / B306 say why
            assert result.message == f"The UPS is already in the requested state of {current}."
    elif op == "check_update":
        assert result is None
    else:
        assert (result.action, result.status) == (expected, status)


def test_transaction_uid_messages_are_the_standard_texts():
    with pytest.raises(UPSError) as missing:
        sm.change_state(P, C, None, TX)
    with pytest.raises(UPSError) as incorrect:
        sm.change_state(P, C, OTHER, TX)
    assert missing.value.message == "The Transaction UID is missing."
    assert incorrect.value.message == "The Transaction UID is incorrect."


def test_every_state_pair_is_in_the_table():
    """Guard against a silently shrinking table: every (current, requested) change_state pair."""
    pairs = {(c[1], c[2][0]) for c in TABLE if c[0] == "change_state"}
    for current in (None, S, P, C, X):
        for requested in (S, P, C, X):
            if current is None:
                continue
            assert (current, requested) in pairs, (current, requested)


# ---- the same table through the service, on a real Redis --------------------------------

async def _make(service, state: str | None, *, completable: bool = True) -> str:
    """A workitem in ``state`` (None: a UID that does not exist), claimed with TX if needed."""
    uid = new_uid()
    if state is None:
        return uid
    await service.create(normalize(workitem(uid)))
    if state == S:
        return uid
    await service.change_state(uid, P, TX, requester="PERFORMER")
    if completable or state == C:
        await service.update(uid, normalize(completion_payload()), TX)
    if state == C:
        await service.change_state(uid, C, TX)
    elif state == X:
        await service.change_state(uid, X, TX)
    return uid


async def _stored(service, uid):
    record = await service.store.load(uid)
    return (record.state, record.tx) if record else (None, None)


# Through the service a cancel request on an IN PROGRESS workitem must reach somebody: with no
# subscriber and a performer without a known address it is C312 (the notify case is tested below).
SERVICE_TABLE = [c if c[:2] != ("request_cancel", P) else
                 ("request_cancel", P, (), err(st.PERFORMER_UNREACHABLE))
                 for c in TABLE if c[0] != "change_state" or c[2][0] in (S, P, C, X)]


@pytest.mark.parametrize("cell", SERVICE_TABLE, ids=[_cell_id(c) for c in SERVICE_TABLE])
async def test_transition_table_through_service(service, cell):
    op, current, args, (kind, status, expected) = cell
    uid = await _make(service, current)
    before = await _stored(service, uid)
    if current is not None:
        assert before[0] == current
        assert before[1] == (TX if current == P else None)
    if op == "change_state":
        call = service.change_state(uid, args[0], args[1], requester="PERFORMER")
    elif op == "check_update":
        call = service.update(uid, normalize({"00741204": {"vr": "LO", "Value": ["relabelled"]}}),
                              args[0])
    else:
        call = service.request_cancel(uid, {})
    if kind == "err":
        with pytest.raises(UPSError) as caught:
            await call
        assert caught.value.status == status, caught.value.message
        # a refused request changes nothing
        assert await _stored(service, uid) == before
        if current is not None and op == "check_update":
            ds = await service.retrieve(uid)
            assert ds["00741204"]["Value"] == ["AI analysis"]
        return
    outcome = await call
    assert outcome.status == status
    state_after, tx_after = await _stored(service, uid)
    if op == "change_state":
        if expected is None:  # B304 / B306: no change
            assert (state_after, tx_after) == before
        else:
            assert state_after == expected
            # the Transaction UID is recorded by the claim and cleared on a final state
            assert tx_after == (TX if expected == P else None)
    elif op == "check_update":
        assert (state_after, tx_after) == before
        ds = await service.retrieve(uid)
        assert ds["00741204"]["Value"] == ["relabelled"]
    else:
        if expected == "cancel":
            assert state_after == X and tx_after is None
        else:
            assert (state_after, tx_after) == before
    ds = await service.retrieve(uid)
    assert ds["00741000"]["Value"] == [state_after]
    assert "00081195" not in ds


async def test_in_progress_to_completed_without_final_state_attributes_is_c304(service):
    uid = await _make(service, P, completable=False)
    with pytest.raises(UPSError) as caught:
        await service.change_state(uid, C, TX)
    assert caught.value.status == st.FINAL_STATE_REQUIREMENTS_NOT_MET
    assert "UnifiedProcedureStepPerformedProcedureSequence" in caught.value.message
    assert await _stored(service, uid) == (P, TX)


async def test_in_progress_to_completed_with_an_incomplete_performed_item_is_c304(service):
    uid = await _make(service, P, completable=False)
    payload = completion_payload()
    del payload["00741216"]["Value"][0]["00404051"]  # no end DateTime
    await service.update(uid, normalize(payload), TX)
    with pytest.raises(UPSError) as caught:
        await service.change_state(uid, C, TX)
    assert caught.value.status == st.FINAL_STATE_REQUIREMENTS_NOT_MET
    assert "PerformedProcedureStepEndDateTime" in caught.value.message
    assert await _stored(service, uid) == (P, TX)


async def test_claim_then_wrong_claimant_then_right_one_completes(service):
    """A second claimant's Transaction UID never works; the first one's still does."""
    uid = await _make(service, S)
    await service.change_state(uid, P, TX)
    with pytest.raises(UPSError) as second:
        await service.change_state(uid, P, OTHER)
    assert second.value.status == st.ALREADY_IN_PROGRESS
    with pytest.raises(UPSError) as wrong:
        await service.update(uid, normalize(completion_payload()), OTHER)
    assert wrong.value.status == st.WRONG_TRANSACTION_UID
    await service.update(uid, normalize(completion_payload()), TX)
    assert (await service.change_state(uid, C, TX)).status == st.SUCCESS
    assert await _stored(service, uid) == (C, None)


async def test_cancel_request_on_in_progress_reaches_a_performer_with_an_address(service):
    """IN PROGRESS + Request Cancellation: no state change, 0x0000 when the performer (the
    claiming AE) can be told because the gateway knows its address."""
    told = UPSService(service.store, service.watch.subs,
                      Settings(direct_event_aes=frozenset({"PERFORMER"})))
    uid = await _make(told, P)
    outcome = await told.request_cancel(uid, {}, requester="SOMEONE")
    assert outcome.status == st.SUCCESS
    assert await _stored(told, uid) == (P, TX)
    # claimed by an AE without an address: nobody can be told
    other = await _make(service, S)
    await told.change_state(other, P, TX, requester="UNKNOWN_AE")
    with pytest.raises(UPSError) as caught:
        await told.request_cancel(other, {})
    assert caught.value.status == st.PERFORMER_UNREACHABLE
    assert await _stored(told, other) == (P, TX)


async def test_a_filtered_global_subscription_needs_matching_keys(service):
    """The one rule both adapters meet (PS3.4 CC.2.3.2: the filtered UID comes with matching
    keys): without them it would be a subscription to every workitem."""
    from gateway.ups.matching import identifier_terms
    from gateway.ups.uids import FILTERED_GLOBAL_SUBSCRIPTION
    with pytest.raises(UPSError) as refused:
        await service.subscribe(FILTERED_GLOBAL_SUBSCRIPTION, "FILTERER", False, None)
    assert refused.value.status == st.INVALID_ARGUMENT_VALUE
    assert "needs a filter" in refused.value.message
    terms = identifier_terms({"00741202": {"vr": "LO", "Value": ["AI"]}})  # Worklist Label
    await service.subscribe(FILTERED_GLOBAL_SUBSCRIPTION, "FILTERER", False, terms)
