"""Modality Performed Procedure Step (PS3.4 Annex F) driving the UPS workitems it performs.

A modality that performs a Modality Worklist entry reports it with an MPPS: N-CREATE (IN
PROGRESS), N-SET updates, N-SET COMPLETED or DISCONTINUED. Each instance is kept (``MppsRecord``,
as Annex F requires of the SCP, whether or not it refers to anything known) and, when its
Scheduled Step Attributes Sequence names exactly one open workitem (``link``), drives it:

* N-CREATE claims a SCHEDULED workitem (IN PROGRESS, with a Transaction UID the gateway keeps for
  that MPPS instance, performer = the modality's AE), in the same atomic commit that stores the
  MPPS — a workitem already claimed over UPS (or final) is not taken over: the MPPS is kept, the
  reason noted (visible on retrieve) and logged;
* N-SET copies the performed procedure information into the UPS Performed Procedure Sequence
  (``performed_item``); COMPLETED completes the workitem, DISCONTINUED cancels it with the
  discontinuation reason.

The UPS changes go through the same read → decide → commit path as any UPS operation
(``attempt.until_committed``), so their State Reports reach every subscriber as usual.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from gateway.ups import events as ev
from gateway.ups import matching, mwl, rules
from gateway.ups import status as st
from gateway.ups import tags as t
from gateway.ups.attempt import Attempt, until_committed
from gateway.ups.dataset import Dataset, code_item, element, first, has_value, items, new_uid, put
from gateway.ups.dicomtime import format_dt
from gateway.ups.errors import InvalidDataset, UPSError, WorkitemGone
from gateway.ups.ports import MppsRecord, QueuedEvent, WorkitemStore
from gateway.ups.service import fill_cancellation, workitem_change
from gateway.ups.uids import CANCELED, COMPLETED, IN_PROGRESS, SCHEDULED

log = logging.getLogger("gateway.ups")

MPPS_CLASS = "1.2.840.10008.3.1.2.3.3"  # Modality Performed Procedure Step SOP Class

# MPPS attributes (PS3.3 C.4.13-C.4.17).
ProcedureCodeSequence = "00081032"
OperatorsName = "00081070"
ReferencedImageSequence = "00081140"
ReferencedSOPSequence = "00081199"
RetrieveAETitle = "00080054"
SeriesInstanceUID = "0020000E"
ReferencedNonImageCompositeSOPInstanceSequence = "00400220"
PerformedStationAETitle = "00400241"
PerformedStationName = "00400242"
PerformedLocation = "00400243"
PerformedProcedureStepStartDate = "00400244"
PerformedProcedureStepStartTime = "00400245"
PerformedProcedureStepEndDate = "00400250"
PerformedProcedureStepEndTime = "00400251"
PerformedProcedureStepStatus = "00400252"
PerformedProtocolCodeSequence = "00400260"
ScheduledStepAttributesSequence = "00400270"
PerformedProcedureStepDiscontinuationReasonCodeSequence = "00400281"
PerformedSeriesSequence = "00400340"
PerformedStationClassCodeSequence = "00404029"
PerformedStationGeographicLocationCodeSequence = "00404030"
TypeOfInstances = "0040E020"
# What the gateway adds on retrieve (a private block): the linked workitem and the link's note.
PRIVATE_CREATOR, LINKED_WORKITEM, LINK_NOTE = "00410010", "00411001", "00411002"
PRIVATE_CREATOR_NAME = "UPS_GATEWAY MPPS"

MPPS_IN_PROGRESS, MPPS_COMPLETED, MPPS_DISCONTINUED = "IN PROGRESS", "COMPLETED", "DISCONTINUED"
MPPS_STATES = (MPPS_IN_PROGRESS, MPPS_COMPLETED, MPPS_DISCONTINUED)
MPPS_FINAL = (MPPS_COMPLETED, MPPS_DISCONTINUED)
LOCAL_SCHEME = "99UPSGW"  # coding scheme of the codes the gateway makes from MPPS text values
PERFORMED_AS_MPPS = ("MPPS", LOCAL_SCHEME, "Performed as reported by MPPS")


class FinalMpps(UPSError):
    """An N-SET of an MPPS already COMPLETED or DISCONTINUED (PS3.4 F.7.2.2.4: processing
    failure, the instance may no longer be updated)."""

    def __init__(self, current: str):
        super().__init__(st.PROCESSING_FAILURE,
                         f"The MPPS is already {current}: it may no longer be updated")


@dataclass
class Settings:
    max_attempts: int = 64
    retention_seconds: int = 86400  # how long a COMPLETED/DISCONTINUED MPPS is kept
    open_retention_seconds: int = 7 * 86400  # … and any other, after its last change

    def ttl(self, status: str | None) -> int:
        return self.retention_seconds if status in MPPS_FINAL else self.open_retention_seconds


@dataclass
class MppsOutcome:
    uid: str
    workitem: str | None = None
    note: str = ""
    uid_assigned: bool = False


class MppsService:
    def __init__(self, store: WorkitemStore, worklist: mwl.ModalityWorklist,
                 settings: Settings | None = None):
        self.store = store
        self.worklist = worklist
        self.settings = settings or Settings()

    # ---- N-CREATE ------------------------------------------------------------------------------

    async def create(self, ds: Dataset, uid: str | None = None, *,
                     requester: str | None = None) -> MppsOutcome:
        """Keep a new MPPS instance (IN PROGRESS) and claim the workitem it names, if it names
        exactly one open workitem that is still SCHEDULED."""
        status = first(ds, PerformedProcedureStepStatus)
        if status != MPPS_IN_PROGRESS:
            raise InvalidDataset(f"Performed Procedure Step Status (0040,0252) must be IN PROGRESS "
                                 f"on N-CREATE, got {status!r}")
        if not items(ds, ScheduledStepAttributesSequence):
            raise UPSError(st.MISSING_ATTRIBUTE,
                           "Scheduled Step Attributes Sequence (0040,0270) is required")
        payload_uid = first(ds, t.SOPInstanceUID)
        if uid and payload_uid and payload_uid != uid:
            raise InvalidDataset(f"SOP Instance UID (0008,0018) {payload_uid} differs from the "
                                 f"MPPS UID {uid} of the request")
        if first(ds, t.SOPClassUID, MPPS_CLASS) != MPPS_CLASS:
            raise InvalidDataset("SOP Class UID (0008,0016) is not Modality Performed Procedure "
                                 "Step")
        uid = uid or payload_uid
        outcome = MppsOutcome(uid or new_uid(), uid_assigned=not uid)
        uid = outcome.uid
        put(ds, t.SOPClassUID, "UI", MPPS_CLASS)
        put(ds, t.SOPInstanceUID, "UI", uid)
        ds = dict(sorted(ds.items()))
        target, note = await self.link(ds)

        async def decide(attempt: Attempt) -> MppsOutcome:
            if await self.store.load_mpps(uid) is not None:
                raise UPSError(st.DUPLICATE_INSTANCE, f"An MPPS with UID {uid} already exists")
            record = MppsRecord(uid, 0, ds, target, None, note,
                                self.settings.ttl(MPPS_IN_PROGRESS))
            if target is not None:
                workitem = await self._load(attempt, target)
                if workitem is None:
                    record.workitem, record.note = None, f"workitem {target} no longer exists"
                elif workitem.state == SCHEDULED:
                    record.tx = new_uid()
                    record.note = f"claimed workitem {target} ({note})"
                    wi = workitem.dataset
                    put(wi, t.ProcedureStepState, "CS", IN_PROGRESS)
                    wi[t.UnifiedProcedureStepPerformedProcedureSequence] = element(
                        "SQ", performed_item(ds, wi, final=False))
                    put(wi, t.ScheduledProcedureStepModificationDateTime, "DT", format_dt())
                    wi = dict(sorted(wi.items()))  # canonical: keys in ascending order
                    change = workitem_change(wi, tx=record.tx, performer=requester, mpps=record)
                    await attempt.commit(target, workitem.version, change,
                                         [QueuedEvent(ev.STATE_REPORT, change.state_report)])
                    return _outcome(outcome, record)
                else:
                    how = (" (claimed by another performer, over UPS or MPPS)"
                           if workitem.state == IN_PROGRESS else "")
                    record.note = (f"workitem {target} is already {workitem.state}{how}: not "
                                   "taken over; the MPPS is kept and changes nothing")
            await self.store.save_mpps(record)
            return _outcome(outcome, record)

        result = await until_committed(uid, self.store, decide, self.settings.max_attempts)
        level = logging.INFO if result.note.startswith("claimed") else logging.WARNING
        log.log(level, "MPPS created", extra={"uid": uid, "ae": requester,
                                              "workitem": result.workitem, "note": result.note})
        return result

    # ---- N-SET ---------------------------------------------------------------------------------

    async def update(self, uid: str, mods: Dataset, *, requester: str | None = None
                     ) -> MppsOutcome:
        """Apply an MPPS N-SET; COMPLETED/DISCONTINUED complete/cancel the claimed workitem."""
        status = first(mods, PerformedProcedureStepStatus)
        if PerformedProcedureStepStatus in mods and status not in MPPS_STATES:
            raise InvalidDataset(f"Performed Procedure Step Status (0040,0252) must be one of "
                                 f"{', '.join(MPPS_STATES)}, got {status!r}")
        for fixed in (t.SOPClassUID, t.SOPInstanceUID, ScheduledStepAttributesSequence):
            if fixed in mods:
                raise InvalidDataset(f"{fixed}: not changeable by N-SET (PS3.4 F.7.2.2)")

        async def decide(attempt: Attempt) -> MppsOutcome:
            stored = await self.store.load_mpps(uid)
            if stored is None:
                raise UPSError(st.NO_SUCH_INSTANCE, f"No MPPS instance {uid}")
            current = first(stored.dataset, PerformedProcedureStepStatus)
            if current in MPPS_FINAL:
                raise FinalMpps(current)
            after = dict(sorted({**stored.dataset, **mods}.items()))
            new_status = first(after, PerformedProcedureStepStatus)
            record = MppsRecord(uid, stored.version, after, stored.workitem, stored.tx,
                                stored.note, self.settings.ttl(new_status))
            if stored.workitem and stored.tx:
                workitem = await self._load(attempt, stored.workitem)
                if workitem is not None and workitem.state == IN_PROGRESS \
                        and workitem.tx == stored.tx:
                    await self._drive(attempt, workitem, record, new_status)
                    return MppsOutcome(uid, record.workitem, record.note)
                state = workitem.state if workitem else "gone"
                record.tx = None
                record.note = (f"workitem {stored.workitem} is {state} without this MPPS's "
                               "claim: not changed")
            elif not stored.workitem:
                # Not linked when it was created: the workitem may have been scheduled since.
                target, how = await self.link(after)
                workitem = await self._load(attempt, target) if target else None
                if workitem is not None and workitem.state == SCHEDULED:
                    record.workitem, record.tx = target, new_uid()
                    record.note = f"claimed workitem {target} ({how}, at an N-SET)"
                    await self._drive(attempt, workitem, record, new_status, claim_by=requester)
                    return MppsOutcome(uid, record.workitem, record.note)
            await self.store.save_mpps(record)
            return MppsOutcome(uid, record.workitem, record.note)

        result = await until_committed(uid, self.store, decide, self.settings.max_attempts)
        log.info("MPPS updated", extra={"uid": uid, "ae": requester, "workitem": result.workitem,
                                        "status": status, "note": result.note})
        return result

    async def _drive(self, attempt: Attempt, workitem, record: MppsRecord, status: str, *,
                     claim_by: str | None = None) -> None:
        """The workitem follows the MPPS, in one commit with it: claimed first (``claim_by``:
        an MPPS linked only now), its performed information, then its final state."""
        wi = workitem.dataset
        events = []
        performer = workitem.performer
        if workitem.state == SCHEDULED:
            put(wi, t.ProcedureStepState, "CS", IN_PROGRESS)
            events.append(QueuedEvent(ev.STATE_REPORT, ev.state_report(wi)))
            performer = claim_by
        wi[t.UnifiedProcedureStepPerformedProcedureSequence] = element(
            "SQ", performed_item(record.dataset, wi, final=status in MPPS_FINAL))
        if status == MPPS_COMPLETED:
            done = {**wi, t.ProcedureStepState: element("CS", COMPLETED)}
            unmet = rules.unmet_for_completed(done)
            if unmet:  # the modality did perform: keep its MPPS, the workitem stays IN PROGRESS
                record.note = "workitem not completed: missing " + ", ".join(unmet)
            else:
                wi = done
                record.note, record.tx = f"completed workitem {workitem.uid}", None
        elif status == MPPS_DISCONTINUED:
            put(wi, t.ProcedureStepState, "CS", CANCELED)
            reason = record.dataset.get(PerformedProcedureStepDiscontinuationReasonCodeSequence)
            fill_cancellation(wi, {t.ProcedureStepDiscontinuationReasonCodeSequence: reason}
                              if reason else {})
            record.note, record.tx = f"canceled workitem {workitem.uid} (discontinued)", None
        if record.tx is None:  # it reached its final state
            events.append(QueuedEvent(ev.STATE_REPORT, ev.state_report(wi)))
        put(wi, t.ScheduledProcedureStepModificationDateTime, "DT", format_dt())
        change = workitem_change(dict(sorted(wi.items())), tx=record.tx, performer=performer,
                                 mpps=record)
        await attempt.commit(workitem.uid, workitem.version, change, events)

    # ---- N-GET ---------------------------------------------------------------------------------

    async def retrieve(self, uid: str) -> Dataset:
        """The MPPS instance as kept, with the gateway's private link attributes."""
        record = await self.store.load_mpps(uid)
        if record is None:
            raise UPSError(st.NO_SUCH_INSTANCE, f"No MPPS instance {uid}")
        ds = dict(record.dataset)
        ds[PRIVATE_CREATOR] = element("LO", PRIVATE_CREATOR_NAME)
        ds[LINKED_WORKITEM] = element("UI", *([record.workitem] if record.workitem else []))
        ds[LINK_NOTE] = element("LT", record.note)
        return dict(sorted(ds.items()))

    # ---- linking -------------------------------------------------------------------------------

    async def link(self, ds: Dataset) -> tuple[str | None, str]:
        """The open workitem the Scheduled Step Attributes Sequence names — by Scheduled
        Procedure Step ID, or by Study Instance UID + Accession Number of exactly one projected
        workitem — and how (or why none)."""
        steps = items(ds, ScheduledStepAttributesSequence)
        for step in steps:
            if step_id := first(step, mwl.ScheduledProcedureStepID):
                if uid := await self.store.find_step(step_id):
                    return uid, f"by Scheduled Procedure Step ID {step_id}"
        for step in steps:
            study, accession = first(step, t.StudyInstanceUID), first(step, t.AccessionNumber)
            if not (study and accession) or any(c in accession for c in "*?\\"):
                continue
            query = matching.Query(store_tz=self.worklist.settings.timezone, include_all=True)
            matching.add_term(query, [t.ReferencedRequestSequence, t.AccessionNumber], accession,
                              query.store_tz, "accession")
            found = [first(wi, t.SOPInstanceUID) async for wi in self.store.search_stream(query)
                     if first(wi, t.ProcedureStepState) in (SCHEDULED, IN_PROGRESS)
                     and self.worklist.selected(wi)
                     and first(mwl.project(wi), t.StudyInstanceUID) == study]
            if len(found) == 1:
                return found[0], "by Study Instance UID and Accession Number"
            if len(found) > 1:
                return None, (f"{len(found)} workitems have Study Instance UID {study} and "
                              f"Accession Number {accession}: not linked")
        return None, "no open workitem matches the Scheduled Step Attributes Sequence"

    async def _load(self, attempt: Attempt, uid: str):
        """The workitem as stored now (never a remembered record: an MPPS decision may store the
        MPPS alone, which must not be decided twice)."""
        try:
            return await self.store.load(uid)
        except WorkitemGone:
            return None


