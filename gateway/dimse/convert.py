"""pydicom ``Dataset`` <-> canonical DICOM JSON, converted once at the DIMSE edge.

Inbound datasets (N-CREATE Attribute List, N-SET Modification List, N-ACTION Action Information)
go through ``Dataset.to_json_dict`` and then ``gateway.ups.dataset.normalize``, which validates
them exactly as UPS-RS payloads are validated. C-FIND identifiers and filtered-subscription keys
are *not* attribute values (``*``, ``?``, ranges, UID lists), so they only get the structural fixes
and are validated by ``gateway.ups.matching`` instead.

pydicom quirks fixed here (digest §8):

* an empty sequence comes out as ``"Value": []``; canonical is ``{"vr": "SQ"}``;
* a PN with only Ideographic/Phonetic groups gets ``"Alphabetic": ""``;
* empty values inside a multi-valued attribute come out as ``""`` instead of ``null``;
* leading spaces are kept in values whose leading spaces are not significant (AE, CS, LO, SH,
  DS, IS, DA, DT, TM, UI, UC, AS: PS3.5 6.2); trimmed, as the binary reader does;
* command (group 0000) and group-length (gggg,0000) elements are emitted if present: group
  lengths are dropped; command elements are kept in an attribute list for ``normalize`` to refuse
  (a workitem never holds them, and dropping them silently would hide the requester's error),
  and dropped from identifiers.

Outbound (``encode``: N-GET and C-FIND responses, N-EVENT-REPORTs), DS numbers are formatted to
fit 16 characters, and the character set is chosen here, the one place that does it (conformance
§9, Character sets): canonical text is Unicode and carries no Specific Character Set of its own;
a reply that is all ASCII declares none; otherwise it is written in the requester's character
set when that is one of ``REPLY_CHARSETS`` and can represent every text value, else in UTF-8
(``ISO_IR 192``).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

from pydicom.charset import decode_bytes, encode_string, python_encoding
from pydicom.dataset import Dataset as PydicomDataset
from pydicom.valuerep import format_number_as_ds
from pynetdicom import dsutils

from gateway.dimse.binary import DEFLATED_LE, IMPLICIT_LE, TRIMMED_VRS
from gateway.ups.dataset import Dataset, describe, normalize
from gateway.ups.errors import InvalidDataset

SPECIFIC_CHARACTER_SET = "00080005"
UTF8 = "ISO_IR 192"


# ---- inbound ---------------------------------------------------------------------------------

def to_canonical(ds: PydicomDataset | None, what: str = "dataset") -> Dataset:
    """A decoded DIMSE dataset as a validated canonical workitem dataset (``normalize``d; a
    command element in it is refused there, as in a UPS-RS payload)."""
    return normalize(_to_json(ds, what, keep_commands=True))


def identifier_to_canonical(ds: PydicomDataset | None, what: str = "identifier") -> Dataset:
    """A C-FIND identifier (or matching keys) in canonical structure, values left as sent."""
    return _to_json(ds, what)


def _to_json(ds: PydicomDataset | None, what: str, keep_commands: bool = False) -> Dataset:
    if ds is None:
        return {}
    out: Dataset = {}
    try:
        tags = list(ds.keys())
    except Exception as exc:  # the byte stream did not parse at all
        raise InvalidDataset(f"cannot decode the {what}: {_reason(exc)}") from None
    for tag in tags:
        key = f"{int(tag):08X}"
        if key[4:] == "0000":
            continue  # group-length elements (the command group's too): never in a workitem
        if key.startswith("0000") and not keep_commands:
            continue
        try:
            elem = ds[tag].to_json_dict(None, 1024)
        except Exception as exc:
            raise InvalidDataset(f"{_name(key)}: cannot decode: {_reason(exc)}") from None
        out[key] = _fix_element(elem, keep_commands)
    return out


def _fix_element(elem: dict[str, Any], keep_commands: bool = False) -> dict[str, Any]:
    vr = elem.get("vr")
    if "Value" not in elem:
        return elem
    vals = elem["Value"]
    if vr == "SQ":
        if not vals:
            return {"vr": "SQ"}
        return {"vr": "SQ", "Value": [_fix_item(item, keep_commands) for item in vals]}
    if vr == "PN":
        vals = [_fix_pn(v) for v in vals]
    elif vr in TRIMMED_VRS:  # pydicom keeps leading spaces; they are not significant
        vals = [v.strip(" ") or None if isinstance(v, str) else v for v in vals]
    elif len(vals) > 1:
        vals = [None if v == "" else v for v in vals]
    if all(v is None for v in vals):
        return {"vr": vr}
    return {"vr": vr, "Value": vals}


def _fix_item(item: Any, keep_commands: bool = False) -> Any:
    if not isinstance(item, dict):
        return item
    return {k: _fix_element(v, keep_commands) for k, v in item.items()
            if isinstance(v, dict) and k[4:] != "0000"
            and (keep_commands or not k.startswith("0000"))}


def _fix_pn(value: Any) -> Any:
    if isinstance(value, dict):
        groups = {g: s for g, s in value.items() if s}
        return groups or None
    return value or None


# ---- outbound --------------------------------------------------------------------------------

def encode(ds: Dataset, transfer_syntax: str, charsets: list[str] | None = None) -> bytes | None:
    """A canonical dataset as the bytes of a DIMSE message in ``transfer_syntax`` (Explicit,
    Implicit or Deflated VR Little Endian: what the gateway negotiates), its text in a character
    set that represents it (the requester's ``charsets`` when they can); None when pydicom
    cannot write it."""
    return dsutils.encode(from_canonical(ds, charsets), transfer_syntax == IMPLICIT_LE, True,
                          transfer_syntax == DEFLATED_LE)


def from_canonical(ds: Dataset, charsets: list[str] | None = None) -> PydicomDataset:
    """A canonical dataset as a pydicom ``Dataset`` ready for pynetdicom to encode (pydicom
    writes its text in the Specific Character Set declared at its top)."""
    texts: set[str] = set()
    prepared = _prepare(ds, texts)
    if texts:
        prepared[SPECIFIC_CHARACTER_SET] = {"vr": "CS", "Value": reply_charset(texts, charsets)}
        prepared = dict(sorted(prepared.items()))
    return PydicomDataset.from_json(prepared)


# Character sets a reply is written in when the requester declared one of them (single-valued,
# no code extensions), each with the Python codec pydicom writes it with.
REPLY_CHARSETS = {term: python_encoding[term] for term in (
    "ISO_IR 100", "ISO_IR 101", "ISO_IR 109", "ISO_IR 110", "ISO_IR 126", "ISO_IR 127",
    "ISO_IR 138", "ISO_IR 144", "ISO_IR 148", "ISO_IR 166", "ISO_IR 192", "GB18030")}


def reply_charset(texts: set[str], charsets: list[str] | None) -> list[str]:
    """The Specific Character Set of a reply holding the non-ASCII ``texts``: the requester's
    ``charsets`` when they represent every one of them, else UTF-8."""
    terms = [(c or "").strip() for c in charsets or ()]
    if len(terms) == 1 and (codec := REPLY_CHARSETS.get(terms[0])):
        try:
            for text in texts:
                text.encode(codec)
            return terms
        except UnicodeEncodeError:
            pass
    elif terms and any(term.startswith("ISO 2022 ") for term in terms) \
            and _code_extensions_hold(texts, terms):
        return terms
    return [UTF8]


_DEFAULT_REPERTOIRE = frozenset(("", "ISO_IR 6", "ISO 2022 IR 6"))
_DELIMITERS = frozenset("^=\\\r\n\t\f")


def _code_extensions_hold(texts: set[str], terms: list[str]) -> bool:
    """Whether ISO 2022 code extensions (``ISO 2022 IR 6\\ISO 2022 IR 87`` …) represent every
    text: each character in one of the sets (the default repertoire is ASCII, whatever codec
    pydicom reads it with), and pydicom's escape-sequence encoding reads back unchanged."""
    if any(not term and i for i, term in enumerate(terms)) or \
            not all(term in _DEFAULT_REPERTOIRE or term.startswith("ISO 2022 ") for term in terms):
        return False
    if not all(term in python_encoding for term in terms):
        return False
    strict = ["ascii" if term in _DEFAULT_REPERTOIRE else python_encoding[term] for term in terms]
    encodings = [python_encoding[term] for term in terms]
    for text in texts:
        if not all(any(_encodes(ch, codec) for codec in strict) for ch in text):
            return False
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # pydicom warns (and replaces) when it cannot
            try:
                if decode_bytes(encode_string(text, encodings), encodings, _DELIMITERS) != text:
                    return False
            except (UserWarning, UnicodeError, ValueError, LookupError):
                return False
    return True


def _encodes(ch: str, codec: str) -> bool:
    try:
        ch.encode(codec)
    except UnicodeEncodeError:
        return False
    return True


def _prepare(ds: Dataset, texts: set[str]) -> Dataset:
    """``ds`` ready for ``PydicomDataset.from_json``: DS values as text, no character set of its
    own at any level; the non-ASCII text values are collected in ``texts``."""
    out: Dataset = {}
    for key, elem in ds.items():
        if key == SPECIFIC_CHARACTER_SET:
            continue  # (kept by earlier versions) the reply declares its own, at the top
        vr = elem.get("vr")
        vals = elem.get("Value")
        if not vals:
            out[key] = elem
            continue
        if vr == "SQ":
            out[key] = {"vr": vr, "Value": [_prepare(item or {}, texts) for item in vals]}
            continue
        if vr == "DS":
            vals = [_ds_text(v) for v in vals]
        elif vr == "PN":
            texts.update(g for v in vals if isinstance(v, dict) for g in v.values()
                         if isinstance(g, str) and not g.isascii())
        else:
            texts.update(v for v in vals if isinstance(v, str) and not v.isascii())
        out[key] = {**elem, "Value": vals}
    return out


def _ds_text(value: Any) -> Any:
    """DS values as text of at most 16 characters (pydicom would write ``repr(float)``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    if isinstance(value, int) and len(str(value)) <= 16:
        return str(value)
    number = float(value)
    if not math.isfinite(number):
        return value
    text = repr(number)
    if text.endswith(".0"):
        text = text[:-2]
    return text if len(text) <= 16 else format_number_as_ds(number)


# ---- helpers ---------------------------------------------------------------------------------

def _name(key: str) -> str:
    try:
        return describe(key)
    except ValueError:
        return key


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
