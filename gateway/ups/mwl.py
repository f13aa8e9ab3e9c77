"""The Modality Worklist projection (PS3.4 Annex K): a SCHEDULED UPS workitem seen as an MWL entry.

One table (``MAPPING``) says where every attribute of an MWL entry comes from in the workitem;
``project`` applies it, ``docs/conformance.md`` publishes it (``mapping_table`` renders it), and
both transports — the DIMSE MWL SCP and the PS3.18 chapter 14 search — use it through
``ModalityWorklist``. An entry is matched per Annex K with the same matching rules as UPS
searches (``matching``), after a pre-selection on the UPS indexes (state SCHEDULED, station code,
start range, Patient ID, Accession Number), so an MWL query costs what the same UPS query costs.

The Scheduled Procedure Step ID handed out identifies its workitem (``step_id``): 16 characters
of a hash of the workitem UID (an SH value cannot hold a UID), looked up through its own index
when an MPPS names it.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from datetime import timezone
from typing import AsyncIterator, Callable

from gateway.ups import matching
from gateway.ups import tags as t
from gateway.ups.dataset import Dataset, element, first, items, resolve
from gateway.ups.dicomtime import UTC
from gateway.ups.uids import SCHEDULED

MWL_FIND = "1.2.840.10008.5.1.4.31"  # Modality Worklist Information Model - FIND

# MWL attributes that the UPS core does not otherwise name.
Modality = "00080060"
IssuerOfAccessionNumberSequence = "00080051"
ReferencedStudySequence = "00081110"
RequestingPhysician = "00321032"
RequestingService = "00321033"
RequestedProcedureDescription = "00321060"
RequestedProcedureCodeSequence = "00321064"
ScheduledStationAETitle = "00400001"
ScheduledProcedureStepStartDate = "00400002"
ScheduledProcedureStepStartTime = "00400003"
ScheduledProcedureStepEndDate = "00400004"
ScheduledProcedureStepEndTime = "00400005"
ScheduledPerformingPhysicianName = "00400006"
ScheduledProcedureStepDescription = "00400007"
ScheduledProtocolCodeSequence = "00400008"
ScheduledProcedureStepID = "00400009"
ScheduledStationName = "00400010"
ScheduledProcedureStepLocation = "00400011"
ScheduledProcedureStepStatus = "00400020"
ScheduledProcedureStepSequence = "00400100"
ReasonForTheRequestedProcedure = "00401002"
ReasonForRequestedProcedureCodeSequence = "0040100A"
PlacerOrderNumberImagingServiceRequest = "00402016"
FillerOrderNumberImagingServiceRequest = "00402017"

# Modality defined terms (PS3.3 C.7.3.1.1.1): a Scheduled Station Class code that is one of them
# is the entry's Modality.
MODALITIES = frozenset("""AR ASMT AU BDUS BI BMD CR CT CTPROTOCOL DG DOC DX ECG EPS ES FID GM HC
    HD IO IOL IVOCT IVUS KER KO LEN LS MG MR M3D NM OAM OCT OP OPM OPT OPTBSV OPTENF OPV OSS OT
    PLAN POS PR PT PX REG RESP RF RG RTDOSE RTIMAGE RTINTENT RTPLAN RTRAD RTRECORD RTSEGANN
    RTSTRUCT RWV SEG SM SMR SR SRF STAIN TEXTUREMAP TG US VA XA XAPROTOCOL XC""".split())


@dataclass(frozen=True)
class Row:
    """One line of the mapping: MWL attribute (``where``: top level, ``request`` = taken from the
    first Referenced Request Sequence item, ``step`` = in the Scheduled Procedure Step Sequence
    item), its VR, where its value comes from (text for the conformance statement) and how
    (``take(workitem, request item)`` → element or None)."""

    where: str
    tag: str
    vr: str
    source: str
    take: Callable[[Dataset, Dataset], dict | None]


def _copy(tag: str) -> Callable[[Dataset, Dataset], dict | None]:
    return lambda ds, request: ds.get(tag)


def _from_request(tag: str, fallback: str | None = None):
    def take(ds: Dataset, request: Dataset) -> dict | None:
        elem = request.get(tag)
        if (elem is None or not elem.get("Value")) and fallback:
            return ds.get(fallback) or elem
        return elem
    return take


def _code(seq: str, member: str, vr: str):
    def take(ds: Dataset, request: Dataset) -> dict | None:
        codes = items(ds, seq)
        value = first(codes[0], member) if codes else None
        return element(vr, value) if value else element(vr)
    return take


def _start(part: str):
    def take(ds: Dataset, request: Dataset) -> dict | None:
        start = first(ds, t.ScheduledProcedureStepStartDateTime) or ""
        date, time_ = start[:8], start[8:14]
        if part == "date":
            return element("DA", date) if len(date) == 8 else element("DA")
        return element("TM", time_) if time_ else element("TM")
    return take


def _end(part: str):
    def take(ds: Dataset, request: Dataset) -> dict | None:
        end = first(ds, t.ExpectedCompletionDateTime) or ""
        if not end:
            return None
        if part == "date":
            return element("DA", end[:8]) if len(end) >= 8 else None
        return element("TM", end[8:14]) if len(end) > 8 else None
    return take


def _performer(ds: Dataset, request: Dataset) -> dict | None:
    for performer in items(ds, t.ScheduledHumanPerformersSequence):
        if name := first(performer, t.HumanPerformerName):
            return element("PN", name)
    return element("PN")


def _step_id(ds: Dataset, request: Dataset) -> dict | None:
    return element("SH", step_id(first(ds, t.SOPInstanceUID, "")))


# The projection. Attributes the workitem lacks are left out (top level, request) or sent
# empty (Type 1/2 attributes of the Scheduled Procedure Step item).
MAPPING: tuple[Row, ...] = (
    Row("", t.SpecificCharacterSet, "CS", "Specific Character Set", _copy(t.SpecificCharacterSet)),
    # Patient identification, demographics, medical and visit attributes: copied.
    *(Row("", tag, vr, "same attribute", _copy(tag)) for tag, vr in (
        (t.PatientName, "PN"), (t.PatientID, "LO"), (t.IssuerOfPatientID, "LO"),
        (t.IssuerOfPatientIDQualifiersSequence, "SQ"), (t.OtherPatientIDsSequence, "SQ"),
        (t.PatientBirthDate, "DA"), (t.PatientSex, "CS"), (t.MedicalAlerts, "LO"),
        (t.PregnancyStatus, "US"), (t.SpecialNeeds, "LO"), (t.AdmissionID, "LO"),
        (t.IssuerOfAdmissionIDSequence, "SQ"), (t.AdmittingDiagnosesDescription, "LO"),
        (t.AdmittingDiagnosesCodeSequence, "SQ"))),
    # Requested Procedure and Imaging Service Request: the first Referenced Request item.
    Row("request", t.StudyInstanceUID, "UI",
        "Referenced Request Sequence[0] Study Instance UID, else the workitem's",
        _from_request(t.StudyInstanceUID, t.StudyInstanceUID)),
    *(Row("request", tag, vr, "Referenced Request Sequence[0], same attribute",
          _from_request(tag)) for tag, vr in (
        (t.AccessionNumber, "SH"), (IssuerOfAccessionNumberSequence, "SQ"),
        (t.RequestedProcedureID, "SH"), (RequestedProcedureDescription, "LO"),
        (RequestedProcedureCodeSequence, "SQ"), (ReasonForTheRequestedProcedure, "LO"),
        (ReasonForRequestedProcedureCodeSequence, "SQ"), (RequestingPhysician, "PN"),
        (RequestingService, "LO"), (PlacerOrderNumberImagingServiceRequest, "LO"),
        (FillerOrderNumberImagingServiceRequest, "LO"))),
    # One Scheduled Procedure Step Sequence item.
    Row("step", ScheduledStationAETitle, "AE",
        "Scheduled Station Name Code Sequence[0] Code Value",
        _code(t.ScheduledStationNameCodeSequence, t.CodeValue, "AE")),
    Row("step", ScheduledStationName, "SH",
        "Scheduled Station Name Code Sequence[0] Code Meaning (first 16 characters)",
        lambda ds, r: _short(_code(t.ScheduledStationNameCodeSequence, t.CodeMeaning, "SH")(ds, r))),
    Row("step", ScheduledProcedureStepLocation, "SH",
        "Scheduled Station Geographic Location Code Sequence[0] Code Value",
        _code(t.ScheduledStationGeographicLocationCodeSequence, t.CodeValue, "SH")),
    Row("step", Modality, "CS",
        "first Scheduled Station Class Code Sequence Code Value that is a DICOM modality, "
        "else `mwl.default_modality`", lambda ds, r: None),  # filled by ``project``
    Row("step", ScheduledProcedureStepStartDate, "DA",
        "Scheduled Procedure Step Start DateTime, date part (as written)", _start("date")),
    Row("step", ScheduledProcedureStepStartTime, "TM",
        "Scheduled Procedure Step Start DateTime, time part (as written)", _start("time")),
    Row("step", ScheduledProcedureStepEndDate, "DA",
        "Expected Completion DateTime, date part", _end("date")),
    Row("step", ScheduledProcedureStepEndTime, "TM",
        "Expected Completion DateTime, time part", _end("time")),
    Row("step", ScheduledPerformingPhysicianName, "PN",
        "first Human Performer's Name of Scheduled Human Performers Sequence", _performer),
    Row("step", ScheduledProcedureStepDescription, "LO", "Procedure Step Label",
        _copy(t.ProcedureStepLabel)),
    Row("step", ScheduledProtocolCodeSequence, "SQ", "Scheduled Workitem Code Sequence",
        lambda ds, r: ds.get(t.ScheduledWorkitemCodeSequence) or element("SQ")),
    Row("step", ScheduledProcedureStepID, "SH",
        "derived from the SOP Instance UID (16 characters of its SHA-256, base 32)", _step_id),
    Row("step", ScheduledProcedureStepStatus, "CS", "`SCHEDULED` (only SCHEDULED workitems)",
        lambda ds, r: element("CS", "SCHEDULED")),
    Row("step", t.CommentsOnTheScheduledProcedureStep, "LT",
        "Comments on the Scheduled Procedure Step", _copy(t.CommentsOnTheScheduledProcedureStep)),
)

PROJECTED = frozenset(row.tag for row in MAPPING if row.where != "step") | {
    ScheduledProcedureStepSequence, ReferencedStudySequence}
STEP_ATTRIBUTES = frozenset(row.tag for row in MAPPING if row.where == "step")


def _short(elem: dict | None) -> dict | None:
    if elem and elem.get("Value"):
        return element(elem["vr"], str(elem["Value"][0])[:16])
    return elem


def step_id(uid: str) -> str:
    """The Scheduled Procedure Step ID of the workitem ``uid``: 16 characters (SH) of base 32."""
    digest = hashlib.sha256(uid.encode()).digest()[:10]
    return base64.b32encode(digest).decode()


def modality(ds: Dataset, default: str) -> str:
    for code in items(ds, t.ScheduledStationClassCodeSequence):
        value = first(code, t.CodeValue)
        if isinstance(value, str) and value.strip().upper() in MODALITIES:
            return value.strip().upper()
    return default


def project(ds: Dataset, default_modality: str = "OT") -> Dataset:
    """The MWL entry of a (SCHEDULED) workitem, per ``MAPPING``."""
    requests = items(ds, t.ReferencedRequestSequence)
    request = requests[0] if requests else {}
    entry: Dataset = {}
    step: Dataset = {}
    for row in MAPPING:
        elem = row.take(ds, request)
        if row.tag == Modality:
            elem = element("CS", modality(ds, default_modality))
        if elem is None:
            continue
        (step if row.where == "step" else entry)[row.tag] = elem
    entry[ReferencedStudySequence] = element("SQ")
    entry[ScheduledProcedureStepSequence] = element("SQ", dict(sorted(step.items())))
    return dict(sorted(entry.items()))


def mapping_table() -> str:
    """``MAPPING`` as the Markdown table in docs/conformance.md."""
    from gateway.ups.dataset import describe
    lines = ["| MWL attribute | VR | taken from the UPS workitem |", "|---|---|---|"]
    for row in MAPPING:
        where = {"": "", "request": "", "step": "SPS Sequence > "}[row.where]
        lines.append(f"| {where}{describe(row.tag)} | {row.vr} | {row.source} |")
    return "\n".join(lines)


# ---- the worklist -------------------------------------------------------------------------------

@dataclass
class Settings:
    default_modality: str = "OT"
    # Which SCHEDULED workitems are for modalities: any rule matching (each rule a mapping of
    # UPS attribute paths to matching values); none: every SCHEDULED workitem.
    rules: list[dict[str, str]] = field(default_factory=list)
    timezone: timezone = UTC


@dataclass
class MwlQuery:
    """An MWL query: ``match`` on the projected entries, ``shape`` the return keys (an
    identifier; None: the whole entry), ``select`` the UPS query that pre-selects candidates."""

    match: matching.Query
    shape: Dataset | None
    select: matching.Query
    offset: int = 0
    limit: int | None = None


def compile_rules(rules: list[dict[str, str]], tz: timezone = UTC) -> list[matching.Query]:
    """Each rule as a UPS query; raises ``InvalidQuery`` (or KeyError) for a bad one."""
    compiled = []
    for rule in rules:
        query = matching.Query(store_tz=tz)
        for path, value in rule.items():
            matching.add_term(query, [resolve(p) for p in path.split(".")], str(value), tz, path)
        compiled.append(query)
    return compiled


class ModalityWorklist:
    """MWL queries over the UPS worklist: ``search_stream`` is the ``WorkitemStore``'s (the same
    indexes as UPS C-FIND)."""

    def __init__(self, search_stream: Callable[[matching.Query], AsyncIterator[Dataset]],
                 settings: Settings):
        self.search_stream = search_stream
        self.settings = settings
        self.rules = compile_rules(settings.rules, settings.timezone)

    def selected(self, ds: Dataset) -> bool:
        """Whether ``mwl.rules`` make the workitem one for modalities (whatever its state)."""
        return not self.rules or any(rule.matches(ds) for rule in self.rules)

    def is_projected(self, ds: Dataset) -> bool:
        return first(ds, t.ProcedureStepState) == SCHEDULED and self.selected(ds)

    def entry(self, ds: Dataset) -> Dataset:
        return project(ds, self.settings.default_modality)

    def from_identifier(self, identifier: Dataset) -> MwlQuery:
        """A C-FIND identifier (canonical structure): every element is a return key, every
        element with a value a matching key (on the projected entry)."""
        match = matching.from_identifier(_return_only_binary(identifier),
                                         default_tz=self.settings.timezone)
        return MwlQuery(match, identifier, self._preselect(match))

    def from_terms(self, terms: list[tuple[list[str], str, str]], offset: int = 0,
                   limit: int | None = None) -> MwlQuery:
        """Query parameters already resolved to (tag path, value, spelling)."""
        match = matching.Query(store_tz=self.settings.timezone)
        for path, raw, name in terms:
            tag, node = matching.build_key(path, raw, self.settings.timezone, top_level=False)
            matching.merge(match.keys, tag, node, name)
        return MwlQuery(match, None, self._preselect(match), offset, limit)

    async def find(self, query: MwlQuery) -> AsyncIterator[Dataset]:
        """Every matching entry in search order (start time, then UID), shaped."""
        stream = self.search_stream(query.select)
        try:
            async for ds in stream:
                if not self.is_projected(ds):
                    continue
                entry = self.entry(ds)
                if query.match.matches(entry):
                    yield shape(entry, query.shape) if query.shape is not None else entry
        finally:
            await stream.aclose()

    def _preselect(self, match: matching.Query) -> matching.Query:
        """The UPS query whose matches include every workitem whose entry can match: what the
        indexes answer (state, station code, start range, Patient ID, Accession Number)."""
        tz = self.settings.timezone
        select = matching.Query(store_tz=tz, include_all=True)
        matching.add_term(select, [t.ProcedureStepState], SCHEDULED, tz, "state")
        step = match.keys.get(ScheduledProcedureStepSequence)
        step_keys = step.children if isinstance(step, matching.SeqKey) else {}
        station = step_keys.get(ScheduledStationAETitle)
        if isinstance(station, matching.Key) and station.kind == "single":
            matching.add_term(select, [t.ScheduledStationNameCodeSequence, t.CodeValue],
                              station.value, tz, "station")
        date = step_keys.get(ScheduledProcedureStepStartDate)
        if isinstance(date, matching.Key) and date.kind == "range":
            # The entry's date is the start as written; a start with its own UTC offset may lie
            # up to 14 hours away from the same date read in the configured offset.
            low = None if date.low is None else date.low - 14 * 3600
            high = None if date.high is None else date.high + 14 * 3600
            select.keys[t.ScheduledProcedureStepStartDateTime] = matching.Key(
                t.ScheduledProcedureStepStartDateTime, "DT", "range", date.value,
                low=low, high=high)
        patient = match.keys.get(t.PatientID)
        if isinstance(patient, matching.Key) and patient.kind == "single":
            matching.add_term(select, [t.PatientID], patient.value, tz, "patient")
        accession = match.keys.get(t.AccessionNumber)
        if isinstance(accession, matching.Key) and accession.kind == "single":
            matching.add_term(select, [t.ReferencedRequestSequence, t.AccessionNumber],
                              accession.value, tz, "accession")
        return select


# No Annex K matching key has a binary VR (Pregnancy Status, the one such attribute of an entry,
# is a return key only); some SCUs cannot send such a key empty and send 0 (dcmjs-dimse).
_BINARY_VRS = frozenset(("US", "SS", "UL", "SL", "FL", "FD", "SV", "UV"))


def _return_only_binary(identifier: Dataset) -> Dataset:
    """The identifier with the values of binary-VR keys dropped: return keys, never matched."""
    out: Dataset = {}
    for tag, elem in identifier.items():
        vr = elem.get("vr")
        if vr in _BINARY_VRS:
            out[tag] = {"vr": vr}
        elif vr == "SQ" and elem.get("Value"):
            out[tag] = {"vr": "SQ", "Value": [_return_only_binary(item) if isinstance(item, dict)
                                              else item for item in elem["Value"]]}
        else:
            out[tag] = elem
    return out


def shape(entry: Dataset, identifier: Dataset) -> Dataset:
    """The entry as a C-FIND response to ``identifier``: its keys only, each with the entry's
    value or empty; a sequence key with an empty item returns whole items (PS3.4 C.2.2.1.3)."""
    out: Dataset = {}
    for tag, key in identifier.items():
        elem = entry.get(tag)
        if key.get("vr") == "SQ":
            wanted = (key.get("Value") or [None])[0]
            have = [i for i in (elem or {}).get("Value") or [] if isinstance(i, dict)]
            if not wanted or not have:
                out[tag] = elem or element("SQ")
            else:
                out[tag] = element("SQ", *(shape(item, wanted) for item in have))
        else:
            out[tag] = elem if elem is not None else {"vr": key.get("vr") or "UN"}
    if t.SpecificCharacterSet in entry:
        out[t.SpecificCharacterSet] = entry[t.SpecificCharacterSet]
    return dict(sorted(out.items()))