def performed_item(mpps: Dataset, workitem: Dataset, final: bool) -> Dataset:
    """The UPS Performed Procedure Sequence item an MPPS says (see docs/conformance.md §11)."""
    item: Dataset = {}
    ae = first(mpps, PerformedStationAETitle)
    scheduled = items(workitem, t.ScheduledStationNameCodeSequence)
    if ae and scheduled and first(scheduled[0], t.CodeValue) == ae:
        station = scheduled[0]
    elif ae:
        station = code_item(ae, LOCAL_SCHEME, first(mpps, PerformedStationName) or ae)
    else:
        station = scheduled[0] if scheduled else code_item("UNKNOWN", LOCAL_SCHEME,
                                                           "Unknown station")
    item[t.PerformedStationNameCodeSequence] = element("SQ", station)
    if modality := first(mpps, mwl.Modality):
        item[PerformedStationClassCodeSequence] = element("SQ",
                                                          code_item(modality, "DCM", modality))
    if location := first(mpps, PerformedLocation):
        item[PerformedStationGeographicLocationCodeSequence] = element(
            "SQ", code_item(location, LOCAL_SCHEME, location))
    operators = [name for name in mpps.get(OperatorsName, {}).get("Value") or [] if name]
    if operators:
        item[t.ActualHumanPerformersSequence] = element(
            "SQ", *({t.HumanPerformerName: element("PN", name)} for name in operators))
    codes = next((mpps[tag] for tag in (PerformedProtocolCodeSequence, ProcedureCodeSequence)
                  if has_value(mpps, tag)), None) or workitem.get(t.ScheduledWorkitemCodeSequence)
    item[t.PerformedWorkitemCodeSequence] = codes if codes and codes.get("Value") else element(
        "SQ", code_item(*PERFORMED_AS_MPPS))
    start = _date_time(mpps, PerformedProcedureStepStartDate, PerformedProcedureStepStartTime)
    item[t.PerformedProcedureStepStartDateTime] = element("DT", start or format_dt())
    end = _date_time(mpps, PerformedProcedureStepEndDate, PerformedProcedureStepEndTime)
    if end or final:
        item[t.PerformedProcedureStepEndDateTime] = element("DT", end or format_dt())
    item[t.OutputInformationSequence] = element("SQ", *_outputs(mpps, workitem))
    return dict(sorted(item.items()))


