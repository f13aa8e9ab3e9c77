"""The UPS service API: the one place where UPS operations happen, whichever protocol asked.

Each operation reads the workitem, decides with the pure state machine and attribute rules, and
commits the result together with its events in one atomic store step. When another writer got
there first (a version conflict) it reads again and decides again, so concurrent requests on any
number of gateway processes serialise exactly as the standard requires.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import timezone
from typing import AsyncIterator

import orjson

from gateway.ups import events as ev
from gateway.ups import rules, statemachine
from gateway.ups import status as st
from gateway.ups import tags as t
from gateway.ups.dataset import (Dataset, code_item, describe, element, first, has_value, items,
                                 dictionary_vr, new_uid, put, select, without_character_sets)
from gateway.ups.dicomtime import UTC, format_dt
from gateway.ups.errors import InvalidDataset, NoSuchWorkitem, UPSError, WorkitemGone
from gateway.ups.matching import Query, Terms
from gateway.ups.attempt import Attempt, until_committed
from gateway.ups.ports import (Change, Conflict, NoRecipient, QueuedEvent, Record,
                               SubscriptionStore, WorkitemStore)
from gateway.ups.watch import Watch
from gateway.ups.uids import (CANCELED, COMPLETED, FINAL_STATES, IN_PROGRESS, UNSPECIFIED_REASON,
                              UPS_PUSH)

log = logging.getLogger("gateway.ups")

@dataclass
class Settings:
    default_worklist_label: str = "DEFAULT"
    timezone: timezone = UTC
    search_default_limit: int = 100
    search_max_limit: int = 1000
    max_attempts: int = 64  # decisions overtaken by other writers before giving up
    # How long a change waits for the store to confirm its commit; then "outcome unknown".
    commit_wait_seconds: float | None = 10.0
    # AEs that can be told of events even without a subscription (DIMSE peers with an address).
    direct_event_aes: frozenset[str] = frozenset()
    # Distinct AEs that may hold subscriptions (0: no limit): every one of them is subscribed to
    # each new workitem by its create commit, so they bound what a create costs.
    max_subscriber_aes: int = 0


@dataclass
class Outcome:
    """A successful operation: ``status`` is 0x0000 or a warning; ``modifications`` say what the
    gateway changed in the request, ``message`` explains a warning."""

    uid: str
    status: int = st.SUCCESS
    message: str = ""
    modifications: list[str] = field(default_factory=list)
    uid_assigned: bool = False
    found: bool = True  # unsubscribe/suspend: whether there was such a subscription
    repeated: bool = False  # create: the workitem already existed with this content


@dataclass
class SearchResult:
    """One page of matches, projected, each the text of a DICOM JSON object: ``to_json``
    splices them into a response, ``items`` decodes them."""

    rendered: list[bytes]
    total: int
    offset: int

    @property
    def items(self) -> list[Dataset]:
        return [orjson.loads(item) for item in self.rendered]

    def to_json(self) -> bytes:
        return b"[" + b",".join(self.rendered) + b"]"

    @property
    def remaining(self) -> int:
        return max(0, self.total - self.offset - len(self.rendered))


class UPSService:
    def __init__(self, store: WorkitemStore, subscriptions: SubscriptionStore,
                 settings: Settings | None = None):
        self.store = store
        self.settings = settings or Settings()
        self.watch = Watch(store, subscriptions, self.settings)

    # ---- create ------------------------------------------------------------------------

    async def create(self, ds: Dataset, uid: str | None = None, *,
                     requester: str | None = None) -> Outcome:
        """Create a SCHEDULED workitem from a normalised dataset (N-CREATE / Create Workitem).
        The service takes ownership of ``ds`` (adapters pass a freshly decoded one)."""
        payload_uid = first(ds, t.SOPInstanceUID)
        if uid and payload_uid and uid != payload_uid:
            raise InvalidDataset(f"{describe(t.SOPInstanceUID)} {payload_uid} differs from the "
                                 f"workitem UID {uid} of the request")
        uid = uid or payload_uid
        ds = without_character_sets(ds)
        outcome = Outcome(uid or "", uid_assigned=not uid)
        if not uid:
            outcome.uid = uid = new_uid()
            outcome.modifications.append(f"assigned workitem UID {uid}")
        rules.check_create(ds)
        if first(ds, t.SOPClassUID, UPS_PUSH) != UPS_PUSH:
            outcome.modifications.append(f"{describe(t.SOPClassUID)} set to UPS Push")
        if not has_value(ds, t.WorklistLabel):
            put(ds, t.WorklistLabel, "LO", self.settings.default_worklist_label)
            outcome.modifications.append(
                f"{describe(t.WorklistLabel)} set to {self.settings.default_worklist_label!r}")
        put(ds, t.SOPClassUID, "UI", UPS_PUSH)
        put(ds, t.SOPInstanceUID, "UI", uid)
        put(ds, t.ScheduledProcedureStepModificationDateTime, "DT", format_dt())
        ds = dict(sorted(ds.items()))
        creation_events = [QueuedEvent(ev.STATE_REPORT, ev.state_report(ds))]
        if assigned := ev.assigned(ds):
            creation_events.append(QueuedEvent(ev.ASSIGNED, assigned))

        async def decide(attempt: Attempt) -> None:
            global_version, subscribers = await self.watch.subscribers_for_new(ds)
            change = workitem_change(ds, add_subscriptions=tuple(subscribers),
                                     global_version=global_version)
            try:
                await attempt.commit(uid, 0, change, creation_events)
            except Conflict as conflict:
                if conflict.current_version:
                    if await self._created_alike(uid, ds):
                        outcome.repeated = True
                        return
                    raise UPSError(st.DUPLICATE_INSTANCE,
                                   f"A workitem with UID {uid} already exists") from None
                self.watch.forget_globals()  # they changed meanwhile: read them, decide again
                raise
            except WorkitemGone:
                raise UPSError(st.DUPLICATE_INSTANCE,
                               f"A workitem with UID {uid} existed and was deleted") from None

        await until_committed(uid, self.store, decide, self.settings.max_attempts,
                              self.settings.commit_wait_seconds)
        if outcome.repeated:
            outcome.modifications = []
            outcome.message = ("The workitem already existed with this content; nothing was "
                               f"changed (a repeated create of {uid})")
            log.info("workitem create repeated: already there, identical",
                     extra={"uid": uid, "ae": requester})
            return outcome
        if outcome.modifications:
            outcome.status = st.CREATED_WITH_MODIFICATIONS
        outcome.message = "; ".join(outcome.modifications)
        log.info("workitem created", extra={"uid": uid, "ae": requester,
                                            "modifications": outcome.modifications})
        return outcome

    async def _created_alike(self, uid: str, ds: Dataset) -> bool:
        """Whether workitem ``uid`` is what creating it from ``ds`` would make, bar the
        modification time: a create repeated (a client retrying after no answer or an
        "outcome unknown") is then answered as done, so retrying clients converge. A workitem
        changed since (claimed, updated) is not alike: that is a duplicate."""
        record = await self.store.load(uid)
        if record is None:
            return False
        stamp = t.ScheduledProcedureStepModificationDateTime
        stored = record.dataset
        return (record.state == "SCHEDULED" and not record.tx
                and {k: v for k, v in stored.items() if k != stamp}
                == {k: v for k, v in ds.items() if k != stamp})

    # ---- retrieve ----------------------------------------------------------------------

    async def retrieve(self, uid: str, keys: list[str] | None = None) -> Dataset:
        """The workitem (N-GET / Retrieve Workitem); never includes the Transaction UID.
        With ``keys`` (an N-GET Attribute Identifier List), those attributes: one the workitem
        lacks comes back empty (zero-length), as C-FIND return keys do."""
        record = await self.store.load(uid)
        if record is None:
            raise NoSuchWorkitem(uid)
        if not keys:
            return record.dataset
        ds = record.dataset
        return {key: ds[key] if key in ds else element(_empty_vr(key))
                for key in sorted(set(keys)) if key != t.TransactionUID
                and not key.startswith("0000") and key[4:] != "0000"}  # never in a dataset

    # ---- update ------------------------------------------------------------------------

    async def update(self, uid: str, mods: Dataset, tx: str | None = None, *,
                     requester: str | None = None) -> Outcome:
        """Apply an N-SET modification list / Update Workitem payload."""
        mods = dict(without_character_sets(mods))
        payload_tx = first(mods, t.TransactionUID)
        mods.pop(t.TransactionUID, None)
        if tx and payload_tx and tx != payload_tx:
            raise UPSError(st.WRONG_TRANSACTION_UID,
                           "The Transaction UID in the payload differs from the one in the request",
                           reason="incorrect")
        tx = tx or payload_tx

        async def decide(attempt: Attempt) -> None:
            record = await attempt.load(uid)
            statemachine.check_update(record.state, tx, record.tx)
            before = record.dataset
            applied = rules.check_update(mods, before)  # what an echo leaves out is no change
            # Text is Unicode and no character set is kept (a workitem stored by an earlier
            # version may still hold one: it goes, so nothing can end up multi-valued).
            after = {**before, **applied}
            after.pop(t.SpecificCharacterSet, None)
            put(after, t.ScheduledProcedureStepModificationDateTime, "DT", format_dt())
            after = dict(sorted(after.items()))
            change = workitem_change(after, tx=record.tx, performer=record.performer)
            events = []
            if before.get(t.InputReadinessState) != after.get(t.InputReadinessState):
                events.append(QueuedEvent(ev.STATE_REPORT, change.state_report))
            if (before.get(t.ProcedureStepProgressInformationSequence)
                    != after.get(t.ProcedureStepProgressInformationSequence)):
                events.append(QueuedEvent(ev.PROGRESS_REPORT, ev.progress_report(after)))
            if ev.assignment_changed(before, after) and (assigned := ev.assigned(after)):
                events.append(QueuedEvent(ev.ASSIGNED, assigned))
            await attempt.commit(uid, record.version, change, events)

        await until_committed(uid, self.store, decide, self.settings.max_attempts,
                              self.settings.commit_wait_seconds)
        log.info("workitem updated", extra={"uid": uid, "ae": requester,
                                            "attributes": sorted(mods)})
        return Outcome(uid)

    # ---- change state ------------------------------------------------------------------

    async def change_state(self, uid: str, state: str | None, tx: str | None, *,
                           requester: str | None = None) -> Outcome:
        """Change UPS State (N-ACTION type 1 / PUT …/state). ``requester`` becomes the performer
        of a claim (it is told of cancel requests)."""

        async def decide(attempt: Attempt) -> Outcome:
            record = await attempt.load(uid)
            decision = statemachine.change_state(record.state, state, tx, record.tx)
            if decision.new_state is None:
                return Outcome(uid, decision.status, decision.message)
            ds = record.dataset  # freshly read: ours to change
            outcome = Outcome(uid)
            put(ds, t.ProcedureStepState, "CS", decision.new_state)
            if decision.new_state == CANCELED:
                outcome.modifications = fill_cancellation(ds, {})
            if decision.new_state in FINAL_STATES:
                unmet = (rules.unmet_for_completed(ds) if decision.new_state == COMPLETED
                         else rules.unmet_for_canceled(ds))
                if unmet:
                    raise UPSError(st.FINAL_STATE_REQUIREMENTS_NOT_MET,
                                   f"Cannot become {decision.new_state}: missing "
                                   + ", ".join(unmet))
            put(ds, t.ScheduledProcedureStepModificationDateTime, "DT", format_dt())
            claim = decision.new_state == IN_PROGRESS
            change = workitem_change(ds, tx=tx if claim else None,
                                     performer=requester if claim else record.performer)
            await attempt.commit(uid, record.version, change,
                                 [QueuedEvent(ev.STATE_REPORT, change.state_report)])
            outcome.message = "; ".join(outcome.modifications)
            log.info("workitem state changed", extra={"uid": uid, "ae": requester,
                                                      "state": decision.new_state})
            return outcome

        return await until_committed(uid, self.store, decide, self.settings.max_attempts,
                              self.settings.commit_wait_seconds)

    # ---- request cancellation ------------------------------------------------------------

    async def request_cancel(self, uid: str, request: Dataset | None = None, *,
                             requester: str | None = None) -> Outcome:
        """Request UPS Cancel (N-ACTION type 2 / POST …/cancelrequest)."""
        request = request or {}

        async def decide(attempt: Attempt) -> Outcome:
            record = await attempt.load(uid)
            decision = statemachine.request_cancel(record.state)
            if decision.action == "none":
                return Outcome(uid, decision.status, decision.message)
            if decision.action == "notify":
                return await self._notify_cancel(attempt, record, request, requester)
            ds = record.dataset  # freshly read: ours to change
            put(ds, t.ProcedureStepState, "CS", CANCELED)
            fill_cancellation(ds, request)
            put(ds, t.ScheduledProcedureStepModificationDateTime, "DT", format_dt())
            change = workitem_change(ds)
            events = [QueuedEvent(ev.STATE_REPORT, ev.state_report(ds, IN_PROGRESS)),
                      QueuedEvent(ev.STATE_REPORT, change.state_report)]
            await attempt.commit(uid, record.version, change, events)
            log.info("scheduled workitem canceled on request", extra={"uid": uid, "ae": requester})
            return Outcome(uid)

        return await until_committed(uid, self.store, decide, self.settings.max_attempts,
                              self.settings.commit_wait_seconds)

    async def _notify_cancel(self, attempt: Attempt, record: Record, request: Dataset,
                             requester: str | None) -> Outcome:
        performer = record.performer
        extra = (performer,) if performer and performer in self.settings.direct_event_aes else ()
        event = QueuedEvent(ev.CANCEL_REQUESTED, ev.cancel_requested(requester or "", request),
                            extra=extra, needs_recipient=True)
        try:
            await attempt.commit(record.uid, record.version, Change(None), [event])
        except NoRecipient:
            raise UPSError(st.PERFORMER_UNREACHABLE,
                           "The performer cannot be contacted: nobody is subscribed to this "
                           "workitem and its performer has no known address") from None
        log.info("cancel requested", extra={"uid": record.uid, "ae": requester,
                                            "performer": performer})
        return Outcome(record.uid)

    # ---- subscriptions (Watch) -------------------------------------------------------------

    async def subscribe(self, uid: str, ae: str, deletion_lock: bool,
                        terms: Terms | None = None, *,
                        check_reachable: bool = False) -> Outcome:
        """Subscribe ``ae`` to a workitem, or to the worklist (UID = Global or Filtered Global
        Subscription instance; ``terms`` are the filtered subscription's matching keys, see
        ``matching.Terms``). ``check_reachable``: refuse (C308) an AE that is neither
        a configured peer nor holds an open WebSocket channel."""
        await self.watch.subscribe(uid, ae, deletion_lock, terms,
                                   check_reachable=check_reachable)
        return Outcome(uid)

    async def unsubscribe(self, uid: str, ae: str) -> Outcome:
        found = await self.watch.unsubscribe(uid, ae)
        return Outcome(uid, found=found, message="" if found else
                       "The target Subscription was not found.")

    async def suspend(self, uid: str, ae: str) -> Outcome:
        found = await self.watch.suspend(uid, ae)
        return Outcome(uid, found=found, message="" if found else
                       "The target Subscription was not found.")

    # ---- search ------------------------------------------------------------------------

    async def search(self, query: Query) -> SearchResult:
        """One page of matches in the stable search order, with the total number of matches."""
        limit = query.limit if query.limit is not None else self.settings.search_default_limit
        page = await self.store.search_page(query, query.offset, limit)
        return SearchResult(page.rendered, page.total, query.offset)

    def search_stream(self, query: Query) -> AsyncIterator[Dataset]:
        """Every match in search order, projected — for C-FIND pending responses (shaped to
        the identifier's return keys when the query has one)."""
        if query.template is None:
            return self.store.search_stream(query)
        return self._responses(query)

    async def _responses(self, query: Query) -> AsyncIterator[Dataset]:
        stream = self.store.search_stream(query)
        try:
            async for ds in stream:
                yield query.respond(ds)
        finally:
            await stream.aclose()

    # ---- retention ---------------------------------------------------------------------

    async def purge_expired(self, retention_seconds: float) -> list[str]:
        """Delete the COMPLETED/CANCELED workitems whose retention has run out (decisions.md,
        Retention); a purged UID answers "gone" for another retention period."""
        cutoff = int((time.time() - retention_seconds) * 1000)
        purged: list[str] = []
        while batch := await self.store.purge(cutoff, int(retention_seconds)):
            log.info("purged workitems", extra={"count": len(batch), "uids": batch[:20]})
            purged += batch
        return purged


def _empty_vr(key: str) -> str:
    """The VR of an empty attribute: the dictionary's (its first, when it allows several)."""
    vr = dictionary_vr(key)
    return vr.split(" or ")[0] if vr else "UN"


def workitem_change(ds: Dataset, **kw) -> Change:
    """The store's ``Change`` for ``ds`` as it now is: its state, when it became final, the
    State Report of its new content (how every UPS operation, MPPS ones too, commits)."""
    state = first(ds, t.ProcedureStepState)
    final_at = int(time.time() * 1000) if state in FINAL_STATES else None
    return Change(ds, state=state, final_at_ms=final_at, state_report=ev.state_report(ds),
                  **kw)

def fill_cancellation(ds: Dataset, request: Dataset) -> list[str]:
    """Make a CANCELED workitem meet its final-state requirements (decisions.md): the
    cancellation time, a discontinuation reason, and the request's reason and contact."""
    progress = items(ds, t.ProcedureStepProgressInformationSequence)
    item = progress[0] if progress else {}
    filled = []
    if not has_value(item, t.ProcedureStepCancellationDateTime):
        put(item, t.ProcedureStepCancellationDateTime, "DT", format_dt())
        filled.append(describe(t.ProcedureStepCancellationDateTime))
    reason_codes = request.get(t.ProcedureStepDiscontinuationReasonCodeSequence)
    if reason_codes and reason_codes.get("Value"):
        item[t.ProcedureStepDiscontinuationReasonCodeSequence] = reason_codes
    elif not has_value(item, t.ProcedureStepDiscontinuationReasonCodeSequence):
        item[t.ProcedureStepDiscontinuationReasonCodeSequence] = element(
            "SQ", code_item(*UNSPECIFIED_REASON))
        filled.append(describe(t.ProcedureStepDiscontinuationReasonCodeSequence))
    if has_value(request, t.ReasonForCancellation):
        item[t.ReasonForCancellation] = request[t.ReasonForCancellation]
    if has_value(request, t.ContactURI):
        contact = select(request, (t.ContactURI, t.ContactDisplayName))
        item[t.ProcedureStepCommunicationsURISequence] = element("SQ", contact)
    ds[t.ProcedureStepProgressInformationSequence] = element(
        "SQ", dict(sorted(item.items())), *progress[1:])
    return [f"filled {name}" for name in filled]
