"""DIMSE command sets written straight to bytes: the responses the listener sends, and the one
request the gateway sends (N-EVENT-REPORT, ``requestor``).

A command set is a handful of US/UI/LO/AT elements in Implicit VR Little Endian (PS3.7
§6.3.1, §9.3, §10.3), so it is written here directly rather than through a pydicom Dataset, which
would validate each value and encode the set twice (once for the Command Group Length): that was
≈1.3 ms per N-CREATE response. ``tests/test_dimse_responses.py`` checks the bytes against
pynetdicom's encoding of the same messages.
"""

from __future__ import annotations

import struct
from typing import Any

# A response's Command Field is its request's with bit 15 set (PS3.7 E.1).
RESPONSE_BIT = 0x8000
NO_DATASET = 0x0101  # Command Data Set Type: "no data set"; anything else announces one
HAS_DATASET = 0x0001

AFFECTED_SOP_CLASS = 0x00000002
COMMAND_FIELD = 0x00000100
MESSAGE_ID = 0x00000110
RESPONDED_TO = 0x00000120
DATASET_TYPE = 0x00000800
STATUS = 0x00000900
OFFENDING_ELEMENT = 0x00000901
ERROR_COMMENT = 0x00000902
AFFECTED_SOP_INSTANCE = 0x00001000
EVENT_TYPE = 0x00001002
ACTION_TYPE = 0x00001008

_VRS = {AFFECTED_SOP_CLASS: "UI", COMMAND_FIELD: "US", MESSAGE_ID: "US", RESPONDED_TO: "US",
        DATASET_TYPE: "US", STATUS: "US", OFFENDING_ELEMENT: "AT", ERROR_COMMENT: "LO",
        AFFECTED_SOP_INSTANCE: "UI", EVENT_TYPE: "US", ACTION_TYPE: "US"}

_US = struct.Struct("<H")
_UL = struct.Struct("<I")
_HEADER = struct.Struct("<HHI")  # Implicit VR: group, element, 32-bit length


def response(command_field: int, msg_id: int, status: int, sop_class: str | None, *,
             sop_instance: str | None = None, comment: str | None = None,
             has_dataset: bool = False, action_type: int | None = None,
             event_type: int | None = None, offending: list[int] | None = None) -> bytes:
    """The command set answering request ``command_field`` (its response field is derived).
    Absent (None) fields are left out, as PS3.7 makes them conditional."""
    return command_set({
        AFFECTED_SOP_CLASS: sop_class,
        COMMAND_FIELD: command_field | RESPONSE_BIT,
        RESPONDED_TO: msg_id,
        DATASET_TYPE: HAS_DATASET if has_dataset else NO_DATASET,
        STATUS: status,
        OFFENDING_ELEMENT: offending,
        ERROR_COMMENT: comment,
        AFFECTED_SOP_INSTANCE: sop_instance,
        EVENT_TYPE: event_type,
        ACTION_TYPE: action_type,
    })


def request(command_field: int, msg_id: int, sop_class: str, *, sop_instance: str | None = None,
            has_dataset: bool = False, event_type: int | None = None) -> bytes:
    """The command set of a DIMSE-N request with an Affected SOP Class / Instance (PS3.7 §10.3:
    N-EVENT-REPORT-RQ is the one the gateway sends)."""
    return command_set({
        AFFECTED_SOP_CLASS: sop_class,
        COMMAND_FIELD: command_field,
        MESSAGE_ID: msg_id,
        DATASET_TYPE: HAS_DATASET if has_dataset else NO_DATASET,
        AFFECTED_SOP_INSTANCE: sop_instance,
        EVENT_TYPE: event_type,
    })


def command_set(values: dict[int, Any]) -> bytes:
    """``{tag: value}`` as an Implicit VR Little Endian command set, its group length first."""
    parts = []
    for tag in sorted(values):
        value = values[tag]
        if value is None:
            continue
        raw = _encode_value(_VRS[tag], value)
        parts.append(_HEADER.pack(0, tag & 0xFFFF, len(raw)) + raw)
    body = b"".join(parts)
    return _HEADER.pack(0, 0, 4) + _UL.pack(len(body)) + body


def _encode_value(vr: str, value: Any) -> bytes:
    if vr == "US":
        return _US.pack(value)
    if vr == "AT":
        tags = value if isinstance(value, (list, tuple)) else [value]
        return b"".join(struct.pack("<HH", t >> 16, t & 0xFFFF) for t in tags)
    # UI / LO: the command set is ASCII (the default character repertoire); a value echoed from
    # a peer that is not (or holds a backslash, the LO value separator) is replaced, not refused.
    raw = str(value).replace("\\", "/").encode("ascii", "replace")
    if len(raw) % 2:
        raw += b"\x00" if vr == "UI" else b" "
    return raw
