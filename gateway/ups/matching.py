"""Matching of workitems against a query (PS3.4 C.2.2.2, CC.2.8.3; digest §5; decisions.md).

A ``Query`` is built once by an adapter — term by term (``add_term``: the REST adapter parses
UPS-RS query parameters into terms), from a C-FIND identifier in canonical form
(``from_identifier``) or from a stored filter (``from_terms``) — and then matched against
canonical datasets. Supported:
universal, single value, wild card (* ?), list of UID, DA/DT/TM ranges with open ends, sequence
matching (all keys of one query item must match within one item of the target), and fuzzy
(case- and accent-insensitive prefix) matching of person names.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import timezone
from typing import Union

from gateway.ups import tags as t
from gateway.ups.dataset import (STRING_VRS, Dataset, describe, dictionary_vr, first,
                                 resolve, select, values)
from gateway.ups.dicomtime import UTC, dt_period, parse_offset, period, split_dt_range
from gateway.ups.errors import InvalidQuery

WILDCARD_VRS = frozenset("AE CS LO LT PN SH ST UC UR UT".split())
RANGE_VRS = frozenset(("DA", "DT", "TM"))

# Attributes a search returns by default (return key types 1/2 of Table CC.2.5-3).
DEFAULT_RETURN = frozenset((
    t.SpecificCharacterSet, t.SOPClassUID, t.SOPInstanceUID, t.ScheduledProcedureStepPriority,
    t.ScheduledProcedureStepModificationDateTime, t.ProcedureStepLabel, t.WorklistLabel,
    t.ScheduledProcessingParametersSequence, t.ScheduledStationNameCodeSequence,
    t.ScheduledStationClassCodeSequence, t.ScheduledStationGeographicLocationCodeSequence,
    t.ScheduledHumanPerformersSequence, t.ScheduledProcedureStepStartDateTime,
    t.ScheduledWorkitemCodeSequence, t.InputReadinessState, t.InputInformationSequence,
    t.StudyInstanceUID, t.PatientName, t.PatientID, t.IssuerOfPatientID,
    t.IssuerOfPatientIDQualifiersSequence, t.OtherPatientIDsSequence, t.PatientBirthDate,
    t.PatientSex, t.AdmissionID, t.IssuerOfAdmissionIDSequence, t.AdmittingDiagnosesDescription,
    t.AdmittingDiagnosesCodeSequence, t.ReferencedRequestSequence, t.MedicalAlerts,
    t.PregnancyStatus, t.SpecialNeeds, t.ProcedureStepState,
    t.ProcedureStepProgressInformationSequence,
))

# Top-level attributes accepted as matching keys: the UPS IOD (Table CC.2.5-3).
MATCHABLE = DEFAULT_RETURN | frozenset((
    t.ExpectedCompletionDateTime, t.ScheduledProcedureStepExpirationDateTime,
    t.CommentsOnTheScheduledProcedureStep, t.ReplacedProcedureStepSequence,
    t.UnifiedProcedureStepPerformedProcedureSequence, t.OutputInformationSequence,
))
NEVER_RETURNED = frozenset((t.TransactionUID,))
# What every C-FIND response carries when the workitem has it, asked for or not: which instance
# it is, and the offset its DT values without one are read in.
ALWAYS_RETURNED = frozenset((t.SOPClassUID, t.SOPInstanceUID, t.TimezoneOffsetFromUTC))
# Keys an identifier carries that are not matching keys.
NOT_MATCHED = frozenset((t.SpecificCharacterSet, t.TimezoneOffsetFromUTC))


@dataclass
class Key:
    """One matching key on a non-sequence attribute."""

    tag: str
    vr: str
    kind: str  # universal | single | wildcard | uids | range
    value: str = ""
    uids: frozenset[str] = frozenset()
    low: float | None = None
    high: float | None = None
    pattern: re.Pattern | None = None


@dataclass
class SeqKey:
    """A sequence matching key: its children must all match within one item of the target."""

    tag: str
    children: dict[str, "Node"] = field(default_factory=dict)
    vr: str = "SQ"

    @property
    def kind(self) -> str:
        # An item of only universal keys (the usual "return me this sequence" template) is
        # universal for the sequence: it matches workitems whose sequence is empty or absent.
        return ("sequence" if any(c.kind != "universal" for c in self.children.values())
                else "universal")


Node = Union[Key, SeqKey]


@dataclass
class Query:
    keys: dict[str, Node] = field(default_factory=dict)
    include: set[str] = field(default_factory=set)
    include_all: bool = False
    fuzzy: bool = False
    offset: int = 0
    limit: int | None = None
    store_tz: timezone = UTC  # how stored DT values without a UTC offset are read
    # A C-FIND identifier (canonical form): when set, a result carries exactly its keys (and
    # ALWAYS_RETURNED), a sequence reduced to its matching items and to the
    # attributes the identifier's item asks for.
    template: Dataset | None = None
    _returned: frozenset[str] | None = field(default=None, init=False, repr=False, compare=False)

    def matches(self, ds: Dataset) -> bool:
        tz = workitem_tz(ds, self.store_tz)
        return all(_match(node, ds, self, tz) for node in self.keys.values())

    def compared(self) -> frozenset[str]:
        """The top-level attributes matching reads of a workitem (its keys, and the workitem's
        Timezone Offset From UTC, which says how its DT values are read)."""
        return frozenset(self.keys) | {t.TimezoneOffsetFromUTC}

    def project(self, ds: Dataset) -> Dataset:
        """The attributes a result returns: defaults, match keys and includefield attributes."""
        returned, never = self.projection()
        return select(ds, (k for k in ds if k not in never) if returned is None else returned)

    def projection(self) -> tuple[frozenset[str] | None, frozenset[str]]:
        """(the attributes a result returns, None for all of them; those it never returns),
        worked out once per query (a page has many results; a query is not changed once built)."""
        if self.include_all:
            return None, NEVER_RETURNED
        if self._returned is None:
            if self.template is not None:
                self._returned = frozenset(
                    set(self.template) - {t.SpecificCharacterSet}
                    | ALWAYS_RETURNED) - NEVER_RETURNED
            else:
                self._returned = (DEFAULT_RETURN | self.include | set(self.keys)) - NEVER_RETURNED
        return self._returned, NEVER_RETURNED

    def respond(self, ds: Dataset) -> Dataset:
        """A (projected) match as the C-FIND response identifier: every key of the template with
        the workitem's value or empty, a sequence key's items reduced to those that match it and
        to the attributes its item asks for (all of them for an empty item or no item). Without
        a template the match is returned as it is."""
        if self.template is None:
            return ds
        out = _respond(self.template, self.keys, ds, self, workitem_tz(ds, self.store_tz))
        out.update((tag, ds[tag]) for tag in ALWAYS_RETURNED if tag in ds)
        return dict(sorted(out.items()))

    def single_value(self, tag: str) -> str | None:
        """The value of a top-level single-value key (for index selection)."""
        node = self.keys.get(tag)
        return node.value if isinstance(node, Key) and node.kind == "single" else None


def search_order(ds: Dataset, tz: timezone = UTC) -> float:
    """Where a workitem sorts in every search answer: by Scheduled Procedure Step Start
    DateTime (epoch seconds; 0 when absent or unreadable), equal times by SOP Instance UID.
    ``ds`` needs its Timezone Offset From UTC too (``workitem_tz``)."""
    start = first(ds, t.ScheduledProcedureStepStartDateTime)
    try:
        return dt_period(start, workitem_tz(ds, tz))[0] if start else 0.0
    except ValueError:
        return 0.0


def workitem_tz(ds: Dataset, default: timezone = UTC) -> timezone:
    """How a workitem's DT values without a UTC offset are read: in its own Timezone Offset From
    UTC (0008,0201) when it has a valid one, else in ``default`` (``ups.timezone_offset``)."""
    offset = first(ds, t.TimezoneOffsetFromUTC)
    if not offset:
        return default
    try:
        return parse_offset(offset, default)
    except (ValueError, TypeError):
        return default


# ---- building queries ---------------------------------------------------------------------

def build_key(path: list[str], raw: str, tz: timezone, top_level: bool = True) -> tuple[str, Node]:
    tag = path[0]
    vr = dictionary_vr(tag)
    if vr is None:
        raise InvalidQuery(f"{tag}: not an attribute of the DICOM data dictionary")
    if top_level and tag not in MATCHABLE:
        raise InvalidQuery(f"{describe(tag)} is not a supported matching key")
    if len(path) > 1:
        if vr != "SQ":
            raise InvalidQuery(f"{describe(tag)} is not a sequence; it cannot have a nested key")
        child_tag, child = build_key(path[1:], raw, tz, top_level=False)
        return tag, SeqKey(tag, {child_tag: child})
    if vr == "SQ":
        if raw:
            raise InvalidQuery(f"{describe(tag)}: a sequence key takes no value; "
                               "match on one of its attributes (Sequence.Attribute=value)")
        return tag, SeqKey(tag)
    return tag, leaf_key(tag, vr.split(" or ")[0], raw, tz)


def leaf_key(tag: str, vr: str, raw: str, tz: timezone) -> Key:
    if raw == "" or raw == "*":
        return Key(tag, vr, "universal")
    where = describe(tag)
    if vr == "UI":
        uids = [u for u in re.split(r"[\\,]", raw)]
        if not all(re.fullmatch(r"(0|[1-9]\d*)(\.(0|[1-9]\d*))*", u) for u in uids):
            raise InvalidQuery(f"{where}: {raw!r} is not a UID or list of UIDs")
        return Key(tag, vr, "uids", raw, uids=frozenset(uids))
    if vr in RANGE_VRS:
        return _range_key(tag, vr, raw, tz, where)
    if vr in WILDCARD_VRS and ("*" in raw or "?" in raw):
        return Key(tag, vr, "wildcard", raw, pattern=_wildcard(raw, vr == "PN"))
    if vr in ("US", "SS", "UL", "SL", "FL", "FD", "IS", "DS"):
        try:
            float(raw)
        except ValueError:
            raise InvalidQuery(f"{where}: {raw!r} is not a number") from None
    elif vr in STRING_VRS and "\\" in raw:
        raise InvalidQuery(f"{where}: multiple values are not supported for this key")
    return Key(tag, vr, "single", raw)


def _range_key(tag: str, vr: str, raw: str, tz: timezone, where: str) -> Key:
    low_text, sep, high_text = raw.partition("-")
    try:
        if vr == "DT":  # a hyphen may also be the sign of a UTC offset, on either end
            bounds = split_dt_range(raw, tz)
            low_text, sep, high_text = ("", "", "") if bounds is None else (bounds[0], "-",
                                                                            bounds[1])
        if not sep:  # a single value: the whole period of its precision
            low, high = period(vr, raw, tz)
            return Key(tag, vr, "range", raw, low=low, high=high)
        low = period(vr, low_text, tz)[0] if low_text else None
        high = period(vr, high_text, tz)[1] if high_text else None
    except ValueError:
        raise InvalidQuery(f"{where}: {raw!r} is not a valid {vr} value or range") from None
    if low is None and high is None:
        return Key(tag, vr, "universal")
    if low is not None and high is not None and low >= high:
        raise InvalidQuery(f"{where}: range {raw!r} ends before it starts")
    return Key(tag, vr, "range", raw, low=low, high=high)


def _wildcard(raw: str, fold_case: bool) -> re.Pattern:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in raw)
    return re.compile(regex, re.IGNORECASE | re.DOTALL if fold_case else re.DOTALL)


def merge(keys: dict[str, Node], tag: str, node: Node, name: str) -> None:
    """Add a key to a query tree; sequence keys with the same path share one item."""
    existing = keys.get(tag)
    if existing is None:
        keys[tag] = node
    elif isinstance(existing, SeqKey) and isinstance(node, SeqKey):
        for child_tag, child in node.children.items():
            merge(existing.children, child_tag, child, name)
    else:
        raise InvalidQuery(f"{name}: the same attribute may be given only once")


def add_term(query: Query, path: list[str], raw: str, tz: timezone, name: str) -> None:
    """Add the matching key ``path`` (tag keys, outermost first) = ``raw`` to ``query``; keys
    on the same sequence share one item. ``name`` is how the client spelled it (for messages)."""
    tag, node = build_key(path, raw, tz)
    merge(query.keys, tag, node, name)


def from_identifier(identifier: Dataset, *, default_tz: timezone = UTC) -> Query:
    """Build a query from a C-FIND identifier in canonical form: every element is a return key,
    every element with a value a matching key. Any attribute of the data dictionary is matched
    by the same rules (PS3.4 C.2.2.2), whether or not the UPS IOD has it; an attribute the
    dictionary does not know (a private one) is only a return key."""
    offset = values(identifier, t.TimezoneOffsetFromUTC)
    try:
        tz = parse_offset(offset[0], default_tz) if offset else default_tz
    except ValueError:
        raise InvalidQuery("TimezoneOffsetFromUTC (0008,0201) is not +HHMM/-HHMM") from None
    query = Query(store_tz=default_tz, template=identifier)
    query.keys = _identifier_keys(identifier, tz)
    return query


def _identifier_keys(ds: Dataset, tz: timezone) -> dict[str, Node]:
    keys: dict[str, Node] = {}
    for tag, elem in ds.items():
        if tag in NOT_MATCHED or tag in NEVER_RETURNED:
            continue
        known = dictionary_vr(tag)
        if known is None:
            continue  # private or unknown: returned (empty), never matched
        vr = elem.get("vr")
        if vr == "UN" or vr is None:
            vr = known.split(" or ")[0]
        if vr == "SQ":
            item_list = elem.get("Value") or []
            if len(item_list) > 1:
                raise InvalidQuery(f"{describe(tag)}: a sequence matching key has one item")
            children = _identifier_keys(item_list[0], tz) if item_list else {}
            keys[tag] = SeqKey(tag, children)
            continue
        keys[tag] = leaf_key(tag, vr, _identifier_text(elem), tz)
    return keys


def _identifier_text(elem: dict) -> str:
    vals = [v for v in elem.get("Value") or [] if v is not None]
    if elem.get("vr") == "PN":  # every component group: "Alphabetic=Ideographic=Phonetic"
        vals = ["=".join(v.get(g) or "" for g in PN_GROUPS).rstrip("=") if isinstance(v, dict)
                else str(v) for v in vals]
    return "\\".join(str(v) for v in vals)


def _respond(template: Dataset, nodes: dict[str, Node], ds: Dataset, query: Query,
             tz: timezone) -> Dataset:
    out: Dataset = {}
    for tag, elem in template.items():
        if tag == t.SpecificCharacterSet or tag in NEVER_RETURNED:
            continue
        stored = ds.get(tag)
        if elem.get("vr") != "SQ" or stored is None:
            out[tag] = stored if stored is not None else {"vr": _empty_vr(tag, elem)}
            continue
        wanted = elem.get("Value") or []
        if not wanted or not set(wanted[0]) - {t.SpecificCharacterSet}:
            out[tag] = stored  # a zero-length sequence or item: the whole sequence
            continue
        node = nodes.get(tag)
        children = node.children if isinstance(node, SeqKey) else {}
        kept = [_respond(wanted[0], children, item, query, tz)
                for item in stored.get("Value") or () if isinstance(item, dict)
                and all(_match(child, item, query, tz) for child in children.values())]
        out[tag] = {"vr": "SQ", "Value": kept} if kept else {"vr": "SQ"}
    return dict(sorted(out.items()))


def _empty_vr(tag: str, elem: dict) -> str:
    vr = elem.get("vr")
    if vr and vr != "UN":
        return vr
    known = dictionary_vr(tag)
    return known.split(" or ")[0] if known else "UN"


# ---- matching ------------------------------------------------------------------------------

def _match(node: Node, ds: Dataset, query: Query, tz: timezone) -> bool:
    """``tz``: how the workitem's DT values without an offset are read (``workitem_tz``)."""
    if node.kind == "universal":
        return True
    if isinstance(node, SeqKey):
        return any(all(_match(child, item, query, tz) for child in node.children.values())
                   for item in values(ds, node.tag) if isinstance(item, dict))
    vals = [v for v in values(ds, node.tag) if v is not None and v != ""]
    if not vals:
        return False
    return any(_match_value(node, v, query, tz) for v in vals)


