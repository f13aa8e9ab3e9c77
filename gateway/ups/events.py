"""UPS event reports (PS3.4 CC.2.4, digest §7): what each event carries.

The service decides *when* an event fires (in the same atomic commit as the change that causes it);
this module only builds the Event Information of each type, in canonical form.
"""

from __future__ import annotations

from gateway.ups import tags as t
from gateway.ups.dataset import Dataset, element, first, items, select, values

STATE_REPORT = 1
CANCEL_REQUESTED = 2
PROGRESS_REPORT = 3
SCP_STATUS_CHANGE = 4
ASSIGNED = 5
NAMES = {STATE_REPORT: "UPS State Report", CANCEL_REQUESTED: "UPS Cancel Requested",
         PROGRESS_REPORT: "UPS Progress Report", SCP_STATUS_CHANGE: "SCP Status Change",
         ASSIGNED: "UPS Assigned"}

_ASSIGNMENT_KEYS = (t.ScheduledStationNameCodeSequence, t.ScheduledHumanPerformersSequence)


def state_report(ds: Dataset, state: str | None = None) -> Dataset:
    info = {t.ProcedureStepState: element("CS", state or first(ds, t.ProcedureStepState)),
            t.InputReadinessState: ds.get(t.InputReadinessState, element("CS"))}
    if (state or first(ds, t.ProcedureStepState)) == "CANCELED":
        progress = items(ds, t.ProcedureStepProgressInformationSequence)
        if progress:
            info.update(select(progress[0], (t.ReasonForCancellation,
                                             t.ProcedureStepDiscontinuationReasonCodeSequence)))
    return dict(sorted(info.items()))


def cancel_requested(requesting_ae: str, request: Dataset) -> Dataset:
    info = select(request, (t.ReasonForCancellation, t.ProcedureStepDiscontinuationReasonCodeSequence,
                            t.ContactURI, t.ContactDisplayName))
    info[t.RequestingAE] = element("AE", requesting_ae)
    return dict(sorted(info.items()))


def progress_report(ds: Dataset) -> Dataset:
    return {t.ProcedureStepProgressInformationSequence:
            ds.get(t.ProcedureStepProgressInformationSequence, element("SQ"))}


def assigned(ds: Dataset) -> Dataset | None:
    """UPS Assigned information, or None when neither station nor human performer is set."""
    info: Dataset = {}
    if values(ds, t.ScheduledStationNameCodeSequence):
        info[t.ScheduledStationNameCodeSequence] = ds[t.ScheduledStationNameCodeSequence]
    performers = items(ds, t.ScheduledHumanPerformersSequence)
    if performers:
        first_performer = performers[0]
        info.update(select(first_performer, (t.HumanPerformerCodeSequence,
                                             t.HumanPerformerOrganization)))
        info[t.ScheduledHumanPerformersSequence] = ds[t.ScheduledHumanPerformersSequence]
    return dict(sorted(info.items())) or None


def assignment_changed(before: Dataset, after: Dataset) -> bool:
    return any(before.get(tag) != after.get(tag) for tag in _ASSIGNMENT_KEYS)


def scp_status(status: str, list_status: str | None = None) -> Dataset:
    info = {t.SCPStatus: element("CS", status)}
    if list_status:
        info[t.SubscriptionListStatus] = element("CS", list_status)
        info[t.UnifiedProcedureStepListStatus] = element("CS", list_status)
    return info
