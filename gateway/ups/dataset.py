"""The canonical workitem form: a DICOM JSON object (PS3.18 Annex F) held as a Python dict.

``{"00741000": {"vr": "CS", "Value": ["SCHEDULED"]}, ...}`` is what REST speaks natively, what
matching runs on and what the store keeps (as JSON text). Adapters call ``normalize`` once at
their edge; everything inside the core may then trust the structure (upper-case 8-hex keys, known
VRs, typed values).
"""

from __future__ import annotations

import base64
import functools
import binascii
import operator
import re
import uuid
from typing import Any, Iterable

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from gateway.ups.errors import InvalidDataset
from gateway.ups.uids import UUID_ROOT
from gateway.ups.vr import ALL_VRS, BINARY_VRS, RULES, STRING_VRS, Refused

Dataset = dict[str, dict[str, Any]]

_HEX8_RE = re.compile(r"[0-9A-Fa-f]{8}")  # use fullmatch: "$" would let a trailing newline in


# ---- tags and names -------------------------------------------------------------------------

def key(tag: int) -> str:
    return f"{tag:08X}"


@functools.lru_cache(maxsize=4096)
def describe(tag_key: str) -> str:
    """'PatientID (0010,0020)' — how error messages name an attribute."""
    tag = int(tag_key, 16)
    name = keyword_for_tag(tag) or "Unknown"
    return f"{name} ({tag_key[:4]},{tag_key[4:]})"


def resolve(name: str) -> str:
    """Keyword or 8-hex tag → tag key. Raises KeyError for anything else."""
    if _HEX8_RE.fullmatch(name):
        return name.upper()
    tag = tag_for_keyword(name)
    if tag is None:
        raise KeyError(name)
    return key(tag)


@functools.lru_cache(maxsize=4096)
def dictionary_vr(tag_key: str) -> str | None:
    try:
        return dictionary_VR(int(tag_key, 16))
    except KeyError:
        return None


def new_uid() -> str:
    return UUID_ROOT + str(uuid.uuid4().int)


def is_uid(value: Any) -> bool:
    return value != "" and RULES["UI"].accepts(value)


# ---- reading and writing values -----------------------------------------------------------

def values(ds: Dataset, tag_key: str) -> list:
    element = ds.get(tag_key)
    if not element:
        return []
    return element.get("Value") or []


def first(ds: Dataset, tag_key: str, default: Any = None) -> Any:
    vals = values(ds, tag_key)
    return vals[0] if vals and vals[0] is not None else default


def items(ds: Dataset, tag_key: str) -> list[Dataset]:
    """Items of a sequence attribute (empty list when absent or empty)."""
    return [item for item in values(ds, tag_key) if isinstance(item, dict)]


def has_value(ds: Dataset, tag_key: str) -> bool:
    element = ds.get(tag_key)
    if element:
        for v in element.get("Value") or ():  # (a loop: the rules ask this of every item)
            if v is not None and v != "":
                return True
    return False


def element(vr: str, *vals: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(vals)} if vals else {"vr": vr}


def put(ds: Dataset, tag_key: str, vr: str, *vals: Any) -> None:
    ds[tag_key] = element(vr, *vals)


def code_item(value: str, scheme: str, meaning: str) -> Dataset:
    return {"00080100": element("SH", value), "00080102": element("SH", scheme),
            "00080104": element("LO", meaning)}


def person_name(value: dict | None) -> str:
    if not value:
        return ""
    return value.get("Alphabetic") or value.get("Ideographic") or value.get("Phonetic") or ""


CHARACTER_SET = "00080005"  # Specific Character Set


def without_character_sets(ds: Dataset) -> Dataset:
    """``ds`` without any Specific Character Set, at any level: canonical text is Unicode, so
    the character set a request arrived in says nothing about the workitem (each reply declares
    the one it is written in). Returns ``ds`` itself when it has none; a copy otherwise, which
    shares the items that had none (usually all: only the top level declares one)."""
    if not _items_declare_character_set(ds):
        if CHARACTER_SET not in ds:
            return ds
        out = dict(ds)
        del out[CHARACTER_SET]
        return out
    out = {}
    for tag_key, elem in ds.items():
        if tag_key == CHARACTER_SET:
            continue
        if elem.get("vr") == "SQ" and elem.get("Value"):
            elem = {**elem, "Value": [without_character_sets(item) if type(item) is dict
                                      else item for item in elem["Value"]]}
        out[tag_key] = elem
    return out