def _match_value(key: Key, value, query: Query, tz: timezone) -> bool:
    if key.vr == "PN":
        return _match_name(key, value, query.fuzzy)
    if key.kind == "uids":
        return value in key.uids
    if key.kind == "range":
        try:
            start = period(key.vr, value, tz)[0]
        except ValueError:
            return False
        return (key.low is None or start >= key.low) and (key.high is None or start < key.high)
    if key.kind == "wildcard":
        return bool(key.pattern.fullmatch(str(value)))
    if isinstance(value, (int, float)):
        return float(key.value) == float(value)
    return value == key.value


PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")


def _match_name(key: Key, value: dict, fuzzy: bool) -> bool:
    """Person names: case-insensitive; compared component by component (``^``), trailing empty
    components insignificant (``DOE^JOHN^^^`` = ``DOE^JOHN``); a wildcard matches within its
    component, and a value ending in ``*`` also matches any further components (``DOE*``
    matches ``DOE^JOHN``). A value of one component group matches any group of the name; one of
    several groups (``Yamada^Tarou=山田^太郎``) matches each of its non-empty groups against the
    name's group in the same place."""
    stored = [(value or {}).get(g) or "" for g in PN_GROUPS] if isinstance(value, dict) \
        else [str(value), "", ""]
    if fuzzy:
        wanted = _fold(key.value.replace("*", "").replace("?", ""))
        return any(_fold(g).startswith(wanted) or
                   any(part.startswith(wanted) for part in re.split(r"[\^= ]", _fold(g)) if part)
                   for g in stored if g)
    wildcard = key.kind == "wildcard"
    wanted = key.value.split("=")
    if len(wanted) == 1:
        return any(_name_group_matches(wanted[0], g, wildcard) for g in stored if g)
    return any(wanted) and all(not w or _name_group_matches(w, g, wildcard)
                               for w, g in zip(wanted, stored))


