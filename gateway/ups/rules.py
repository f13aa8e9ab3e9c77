"""Attribute requirement rules (PS3.4 Table CC.2.5-3, digest §4, decisions.md).

Three moments matter: creation (N-CREATE / Create Workitem), update (N-SET / Update Workitem) and the
move to a final state. Each check names the offending attribute so that the caller can tell the
client exactly what to fix.
"""

from __future__ import annotations

from gateway.ups import status as st
from gateway.ups import tags as t
from gateway.ups.dataset import Dataset, describe, element, first, has_value, items, values
from gateway.ups.errors import InvalidDataset, UPSError
from gateway.ups.uids import INPUT_READINESS_STATES, PRIORITIES, SCHEDULED

# Type 1 at creation: present with a value (Procedure Step State is checked on its own: C309).
CREATE_TYPE1 = (t.ScheduledProcedureStepPriority, t.ProcedureStepLabel,
                t.ScheduledProcedureStepStartDateTime, t.InputReadinessState)

# Type 2 at creation (SCP requirement 2): the SCP stores them, empty when the SCU left them out.
CREATE_TYPE2 = {
    t.ScheduledProcessingParametersSequence: "SQ", t.ScheduledStationNameCodeSequence: "SQ",
    t.ScheduledStationClassCodeSequence: "SQ", t.ScheduledStationGeographicLocationCodeSequence: "SQ",
    t.ScheduledWorkitemCodeSequence: "SQ", t.CommentsOnTheScheduledProcedureStep: "LT",
    t.InputInformationSequence: "SQ", t.StudyInstanceUID: "UI", t.PatientName: "PN",
    t.PatientID: "LO", t.PatientBirthDate: "DA", t.PatientSex: "CS", t.AdmissionID: "LO",
    t.IssuerOfAdmissionIDSequence: "SQ", t.AdmittingDiagnosesDescription: "LO",
    t.AdmittingDiagnosesCodeSequence: "SQ", t.ReferencedRequestSequence: "SQ",
    t.OtherPatientIDsSequence: "SQ", t.ProcedureStepProgressInformationSequence: "SQ",
    t.UnifiedProcedureStepPerformedProcedureSequence: "SQ",
}

# Sequences that must be empty at creation: progress and performed information come later.
CREATE_EMPTY_SEQUENCES = (t.ProcedureStepProgressInformationSequence,
                          t.UnifiedProcedureStepPerformedProcedureSequence)

# Never changeable by N-SET / Update Workitem.
NOT_SETTABLE = (t.SOPClassUID, t.SOPInstanceUID, t.ProcedureStepState, t.PatientName,
                t.PatientID, t.IssuerOfPatientID, t.IssuerOfPatientIDQualifiersSequence,
                t.OtherPatientIDsSequence, t.PatientBirthDate, t.PatientSex, t.AdmissionID,
                t.IssuerOfAdmissionIDSequence, t.AdmittingDiagnosesDescription,
                t.AdmittingDiagnosesCodeSequence, t.ReferencedRequestSequence,
                t.ReplacedProcedureStepSequence, t.ScheduledProcedureStepModificationDateTime)

# N-SET usage 3/1: optional in the request, but if sent it must carry a value.
SET_TYPE1 = (t.ScheduledProcedureStepPriority, t.ProcedureStepLabel, t.WorklistLabel,
             t.ScheduledProcedureStepStartDateTime, t.InputReadinessState,
             t.ExpectedCompletionDateTime, t.ScheduledWorkitemCodeSequence,
             t.CommentsOnTheScheduledProcedureStep)

# N-SET usage 3/1 inside the items of a sequence the N-SET sends.
SET_ITEM_TYPE1 = {
    t.ProcedureStepProgressInformationSequence: (
        t.ProcedureStepProgress, t.ProcedureStepProgressDescription,
        t.ProcedureStepCommunicationsURISequence, t.ProcedureStepCancellationDateTime,
        t.ReasonForCancellation, t.ProcedureStepDiscontinuationReasonCodeSequence),
    t.UnifiedProcedureStepPerformedProcedureSequence: (
        t.ActualHumanPerformersSequence, t.PerformedProcedureStepStartDateTime,
        t.PerformedProcedureStepDescription, t.CommentsOnThePerformedProcedureStep,
        t.PerformedWorkitemCodeSequence, t.PerformedProcessingParametersSequence,
        t.PerformedProcedureStepEndDateTime),
}