def _items_declare_character_set(ds: Dataset) -> bool:
    for elem in ds.values():
        if elem.get("vr") == "SQ":
            for item in elem.get("Value") or ():
                if type(item) is dict and (CHARACTER_SET in item
                                           or _items_declare_character_set(item)):
                    return True
    return False


def select(ds: Dataset, keys: Iterable[str]) -> Dataset:
    return {k: ds[k] for k in sorted(keys) if k in ds}


# ---- validation and normalisation at the edge ---------------------------------------------

MAX_DEPTH = 16  # sequences nested deeper than this are refused (UPS needs about 4)


def normalize(obj: Any, path: Any = "", _depth: int = 0) -> Dataset:
    """Validate a DICOM JSON object and return its canonical form.

    Keys are upper-cased and sorted, group-length elements dropped, IS/DS turned into JSON numbers,
    PN strings into PN objects; each value is judged by its VR's one rule (``gateway.ups.vr``).
    Anything wrong raises ``InvalidDataset`` naming the attribute path, e.g.
    ``ScheduledStationNameCodeSequence[0] > CodeValue (0008,0100)``. Elements that are already
    canonical (as every encoder writes them) are kept as sent, not copied.
    """
    if not isinstance(obj, dict):
        where = _w(path).removesuffix(" > ")
        kind = "null" if obj is None else type(obj).__name__
        raise InvalidDataset(f"{where}: a sequence item must be a JSON object, got {kind}" if where
                             else f"Dataset: expected a JSON object, got {kind}")
    if _depth > MAX_DEPTH:
        raise InvalidDataset(f"{_w(path)}: sequences are nested more than {MAX_DEPTH} levels deep")
    out: Dataset = {}
    known = _KEYS
    for raw_key, elem in obj.items():
        entry = known.get(raw_key) if type(raw_key) is str else None
        if entry is None:
            entry = _key_entry(raw_key, path)
            if len(known) < _KEYS_MAX:
                known[raw_key] = entry
        tag_key, allowed = entry
        if allowed is None:
            continue  # group length: never stored (PS3.18 F.2)
        if type(elem) is dict and len(elem) == 2:  # inlined: what most elements are
            vr, vals = elem.get("vr"), elem.get("Value")
            if vr == "SQ" and type(vals) is list and vr in allowed:
                out[tag_key] = _sequence(vals, (path, tag_key), _depth)
                continue
            if type(vals) is list and len(vals) == 1 and type(vr) is str and vr in allowed \
                    and next(iter(elem)) == "vr":
                try:
                    if RULES[vr](vals[0]) is vals[0]:
                        out[tag_key] = elem  # already canonical: kept as sent
                        continue
                except Refused as refused:
                    raise InvalidDataset(f"{_w((path, tag_key))}: {refused}") from None
        # (path, tag key): the location is named in full only when something is wrong.
        out[tag_key] = _element(tag_key, allowed, elem, (path, tag_key), _depth)
    keys = list(out)
    return out if keys == sorted(keys) else dict(sorted(out.items()))


# Payload key → (canonical tag key, the VRs the data dictionary allows for it, or None for a group
# length): learnt on first sight of a key, bounded so that a stream of odd keys cannot grow it.
_KEYS: dict[str, tuple[str, frozenset[str] | None]] = {}
_KEYS_MAX = 20000
def _key_entry(raw_key: Any, path) -> tuple[str, frozenset[str] | None]:
    if type(raw_key) is not str or not _HEX8_RE.fullmatch(raw_key):
        raise InvalidDataset(f"{_w(path)}{raw_key!r}: attribute keys must be 8 hexadecimal digits")
    tag_key = raw_key.upper()
    if tag_key[4:] == "0000":
        return tag_key, None
    if tag_key.startswith("0000"):
        raise InvalidDataset(f"{_w((path, tag_key))}: command elements are not allowed in a "
                             "dataset")
    return tag_key, frozenset(vr for vr in ALL_VRS if _vr_allowed(tag_key, vr))