def _name_group_matches(wanted: str, stored: str, wildcard: bool) -> bool:
    want, have = _components(wanted), _components(stored)
    if not wildcard:
        return [c.casefold() for c in want] == [c.casefold() for c in have]
    extends = bool(want) and want[-1].endswith("*")
    for i in range(max(len(want), len(have))):
        if i < len(want):
            if not _component_pattern(want[i]).fullmatch(have[i] if i < len(have) else ""):
                return False
        elif have[i] and not extends:
            return False
    return True


def _components(group: str) -> list[str]:
    """A component group's components, without the trailing empty ones."""
    parts = group.split("^")
    while parts and not parts[-1].strip():
        parts.pop()
    return parts


@functools.lru_cache(maxsize=1024)
def _component_pattern(component: str) -> re.Pattern:
    return _wildcard(component, True)


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


# ---- stored filters (Filtered Global Subscription) -------------------------------------------

# A filter is stored as its matching terms, [path, text] pairs ("0040A370.00080050", "ACC1";
# a TimezoneOffsetFromUTC term says how its DT values are read): one canonical form, whether the
# subscription came as UPS-RS query parameters or as a DIMSE identifier.
Terms = list[list[str]]


def from_terms(terms: Terms, default_tz: timezone = UTC) -> Query:
    tz = default_tz
    for path, raw in terms:
        if path == t.TimezoneOffsetFromUTC:
            try:
                tz = parse_offset(raw, default_tz)
            except ValueError:
                raise InvalidQuery(f"TimezoneOffsetFromUTC: {raw!r} is not +HHMM/-HHMM") from None
    query = Query(store_tz=default_tz)
    for path, raw in terms:
        if path != t.TimezoneOffsetFromUTC:
            add_term(query, path.split("."), raw, tz, path)
    return query


def identifier_terms(identifier: Dataset, prefix: str = "") -> Terms:
    """The matching terms of an identifier in canonical form (every element with a value; a
    sequence through the keys of its one item)."""
    terms: Terms = []
    for tag, elem in identifier.items():
        if tag == t.SpecificCharacterSet or tag in NEVER_RETURNED:
            continue
        path = f"{prefix}{tag}"
        if elem.get("vr") == "SQ":
            item_list = elem.get("Value") or []
            if len(item_list) > 1:
                raise InvalidQuery(f"{describe(tag)}: a sequence matching key has one item")
            if item_list and item_list[0]:
                terms += identifier_terms(item_list[0], f"{path}.")
        elif text := _identifier_text(elem):
            terms.append([path, text])
    return terms


def legacy_terms(spec: dict) -> Terms:
    """The terms of a filter stored by an earlier version ({"params": [[name, value]…]} or
    {"identifier": dataset}), so that subscriptions made before an upgrade keep working."""
    if "identifier" in spec:
        return identifier_terms(spec["identifier"])
    terms = []
    for name, value in spec.get("params", ()):
        try:
            terms.append([".".join(resolve(part) for part in name.split(".")), value])
        except KeyError:
            continue  # unknown parameters were ignored when the filter was made
    return terms