def _date_time(ds: Dataset, date_tag: str, time_tag: str) -> str | None:
    date, time_ = first(ds, date_tag), first(ds, time_tag)
    return f"{date}{time_ or ''}" if date else None


def _outputs(mpps: Dataset, workitem: Dataset) -> list[Dataset]:
    """Performed Series Sequence → Output Information Sequence items (Referenced Instances and
    Access Macro): one per series, its images and other instances in Referenced SOP Sequence;
    the study is the MPPS's, else the workitem's (as its MWL entry says)."""
    steps = items(mpps, ScheduledStepAttributesSequence)
    study = next((first(s, t.StudyInstanceUID) for s in steps if has_value(s, t.StudyInstanceUID)),
                 None) or first(mwl.project(workitem), t.StudyInstanceUID)
    out = []
    for series in items(mpps, PerformedSeriesSequence):
        refs = [{tag: ref[tag] for tag in (t.ReferencedSOPClassUID, t.ReferencedSOPInstanceUID)
                 if tag in ref}
                for seq in (ReferencedImageSequence, ReferencedNonImageCompositeSOPInstanceSequence)
                for ref in items(series, seq)]
        entry: Dataset = {TypeOfInstances: element("CS", "DICOM"),
                          ReferencedSOPSequence: element("SQ", *refs)}
        if study:
            entry[t.StudyInstanceUID] = element("UI", study)
        if has_value(series, SeriesInstanceUID):
            entry[SeriesInstanceUID] = series[SeriesInstanceUID]
        if has_value(series, RetrieveAETitle):
            entry[RetrieveAETitle] = series[RetrieveAETitle]
        out.append(dict(sorted(entry.items())))
    return out


def _outcome(outcome: MppsOutcome, record: MppsRecord) -> MppsOutcome:
    outcome.workitem, outcome.note = record.workitem, record.note
    return outcome