ENUMERATED = {t.ScheduledProcedureStepPriority: PRIORITIES,
              t.InputReadinessState: INPUT_READINESS_STATES}

CODE_SEQUENCES = (t.ScheduledStationNameCodeSequence, t.ScheduledStationClassCodeSequence,
                  t.ScheduledStationGeographicLocationCodeSequence, t.ScheduledWorkitemCodeSequence,
                  t.HumanPerformerCodeSequence, t.PerformedStationNameCodeSequence,
                  t.PerformedWorkitemCodeSequence, t.ProcedureStepDiscontinuationReasonCodeSequence,
                  t.ConceptNameCodeSequence, t.ConceptCodeSequence,
                  t.MeasurementUnitsCodeSequence)

# Content items (processing parameters, progress parameters): the attribute holding the value
# of each Value Type (PS3.3 Table 10-2 Content Item macro; type 1C on the Value Type).
CONTENT_VALUES = {"TEXT": (t.TextValue,), "NUMERIC": (t.NumericValue,
                                                      t.MeasurementUnitsCodeSequence),
                  "CODE": (t.ConceptCodeSequence,), "DATETIME": (t.DateTimeValue,),
                  "DATE": (t.DateValue,), "TIME": (t.TimeValue,),
                  "PNAME": (t.PersonNameValue,), "UIDREF": (t.UIDValue,)}


def check_create(ds: Dataset) -> list[str]:
    """Validate a dataset for creation; add the type 2 attributes the SCU left out, empty.

    Returns the attributes added. Storing an absent type 2 attribute as empty is what SCP type 2
    means, so it is not reported as a modification (conformance statement).
    """
    state = first(ds, t.ProcedureStepState)
    if state != SCHEDULED:
        got = f"{state!r}" if state else "absent"
        raise UPSError(st.CREATE_NOT_SCHEDULED,
                       f"{describe(t.ProcedureStepState)} must be SCHEDULED at creation, got {got}")
    if has_value(ds, t.TransactionUID):
        raise InvalidDataset(f"{describe(t.TransactionUID)} must be empty at creation")
    ds.pop(t.TransactionUID, None)
    for tag in CREATE_TYPE1:
        if tag not in ds:
            raise InvalidDataset(f"{describe(tag)} is required", st.MISSING_ATTRIBUTE)
        if not has_value(ds, tag):
            raise InvalidDataset(f"{describe(tag)} must have a value", st.MISSING_ATTRIBUTE_VALUE)
    for tag in CREATE_EMPTY_SEQUENCES:
        if values(ds, tag):
            raise InvalidDataset(f"{describe(tag)} must have no items at creation")
    for tag in t.ReferencedRequestSequence, t.ReplacedProcedureStepSequence:
        _check_items_have(ds, tag, {t.ReferencedRequestSequence: (t.StudyInstanceUID,),
                                    t.ReplacedProcedureStepSequence: (
                                        t.ReferencedSOPClassUID, t.ReferencedSOPInstanceUID)}[tag])
    check_values(ds)
    added = []
    for tag, vr in CREATE_TYPE2.items():
        if tag not in ds:
            ds[tag] = element(vr)
            added.append(tag)
    return added


def check_update(mods: Dataset, stored: Dataset | None = None) -> Dataset:
    """Validate an N-SET modification list (once the state checks have passed it) against the
    ``stored`` dataset; returns the modifications to apply. An attribute sent with the value it
    already has is no change (clients echo what N-GET returned): it is accepted, even one that
    may not be changed, and left out."""
    if stored is not None:
        mods = {tag: elem for tag, elem in mods.items() if not same_element(elem, stored.get(tag))}
    for tag in NOT_SETTABLE:
        if tag in mods:
            raise InvalidDataset(f"{describe(tag)} may not be changed by an update")
    for tag in SET_TYPE1:
        if tag in mods and not has_value(mods, tag):
            raise InvalidDataset(f"{describe(tag)} may not be emptied", st.MISSING_ATTRIBUTE_VALUE)
    for seq, item_tags in SET_ITEM_TYPE1.items():
        for i, item in enumerate(items(mods, seq)):
            for tag in item_tags:
                if tag in item and not has_value(item, tag):
                    raise InvalidDataset(f"{describe(tag)} may not be emptied (in "
                                         f"{describe(seq)}[{i}])", st.MISSING_ATTRIBUTE_VALUE)
    for tag in (t.ProcedureStepProgressInformationSequence,):
        for i, item in enumerate(items(mods, tag)):
            for uri_item in items(item, t.ProcedureStepCommunicationsURISequence):
                if not has_value(uri_item, t.ContactURI):
                    raise InvalidDataset(f"{describe(tag)}[{i}] > "
                                         f"{describe(t.ProcedureStepCommunicationsURISequence)}: "
                                         f"{describe(t.ContactURI)} is required")
    check_values(mods)
    return mods


