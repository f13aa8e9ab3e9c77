"""Secondary indexes: which sorted sets a workitem belongs to, and which one answers a query.

Every index is a sorted set of workitem UIDs scored by ``matching.search_order`` (Scheduled
Procedure Step Start DateTime); equal scores sort by UID, which is exactly the search order. The
common worklist queries are answered from one index with ZCOUNT/ZRANGEBYSCORE, never by scanning
every workitem; keys the chosen index does not cover filter its candidates.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.ups import tags as t
from gateway.ups.dataset import Dataset, first, items, values
from gateway.ups.matching import Key, Query, SeqKey
from gateway.ups.mwl import step_id
from gateway.ups.uids import IN_PROGRESS, SCHEDULED

# Code-sequence indexes: (sequence tag, index prefix).
_CODE_INDEXES = ((t.ScheduledStationNameCodeSequence, "sta"),
                 (t.ScheduledStationClassCodeSequence, "cls"),
                 (t.ScheduledStationGeographicLocationCodeSequence, "loc"))


def index_names(ds: Dataset) -> list[str]:
    state = first(ds, t.ProcedureStepState, "")
    label = first(ds, t.WorklistLabel, "")
    names = {"all", f"st:{state}", f"wl:{label}", f"st:{state}:wl:{label}"}
    for seq, prefix in _CODE_INDEXES:
        names.update(f"{prefix}:{item_value}" for item in items(ds, seq)
                     for item_value in values(item, t.CodeValue) if item_value)
    if pid := first(ds, t.PatientID):
        names.add(f"pid:{pid}")
    if study := first(ds, t.StudyInstanceUID):
        names.add(f"study:{study}")
    for request in items(ds, t.ReferencedRequestSequence):
        if accession := first(request, t.AccessionNumber):
            names.add(f"acc:{accession}")
        if study := first(request, t.StudyInstanceUID):
            names.add(f"study:{study}")
    if state in (SCHEDULED, IN_PROGRESS) and (uid := first(ds, t.SOPInstanceUID)):
        names.add(step_index(step_id(uid)))  # an MPPS names the workitem by its SPS ID
    return sorted(names)


def step_index(sps_id: str) -> str:
    """The index holding the (open) workitem whose MWL Scheduled Procedure Step ID is this."""
    return f"sps:{sps_id}"


@dataclass
class Plan:
    """How to answer a query: union of ``indexes`` over the score range ``[low, high)``.

    ``exact`` means the indexes cover every key of the query, so counts and pages come straight
    from Redis; otherwise each candidate is still matched against the full query.
    """

    indexes: list[str]
    low: float | None
    high: float | None
    exact: bool


def plan(query: Query) -> Plan:
    keys = {tag: node for tag, node in query.keys.items() if node.kind != "universal"}
    low = high = None
    start = keys.get(t.ScheduledProcedureStepStartDateTime)
    if isinstance(start, Key) and start.kind == "range":
        low, high = start.low, start.high
        keys.pop(t.ScheduledProcedureStepStartDateTime)

    def chosen(indexes: list[str], *covered: str) -> Plan:
        rest = set(keys) - set(covered)
        return Plan(indexes, low, high, exact=not rest)

    for tag, prefix in ((t.PatientID, "pid"),):
        if (value := query.single_value(tag)) is not None and keys.get(tag) is not None:
            return chosen([f"{prefix}:{value}"], tag)
    requests = keys.get(t.ReferencedRequestSequence)
    accession = _sequence_value(requests, t.AccessionNumber)
    if accession is not None:
        only_accession = len(requests.children) == 1
        return chosen([f"acc:{accession}"], *((t.ReferencedRequestSequence,) if only_accession else ()))
    study = keys.get(t.StudyInstanceUID)
    if isinstance(study, Key) and study.kind == "uids":
        return chosen([f"study:{uid}" for uid in sorted(study.uids)])
    for seq, prefix in _CODE_INDEXES:
        code = _sequence_value(keys.get(seq), t.CodeValue)
        if code is not None:
            only_code = len(keys[seq].children) == 1
            return chosen([f"{prefix}:{code}"], *((seq,) if only_code else ()))
    state = query.single_value(t.ProcedureStepState)
    label = query.single_value(t.WorklistLabel)
    if state is not None and label is not None:
        return chosen([f"st:{state}:wl:{label}"], t.ProcedureStepState, t.WorklistLabel)
    if label is not None:
        return chosen([f"wl:{label}"], t.WorklistLabel)
    if state is not None:
        return chosen([f"st:{state}"], t.ProcedureStepState)
    return chosen(["all"])


def _sequence_value(node, child_tag: str) -> str | None:
    if not isinstance(node, SeqKey):
        return None
    child = node.children.get(child_tag)
    if isinstance(child, Key) and child.kind == "single":
        return child.value
    return None
