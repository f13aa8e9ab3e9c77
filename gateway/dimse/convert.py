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
* command (group 0000) and group-length (gggg,0000) elements are emitted if present; a workitem
  never holds them.

Outbound (``encode``: N-GET and C-FIND responses, N-EVENT-REPORTs), DS numbers are formatted to
fit 16 characters, and a dataset holding any non-ASCII text is sent as UTF-8 (Specific Character
Set ``ISO_IR 192``): canonical text is Unicode, whatever character set it arrived in.
"""

from __future__ import annotations

import math
from typing import Any

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
    """A decoded DIMSE dataset as a validated canonical workitem dataset (``normalize``d)."""
    return normalize(_to_json(ds, what))


def identifier_to_canonical(ds: PydicomDataset | None, what: str = "identifier") -> Dataset:
    """A C-FIND identifier (or matching keys) in canonical structure, values left as sent."""
    return _to_json(ds, what)


def _to_json(ds: PydicomDataset | None, what: str) -> Dataset:
    if ds is None:
        return {}
    out: Dataset = {}
    try:
        tags = list(ds.keys())
    except Exception as exc:  # the byte stream did not parse at all
        raise InvalidDataset(f"cannot decode the {what}: {_reason(exc)}") from None
    for tag in tags:
        key = f"{int(tag):08X}"
        if key.startswith("0000") or key[4:] == "0000":
            continue  # command and group-length elements: never part of a workitem
        try:
            elem = ds[tag].to_json_dict(None, 1024)
        except Exception as exc:
            raise InvalidDataset(f"{_name(key)}: cannot decode: {_reason(exc)}") from None
        out[key] = _fix_element(elem)
    return out


def _fix_element(elem: dict[str, Any]) -> dict[str, Any]:
    vr = elem.get("vr")
    if "Value" not in elem:
        return elem
    vals = elem["Value"]
    if vr == "SQ":
        if not vals:
            return {"vr": "SQ"}
        return {"vr": "SQ", "Value": [_fix_item(item) for item in vals]}
    if vr == "PN":
        vals = [_fix_pn(v) for v in vals]
    elif vr in TRIMMED_VRS:  # pydicom keeps leading spaces; they are not significant
        vals = [v.strip(" ") or None if isinstance(v, str) else v for v in vals]
    elif len(vals) > 1:
        vals = [None if v == "" else v for v in vals]
    if all(v is None for v in vals):
        return {"vr": vr}
    return {"vr": vr, "Value": vals}


def _fix_item(item: Any) -> Any:
    if not isinstance(item, dict):
        return item
    return {k: _fix_element(v) for k, v in item.items()
            if not (k.startswith("0000") or k[4:] == "0000") and isinstance(v, dict)}


def _fix_pn(value: Any) -> Any:
    if isinstance(value, dict):
        groups = {g: s for g, s in value.items() if s}
        return groups or None
    return value or None


# ---- outbound --------------------------------------------------------------------------------

def encode(ds: Dataset, transfer_syntax: str) -> bytes | None:
    """A canonical dataset as the bytes of a DIMSE message in ``transfer_syntax`` (Explicit,
    Implicit or Deflated VR Little Endian: what the gateway negotiates); None when pydicom
    cannot write it."""
    return dsutils.encode(from_canonical(ds), transfer_syntax == IMPLICIT_LE, True,
                          transfer_syntax == DEFLATED_LE)


def from_canonical(ds: Dataset) -> PydicomDataset:
    """A canonical dataset as a pydicom ``Dataset`` ready for pynetdicom to encode."""
    prepared, non_ascii = _prepare(ds)
    if non_ascii:
        _set_utf8(prepared)
    return PydicomDataset.from_json(prepared)


def _set_utf8(ds: Dataset) -> None:
    """Declare UTF-8 at the top level and in every item that declares its own character set."""
    ds[SPECIFIC_CHARACTER_SET] = {"vr": "CS", "Value": [UTF8]}
    for elem in ds.values():
        if elem.get("vr") == "SQ":
            for item in elem.get("Value") or ():
                if SPECIFIC_CHARACTER_SET in item:
                    _set_utf8(item)


def _prepare(ds: Dataset) -> tuple[Dataset, bool]:
    out: Dataset = {}
    non_ascii = False
    for key, elem in ds.items():
        vr = elem.get("vr")
        vals = elem.get("Value")
        if not vals:
            out[key] = elem
            continue
        if vr == "SQ":
            items = []
            for item in vals:
                fixed, flag = _prepare(item or {})
                items.append(fixed)
                non_ascii = non_ascii or flag
            out[key] = {"vr": vr, "Value": items}
            continue
        if vr == "DS":
            vals = [_ds_text(v) for v in vals]
        elif vr == "PN":
            non_ascii = non_ascii or any(not g.isascii() for v in vals if isinstance(v, dict)
                                         for g in v.values() if isinstance(g, str))
        else:
            non_ascii = non_ascii or any(isinstance(v, str) and not v.isascii() for v in vals)
        out[key] = {**elem, "Value": vals}
    return out, non_ascii


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