def same_element(new: dict, old: dict | None) -> bool:
    """Whether an element sent in an update holds what is stored: the same values (items
    compared attribute by attribute), an empty element and an absent one alike."""
    if old is None:
        return not new.get("Value") and "InlineBinary" not in new
    if new.get("InlineBinary") != old.get("InlineBinary"):
        return False
    a, b = new.get("Value") or [], old.get("Value") or []
    if len(a) != len(b):
        return False
    if new.get("vr") == "SQ":
        return all(isinstance(x, dict) and isinstance(y, dict) and _same_item(x, y)
                   for x, y in zip(a, b))
    return a == b


def _same_item(a: Dataset, b: Dataset) -> bool:
    return all(same_element(elem, b.get(tag)) for tag, elem in a.items()) and \
        all(tag in a or same_element(elem, None) for tag, elem in b.items())


def check_values(ds: Dataset) -> None:
    """Enumerated values and the content of code sequence items, wherever they appear."""
    for tag, allowed in ENUMERATED.items():
        value = first(ds, tag)
        if value is not None and value not in allowed:
            raise InvalidDataset(f"{describe(tag)}: {value!r} is not one of {', '.join(allowed)}")
    _check_codes(ds)


def _check_codes(ds: Dataset, path: tuple = ()) -> None:
    for tag_key, elem in ds.items():
        if elem.get("vr") != "SQ" or not (seq_items := elem.get("Value")):
            continue
        is_code = tag_key in CODE_SEQUENCES
        item_rule = ITEM_RULES.get(tag_key)
        for i, item in enumerate(seq_items):
            if item:
                where = (*path, (tag_key, i))  # rendered only when something is wrong
                if is_code:
                    _check_code_item(item, where)
                if item_rule is not None:
                    item_rule(item, where)
                _check_codes(item, where)


def _check_code_item(item: Dataset, where: tuple) -> None:
    if not (has_value(item, t.CodeValue) or has_value(item, t.LongCodeValue)
            or has_value(item, t.URNCodeValue)):
        raise InvalidDataset(f"{_path(where)}: a code item needs {describe(t.CodeValue)}",
                             st.MISSING_ATTRIBUTE)
    if has_value(item, t.CodeValue) and not has_value(item, t.CodingSchemeDesignator):
        raise InvalidDataset(f"{_path(where)}: {describe(t.CodingSchemeDesignator)} is required",
                             st.MISSING_ATTRIBUTE)
    if not has_value(item, t.CodeMeaning):
        raise InvalidDataset(f"{_path(where)}: {describe(t.CodeMeaning)} is required",
                             st.MISSING_ATTRIBUTE)


def _require(item: Dataset, where: tuple, *tags: str) -> None:
    for tag in tags:
        # The missing attribute first: an Error Comment (64 characters) keeps the start.
        if tag not in item:
            raise InvalidDataset(f"{describe(tag)} is required in {_path(where)}",
                                 st.MISSING_ATTRIBUTE)
        if not has_value(item, tag):
            raise InvalidDataset(f"{describe(tag)} must have a value in {_path(where)}",
                                 st.MISSING_ATTRIBUTE_VALUE)


def _human_performer(item: Dataset, where: tuple) -> None:
    _require(item, where, t.HumanPerformerCodeSequence)