def _w(where) -> str:
    """Render a lazily built location: "" | (parent, tag key) | (parent, item index)."""
    if isinstance(where, str):
        return where
    parent, last = where
    if isinstance(last, int):
        return f"{_w(parent)}[{last}] > "
    return f"{_w(parent)}{describe(last)}"


@functools.lru_cache(maxsize=4096)
def _vr_allowed(tag_key: str, vr: str) -> bool:
    expected = dictionary_vr(tag_key)
    return not expected or vr == "UN" or expected == "UN" or vr in expected.split(" or ")


_MEMBERS = frozenset(("vr", "Value", "InlineBinary", "BulkDataURI"))


def _element(tag_key: str, allowed: frozenset[str], elem: Any, where, depth: int) -> dict[str, Any]:
    if type(elem) is dict:
        vr = elem.get("vr")
        if type(vr) is str and vr in allowed and vr != "SQ" and len(elem) == 2:
            vals = elem.get("Value")
            if type(vals) is list and vals:  # {"vr", "Value"}: what nearly every element is
                rule = RULES[vr]
                try:
                    if len(vals) == 1:
                        value = rule(vals[0])
                        if value is vals[0] and next(iter(elem)) == "vr":
                            return elem  # already canonical: kept as sent
                        return {"vr": vr, "Value": [value]}
                    canonical = [rule(v) for v in vals]
                except Refused as refused:
                    raise InvalidDataset(f"{_w(where)}: {refused}") from None
                if next(iter(elem)) == "vr" and all(map(operator.is_, canonical, vals)):
                    return elem
                return {"vr": vr, "Value": canonical}
    return _unusual_element(tag_key, allowed, elem, where, depth)


def _unusual_element(tag_key: str, allowed: frozenset[str], elem: Any, where,
                     depth: int) -> dict[str, Any]:
    """Every other shape an element may have: empty, a sequence, inline binary — or wrong."""
    if type(elem) is not dict:
        raise InvalidDataset(f"{_w(where)}: expected an object with 'vr', got {type(elem).__name__}")
    vr = elem.get("vr")
    if type(vr) is not str or vr not in allowed:
        if type(vr) is not str or vr not in ALL_VRS:
            raise InvalidDataset(f"{_w(where)}: missing or unknown VR {vr!r}")
        raise InvalidDataset(f"{_w(where)}: VR {vr} is wrong, the data dictionary says "
                             f"{dictionary_vr(tag_key)}")
    if len(elem) == 1:
        return elem  # {"vr": ...}: an empty (type 2) attribute
    if not _MEMBERS.issuperset(elem):
        raise InvalidDataset(f"{_w(where)}: unexpected member(s) {sorted(set(elem) - _MEMBERS)}")
    if "BulkDataURI" in elem:
        raise InvalidDataset(f"{_w(where)}: BulkDataURI is not supported; UPS-RS payloads must be "
                             "self-contained (use InlineBinary)")
    if "InlineBinary" in elem:
        if "Value" in elem:
            raise InvalidDataset(f"{_w(where)}: an element has either 'Value' or 'InlineBinary'")
        return {"vr": vr, "InlineBinary": _inline_binary(elem["InlineBinary"], vr, where)}
    vals = elem["Value"]
    if type(vals) is not list:
        raise InvalidDataset(f"{_w(where)}: 'Value' must be a JSON array")
    if vr == "SQ":
        return _sequence(vals, where, depth)
    if not vals:
        return {"vr": vr}
    return _element(tag_key, allowed, {"vr": vr, "Value": vals}, where, depth)


def _sequence(items: list, where, depth: int) -> dict[str, Any]:
    return {"vr": "SQ", "Value": [normalize(item, (where, i), depth + 1)
                                  for i, item in enumerate(items)]}


def _inline_binary(value: Any, vr: str, where: str) -> str:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if vr not in BINARY_VRS or not isinstance(value, str):
        raise InvalidDataset(f"{_w(where)}: InlineBinary must be a base64 string on a binary VR")
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidDataset(f"{_w(where)}: InlineBinary is not valid base64") from None
    return value
