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
import math
import re
import uuid
from typing import Any, Iterable

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from gateway.ups.dicomtime import dt_period
from gateway.ups.errors import InvalidDataset
from gateway.ups.uids import UUID_ROOT

Dataset = dict[str, dict[str, Any]]

STRING_VRS = frozenset("AE AS CS DA DT LO LT SH ST TM UC UI UR UT".split())
NUMBER_VRS = frozenset("FL FD SL SS UL US SV UV".split())
NUMERIC_STRING_VRS = frozenset(("IS", "DS"))
BINARY_VRS = frozenset("OB OD OF OL OV OW UN".split())
ALL_VRS = STRING_VRS | NUMBER_VRS | NUMERIC_STRING_VRS | BINARY_VRS | {"PN", "SQ", "AT"}
SINGLE_VALUE_TEXT_VRS = frozenset(("LT", "ST", "UT", "UR"))  # backslash is not a delimiter

_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_DA_RE = re.compile(r"^\d{8}$")
_DT_RE = re.compile(r"^\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?$")
_TM_RE = re.compile(r"^([01]\d|2[0-3])([0-5]\d([0-5]\d|60)?(\.\d{1,6})?)?$")
# Control characters: only the text VRs may carry line breaks, tabs and form feeds (PS3.5 6.1.3).
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_TEXT_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_CS_RE = re.compile(r"^[A-Z0-9 _]*$")
_HEX8_RE = re.compile(r"[0-9A-Fa-f]{8}")  # use fullmatch: "$" would let a trailing newline in
_IS_RE = re.compile(r"^\s*[+-]?\d+\s*$")
_DS_RE = re.compile(r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$")
# Value ranges of the binary integer VRs and of IS (PS3.5 6.2).
_INT_RANGE = {"SS": (-2**15, 2**15 - 1), "US": (0, 2**16 - 1), "SL": (-2**31, 2**31 - 1),
              "UL": (0, 2**32 - 1), "SV": (-2**63, 2**63 - 1), "UV": (0, 2**64 - 1),
              "IS": (-2**31, 2**31 - 1)}
_MAX_LEN = {"AE": 16, "CS": 16, "LO": 64, "SH": 16, "UI": 64, "DA": 8, "TM": 14, "DT": 26,
            "AS": 4, "LT": 10240, "ST": 1024}


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
    return isinstance(value, str) and len(value) <= 64 and bool(_UID_RE.match(value))


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
    return any(v not in (None, "") for v in values(ds, tag_key))


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


def select(ds: Dataset, keys: Iterable[str]) -> Dataset:
    return {k: ds[k] for k in sorted(keys) if k in ds}


# ---- validation and normalisation at the edge ---------------------------------------------

MAX_DEPTH = 16  # sequences nested deeper than this are refused (UPS needs about 4)


def normalize(obj: Any, path: Any = "", _depth: int = 0) -> Dataset:
    """Validate a DICOM JSON object and return its canonical form.

    Keys are upper-cased and sorted, group-length elements dropped, IS/DS turned into JSON numbers,
    PN strings into PN objects. Anything else that is wrong raises ``InvalidDataset`` naming the
    attribute path, e.g. ``ScheduledStationNameCodeSequence[0] > CodeValue (0008,0100)``.
    """
    if not isinstance(obj, dict):
        where = _w(path).removesuffix(" > ")
        kind = "null" if obj is None else type(obj).__name__
        raise InvalidDataset(f"{where}: a sequence item must be a JSON object, got {kind}" if where
                             else f"Dataset: expected a JSON object, got {kind}")
    if _depth > MAX_DEPTH:
        raise InvalidDataset(f"{_w(path)}: sequences are nested more than {MAX_DEPTH} levels deep")
    out: Dataset = {}
    fast_keys = _FAST_KEYS
    for raw_key, elem in obj.items():
        # Fast path for what most of any real payload is: a known attribute key whose element is
        # {"vr": <a VR the dictionary allows>, "Value": [valid values]}, plain strings, dates,
        # person names or sequence items. Anything else, or anything the whole-value checks do not
        # accept, takes the precise path, which says what is wrong.
        entry = fast_keys.get(raw_key)
        if entry is not None and type(elem) is dict:
            tag_key, allowed = entry
            vr = elem.get("vr")
            if type(vr) is str and vr in allowed:
                size = len(elem)
                if size == 1:  # {"vr": ...}: an empty (type 2) attribute
                    out[tag_key] = elem
                    continue
                vals = elem.get("Value")
                if size == 2 and type(vals) is list and vals:
                    if vr == "SQ":
                        where = (path, tag_key)
                        depth = _depth + 1
                        out[tag_key] = {"vr": "SQ", "Value": [
                            normalize(item, (where, i), depth) for i, item in enumerate(vals)]}
                        continue
                    check = _FAST_VALUE[vr]
                    if (check(vals[0]) if len(vals) == 1 else all(map(check, vals))):
                        # Exactly {"vr", "Value"}, both valid: kept as sent when already in
                        # canonical member order (as every encoder writes it).
                        out[tag_key] = (elem if next(iter(elem)) == "vr"
                                        else {"vr": vr, "Value": vals})
                        continue
        tag_key = _tag_key(raw_key) if type(raw_key) is str else None
        if tag_key is None:
            raise InvalidDataset(f"{_w(path)}{raw_key!r}: attribute keys must be 8 hexadecimal digits")
        if tag_key[4:] == "0000":
            continue  # group length: never stored (PS3.18 F.2)
        if tag_key.startswith("0000"):
            raise InvalidDataset(f"{_w((path, tag_key))}: command elements are not allowed in a "
                                 "dataset")
        if entry is None and len(fast_keys) < _FAST_KEYS_MAX:
            _learn_key(raw_key, tag_key)
        # (path, tag key): the location is named in full only when something is wrong.
        out[tag_key] = _normalize_element(tag_key, elem, (path, tag_key), _depth)
    keys = list(out)
    return out if keys == sorted(keys) else dict(sorted(out.items()))


# Payload key → (canonical tag key, the VRs the fast path takes for it): learnt on first sight of
# a key (through the precise path), bounded so that a stream of odd keys cannot grow it for ever.
_FAST_KEYS: dict[str, tuple[str, frozenset[str]]] = {}
_FAST_KEYS_MAX = 20000


def _learn_key(raw_key: str, tag_key: str) -> None:
    _FAST_KEYS[raw_key] = (tag_key, frozenset(vr for vr in _FAST_VRS if _vr_allowed(tag_key, vr)))


@functools.lru_cache(maxsize=8192)
def _tag_key(raw_key: str) -> str | None:
    """A payload's attribute key in canonical (upper-case) form; None when it is not a tag."""
    return raw_key.upper() if _HEX8_RE.fullmatch(raw_key) else None


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


def _one_pattern(chars: str, limit: int | None):
    return re.compile(f"[{chars}]{{0,{limit}}}" if limit else f"[{chars}]*").fullmatch


# Whole-value checks for the string VRs whose rules are pure syntax: one regex per VR says "this
# value is fine" in one call. A value that fails is handed to the precise checks, which then say
# what is wrong; the two must accept exactly the same values (tests/test_dataset_fast.py).
_PLAIN = r"^\x00-\x1f\x7f\\\ud800-\udfff"      # no control characters, backslash, surrogates
_TEXT = r"^\x00-\x08\x0b\x0e-\x1f\x7f\ud800-\udfff"  # LT/ST/UT: tab, LF, FF, CR allowed
_uid_syntax = re.compile(r"(?:(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*)?").fullmatch
_FAST_STRING = {
    **{vr: _one_pattern(_PLAIN, _MAX_LEN.get(vr)) for vr in ("AE", "AS", "LO", "SH", "UC")},
    **{vr: _one_pattern(_TEXT, _MAX_LEN.get(vr)) for vr in ("LT", "ST", "UT")},
    "UR": _one_pattern(r"^\x00-\x1f\x7f\ud800-\udfff", None),
    "CS": _one_pattern("A-Z0-9 _", _MAX_LEN["CS"]),
    "TM": re.compile(r"(?:[01]\d|2[0-3])(?:[0-5]\d(?:[0-5]\d|60)?(?:\.\d{1,6})?)?|").fullmatch,
    "UI": lambda v: len(v) <= 64 and _uid_syntax(v) is not None,
}


def _fast_date(pattern: re.Pattern):
    # DA/DT: only digits, "+", "-" and "." fit the shape (whole value: no trailing line feed), so
    # no control character or backslash can pass.
    shape = re.compile(pattern.pattern.removeprefix("^").removesuffix("$")).fullmatch
    return lambda v: type(v) is str and (not v or (shape(v) is not None and _is_date_time(v)))


def _fast_person_name(v: Any) -> bool:
    """A PN value already in canonical form: one non-empty Alphabetic group."""
    return (type(v) is dict and len(v) == 1 and type(a := v.get("Alphabetic")) is str
            and a != "" and _PN_GROUP(a) is not None)


_PN_GROUP = _one_pattern(r"^\x00-\x1f\x7f\ud800-\udfff", 64)


def _typed(check):
    return lambda v: type(v) is str and bool(check(v))


def _fast_integer(vr: str):
    low, high = _INT_RANGE[vr]
    return lambda v: type(v) is int and low <= v <= high  # not bool: type() is exact


def _fast_real(v: Any) -> bool:
    return (type(v) is float and math.isfinite(v)) or (type(v) is int and abs(v) <= 2**53)


# Per VR: "this value is valid as it stands" (the element can be kept as sent). IS, DS given as
# strings, and floats for integer VRs are converted by the precise path, so they are not here.
_FAST_VALUE = {**{vr: _typed(check) for vr, check in _FAST_STRING.items()},
               "DA": _fast_date(_DA_RE), "DT": _fast_date(_DT_RE), "PN": _fast_person_name,
               **{vr: _fast_integer(vr) for vr in ("SS", "US", "SL", "UL", "SV", "UV", "IS")},
               **{vr: _fast_real for vr in ("DS", "FL", "FD")}}
_FAST_VRS = frozenset(_FAST_VALUE) | {"SQ"}


def _normalize_element(tag_key: str, elem: Any, where, depth: int = 0) -> dict[str, Any]:
    if type(elem) is not dict:
        raise InvalidDataset(f"{_w(where)}: expected an object with 'vr', got {type(elem).__name__}")
    vr = elem.get("vr")
    if type(vr) is not str or vr not in ALL_VRS:
        raise InvalidDataset(f"{_w(where)}: missing or unknown VR {vr!r}")
    if not _vr_allowed(tag_key, vr):
        raise InvalidDataset(f"{_w(where)}: VR {vr} is wrong, the data dictionary says "
                             f"{dictionary_vr(tag_key)}")
    if not _MEMBERS.issuperset(elem):
        raise InvalidDataset(f"{_w(where)}: unexpected member(s) {sorted(set(elem) - _MEMBERS)}")
    if "BulkDataURI" in elem:
        raise InvalidDataset(f"{_w(where)}: BulkDataURI is not supported; UPS-RS payloads must be "
                             "self-contained (use InlineBinary)")
    if "InlineBinary" in elem:
        return {"vr": vr, "InlineBinary": _inline_binary(elem["InlineBinary"], vr, where)}
    if "Value" not in elem:
        return {"vr": vr}
    vals = elem["Value"]
    if not isinstance(vals, list):
        raise InvalidDataset(f"{_w(where)}: 'Value' must be a JSON array")
    if not vals and vr != "SQ":
        return {"vr": vr}
    if vr == "SQ":
        return _sequence(vals, where, depth)
    return {"vr": vr, "Value": [_normalize_value(vr, v, where) for v in vals]}


def _sequence(items: list, where, depth: int) -> dict[str, Any]:
    return {"vr": "SQ", "Value": [normalize(item, (where, i), depth + 1)
                                  for i, item in enumerate(items)]}


def _normalize_value(vr: str, v: Any, where: str) -> Any:
    if v is None:
        return None
    if vr in STRING_VRS:
        if not isinstance(v, str):
            raise InvalidDataset(f"{_w(where)}: {vr} values must be strings, got {v!r}")
        _check_unicode(v, where)
        _check_string(vr, v, where)
        return v
    if vr in NUMBER_VRS:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise InvalidDataset(f"{_w(where)}: {vr} values must be JSON numbers, got {v!r}")
        return _check_number(vr, v, where)
    if vr in NUMERIC_STRING_VRS:
        return _numeric_string(vr, v, where)
    if vr == "PN":
        if isinstance(v, str):  # liberal: a bare string is the Alphabetic group
            v = {"Alphabetic": v} if v else {}
        if not isinstance(v, dict) or set(v) - {"Alphabetic", "Ideographic", "Phonetic"}:
            raise InvalidDataset(f"{_w(where)}: PN values must be objects with Alphabetic/Ideographic/"
                                 f"Phonetic groups, got {v!r}")
        if not all(isinstance(g, str) for g in v.values()):
            raise InvalidDataset(f"{_w(where)}: PN component groups must be strings")
        for group in v.values():
            _check_unicode(group, where)
            if _CONTROL_RE.search(group):
                raise InvalidDataset(f"{_w(where)}: control characters are not allowed in a PN")
        if any(len(g) > 64 for g in v.values()):
            raise InvalidDataset(f"{_w(where)}: a PN component group may have at most 64 characters")
        return {g: s for g, s in v.items() if s}
    if vr == "AT":
        if not isinstance(v, str) or not _HEX8_RE.fullmatch(v):
            raise InvalidDataset(f"{_w(where)}: AT values must be 8 hexadecimal digits, got {v!r}")
        return v.upper()
    raise InvalidDataset(f"{_w(where)}: VR {vr} must be sent as InlineBinary")


def _check_unicode(v: str, where: str) -> None:
    """JSON may carry lone surrogates (``"\\ud800"``); they cannot be stored as UTF-8."""
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidDataset(f"{_w(where)}: the value is not valid Unicode text") from None


def _check_string(vr: str, v: str, where: str) -> None:
    limit = _MAX_LEN.get(vr)
    if limit and len(v) > limit:
        raise InvalidDataset(f"{_w(where)}: value longer than the {limit} characters {vr} allows")
    if vr == "UI" and v and not is_uid(v):
        raise InvalidDataset(f"{_w(where)}: {v!r} is not a valid UID")
    elif vr == "DA" and v and not (_DA_RE.match(v) and _is_date_time(v)):
        raise InvalidDataset(f"{_w(where)}: {v!r} is not a valid DA (YYYYMMDD)")
    elif vr == "DT" and v and not (_DT_RE.match(v) and _is_date_time(v)):
        raise InvalidDataset(f"{_w(where)}: {v!r} is not a valid DT (YYYYMMDDHHMMSS.FFFFFF&ZZXX)")
    if (_TEXT_CONTROL_RE if vr in ("LT", "ST", "UT") else _CONTROL_RE).search(v):
        raise InvalidDataset(f"{_w(where)}: control characters are not allowed in a {vr} value")
    if vr == "TM" and v and not _TM_RE.match(v):
        raise InvalidDataset(f"{_w(where)}: {v!r} is not a valid TM (HHMMSS.FFFFFF)")
    elif vr == "CS" and not _CS_RE.match(v):
        raise InvalidDataset(f"{_w(where)}: {v!r} is not a valid CS (upper case, digits, space, _)")
    elif vr not in SINGLE_VALUE_TEXT_VRS and "\\" in v:
        raise InvalidDataset(f"{_w(where)}: backslash is not allowed inside a {vr} value")


def _numeric_string(vr: str, v: Any, where: str) -> int | float | None:
    if isinstance(v, bool):
        raise InvalidDataset(f"{_w(where)}: {vr} value must be a number or numeric string, got {v!r}")
    if isinstance(v, (int, float)):
        return _check_number(vr, v, where)
    if isinstance(v, str):
        if not v.strip():
            return None
        if vr == "IS" and _IS_RE.match(v):
            return _check_number(vr, int(v), where)
        if vr == "DS" and _DS_RE.match(v):
            number = _check_number(vr, float(v), where)
            return int(number) if number.is_integer() and "e" not in v.lower() and abs(number) < 2**53 else number
    raise InvalidDataset(f"{_w(where)}: {v!r} is not a valid {vr}")


def _check_number(vr: str, v: int | float, where: str) -> int | float:
    """A finite number within the range of its VR (huge or non-finite JSON numbers refused)."""
    if isinstance(v, float) and not math.isfinite(v):
        raise InvalidDataset(f"{_w(where)}: {v!r} is not a finite {vr} value")
    bounds = _INT_RANGE.get(vr)
    if bounds:
        if isinstance(v, float):
            if not v.is_integer():
                raise InvalidDataset(f"{_w(where)}: {vr} values must be integers, got {v!r}")
            v = int(v)
        if not bounds[0] <= v <= bounds[1]:
            raise InvalidDataset(f"{_w(where)}: {v} is out of the range of {vr}")
        return v
    if isinstance(v, int):  # FL / FD / DS given as a JSON integer
        if abs(v) > 2**53:
            raise InvalidDataset(f"{_w(where)}: {v} is too large for {vr}")
    return v


@functools.lru_cache(maxsize=4096)  # the same dates and times recur across workitems
def _is_date_time(v: str) -> bool:
    """Whether a DA/DT value that has the right shape is also a real date (and time)."""
    try:
        dt_period(v)
    except ValueError:
        return False
    return True


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
