"""The UPS state machine (PS3.4 Table CC.1.1-2) with the order of checks fixed by decisions.md.

Pure functions of (current state, request): no I/O, so every cell is testable in isolation. The
service applies the answer to the stored workitem in one atomic store commit.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.ups import status as st
from gateway.ups.errors import UPSError
from gateway.ups.uids import CANCELED, COMPLETED, IN_PROGRESS, SCHEDULED, STATES

TX_MISSING = "The Transaction UID is missing."
TX_INCORRECT = "The Transaction UID is incorrect."


@dataclass(frozen=True)
class Transition:
    """What a Change State request does: move to ``new_state`` (None: stay) and answer ``status``."""

    status: int
    new_state: str | None
    message: str = ""


def change_state(current: str | None, requested: str | None, tx: str | None,
                 stored_tx: str | None) -> Transition:
    """Decide a Change UPS State request (N-ACTION type 1 / PUT …/state)."""
    if current is None:
        raise UPSError(st.NO_SUCH_UPS, "No such workitem")
    if requested not in STATES:
        raise UPSError(st.INVALID_ARGUMENT_VALUE,
                       f"Procedure Step State (0074,1000) must be one of IN PROGRESS, COMPLETED, "
                       f"CANCELED; got {requested!r}")
    if requested == SCHEDULED:
        raise UPSError(st.ONLY_CREATE_SCHEDULES,
                       "A workitem may only become SCHEDULED by creation")
    if requested == IN_PROGRESS:
        if not tx:
            raise UPSError(st.WRONG_TRANSACTION_UID, TX_MISSING, reason="missing")
        if current == SCHEDULED:
            return Transition(st.SUCCESS, IN_PROGRESS)
        if current == IN_PROGRESS:
            raise UPSError(st.ALREADY_IN_PROGRESS, "The workitem is already IN PROGRESS")
        raise UPSError(st.MAY_NO_LONGER_BE_UPDATED, f"The workitem is already {current}")
    # requested is COMPLETED or CANCELED
    if current == SCHEDULED:
        raise UPSError(st.NOT_IN_PROGRESS,
                       f"The workitem is SCHEDULED: claim it (IN PROGRESS) before it can become "
                       f"{requested}, or use Request Cancellation")
    if current == requested:
        code = st.ALREADY_COMPLETED if current == COMPLETED else st.ALREADY_CANCELED
        return Transition(code, None, f"The UPS is already in the requested state of {current}.")
    if current != IN_PROGRESS:
        raise UPSError(st.MAY_NO_LONGER_BE_UPDATED, f"The workitem is already {current}")
    _check_tx(tx, stored_tx)
    return Transition(st.SUCCESS, requested)


def check_update(current: str | None, tx: str | None, stored_tx: str | None) -> None:
    """Decide whether an Update (N-SET) may touch the workitem at all."""
    if current is None:
        raise UPSError(st.NO_SUCH_UPS, "No such workitem")
    if current in (COMPLETED, CANCELED):
        raise UPSError(st.MAY_NO_LONGER_BE_UPDATED,
                       f"The workitem is {current} and may no longer be updated")
    if current == SCHEDULED:
        if tx:
            raise UPSError(st.NOT_IN_PROGRESS,
                           "The workitem is SCHEDULED (not claimed): an update must not carry a "
                           "Transaction UID")
        return
    _check_tx(tx, stored_tx)


@dataclass(frozen=True)
class CancelDecision:
    """What a Request Cancellation does to a workitem in a given state."""

    action: str  # "cancel" (SCP cancels it now), "notify" (Cancel Requested event), "none"
    status: int = st.SUCCESS
    message: str = ""


def request_cancel(current: str | None) -> CancelDecision:
    if current is None:
        raise UPSError(st.NO_SUCH_UPS, "No such workitem")
    if current == SCHEDULED:
        return CancelDecision("cancel")
    if current == IN_PROGRESS:
        return CancelDecision("notify")
    if current == COMPLETED:
        raise UPSError(st.CANCEL_ALREADY_COMPLETED, "The workitem is already COMPLETED")
    return CancelDecision("none", st.ALREADY_CANCELED,
                          "The UPS is already in the requested state of CANCELED.")


def _check_tx(tx: str | None, stored_tx: str | None) -> None:
    if not tx:
        raise UPSError(st.WRONG_TRANSACTION_UID, TX_MISSING, reason="missing")
    if tx != stored_tx:
        raise UPSError(st.WRONG_TRANSACTION_UID, TX_INCORRECT, reason="incorrect")
