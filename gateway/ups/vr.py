"""What each Value Representation accepts: one rule per VR (PS3.5 6.2, in DICOM JSON form).

``RULES[vr](value)`` is the whole decision for one value: it returns the canonical value — the
very object it was given when that is already canonical, so ``normalize`` can keep an element as
sent — or raises ``Refused`` saying what is wrong. A string rule is the conjunction of a few named
parts (type, Unicode, length, characters, syntax); it accepts in one pass and, only when it
refuses, asks the same parts which one failed, so the message and the decision cannot disagree.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any, Callable

from gateway.ups.dicomtime import dt_period

STRING_VRS = frozenset("AE AS CS DA DT LO LT SH ST TM UC UI UR UT".split())
NUMBER_VRS = frozenset("FL FD SL SS UL US SV UV".split())
NUMERIC_STRING_VRS = frozenset(("IS", "DS"))
BINARY_VRS = frozenset("OB OD OF OL OV OW UN".split())
ALL_VRS = STRING_VRS | NUMBER_VRS | NUMERIC_STRING_VRS | BINARY_VRS | {"PN", "SQ", "AT"}

MAX_LENGTH = {"AE": 16, "CS": 16, "LO": 64, "SH": 16, "UI": 64, "DA": 8, "TM": 14, "DT": 26,
              "AS": 4, "LT": 10240, "ST": 1024, "PN": 64}
# Value ranges of the binary integer VRs and of IS.
INTEGER_RANGE = {"SS": (-2**15, 2**15 - 1), "US": (0, 2**16 - 1), "SL": (-2**31, 2**31 - 1),
                 "UL": (0, 2**32 - 1), "SV": (-2**63, 2**63 - 1), "UV": (0, 2**64 - 1),
                 "IS": (-2**31, 2**31 - 1)}
LARGEST_EXACT_INTEGER = 2**53  # FL/FD/DS given as JSON integers: beyond this a double rounds


class Refused(ValueError):
    """A value its VR does not accept; the text says why (without naming the attribute)."""


Rule = Callable[[Any], Any]

# ---- strings ------------------------------------------------------------------------------------

_SURROGATES = "\ud800-\udfff"
_CONTROL = "\x00-\x1f\x7f"
_TEXT_CONTROL = "\x00-\x08\x0b\x0e-\x1f\x7f"  # LT/ST/UT may carry TAB, LF, FF and CR


def _no(chars: str) -> Callable[[str], Any]:
    return re.compile(f"[^{chars}]*").fullmatch


_has_surrogate = re.compile(f"[{_SURROGATES}]").search
_plain_chars = _no(_CONTROL + "\\\\" + _SURROGATES)    # the backslash is the value delimiter
_text_chars = _no(_TEXT_CONTROL + _SURROGATES)         # single-valued text: backslash allowed
_url_chars = _no(_CONTROL + _SURROGATES)


@functools.lru_cache(maxsize=4096)  # the same dates and times recur across workitems
def _real_date_time(v: str) -> bool:
    """Whether a DA/DT value of the right shape is also a real date (and time)."""
    try:
        dt_period(v)
    except ValueError:
        return False
    return True


def _dated(pattern: str) -> Callable[[str], bool]:
    shape = re.compile(pattern).fullmatch
    return lambda v: not v or (shape(v) is not None and _real_date_time(v))


# The VRs with a syntax of their own: (accepts a value of the right length, what it should be).
# Each syntax admits only ASCII digits, letters and punctuation, so it rules out control
# characters and backslashes too.
_SYNTAX = {
    "CS": (re.compile(r"[A-Z0-9 _]*").fullmatch, "a valid CS (upper case, digits, space, _)"),
    "DA": (_dated(r"[0-9]{8}"), "a valid DA (YYYYMMDD)"),
    "DT": (_dated(r"[0-9]{4}(?:[0-9]{2}(?:[0-9]{2}(?:[0-9]{2}(?:[0-9]{2}(?:[0-9]{2}"
                  r"(?:\.[0-9]{1,6})?)?)?)?)?)?(?:[+-][0-9]{4})?"),
           "a valid DT (YYYYMMDDHHMMSS.FFFFFF&ZZXX)"),
    "TM": (re.compile(r"(?:(?:[01][0-9]|2[0-3])(?:[0-5][0-9](?:[0-5][0-9]|60)?"
                      r"(?:\.[0-9]{1,6})?)?)?").fullmatch, "a valid TM (HHMMSS.FFFFFF)"),
    "UI": (re.compile(r"(?:(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*)?").fullmatch, "a valid UID"),
}
_UNLIMITED = 2**62


def _string_rule(vr: str) -> Rule:
    limit = MAX_LENGTH.get(vr, _UNLIMITED)
    chars = (_text_chars if vr in ("LT", "ST", "UT") else _url_chars if vr == "UR"
             else _plain_chars)
    syntax, looks_like = _SYNTAX.get(vr, (None, ""))
    shape = syntax or chars

    def why(v: Any) -> str:
        if not isinstance(v, str):
            return f"{vr} values must be strings, got {v!r}"
        if _has_surrogate(v):
            return "the value is not valid Unicode text"
        if len(v) > limit:
            return f"value longer than the {limit} characters {vr} allows"
        if syntax is not None:
            return f"{v!r} is not {looks_like}"
        if "\\" in v and chars is _plain_chars:
            return f"backslash is not allowed inside a {vr} value"
        return f"control characters are not allowed in a {vr} value"

    def rule(v: Any) -> Any:
        if type(v) is str and len(v) <= limit and shape(v):
            return v
        if v is None:
            return v
        if isinstance(v, str) and type(v) is not str:  # pydicom's UID and the like: plain text
            return rule(str(v))
        raise Refused(why(v))

    def accepts(v: Any) -> bool:
        try:
            return v is not None and rule(v) is v
        except Refused:
            return False

    rule.accepts = accepts  # type: ignore[attr-defined]
    return rule


# ---- person names -------------------------------------------------------------------------------

_PN_GROUPS = frozenset(("Alphabetic", "Ideographic", "Phonetic"))


def _person_name(v: Any) -> Any:
    """A PN value: an object of component groups (a bare string is the Alphabetic group); empty
    groups are dropped."""
    if v is None:
        return None
    if isinstance(v, str):  # a bare string is the Alphabetic group
        return _person_name({"Alphabetic": str(v)}) if v else {}
    if type(v) is not dict or not _PN_GROUPS.issuperset(v):
        raise Refused(f"PN values must be objects with Alphabetic/Ideographic/Phonetic groups, "
                      f"got {v!r}")
    for group in v.values():
        if type(group) is not str:
            raise Refused("PN component groups must be strings")
        if len(group) > 64:
            raise Refused("a PN component group may have at most 64 characters")
        if _plain_chars(group) is None:
            if _has_surrogate(group):
                raise Refused("the value is not valid Unicode text")
            if "\\" in group:
                raise Refused("backslash is not allowed inside a PN value")
            raise Refused("control characters are not allowed in a PN")
    return v if all(v.values()) else {g: s for g, s in v.items() if s}


# ---- numbers ------------------------------------------------------------------------------------

def _finite(vr: str, v: Any) -> int | float:
    if type(v) is bool or not isinstance(v, (int, float)):
        raise Refused(f"{vr} values must be JSON numbers, got {v!r}")
    if isinstance(v, float) and not math.isfinite(v):
        raise Refused(f"{v!r} is not a finite {vr} value")
    return v


def _integer_rule(vr: str) -> Rule:
    low, high = INTEGER_RANGE[vr]

    def rule(v: Any) -> Any:
        if type(v) is int and low <= v <= high or v is None:
            return v
        number = _finite(vr, v)
        if isinstance(number, float):
            if not number.is_integer():
                raise Refused(f"{vr} values must be integers, got {v!r}")
            number = int(number)
        if not low <= number <= high:
            raise Refused(f"{number} is out of the range of {vr}")
        return number

    return rule


def _real_rule(vr: str) -> Rule:
    def rule(v: Any) -> Any:
        if v is None:
            return v
        number = _finite(vr, v)
        if type(number) is int and abs(number) > LARGEST_EXACT_INTEGER:
            raise Refused(f"{v} is too large for {vr}")
        return number

    return rule


_IS_TEXT = re.compile(r"\s*[+-]?[0-9]+\s*").fullmatch
_DS_TEXT = re.compile(r"\s*[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\s*").fullmatch


def _numeric_string_rule(vr: str) -> Rule:
    """IS and DS: JSON numbers, or the numeric strings some encoders send (read as numbers; an
    all-blank string is an empty value)."""
    as_number = _integer_rule(vr) if vr == "IS" else _real_rule(vr)
    text = _IS_TEXT if vr == "IS" else _DS_TEXT

    def rule(v: Any) -> Any:
        if type(v) is not str:
            if type(v) is bool:
                raise Refused(f"{vr} value must be a number or numeric string, got {v!r}")
            return as_number(v)
        if not v.strip():
            return None
        if text(v) is None:
            raise Refused(f"{v!r} is not a valid {vr}")
        if vr == "IS":
            return as_number(int(v))
        number = as_number(float(v))
        exact = number.is_integer() and "e" not in v.lower() and abs(number) < LARGEST_EXACT_INTEGER
        return int(number) if exact else number

    return rule


# ---- the rest -----------------------------------------------------------------------------------

_hex8 = re.compile(r"[0-9A-Fa-f]{8}").fullmatch


def _attribute_tag(v: Any) -> Any:
    if v is None:
        return None
    if type(v) is not str or not _hex8(v):
        raise Refused(f"AT values must be 8 hexadecimal digits, got {v!r}")
    upper = v.upper()
    return v if upper == v else upper


def _binary(vr: str) -> Rule:
    def rule(v: Any) -> Any:
        raise Refused(f"VR {vr} must be sent as InlineBinary")
    return rule


RULES: dict[str, Rule] = {
    **{vr: _string_rule(vr) for vr in STRING_VRS},
    **{vr: _integer_rule(vr) for vr in ("SS", "US", "SL", "UL", "SV", "UV")},
    **{vr: _real_rule(vr) for vr in ("FL", "FD")},
    **{vr: _numeric_string_rule(vr) for vr in NUMERIC_STRING_VRS},
    **{vr: _binary(vr) for vr in BINARY_VRS},
    "PN": _person_name,
    "AT": _attribute_tag,
}