def _referenced_instances(item: Dataset, where: tuple) -> None:
    """Referenced Instances and Access macro (Input / Output Information Sequence items)."""
    _require(item, where, t.TypeOfInstances, t.ReferencedSOPSequence)
    if first(item, t.TypeOfInstances) == "DICOM":
        _require(item, where, t.StudyInstanceUID, t.SeriesInstanceUID)
    for i, ref in enumerate(items(item, t.ReferencedSOPSequence)):
        _require(ref, (*where, (t.ReferencedSOPSequence, i)), t.ReferencedSOPClassUID,
                 t.ReferencedSOPInstanceUID)


def _content_item(item: Dataset, where: tuple) -> None:
    """Content Item macro (processing and progress parameter items)."""
    _require(item, where, t.ValueType, t.ConceptNameCodeSequence)
    value_type = first(item, t.ValueType)
    if value_type not in CONTENT_VALUES:
        raise InvalidDataset(f"{describe(t.ValueType)} {value_type!r} is not one of "
                             f"{', '.join(CONTENT_VALUES)} (in {_path(where)})")
    _require(item, where, *CONTENT_VALUES[value_type])


# What the items of these sequences must hold (their type 1 attributes; PS3.4 Table CC.2.5-3),
# wherever the sequence appears, on N-CREATE and N-SET alike.
ITEM_RULES = {
    t.ScheduledHumanPerformersSequence: _human_performer,
    t.ActualHumanPerformersSequence: _human_performer,
    t.InputInformationSequence: _referenced_instances,
    t.OutputInformationSequence: _referenced_instances,
    t.ScheduledProcessingParametersSequence: _content_item,
    t.PerformedProcessingParametersSequence: _content_item,
    t.ProcedureStepProgressParametersSequence: _content_item,
}


def _path(where: tuple) -> str:
    """((seq tag, item index), ...) → 'ScheduledStationNameCodeSequence (0040,4025)[0] > ...'."""
    return " > ".join(f"{describe(tag_key)}[{i}]" for tag_key, i in where)


def _check_items_have(ds: Dataset, seq: str, required: tuple[str, ...]) -> None:
    for i, item in enumerate(items(ds, seq)):
        for tag in required:
            if not has_value(item, tag):
                raise InvalidDataset(f"{describe(seq)}[{i}]: {describe(tag)} is required",
                                     st.MISSING_ATTRIBUTE)


# ---- final state -------------------------------------------------------------------------

_ALWAYS_REQUIRED = (t.SOPClassUID, t.SOPInstanceUID, t.ScheduledProcedureStepPriority,
                    t.ScheduledProcedureStepModificationDateTime,
                    t.ScheduledProcedureStepStartDateTime, t.InputReadinessState)
_PERFORMED_REQUIRED = (t.PerformedStationNameCodeSequence, t.PerformedWorkitemCodeSequence,
                       t.PerformedProcedureStepStartDateTime, t.PerformedProcedureStepEndDateTime)


def unmet_for_completed(ds: Dataset) -> list[str]:
    """What stops the workitem from becoming COMPLETED (R + P requirements); empty when none."""
    missing = [describe(tag) for tag in _ALWAYS_REQUIRED if not has_value(ds, tag)]
    performed = items(ds, t.UnifiedProcedureStepPerformedProcedureSequence)
    seq = describe(t.UnifiedProcedureStepPerformedProcedureSequence)
    if not performed:
        return missing + [f"{seq} with one item"]
    item = performed[0]
    missing += [f"{seq} > {describe(tag)}" for tag in _PERFORMED_REQUIRED if not has_value(item, tag)]
    # An empty Output Information Sequence is accepted: the performer produced nothing.
    if t.OutputInformationSequence not in item:
        missing.append(f"{seq} > {describe(t.OutputInformationSequence)}")
    return missing


def unmet_for_canceled(ds: Dataset) -> list[str]:
    """What stops the workitem from becoming CANCELED (R + X requirements); empty when none."""
    missing = [describe(tag) for tag in _ALWAYS_REQUIRED if not has_value(ds, tag)]
    progress = items(ds, t.ProcedureStepProgressInformationSequence)
    seq = describe(t.ProcedureStepProgressInformationSequence)
    item = progress[0] if progress else {}
    for tag in (t.ProcedureStepCancellationDateTime,
                t.ProcedureStepDiscontinuationReasonCodeSequence):
        if not has_value(item, tag):
            missing.append(f"{seq} > {describe(tag)}")
    return missing
